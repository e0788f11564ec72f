"""One rank of the "no usable sample on one rank" check (run by tests/test_ppo_unusable_samples_distributed.py).

Launched as ``torchrun --nproc_per_node 2 tests/distributed/ppo_unusable_worker.py OUT_DIR``.
Per-device batch 1, and the reward function returns NaN for rank 1's only sample of the first
update: rank 1 has no usable sample there while rank 0 has one. Both ranks must skip that update
together (before, rank 1 raised alone and rank 0 waited in its next collective call until the
launcher killed the job), count it, and train the next one in step. Runs the single-pass update
and the general path (2 PPO epochs); writes ``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from coati_hf.models import load_tokenizer, make_tiny_llama  # noqa: E402
from coati_hf.models.embedded import embedded_model_dir  # noqa: E402
from coati_hf.ppo.config import PPOConfig  # noqa: E402
from coati_hf.ppo.trainer import PPOTrainer  # noqa: E402

hf_logging.set_verbosity_error()


def reward_nan_on_rank_1_first_call():
    rank = int(os.environ["RANK"])
    calls = {"count": 0}

    def reward(prompts, completions):
        calls["count"] += 1
        bad = rank == 1 and calls["count"] == 1
        return [float("nan") if bad else 1.0 for _ in completions]

    return reward


def run(tokenizer, workdir: str, num_ppo_epochs: int) -> dict:
    policy, tok = make_tiny_llama(seed=0, tokenizer=copy.deepcopy(tokenizer))
    args = PPOConfig(
        output_dir=os.path.join(workdir, f"epochs{num_ppo_epochs}"), per_device_train_batch_size=1, total_episodes=4,
        num_ppo_epochs=num_ppo_epochs, response_length=4, learning_rate=1e-3, report_to=[], use_cpu=True, seed=0,
        logging_steps=1, num_sample_generations=0, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=None,
        reward_model=reward_nan_on_rank_1_first_call(), train_dataset=Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(8)]}),
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "ppo/skipped_updates" in entry]
    weights = trainer.accelerator.unwrap_model(trainer.model_wrapped).state_dict()
    return {
        "single_pass": trainer._single_pass(),
        "world_size": trainer.accelerator.num_processes,
        "skipped_updates": [entry["ppo/skipped_updates"] for entry in logs],
        "optimizer_steps": [entry["ppo/optimizer_steps"] for entry in logs],
        "nan_scores": [entry["rollout/nan_scores"] for entry in logs],
        "checksum": float(sum(t.double().sum() for t in weights.values())),
    }


def main() -> None:
    out_dir = sys.argv[1]
    tokenizer = load_tokenizer(embedded_model_dir())
    torch.set_num_threads(1)
    result = {name: run(tokenizer, out_dir, epochs) for name, epochs in (("single_pass", 1), ("general", 2))}
    rank = int(os.environ["RANK"])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()

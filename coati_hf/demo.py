"""The end-to-end demo on the embedded SmolLM2-135M-Instruct, sized for a laptop CPU.

Each stage's ``save_model`` writes an ordinary Hugging Face folder under ``output_dir`` that
reloads with plain ``from_pretrained``, with a model card (README.md) and training curves:

    sft/            stage 1, supervised fine-tuning with LoRA on the shipped bilingual set
    reward_model/   stage 2, a reward model (sequence classifier, num_labels=1) on the shipped pairs
    ppo/            stage 3, PPO with LoRA on the shipped prompts, rewarded by stage 2's model;
                    the actor at ppo/ (merged, adapter in ppo/adapter), the critic in ppo/critic
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# How each stage's card names its training data (the shipped samples have no Hub id).
_SAMPLE_DESCRIPTIONS = {
    name: f"coati_hf's bundled bilingual sample {name}.jsonl (coati_hf/data/samples)"
    for name in ("sft", "preferences", "prompts")
}


def _lora(task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type=task_type,
    )


def run_demo(output_dir: str = "outputs/demo", steps: int = 8, ppo_steps: int | None = None) -> dict:
    """Run SFT → RM → PPO and return ``{stage: folder}`` plus ``"ppo_log"`` (PPO's log history).

    ``steps`` optimizer steps for SFT and RM; ``ppo_steps`` PPO updates (default ``steps // 4``,
    at least 2: a PPO update on 2 CPU cores takes about half a minute).
    """
    from .data import load_sample
    from .models import EMBEDDED_MODEL_NAME, load_causal_lm, load_sequence_classifier
    from .quiet import silence_peft_checkpointing_notice
    from .ppo.config import PPOConfig
    from .ppo.trainer import PPOTrainer
    from .reward import RewardConfig, RewardTrainer
    from .sft import SFTConfig, SFTTrainer

    silence_peft_checkpointing_notice()  # peft reads a property transformers 5 deprecated
    output = Path(output_dir)
    folders: dict[str, str] = {}
    common = dict(report_to="none", logging_steps=1, save_strategy="no", activation_checkpointing=False, seed=0)

    started = time.time()
    logger.info("[demo] stage 1/3: SFT with LoRA on %s", EMBEDDED_MODEL_NAME)
    policy, tokenizer = load_causal_lm(EMBEDDED_MODEL_NAME)
    sft = SFTTrainer(
        model=policy,
        args=SFTConfig(output_dir=str(output / "sft"), max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4, max_length=192, **common),
        train_dataset=load_sample("sft"),
        processing_class=tokenizer,
        peft_config=_lora("CAUSAL_LM"),
    )
    sft.train()
    sft.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["sft"])
    sft.save_model(str(output / "sft"))
    folders["sft"] = str(output / "sft")

    logger.info("[demo] stage 2/3: reward model on the shipped preference pairs")
    reward_model, rm_tokenizer = load_sequence_classifier(folders["sft"])
    rm = RewardTrainer(
        model=reward_model,
        args=RewardConfig(output_dir=str(output / "reward_model"), max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4, max_length=256, **common),
        train_dataset=load_sample("preferences"),
        processing_class=rm_tokenizer,
        peft_config=_lora("SEQ_CLS"),
    )
    rm.train()
    rm.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["preferences"])
    rm.save_model(str(output / "reward_model"))
    folders["reward_model"] = str(output / "reward_model")

    logger.info("[demo] stage 3/3: PPO with LoRA, rewarded by the stage-2 model")
    ppo_steps = ppo_steps if ppo_steps is not None else max(2, steps // 4)
    actor, actor_tokenizer = load_causal_lm(folders["sft"])
    reward_model, _ = load_sequence_classifier(folders["reward_model"])
    ppo = PPOTrainer(
        args=PPOConfig(
            output_dir=str(output / "ppo"),
            per_device_train_batch_size=4,
            total_episodes=4 * ppo_steps,
            num_ppo_epochs=2,
            response_length=16,
            stop_token="eos",
            learning_rate=5e-5,
            kl_coef=0.05,
            max_prompt_length=128,
            **common,
        ),
        processing_class=actor_tokenizer,
        model=actor,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=load_sample("prompts").select(range(96)),
        value_model=None,
        eval_dataset=load_sample("prompts").select(range(96, 100)),
        peft_config=_lora("CAUSAL_LM"),
    )
    ppo.train()
    ppo.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["prompts"])
    ppo.save_model(str(output / "ppo"))
    folders["ppo"] = str(output / "ppo")
    folders["ppo_log"] = [entry for entry in ppo.state.log_history if "objective/kl" in entry]
    completions = ppo.generate_completions()
    logger.info("[demo] sample completions after PPO:\n%s", completions.to_string(max_colwidth=60))

    logger.info("[demo] done in %.0f s: %s", time.time() - started, {k: v for k, v in folders.items() if k != "ppo_log"})
    return folders

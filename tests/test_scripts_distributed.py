"""The three scripts end to end on a tiny Llama, as users launch them (about 1.5 minutes on 2 cores).

One module-scoped pipeline, each launch feeding the next (SFT → reward model → PPO), then one
single-process PPO with a rule-based reward:

- sft:    ``accelerate launch --multi_gpu --num_processes 2 scripts/sft.py --config sft.yaml`` plus
          command-line overrides (``--learning_rate``, ``--model_init_kwargs '{"dtype": "bfloat16"}'``);
          plain Accelerate on two gloo ranks.
- reward: ``coati-hf reward --config reward.yaml --num_processes 2`` with ``COATI_HF_STRATEGY=zero2``.
- ppo:    ``accelerate launch --multi_gpu --num_processes 2 scripts/ppo.py --colossalai_strategy zero2``,
          the SFT and reward folders, PTX on the shipped pretraining text.
- rule:   ``python -W error::FutureWarning scripts/ppo.py --reward_function rules:length_reward``.

Each test checks one finding, so each can fail on its own; every multi-rank launch asserts the
world size each rank saw.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coati_hf.colossalai.plugin import colossalai_available

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not colossalai_available(), reason="colossalai is not installed"),
]

REPO = Path(__file__).resolve().parents[1]
ROWS = 16  # per data file
BATCH = 2  # per device
PPO_EPISODES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "COATI_HF_STRATEGY"}
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true",
    )  # fmt: skip
    env.update(extra)
    return env


def _accelerate(*arguments) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *arguments]  # fmt: skip


def _yaml(path: Path, settings: dict) -> str:
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return str(path)


def _head(sample: str, rows: int, target: Path) -> str:
    from coati_hf.data import sample_path

    lines = sample_path(sample).read_text(encoding="utf-8").splitlines()[:rows]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(target)


COMMON = {
    "per_device_train_batch_size": BATCH,
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": True,
    "activation_checkpointing": False,
    "ddp_find_unused_parameters": False,
    "seed": 0,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, embedded_dir):
    from coati_hf.models import save_tiny_llama

    work = tmp_path_factory.mktemp("scripts_pipeline")
    tiny = save_tiny_llama(work / "tiny")
    out = work / "out"
    results: dict[str, subprocess.CompletedProcess] = {}

    def run(name, command, **env):
        results[name] = subprocess.run(command, cwd=work, env=_env(**env), capture_output=True, text=True, timeout=600)
        return results[name].returncode == 0

    sft_yaml = _yaml(work / "sft.yaml", {
        "model_name_or_path": tiny, "dataset_name": _head("sft", ROWS, work / "sft.jsonl"), "output_dir": str(out / "sft"),
        "num_train_epochs": 1, "learning_rate": 1e-3, "max_length": 512, **COMMON,
    })  # fmt: skip
    ok = run("sft", _accelerate(str(REPO / "scripts" / "sft.py"), "--config", sft_yaml,
                                "--learning_rate", "3e-3", "--model_init_kwargs", '{"dtype": "bfloat16"}'))  # fmt: skip

    reward_yaml = _yaml(work / "reward.yaml", {
        "model_name_or_path": str(out / "sft"), "dataset_name": _head("preferences", ROWS, work / "pairs.jsonl"),
        "output_dir": str(out / "reward"), "num_train_epochs": 1, "learning_rate": 1e-3, "max_length": 512, "num_processes": 2, **COMMON,
    })  # fmt: skip
    ok = ok and run("reward", [sys.executable, "-m", "coati_hf.cli", "reward", "--config", reward_yaml,
                               "--main_process_port", str(_free_port())], COATI_HF_STRATEGY="zero2")  # fmt: skip

    ppo_settings = {
        "dataset_name": _head("prompts", ROWS, work / "prompts.jsonl"), "total_episodes": PPO_EPISODES, "num_ppo_epochs": 1,
        "response_length": 8, "stop_token": "eos", "num_sample_generations": 0, **COMMON,
    }  # fmt: skip
    ppo_yaml = _yaml(work / "ppo.yaml", {
        "sft_model_path": str(out / "sft"), "reward_model_path": str(out / "reward"), "output_dir": str(out / "ppo"),
        "pretrain_dataset": "sample:pretrain", "ptx_coef": 0.1, **ppo_settings,
    })  # fmt: skip
    ok and run("ppo", _accelerate(str(REPO / "scripts" / "ppo.py"), "--config", ppo_yaml, "--colossalai_strategy", "zero2"))

    (work / "rules.py").write_text(
        "import os\n\n"
        "def length_reward(prompts, completions):\n"
        "    with open(os.environ['REWARD_CALLS'], 'a') as log:\n"
        "        log.write(f'{len(completions)}\\n')\n"
        "    return [len(text) / 10.0 for text in completions]\n"
    )
    rule_yaml = _yaml(work / "rule.yaml", {"sft_model_path": tiny, "output_dir": str(out / "rule"), **ppo_settings, "total_episodes": 4})
    run("rule", [sys.executable, "-W", "error::FutureWarning", str(REPO / "scripts" / "ppo.py"), "--config", rule_yaml,
                 "--reward_function", "rules:length_reward"], REWARD_CALLS=str(work / "reward_calls.txt"))  # fmt: skip
    return {"work": work, "out": out, "results": results}


def _ok(runs, name) -> subprocess.CompletedProcess:
    result = runs["results"].get(name)
    if result is None:
        pytest.fail(f"{name} did not run (an earlier stage failed)")
    if result.returncode != 0:
        pytest.fail(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _state(runs, name) -> dict:
    return json.loads((runs["out"] / name / "trainer_state.json").read_text())


@pytest.mark.parametrize("name, backend", [("sft", "Accelerate"), ("reward", "ColossalAI zero2"), ("ppo", "ColossalAI zero2")])
def test_each_rank_saw_two_processes(runs, name, backend):
    out = _ok(runs, name).stdout
    for rank in (0, 1):
        assert f"[coati_hf] {name}: process {rank} of 2 (MULTI_CPU, cpu:0, {backend})" in out


@pytest.mark.parametrize("name", ["sft", "reward"])
def test_two_ranks_take_half_the_steps_of_one(runs, name):
    _ok(runs, name)
    state = _state(runs, name)
    one_rank_steps = ROWS // BATCH  # one epoch over ROWS rows, BATCH per step
    assert state["global_step"] == one_rank_steps // 2
    assert state["epoch"] == pytest.approx(1.0)


def test_ppo_two_ranks_take_half_the_updates_of_one(runs):
    _ok(runs, "ppo")
    state = _state(runs, "ppo")
    assert state["global_step"] == PPO_EPISODES // BATCH // 2  # each update takes BATCH prompts on each of 2 ranks
    assert max(entry.get("episode", 0) for entry in state["log_history"]) == PPO_EPISODES
    assert any("loss/ptx_avg" in entry for entry in state["log_history"])  # --pretrain_dataset / --ptx_coef reached PPO


def test_command_line_overrides_the_config_file(runs):
    _ok(runs, "sft")
    args = torch.load(runs["out"] / "sft" / "training_args.bin", weights_only=False)
    assert args.learning_rate == 3e-3  # command line; the file says 1e-3
    assert args.max_length == 512 and args.num_train_epochs == 1  # from the file


def test_model_init_kwargs_dtype_gives_a_bf16_model(runs):
    from transformers import AutoModelForCausalLM

    _ok(runs, "sft")
    model = AutoModelForCausalLM.from_pretrained(runs["out"] / "sft")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert json.loads((runs["out"] / "sft" / "config.json").read_text())["dtype"] == "bfloat16"


def test_exports_reload_with_plain_from_pretrained(runs):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for name in ("sft", "reward", "ppo"):
        _ok(runs, name)
        assert (runs["out"] / name / "README.md").is_file()  # the card
    reward_model = AutoModelForSequenceClassification.from_pretrained(runs["out"] / "reward")
    assert reward_model.config.num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(runs["out"] / "ppo")
    actor = AutoModelForCausalLM.from_pretrained(runs["out"] / "ppo")
    critic = AutoModelForSequenceClassification.from_pretrained(runs["out"] / "ppo" / "critic")
    ids = tokenizer("Hello", return_tensors="pt")
    assert actor(**ids).logits.shape[-1] == actor.config.vocab_size
    assert critic(**ids).logits.shape == (1, 1)


def test_rule_based_reward_function_is_called(runs):
    _ok(runs, "rule")
    calls = [int(line) for line in (runs["work"] / "reward_calls.txt").read_text().split()]
    assert sum(calls) == 4  # every sampled completion of total_episodes=4 was scored by the function
    assert _state(runs, "rule")["global_step"] == 2
    assert (runs["out"] / "rule" / "critic" / "config.json").is_file()


@pytest.mark.parametrize("name", ["sft", "reward", "ppo", "rule"])
def test_runs_are_quiet(runs, name):
    output = _ok(runs, name).stdout + runs["results"][name].stderr
    for noise in ("FutureWarning", "pin_memory", "LOAD REPORT", "gemm_4bit_forward", "Please install apex", "Traceback"):
        assert noise not in output, f"{noise!r} in the output of {name}"

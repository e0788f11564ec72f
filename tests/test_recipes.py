"""The shipped recipes parse with their stage's parser and say what recipes/README.md says they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from coati_hf.scripts import common, ppo, reward, sft

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
PARSERS = {"sft": sft.make_parser, "reward": reward.make_parser, "ppo": ppo.make_parser}
STAGE_RECIPES = sorted(path for path in RECIPES.glob("*/*.yaml") if path.parent.name != "accelerate")


def _parse(path: Path):
    return common.parse_arguments(PARSERS[path.stem](), ["--config", str(path)])


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_stage_recipe_parses_without_unknown_keys(path):
    (script_args, training_args, model_args, _), from_config, _ = _parse(path)
    assert training_args.output_dir.startswith("outputs/")
    assert script_args.dataset_name
    assert set(from_config[::2]) <= {"--num_processes"}


def test_cpu_recipes_chain_the_stages_on_the_embedded_model():
    (_, sft_args, sft_model, _), _, _ = _parse(RECIPES / "smollm2_cpu/sft.yaml")
    (_, rm_args, rm_model, _), _, _ = _parse(RECIPES / "smollm2_cpu/reward.yaml")
    (ppo_script, ppo_args, _, _), _, _ = _parse(RECIPES / "smollm2_cpu/ppo.yaml")
    assert sft_model.model_name_or_path == "embedded:SmolLM2-135M-Instruct"
    assert rm_model.model_name_or_path == sft_args.output_dir
    assert (ppo_args.sft_model_path, ppo_args.reward_model_path) == (sft_args.output_dir, rm_args.output_dir)
    assert ppo_script.pretrain_dataset == "sample:pretrain" and ppo_args.ptx_coef > 0
    for args in (sft_args, rm_args, ppo_args):
        assert args.colossalai_strategy is None and args.bf16 is False
        assert args.activation_checkpointing is False  # a 135M model on a CPU: recomputing only costs time


def test_7b_recipes_translate_coati_settings():
    (_, sft_args, sft_model, _), sft_launch, _ = _parse(RECIPES / "llama2_7b_8gpu/sft.yaml")
    (_, rm_args, rm_model, _), _, _ = _parse(RECIPES / "llama2_7b_8gpu/reward.yaml")
    (ppo_script, ppo_args, ppo_model, _), _, _ = _parse(RECIPES / "llama2_7b_8gpu/ppo.yaml")
    assert sft_launch == ["--num_processes", "8"]
    assert {args.colossalai_strategy for args in (sft_args, rm_args, ppo_args)} == {"zero2"}  # Coati's colossalai_zero2
    assert {model.lora_r for model in (sft_model, rm_model, ppo_model)} == {16}
    assert (sft_args.per_device_train_batch_size, sft_args.gradient_accumulation_steps, sft_args.learning_rate) == (4, 8, 2e-5)
    assert rm_args.loss_fn == "log_exp"
    assert (ppo_args.ptx_coef, ppo_args.kl_coef, ppo_args.ptx_batch_size) == (0.9, 0.1, 1)
    assert ppo_script.pretrain_dataset
    assert all(args.bf16 and args.activation_checkpointing for args in (sft_args, rm_args, ppo_args))


@pytest.mark.parametrize(
    "name, distributed_type, zero_stage",
    [("single_process", "NO", None), ("multi_gpu", "MULTI_GPU", None), ("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3)],
)
def test_accelerate_configs_load_with_accelerate(name, distributed_type, zero_stage):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type
    assert (config.deepspeed_config or {}).get("zero_stage") == zero_stage


def test_there_are_both_recipe_sets():
    assert {path.parent.name for path in STAGE_RECIPES} == {"smollm2_cpu", "llama2_7b_8gpu"}
    assert {path.stem for path in STAGE_RECIPES} == set(PARSERS)


def test_readme_names_every_recipe_and_how_colossalai_is_selected():
    text = (RECIPES / "README.md").read_text()
    for path in sorted(RECIPES.glob("*/*.yaml")):
        assert f"{path.parent.name}/{path.name}" in text or path.stem in text, path
    assert "colossalai_strategy" in text and "COATI_HF_STRATEGY" in text


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_recipes_run_as_shipped_on_two_ranks(tmp_path, embedded_dir):
    """The three embedded recipes through `coati-hf`, on two CPU ranks, cut to a step each."""
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "COATI_HF_STRATEGY"}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    shorter = {"sft": ["--max_steps", "1"], "reward": ["--max_steps", "1"], "ppo": ["--total_episodes", "8", "--response_length", "8"]}
    for stage, overrides in shorter.items():
        command = [sys.executable, "-m", "coati_hf.cli", stage, "--config", f"recipes/smollm2_cpu/{stage}.yaml", *overrides, "--num_processes", "2"]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)  # finds the shipped recipe
        assert result.returncode == 0, f"{stage}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        assert f"[coati_hf] {stage}: process 1 of 2 (MULTI_CPU" in result.stdout
        assert "FutureWarning" not in result.stderr and "Warning: find_unused_parameters" not in result.stderr
    folders = {stage: tmp_path / "outputs" / "smollm2_cpu" / name for stage, name in (("sft", "sft"), ("reward", "reward_model"), ("ppo", "ppo"))}
    assert all((folder / "README.md").is_file() for folder in folders.values())
    assert json.loads((folders["ppo"] / "trainer_state.json").read_text())["global_step"] == 1

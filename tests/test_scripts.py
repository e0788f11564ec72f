"""The training scripts' parsing, checks and launcher options, in this process (no training).

The runs themselves (every launcher, two CPU ranks, ZeRO-2) are in tests/test_scripts_distributed.py.
"""

from __future__ import annotations

import pytest
from trl import ModelConfig

from coati_hf.scripts import common, launch, ppo, reward, sft


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Nothing here may get past the checks into training."""
    for module in (sft, reward, ppo):
        monkeypatch.setattr(module, "main", lambda *args: pytest.fail("bad input reached main()"))


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def sft_config(tmp_path):
    return _write(
        tmp_path / "sft.yaml",
        "model_name_or_path: embedded:SmolLM2-135M-Instruct\n"
        "dataset_name: sample:sft\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "learning_rate: 1.0e-3\n"
        "max_steps: 5\n"
        "use_peft: true\n"
        "lora_r: 4\n"
        "report_to: none\n"
        "num_processes: 2\n",
    )


# ---- YAML + command line ------------------------------------------------------------------------


def test_command_line_wins_over_the_config_file_and_launcher_keys_are_set_aside(sft_config):
    (script_args, training_args, model_args, _), from_config, from_command_line = common.parse_arguments(
        sft.make_parser(), ["--config", sft_config, "--learning_rate", "2e-3", "--lora_r", "8"]
    )
    assert training_args.learning_rate == 2e-3  # the command line wins
    assert model_args.lora_r == 8
    assert training_args.max_steps == 5  # the file's value where the command line says nothing
    assert model_args.use_peft is True and script_args.dataset_name == "sample:sft"
    assert from_config == ["--num_processes", "2"]  # for the launcher, not a config field
    assert from_command_line == []


def test_launcher_options_on_the_command_line_are_returned_for_the_launcher(sft_config):
    _, _, from_command_line = common.parse_arguments(sft.make_parser(), ["--config", sft_config, "--num_processes", "2", "--main_process_port=29999"])
    assert from_command_line == ["--num_processes", "2", "--main_process_port=29999"]


def test_launcher_switches_and_values_from_a_config_file(tmp_path):
    config = _write(tmp_path / "c.yaml", "model_name_or_path: x\nmulti_gpu: true\ncpu: false\nnum_processes: 4\nmain_process_port: 29555\n")
    _, from_config, _ = common.parse_arguments(sft.make_parser(), ["--config", config, "--output_dir", str(tmp_path)])
    assert from_config == ["--multi_gpu", "--num_processes", "4", "--main_process_port", "29555"]


def test_a_shipped_recipe_is_found_by_its_name():
    (_, training_args, model_args, _), from_config, _ = common.parse_arguments(sft.make_parser(), ["--config", "smollm2_cpu/sft.yaml"])
    assert model_args.model_name_or_path == "embedded:SmolLM2-135M-Instruct"
    assert training_args.output_dir.endswith("outputs/smollm2_cpu/sft")


def test_model_init_kwargs_of_the_config_win_over_model_config(tmp_path):
    parsed, _, _ = common.parse_arguments(
        sft.make_parser(), ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--model_init_kwargs", '{"dtype": "bfloat16"}']
    )
    _, training_args, model_args, _ = parsed
    assert model_args.dtype == "float32"  # TRL's ModelConfig default
    kwargs = common.model_init_kwargs(model_args, training_args)
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["revision"] == "main" and kwargs["trust_remote_code"] is False


def test_dtype_flag_reaches_the_loader(tmp_path):
    (_, training_args, model_args, _), _, _ = common.parse_arguments(
        sft.make_parser(), ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--dtype", "bfloat16", "--attn_implementation", "eager"]
    )
    kwargs = common.model_init_kwargs(model_args, training_args)
    assert (kwargs["dtype"], kwargs["attn_implementation"]) == ("bfloat16", "eager")


def test_ppo_parser_takes_its_script_arguments(tmp_path):
    (script_args, training_args, _, _), _, _ = common.parse_arguments(
        ppo.make_parser(),
        ["--sft_model_path", "a", "--reward_model_path", "b", "--pretrain_dataset", "sample:pretrain", "--ptx_coef", "0.2",
         "--output_dir", str(tmp_path), "--model_init_kwargs", '{"dtype": "bfloat16"}'],
    )  # fmt: skip
    assert (training_args.sft_model_path, training_args.reward_model_path, training_args.ptx_coef) == ("a", "b", 0.2)
    assert script_args.pretrain_dataset == "sample:pretrain"
    # PPOConfig has no model_init_kwargs: the script's own field carries them
    assert common.model_init_kwargs(ModelConfig(dtype="float32"), script_args)["dtype"] == "bfloat16"


# ---- data sources -------------------------------------------------------------------------------


def test_data_sources(tmp_path):
    from coati_hf.data import sample_path

    assert common.resolve_data_source("sample:prompts") == str(sample_path("prompts"))
    existing = _write(tmp_path / "rows.jsonl", '{"prompt": "a", "completion": "b"}\n')
    assert common.resolve_data_source(existing) == existing
    assert common.resolve_data_source("org/some-dataset") == "org/some-dataset"  # left to datasets (Hub)
    for missing in ("data/missing.jsonl", "./missing", "/nowhere/at/all"):
        with pytest.raises(common.ScriptError, match="no such file"):
            common.resolve_data_source(missing)
    with pytest.raises(common.ScriptError, match="shipped samples: sample:sft"):
        common.resolve_data_source("sample:nope")
    assert common.describe_data_source(existing) == "local file rows.jsonl"  # cards never name a local path


def test_local_data_with_a_held_out_split(tmp_path):
    from coati_hf.data import load_sft_dataset

    rows = "".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(10))
    (script_args, training_args, _, dataset_args), _, _ = common.parse_arguments(
        sft.make_parser(), ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--dataset_name", _write(tmp_path / "d.jsonl", rows),
                            "--test_split_size", "0.2", "--eval_strategy", "steps"]
    )  # fmt: skip
    train, evaluation = common.load_datasets(script_args, training_args, dataset_args, load_sft_dataset)
    assert (len(train), len(evaluation)) == (8, 2)


# ---- bad input: one line, exit status 2 ---------------------------------------------------------


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("coati-hf ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config", "missing.yaml"], "config file missing.yaml not found"),
        (["--lerning_rate", "3"], "unknown option --lerning_rate; did you mean --learning_rate?"),
        (["--dataset_name", "data/missing.jsonl"], "--dataset_name data/missing.jsonl: no such file or folder"),
        (["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["--num_processes", "2"], "option of the launcher"),
        (["--model_name_or_path", "./no/such/model"], "no such folder"),
        (["--eval_strategy", "steps"], "needs an eval set"),
    ],
    ids=["missing-config", "unknown-flag", "missing-dataset", "bad-value", "launcher-flag", "missing-model", "no-eval-set"],
)
def test_bad_input_is_one_actionable_line(sft_config, capsys, argv, expected):
    assert sft.cli(["--config", sft_config, *argv] if argv[:1] != ["--config"] else argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith("coati-hf sft: error: ")
    assert expected in line


@pytest.mark.skipif(not __import__("coati_hf.colossalai.plugin", fromlist=["x"]).colossalai_available(), reason="no colossalai")
def test_gemini_on_cpu_names_a_strategy_that_works(sft_config, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COATI_HF_STRATEGY", "gemini")  # the variable is checked as the field is
    assert sft.cli(["--config", sft_config]) == 2
    assert "needs a CUDA GPU" in (line := _one_error_line(capsys)) and "'zero2'" in line


def test_config_file_must_be_a_mapping(tmp_path, capsys):
    assert reward.cli(["--config", _write(tmp_path / "list.yaml", "- a\n- b\n")]) == 2
    assert "must hold a mapping" in _one_error_line(capsys)
    assert reward.cli(["--config", _write(tmp_path / "bad.yaml", "a: [1, 2\n")]) == 2
    assert "not valid YAML" in _one_error_line(capsys)


def test_unknown_key_in_the_config_file(tmp_path, capsys):
    assert reward.cli(["--config", _write(tmp_path / "c.yaml", "model_name_or_path: x\nlos_fn: log_exp\n")]) == 2
    assert "unknown option --los_fn in config file" in (line := _one_error_line(capsys)) and "--loss_fn" in line


def test_ppo_checks(tmp_path, capsys, monkeypatch):
    base = ["--sft_model_path", "embedded:SmolLM2-135M-Instruct", "--output_dir", str(tmp_path)]
    assert ppo.cli([*base, "--reward_function", "no_such_module:score"]) == 2
    assert "cannot import no_such_module" in _one_error_line(capsys)
    assert ppo.cli([*base, "--reward_function", "json:no_such_function"]) == 2
    assert "json has no function 'no_such_function'" in _one_error_line(capsys)
    assert ppo.cli([*base, "--reward_function", "json:dumps", "--ptx_coef", "0.5"]) == 2
    assert "--ptx_coef 0.5 needs --pretrain_dataset" in _one_error_line(capsys)
    assert ppo.cli([*base, "--reward_function", "json:dumps", "--model_name_or_path", "x"]) == 2
    assert "drop --model_name_or_path" in _one_error_line(capsys)
    assert ppo.cli([*base, "--reward_function", "json:dumps", "--kl_coef", "-1"]) == 2
    assert "kl_coef" in _one_error_line(capsys)  # the config's own validation, as one line


def test_reward_function_from_a_file(tmp_path):
    path = _write(tmp_path / "rules.py", "def score(prompts, completions):\n    return [1.0 for _ in completions]\n")
    function = ppo.load_reward_function(f"{path}:score")
    assert function(["p"], ["c", "d"]) == [1.0, 1.0]


def test_cli_refuses_bad_input_before_launching(sft_config, capsys, monkeypatch):
    from coati_hf import cli

    monkeypatch.setattr(launch, "run_accelerate_launch", lambda arguments: pytest.fail("launched despite bad input"))
    assert cli.main(["sft", "--config", sft_config, "--lerning_rate", "1"]) == 2
    assert "did you mean --learning_rate" in _one_error_line(capsys)
    assert cli.main(["ppo", "--config", "missing.yaml"]) == 2
    assert "config file missing.yaml not found" in _one_error_line(capsys)


# ---- what coati-hf passes to accelerate launch ---------------------------------------------------


def test_cli_launches_accelerate_with_the_recipe_num_processes(sft_config, monkeypatch):
    from coati_hf import cli

    monkeypatch.setattr(launch, "_accelerate_default_config_exists", lambda: False)
    launched = []
    monkeypatch.setattr(launch, "run_accelerate_launch", lambda arguments: launched.append(arguments) or 0)
    assert cli.main(["sft", "--config", sft_config, "--learning_rate", "2e-3", "--main_process_port", "29123"]) == 0
    (arguments,) = launched
    module_at = arguments.index("--module")
    launcher, script = arguments[:module_at], arguments[module_at + 1 :]
    assert script == ["coati_hf.scripts.sft", "--config", sft_config, "--learning_rate", "2e-3"]  # launcher flags removed
    assert launcher[:4] == ["--num_processes", "2", "--main_process_port", "29123"]
    assert "--multi_gpu" in launcher  # 2 local processes in one group (gloo on a CPU, through use_cpu)
    assert ["--num_machines", "1"] == launcher[launcher.index("--num_machines") : launcher.index("--num_machines") + 2]


def test_launcher_option_completion(monkeypatch):
    monkeypatch.setattr(launch, "_accelerate_default_config_exists", lambda: False)
    monkeypatch.setattr(launch, "default_num_processes", lambda: 1)  # a machine without GPUs
    assert launch.complete_launcher_options([]) == [
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"
    ]  # fmt: skip
    assert "--multi_gpu" not in launch.complete_launcher_options(["--num_processes", "1"])
    assert "--multi_gpu" not in launch.complete_launcher_options(["--num_processes", "2", "--use_deepspeed"])
    assert launch.complete_launcher_options(["--config_file", "x.yaml", "--num_processes", "2"]) == ["--config_file", "x.yaml", "--num_processes", "2"]
    monkeypatch.setattr(launch, "default_num_processes", lambda: 8)  # 8 GPUs: all of them, as accelerate does
    assert launch.complete_launcher_options([])[:3] == ["--num_processes", "8", "--multi_gpu"]
    monkeypatch.setattr(launch, "_accelerate_default_config_exists", lambda: True)  # the user's `accelerate config`
    assert launch.complete_launcher_options(["--num_processes", "2"]) == ["--num_processes", "2"]


def test_command_line_launcher_options_win_over_the_config_file():
    merged = launch.merge_launcher_options(["--num_processes", "8", "--mixed_precision", "bf16"], ["--num_processes", "2"])
    assert merged == ["--mixed_precision", "bf16", "--num_processes", "2"]


def test_accelerate_config_by_name_or_file(tmp_path):
    resolved = launch.resolve_accelerate_config(["--accelerate_config", "deepspeed_zero2", "--num_processes", "2"])
    assert resolved[0] == "--config_file" and resolved[1].endswith("accelerate/deepspeed_zero2.yaml")
    assert resolved[2:] == ["--num_processes", "2"]
    own = _write(tmp_path / "mine.yaml", "distributed_type: MULTI_GPU\n")
    assert launch.resolve_accelerate_config([f"--accelerate_config={own}"]) == ["--config_file", own]
    with pytest.raises(common.ScriptError, match="single_process"):
        launch.resolve_accelerate_config(["--accelerate_config", "nope"])


def test_coati_hf_help_lists_the_training_commands(capsys):
    from coati_hf import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(f"    {stage}" in out for stage in ("sft", "reward", "ppo", "demo", "push", "chat"))


def test_a_process_launched_as_one_of_several_must_not_train_alone(monkeypatch):
    from types import SimpleNamespace

    import accelerate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(num_processes=1))
    with pytest.raises(common.ScriptError, match="would train alone"):
        common.check_process_group(SimpleNamespace(device="cpu"))
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(num_processes=2))
    common.check_process_group(SimpleNamespace(device="cpu"))  # a real group of 2: fine


def test_a_hub_dataset_that_cannot_be_loaded_is_one_line(tmp_path, monkeypatch):
    from coati_hf.data import load_sft_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (script_args, training_args, _, dataset_args), _, _ = common.parse_arguments(
        sft.make_parser(), ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--dataset_name", "someorg/no-such-dataset"]
    )
    with pytest.raises(common.ScriptError, match="not a local file, and datasets could not load it") as caught:
        common.load_datasets(script_args, training_args, dataset_args, load_sft_dataset)
    assert "\n" not in str(caught.value)

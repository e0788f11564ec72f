"""A quiet run: coati_hf's own defaults raise no FutureWarning, and the messages that report
nothing wrong (bitsandbytes' optional CPU kernel, a value head initialised on purpose, pinned
memory without an accelerator, colossalai's optional packages) are not printed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from coati_hf import quiet, runtime

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """Every config with its defaults, and every CPU recipe through its script's parser, under
    ``python -W error::FutureWarning``."""
    out = tmp_path_factory.mktemp("defaults")
    return _python(
        f"""
        from coati_hf import PPOConfig, RewardConfig, SFTConfig
        from coati_hf.scripts import common, ppo, reward, sft

        for config in (SFTConfig, RewardConfig):
            args = config(output_dir={str(out)!r})
            assert args.activation_checkpointing is True, config  # TRL's default, by its new name
        # PPO: off, as TRL 1.12's PPO loop ran (it never switched on what its config declared)
        assert PPOConfig(output_dir={str(out)!r}).activation_checkpointing is False
        for stage, module in (("sft", sft), ("reward", reward), ("ppo", ppo)):
            common.parse_arguments(module.make_parser(), ["--config", f"recipes/smollm2_cpu/{{stage}}.yaml"])
        print("ok")
        """,
        "-W",
        "error::FutureWarning",
    )


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    """The same without coati_hf: peft (which imports bitsandbytes), then TRL's own config."""
    out = tmp_path_factory.mktemp("control")
    return _python(f"import peft, trl; trl.SFTConfig(output_dir={str(out)!r})", "-W", "error::FutureWarning")


def test_default_configs_and_recipes_raise_no_future_warning(default_run, control_run):
    assert default_run.returncode == 0, default_run.stderr[-3000:]
    assert default_run.stdout.strip() == "ok"
    # control: TRL's configs default the deprecated `gradient_checkpointing`, so the check can fail
    assert control_run.returncode != 0 and "gradient_checkpointing" in control_run.stderr


def test_no_bitsandbytes_cpu_kernel_notice_at_import(default_run, control_run):
    if quiet.BITSANDBYTES_CPU_NOTICE not in control_run.stderr:
        pytest.skip("this machine's bitsandbytes prints no CPU-kernel notice (no bitsandbytes, or no AVX512-BF16)")
    assert quiet.BITSANDBYTES_CPU_NOTICE not in default_run.stderr


def test_the_users_choice_of_checkpointing_wins(tmp_path):
    from coati_hf import SFTConfig

    assert SFTConfig(output_dir=str(tmp_path), activation_checkpointing=False).activation_checkpointing is False
    with pytest.warns(FutureWarning):  # the deprecated name still works, and still says so
        assert SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False).activation_checkpointing is False


def test_no_accelerator_means_use_cpu_and_no_pinned_memory(tmp_path, monkeypatch):
    from coati_hf import RewardConfig

    monkeypatch.setattr(runtime, "has_accelerator", lambda: False)
    args = RewardConfig(output_dir=str(tmp_path))
    assert (args.use_cpu, args.dataloader_pin_memory) == (True, False)
    monkeypatch.setattr(runtime, "has_accelerator", lambda: True)
    args = RewardConfig(output_dir=str(tmp_path))
    assert (args.use_cpu, args.dataloader_pin_memory) == (False, True)


def test_a_new_value_head_is_not_reported_as_missing(tmp_path):
    """Neither coati_hf's loader nor a RewardTrainer given a causal LM's folder by name reports the
    value head it initialises on purpose as MISSING; transformers' own load does (control)."""
    import logging

    from transformers import AutoModelForSequenceClassification

    from coati_hf import RewardConfig, RewardTrainer
    from coati_hf.models import load_sequence_classifier, save_tiny_llama

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    from transformers.utils import logging as hf_logging

    folder = save_tiny_llama(tmp_path / "causal_lm")
    collected = Collect()
    target = logging.getLogger(quiet.TRANSFORMERS_LOAD_LOGGER)  # a handler here sees what passed the logger's filters
    target.addHandler(collected)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # transformers' default; the control below needs the report logged
    try:
        model, _ = load_sequence_classifier(folder)
        assert model.config.num_labels == 1
        pairs = [{"prompt": "Hi", "chosen": " hello", "rejected": " go away"}] * 4
        RewardTrainer(model=str(folder), args=RewardConfig(output_dir=str(tmp_path / "rm"), report_to="none"),
                      train_dataset=__import__("datasets").Dataset.from_list(pairs))
        assert not [m for m in collected.messages if "LOAD REPORT" in m]
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)  # control: without coati_hf's context
        assert [m for m in collected.messages if "LOAD REPORT" in m and "MISSING" in m]
    finally:
        target.removeHandler(collected)
        hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize(
    "rows, dropped",
    [
        ([("score.weight", "MISSING")], True),
        ([("score.weight", "MISSING"), ("score.bias", "MISSING")], True),
        ([("score.weight", "MISSING"), ("model.layers.0.mlp.up_proj.weight", "MISSING")], False),
        ([("score.weight", "UNEXPECTED")], False),
        ([("score.weight", "MISMATCH")], False),
    ],
)
def test_only_a_report_of_the_new_head_alone_is_dropped(rows, dropped):
    table = "Key | Status | \n----+--------+-\n" + "\n".join(f"{key} | \x1b[31m{status}\x1b[0m | " for key, status in rows)
    message = f"\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: x\n{table}\n\nNotes:\n- MISSING: ..."
    assert quiet.load_report_rows(message) == rows
    record = __import__("logging").LogRecord("transformers.modeling_utils", 30, __file__, 1, message, None, None)
    assert quiet._NewValueHeadReport().filter(record) is (not dropped)


def test_colossalai_notices_are_silenced_and_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.silence_colossalai_notices()
        warnings.warn("Please install apex from source (https://github.com/NVIDIA/apex) to use the fused RMSNorm kernel", UserWarning)
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use ...", FutureWarning)
        warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    assert [str(w.message) for w in caught] == ["`gradient_checkpointing` is deprecated and will be removed in v6."]


def test_peft_checkpointing_notice_is_silenced_for_runs():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.silence_peft_checkpointing_notice()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use ...", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning)  # another category: kept
    assert [type(w.message) for w in caught] == [UserWarning]

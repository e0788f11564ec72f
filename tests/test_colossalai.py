"""Unit tests of the ColossalAI backend that run in this process (no process group).

The multi-rank behaviour (loss curves, sharded optimizer memory, resume, export) is in
tests/test_colossalai_distributed.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from coati_hf.colossalai import plugin as plugin_module
from coati_hf.colossalai.plugin import (
    CUDA_ONLY_STRATEGIES,
    INSTALL_HINT,
    STRATEGIES,
    ColossalAIPlugin,
    StrategyNotSupportedError,
    check_strategy_supported,
    resolve_plugin,
    resolve_strategy,
)

needs_colossalai = pytest.mark.skipif(not plugin_module.colossalai_available(), reason="colossalai is not installed")


@dataclass
class _Args:
    colossalai_strategy: object = None


# ---- selection -------------------------------------------------------------------------------


def test_strategy_names_match_coati():
    assert set(STRATEGIES) == {"ddp", "zero1", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d"}


def test_args_field_wins_over_env(monkeypatch):
    monkeypatch.setenv("COATI_HF_STRATEGY", "ddp")
    assert resolve_strategy(_Args("zero2")) == "zero2"


def test_env_var_used_when_args_silent(monkeypatch):
    monkeypatch.setenv("COATI_HF_STRATEGY", "ZeRO1")
    assert resolve_strategy(_Args(None)) == "zero1"
    assert resolve_strategy(object()) == "zero1"  # args without the field (plain TrainingArguments)
    assert resolve_strategy(None) == "zero1"


def test_no_selection_means_plain_accelerate(monkeypatch):
    monkeypatch.delenv("COATI_HF_STRATEGY", raising=False)
    assert resolve_strategy(_Args(None)) is None
    assert resolve_plugin(_Args(None)) is None
    monkeypatch.setenv("COATI_HF_STRATEGY", "none")
    assert resolve_strategy(_Args(None)) is None


def test_unknown_strategy_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="zero2"):
        resolve_strategy(_Args("zero4"))
    monkeypatch.setenv("COATI_HF_STRATEGY", "fsdp")
    with pytest.raises(ValueError, match="Unknown ColossalAI strategy"):
        resolve_strategy(None)


def test_explicit_plugin_wins_and_is_copied(monkeypatch):
    monkeypatch.setenv("COATI_HF_STRATEGY", "ddp")
    explicit = ColossalAIPlugin("zero1", max_norm=0.5)
    resolved = resolve_plugin(_Args("zero2"), explicit)
    assert resolved.strategy == "zero1" and resolved.max_norm == 0.5
    assert resolved is not explicit
    from_args = resolve_plugin(_Args(ColossalAIPlugin("zero2", precision="bf16")))
    assert (from_args.strategy, from_args.precision) == ("zero2", "bf16")


def test_plugin_validation():
    assert ColossalAIPlugin("zero2", precision="bfloat16").precision == "bf16"
    assert ColossalAIPlugin("zero2", precision="no").precision == "fp32"
    with pytest.raises(ValueError):
        ColossalAIPlugin("zero3")
    with pytest.raises(ValueError, match="bf16"):
        ColossalAIPlugin("gemini", precision="fp32")
    assert ColossalAIPlugin("zero2_cpu").uses_hybrid_adam and ColossalAIPlugin("gemini").uses_hybrid_adam
    assert not ColossalAIPlugin("zero2").uses_hybrid_adam
    assert ColossalAIPlugin("gemini", hybrid_adam=False).uses_hybrid_adam  # Gemini accepts nothing else
    assert [ColossalAIPlugin(s).zero_stage_of_strategy for s in ("zero1", "zero2", "zero2_cpu", "ddp")] == [1, 2, 2, 0]


# ---- fail fast -------------------------------------------------------------------------------


@needs_colossalai
@pytest.mark.parametrize("strategy", sorted(CUDA_ONLY_STRATEGIES))
def test_cuda_only_strategies_fail_fast_on_cpu(strategy):
    with pytest.raises(StrategyNotSupportedError) as info:
        check_strategy_supported(strategy, cuda_available=False)
    message = str(info.value)
    assert f"'{strategy}'" in message and "CUDA" in message
    assert "'zero2'" in message and "'ddp'" in message  # names strategies that work here


@needs_colossalai
@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2"])
def test_cpu_strategies_pass_the_check(strategy):
    assert check_strategy_supported(strategy, cuda_available=False) == strategy


@needs_colossalai
def test_3d_names_the_transformers_problem_on_cuda():
    # On a CUDA machine 3d still needs colossalai.shardformer, which transformers 5 breaks.
    import transformers

    if transformers.__version__.startswith("4.51"):
        pytest.skip("shardformer's transformers")
    with pytest.raises(StrategyNotSupportedError, match="transformers"):
        check_strategy_supported("3d", cuda_available=True)


def test_missing_colossalai_says_how_to_install(monkeypatch):
    monkeypatch.setattr(plugin_module, "colossalai_available", lambda: False)
    with pytest.raises(ImportError) as info:
        check_strategy_supported("zero2")
    assert INSTALL_HINT in str(info.value)
    assert INSTALL_HINT == "pip install --no-deps colossalai==0.5.0 einops galore-torch bitsandbytes"


# ---- Trainer mixin (single process) ----------------------------------------------------------


def _trainer_args(tmp_path, strategy=None):
    from transformers import TrainingArguments

    @dataclass
    class ArgsWithStrategy(TrainingArguments):  # what SFTConfig/RewardConfig/PPOConfig carry
        colossalai_strategy: str | None = None

    return ArgsWithStrategy(output_dir=str(tmp_path), use_cpu=True, report_to=[], colossalai_strategy=strategy)


def test_mixin_without_strategy_is_plain_accelerate(tmp_path, tiny_causal_lm, monkeypatch):
    from accelerate import Accelerator
    from transformers import Trainer

    from coati_hf.colossalai import ColossalAIMixin

    monkeypatch.delenv("COATI_HF_STRATEGY", raising=False)

    class MixinTrainer(ColossalAIMixin, Trainer):
        pass

    model, _ = tiny_causal_lm
    trainer = MixinTrainer(model=model, args=_trainer_args(tmp_path))
    assert type(trainer.accelerator) is Accelerator
    assert trainer.colossalai_plugin is None and not trainer.colossalai_enabled


@needs_colossalai
def test_mixin_fails_fast_for_cuda_only_strategy_on_cpu(tmp_path, tiny_causal_lm):
    import torch
    from transformers import Trainer

    from coati_hf.colossalai import ColossalAIMixin

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    class MixinTrainer(ColossalAIMixin, Trainer):
        pass

    model, _ = tiny_causal_lm
    with pytest.raises(StrategyNotSupportedError, match="needs a CUDA GPU.*zero2"):
        MixinTrainer(model=model, args=_trainer_args(tmp_path, "gemini"))


# ---- CPU shim --------------------------------------------------------------------------------


@needs_colossalai
def test_cpu_shim_only_on_cpu_and_idempotent():
    import colossalai.accelerator.api as api
    from colossalai.accelerator import CpuAccelerator, CudaAccelerator
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    from coati_hf.colossalai.cpu_shim import apply_cpu_shim, is_applied

    saved = api._ACCELERATOR
    try:
        api._ACCELERATOR = CudaAccelerator()
        before = dict(vars(CpuAccelerator)), LowLevelZeroOptimizer._sanity_checks
        if not is_applied():
            assert apply_cpu_shim() is False
            assert (dict(vars(CpuAccelerator)), LowLevelZeroOptimizer._sanity_checks) == before

        api._ACCELERATOR = CpuAccelerator()
        assert apply_cpu_shim() is True
        patched = dict(vars(CpuAccelerator)), LowLevelZeroOptimizer._sanity_checks
        assert apply_cpu_shim() is True  # second time: nothing changes, nothing wrapped twice
        assert (dict(vars(CpuAccelerator)), LowLevelZeroOptimizer._sanity_checks) == patched
        assert not hasattr(LowLevelZeroOptimizer._sanity_checks.__wrapped__, "__wrapped_by_coati_hf__")

        cpu = api._ACCELERATOR
        cpu.synchronize()  # no longer raises
        with cpu.stream(cpu.Stream()):
            cpu.current_stream().wait_stream(cpu.Stream())

        api._ACCELERATOR = CudaAccelerator()
        assert apply_cpu_shim() is False  # not the CPU accelerator: reports "not applied here"
    finally:
        api._ACCELERATOR = saved


# ---- helpers ---------------------------------------------------------------------------------


def test_parameter_owner_found_from_autograd_graph():
    import torch

    from coati_hf.colossalai.accelerator import _parameter_ids_in_graph

    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    x = torch.randn(2, 3)
    only_a = a(x).sum()
    both = b(a(x)).sum()
    ids_a, ids_b = {id(p) for p in a.parameters()}, {id(p) for p in b.parameters()}
    assert _parameter_ids_in_graph(only_a) == ids_a
    assert _parameter_ids_in_graph(both) == ids_a | ids_b


def test_importing_the_backend_stays_light():
    code = (
        "import sys, coati_hf, coati_hf.colossalai as c\n"
        "c.ColossalAIPlugin, c.resolve_strategy, c.check_strategy_supported, coati_hf.ColossalAIMixin\n"
        "heavy = [m for m in ('torch', 'colossalai', 'transformers', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

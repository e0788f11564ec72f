"""Make colossalai 0.5.0's ZeRO (``LowLevelZeroOptimizer``) run on its CPU accelerator.

colossalai ships a ``CpuAccelerator`` (gloo) but the ZeRO-1/2 code paths call device
APIs that it answers with ``RuntimeError("this method is not supported for cpu
accelerator")``, and ``LowLevelZeroOptimizer._sanity_checks`` asserts a CUDA/NPU
accelerator. On CPU those calls have an obvious meaning, and this shim gives it to them:

- ``Stream()``, ``current_stream()``, ``default_stream()``: a null stream object (CPU work
  is synchronous, so ordering between "streams" is already guaranteed);
- ``stream(s)``: a no-op context manager; ``set_stream``: a no-op;
- ``synchronize()``: a no-op (nothing runs asynchronously);
- ``device_count()``: 1 (the host), as the dynamic loss scaler asks before creating its scale;
- ``autocast(...)``: ``torch.autocast("cpu", ...)``, fp16 by default as on CUDA (colossalai
  returns the ``nullcontext`` class, which is not a context manager);
- ``LowLevelZeroOptimizer._sanity_checks``: accepts the CPU accelerator; the dtype check
  it also does is kept.

Communication overlap (``overlap_communication=True``) needs real streams; the plugin
builder turns it off on CPU (:meth:`ColossalAIPlugin.build`).

:func:`apply_cpu_shim` changes nothing unless colossalai's current accelerator is the CPU,
and applying it twice is the same as once. The patches are on ``CpuAccelerator`` (only
used on CPU) and on one ZeRO method that keeps its original behaviour for any other
accelerator. With these, DDP and ZeRO-1/2 (fp32, bf16) train, save and load on gloo and
give the same losses as DDP (checked by ``tests/test_colossalai_distributed.py``). ZeRO's fp16
loss scaler runs too (``tests/test_ppo_backends.py``), though coati_hf still refuses fp16 on a
CPU for users (see ``accelerator._check_precision_on_device``).
"""

from __future__ import annotations

import contextlib
import functools

_MARKER = "_coati_hf_cpu_shim"


class NullStream:
    """Stand-in for a CUDA stream on CPU: every operation is already ordered."""

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def record_event(self, event=None):
        return event

    def __eq__(self, other) -> bool:
        return isinstance(other, NullStream)

    def __hash__(self) -> int:
        return hash(NullStream)

    def __repr__(self) -> str:
        return "NullStream()"


_NULL_STREAM = NullStream()


def _null_stream(self, *args, **kwargs):
    return _NULL_STREAM


def _null_stream_context(self, stream=None):
    return contextlib.nullcontext()


def _noop(self, *args, **kwargs):
    return None


def _one_device(self) -> int:
    return 1


def _cpu_autocast(self, enabled: bool = True, dtype=None, cache_enabled: bool = True):
    import torch

    return torch.autocast("cpu", dtype=dtype or torch.float16, enabled=enabled, cache_enabled=cache_enabled)


def is_cpu_accelerator() -> bool:
    """Whether colossalai's current accelerator is its CPU accelerator."""
    from colossalai.accelerator import get_accelerator

    return get_accelerator().name == "cpu"


def is_applied() -> bool:
    from colossalai.accelerator import CpuAccelerator

    return bool(getattr(CpuAccelerator, _MARKER, False))


def apply_cpu_shim() -> bool:
    """Patch colossalai for its CPU accelerator; return whether the shim is in place.

    Returns ``False`` (and changes nothing) when colossalai's accelerator is not the CPU.
    Idempotent.
    """
    if not is_cpu_accelerator():
        return False
    if is_applied():
        return True

    from colossalai.accelerator import CpuAccelerator
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    CpuAccelerator.Stream = _null_stream
    CpuAccelerator.current_stream = _null_stream
    CpuAccelerator.default_stream = _null_stream
    CpuAccelerator.stream = _null_stream_context
    CpuAccelerator.set_stream = _noop
    CpuAccelerator.synchronize = _noop
    CpuAccelerator.device_count = _one_device
    CpuAccelerator.autocast = _cpu_autocast
    LowLevelZeroOptimizer._sanity_checks = _cpu_aware_sanity_checks(LowLevelZeroOptimizer._sanity_checks)
    setattr(CpuAccelerator, _MARKER, True)
    return True


def _cpu_aware_sanity_checks(original):
    """``_sanity_checks`` that accepts the CPU accelerator and keeps the dtype check."""

    @functools.wraps(original)
    def _sanity_checks(self):
        if not is_cpu_accelerator():
            return original(self)
        for group in self.optim.param_groups:
            for param in group["params"]:
                if getattr(param, "skip_zero_check", False):
                    continue
                if param.dtype != self._dtype:
                    raise AssertionError(
                        f"Parameters are expected to have the same dtype `{self._dtype}`, but got `{param.dtype}`"
                    )

    _sanity_checks.__wrapped_by_coati_hf__ = True
    return _sanity_checks

"""One optimizer step, and what happens when the gradients are not finite -- the same contract for
plain Accelerate and every ColossalAI strategy.

The contract (:func:`clip_and_step`): a step whose gradients hold inf/NaN is never applied; it is
reported as skipped, every rank skips it alike, and training goes on. Who decides depends on the
optimizer:

- An optimizer with a **dynamic loss scaler** (fp16) decides itself, and must: its step is where
  the scaler checks for overflow, skips, and lowers the scale (an overflow at the initial scale
  is routine, not an error). Bypassing it breaks the scaler: torch's ``GradScaler`` then refuses
  the next ``unscale_()`` ("already been called ... since the last update()"), and ColossalAI's
  scaler never backs off, so every later step overflows too. These optimizers are always
  stepped: Accelerate's ``AcceleratedOptimizer`` and ColossalAI DDP's ``TorchAMPOptimizer``
  (a ``GradScaler``: it skipped iff it lowered its scale -- Accelerate's own
  ``step_was_skipped`` misses the skip of a fused AdamW, which the scaler steps anyway and
  which skips inside its kernel), LowLevelZero and Gemini in fp16 (``step_was_skipped``,
  from their ``FP16MixedPrecisionMixin``), and Gemini in bf16, to which
  :func:`install_gemini_overflow_check` gives the same overflow check without loss scaling.
- Any other optimizer (fp32/bf16 under plain Accelerate, DDP, ZeRO) is not stepped when the global
  gradient norm (identical on every rank: it is measured after the all-reduce) is not finite.

:func:`track_skipped_steps` gives a boosted optimizer Accelerate's ``step_was_skipped`` flag and
the ``skips_non_finite_steps`` attribute; :func:`zero_grad_norm` and :func:`gemini_grad_norm` are
the global gradient norms of the sharded optimizers, measured before their step without
disturbing it.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: Attribute of a boosted optimizer: whether its ``step()`` itself skips non-finite gradients.
SKIPS_ATTRIBUTE = "skips_non_finite_steps"


@dataclass
class StepOutcome:
    """What :func:`clip_and_step` did: the global gradient norm before clipping (``None``: not
    measured), whether the step was applied, and whether the gradients carry a dynamic loss
    scale (fp16: an overflow is then routine, the scaler adjusts)."""

    grad_norm: float | None
    taken: bool
    loss_scaled: bool


def skips_non_finite_steps(optimizer) -> bool:
    """Whether ``optimizer.step()`` itself skips a step whose gradients are not finite (and updates
    its loss scale): a boosted optimizer says so (:func:`track_skipped_steps`); Accelerate's
    ``AcceleratedOptimizer`` does when it holds a ``GradScaler`` (fp16)."""
    declared = getattr(optimizer, SKIPS_ATTRIBUTE, None)
    if declared is not None:
        return bool(declared)
    scaler = getattr(optimizer, "scaler", None)
    return scaler is not None and scaler.is_enabled()


def clip_and_step(accelerator, optimizer, parameters, max_norm: float) -> StepOutcome:
    """Clip to ``max_norm`` (``inf``: measure only) and step, unless the gradients are not finite.

    Call on every rank at a gradient-synchronising micro-batch; zero the gradients afterwards
    either way. Works with ``accelerate.Accelerator`` and ``ColossalAIAccelerator``.
    """
    norm = accelerator.clip_grad_norm_(parameters, max_norm)
    norm = None if norm is None else float(torch.as_tensor(norm).detach().float().max())
    finite = norm is None or math.isfinite(norm)
    loss_scaled = has_loss_scale(optimizer)
    if skips_non_finite_steps(optimizer):
        skipped = _step_by_own_protocol(optimizer)
        if not finite and not skipped:
            raise RuntimeError(
                f"The optimizer stepped with non-finite gradients (norm {norm}) although its own overflow check "
                "should have skipped the step; the weights can no longer be trusted"
            )
        return StepOutcome(norm, not skipped, loss_scaled)
    if not finite:
        return StepOutcome(norm, False, loss_scaled)
    optimizer.step()
    return StepOutcome(norm, True, loss_scaled)


def has_loss_scale(optimizer) -> bool:
    """Whether the optimizer's gradients carry a dynamic fp16 loss scale (a ``GradScaler`` or a
    ColossalAI fp16 mixin)."""
    scaler = getattr(optimizer, "scaler", None)
    return (scaler is not None and scaler.is_enabled()) or hasattr(_mixin(optimizer), "loss_scale")


def _step_by_own_protocol(optimizer) -> bool:
    """Step an optimizer that skips non-finite steps itself; return whether it skipped."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        before = scaler.get_scale()
        optimizer.step()
        return scaler.get_scale() < before  # a GradScaler backs off exactly when it finds inf/NaN
    optimizer.step()
    return bool(getattr(optimizer, "step_was_skipped", False))


# ---- boosted optimizers -----------------------------------------------------------------------------


def track_skipped_steps(optimizer) -> None:
    """Give a boosted optimizer Accelerate's ``step_was_skipped`` flag and ``skips_non_finite_steps``.

    The flag comes from the optimizer's own protocol: a ``GradScaler`` (DDP fp16) lowers its scale
    exactly when it skips; a mixed-precision mixin (LowLevelZero, Gemini) answers
    ``should_skip_step()``. Idempotent.
    """
    if getattr(optimizer, "_coati_hf_tracks_skips", False):
        return
    optimizer.step_was_skipped = False
    mixin = _mixin(optimizer)
    scaler = getattr(optimizer, "scaler", None)
    skips = (scaler is not None and scaler.is_enabled()) or _mixin_checks_overflow(mixin)
    setattr(optimizer, SKIPS_ATTRIBUTE, skips)
    original_step = optimizer.step

    @functools.wraps(original_step)
    def step(*args, **kwargs):
        optimizer.step_was_skipped = False
        current = getattr(optimizer, "scaler", None)  # read now: a caller may replace it
        scale_before = current.get_scale() if current is not None and current.is_enabled() else None
        result = original_step(*args, **kwargs)
        if scale_before is not None:
            optimizer.step_was_skipped = current.get_scale() < scale_before  # GradScaler backs off iff it skipped
        if optimizer.step_was_skipped:
            _after_skipped_gemini_step(optimizer)
        return result

    if mixin is not None and hasattr(mixin, "should_skip_step"):
        original_should_skip = mixin.should_skip_step

        @functools.wraps(original_should_skip)
        def should_skip_step():
            skipped = original_should_skip()
            optimizer.step_was_skipped = bool(skipped)
            return skipped

        mixin.should_skip_step = should_skip_step
    optimizer.step = step
    optimizer._coati_hf_tracks_skips = True


def _mixin(optimizer):
    # LowLevelZero calls it mixed_precision_mixin, Gemini mix_precision_mixin
    return getattr(optimizer, "mixed_precision_mixin", None) or getattr(optimizer, "mix_precision_mixin", None)


def _mixin_checks_overflow(mixin) -> bool:
    if mixin is None:
        return False
    from colossalai.amp.naive_amp.mixed_precision_mixin import FP16MixedPrecisionMixin

    return isinstance(mixin, FP16MixedPrecisionMixin) or getattr(mixin, "checks_overflow", False)


def _after_skipped_gemini_step(optimizer) -> None:
    """Gemini's skipped step leaves gradient accumulation switched on (only a taken step resets it),
    so the next backward would add onto the non-finite gradients and every later step would be
    skipped as well. Reset it as a taken step does."""
    chunk_manager = getattr(getattr(optimizer, "module", None), "chunk_manager", None)
    if chunk_manager is not None and hasattr(chunk_manager, "accumulating_grads"):
        chunk_manager.accumulating_grads = False


# ---- ZeRO (LowLevelZeroOptimizer) -------------------------------------------------------------------


def loss_scale(optimizer) -> float:
    """The dynamic loss scale the gradients are multiplied by (1.0 without one). Read without
    touching the mixin's state (its ``get_grad_div_scale()`` marks the gradients unscaled, which
    would make the optimizer's own step fail)."""
    mixin = _mixin(optimizer)
    scale = getattr(mixin, "loss_scale", None)
    return float(scale) if scale is not None else 1.0


def zero_grad_norm(optimizer) -> float:
    """Global 2-norm of the gradients held (sharded) by a ``LowLevelZeroOptimizer``.

    The same computation ``LowLevelZeroOptimizer.step`` does before clipping: each rank's shard
    norms, summed over the data-parallel group, divided by the fp16 loss scale. Collective: every
    rank must call it.
    """
    from colossalai.zero.low_level._utils import calculate_global_norm_from_list

    norms = []
    for group_id in range(optimizer.num_param_groups):
        norm = 0.0
        for store in optimizer.pg_to_grad_store.values():
            norm += optimizer._compute_grad_norm(dp_pg=store.torch_pg, gradients=store.get_working_grads_by_group_id(group_id))
        norms.append(norm)
    return calculate_global_norm_from_list(norm_list=norms) / loss_scale(optimizer)


# ---- Gemini (GeminiOptimizer) -----------------------------------------------------------------------


def gemini_grad_norm(optimizer) -> float | None:
    """Global 2-norm of Gemini's reduced gradients, or ``None`` where Gemini did not measure it.

    Gemini records each gradient chunk's squared norm while reducing it, but only when it clips
    (plugin ``max_norm > 0``). This is ``GeminiOptimizer._calc_global_norm`` without its side effect
    (it clears the recorded norms, which its own step still needs), divided by the fp16 loss scale.
    Collective when chunks are sharded: every rank must call it.
    """
    if not getattr(optimizer, "clipping_flag", False):
        return None
    import torch.distributed as dist
    from colossalai.accelerator import get_accelerator

    reuse = optimizer.module.chunk_manager.reuse_fp16_chunk
    gathered, sharded, missing = 0.0, {}, False
    for chunk in optimizer.chunk16_set:
        grad_chunk = chunk if reuse else chunk.grad_chunk
        if grad_chunk is None or grad_chunk.l2_norm is None:
            missing = True
            continue
        if grad_chunk.is_gathered:
            gathered += grad_chunk.l2_norm
        else:
            sharded[grad_chunk.torch_pg] = sharded.get(grad_chunk.torch_pg, 0.0) + grad_chunk.l2_norm
    buffer = torch.zeros(1, dtype=torch.float, device=get_accelerator().get_current_device())
    for group, part in sharded.items():
        buffer.fill_(part)
        dist.all_reduce(buffer, group=group)
        gathered += buffer.item()
    if missing:
        return None
    return math.sqrt(gathered) / loss_scale(optimizer)


def gemini_found_overflow(optimizer) -> bool:
    """Whether any rank's reduced Gemini gradients hold inf/NaN since the last step (Gemini counts
    the chunks in ``chunk_manager.overflow_counter`` for every precision). Collective."""
    import torch.distributed as dist

    counter = optimizer.module.chunk_manager.overflow_counter
    flag = (counter > 0).float().reshape(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def install_gemini_overflow_check(optimizer) -> None:
    """Make a bf16 ``GeminiOptimizer`` skip steps whose gradients are not finite, as fp16 Gemini does.

    Gemini's bf16 mixin never skips, so a NaN/inf gradient would reach the weights. The
    replacement keeps bf16's behaviour (no loss scaling) and adds fp16 Gemini's overflow
    protocol: ``should_skip_step()`` reports an overflow found on any rank, and ``pre_zero_grad()``
    resets the counter. Gemini's own ``step()`` then does the skipping. fp16 is left as it is.
    """
    from colossalai.amp.naive_amp.mixed_precision_mixin import BF16MixedPrecisionMixin

    mixin = getattr(optimizer, "mix_precision_mixin", None)
    if type(mixin) is BF16MixedPrecisionMixin:
        optimizer.mix_precision_mixin = _gemini_bf16_overflow_mixin_class()(optimizer)


@functools.cache
def _gemini_bf16_overflow_mixin_class():
    from colossalai.amp.naive_amp.mixed_precision_mixin import BF16MixedPrecisionMixin

    class GeminiBF16OverflowMixin(BF16MixedPrecisionMixin):
        """bf16 (no loss scaling) with fp16 Gemini's overflow check."""

        checks_overflow = True

        def __init__(self, optimizer):
            super().__init__()
            self.optimizer = optimizer

        def should_skip_step(self) -> bool:
            return gemini_found_overflow(self.optimizer)

        def pre_zero_grad(self) -> None:
            self.optimizer.module.chunk_manager.overflow_counter.zero_()

    return GeminiBF16OverflowMixin

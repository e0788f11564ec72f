"""Guards against non-finite numbers: a NaN in the weights must stop training, never be saved.

Silent wrong numbers are worse than crashes. :func:`check_finite_weights` is called by the PPO
trainer after every update (on the trainable parameters: only they can change) and before any
checkpoint or export is written (on every parameter), so a NaN or inf never reaches a file.
"""

from __future__ import annotations

import torch

__all__ = ["NonFiniteWeightsError", "check_finite_weights", "first_non_finite"]


class NonFiniteWeightsError(RuntimeError):
    """A model holds NaN or inf weights; nothing was written."""


def first_non_finite(named_tensors) -> tuple[str, str] | None:
    """``(name, "nan" | "inf")`` of the first tensor holding a non-finite value, or None."""
    for name, tensor in named_tensors:
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        data = tensor.detach()
        if not torch.isfinite(data).all():
            return name, "nan" if torch.isnan(data).any() else "inf"
    return None


def check_finite_weights(model, where: str, *, trainable_only: bool = False, state_dict: dict | None = None) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``where`` (e.g. "update 12", "checkpoint-30")
    and the first bad parameter if ``model`` (or ``state_dict``) holds a NaN or inf."""
    if state_dict is not None:
        named = list(state_dict.items())
    else:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad or not trainable_only]
    floating = [tensor.detach() for _, tensor in named if torch.is_tensor(tensor) and tensor.is_floating_point()]
    # One sum per tensor is the cheap test (NaN and inf survive a sum); names are looked up only on failure.
    if not floating or bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in floating])).all()):
        return
    found = first_non_finite(named)
    if found is not None:
        name, kind = found
        raise NonFiniteWeightsError(
            f"{where}: parameter {name!r} holds {kind} values, so training stopped and nothing was saved. "
            "Look at the last logged losses and ppo/skipped_* counts; lower the learning rate, clip the reward "
            "(score_clip) or check the reward model's outputs."
        )

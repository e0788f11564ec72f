"""Which torch optimizer actually steps under ColossalAI, and the HybridAdam swap that keeps schedules alive.

ColossalAI wraps the optimizer it is given (``LowLevelZeroOptimizer``, ``GeminiOptimizer``,
``OptimizerWrapper`` -- all of them step ``self.optim``), and ``zero2_cpu``/Gemini first replace a
torch ``Adam``/``AdamW`` with colossalai's ``HybridAdam`` (:func:`to_hybrid_adam`; Gemini accepts
nothing else, ``zero2_cpu`` steps offloaded states with its CPU kernel).

A learning-rate scheduler writes ``group["lr"]`` into its optimizer's ``param_groups`` and the
optimizer that steps reads it from its own. A scheduler built on the AdamW before ``prepare``
(PPO, a user's ``optimizers=(opt, sched)``, a hand-written loop that never prepares its
scheduler) would drive an optimizer that never steps: the rate would stay at its first value --
0 with warm-up, so nothing would train while the logged ``lr`` looked normal. The swap therefore
builds the HybridAdam over the *same* param-group dicts (``Optimizer.add_param_group`` keeps the
dict it is given; LowLevelZero and Gemini keep stepping those dicts, they only replace
``group["params"]``), and the replaced optimizer's ``param_groups`` becomes the same list: a
scheduler built on either optimizer drives the one that steps. A step of the new optimizer marks
the replaced one as stepped, so torch's "``lr_scheduler.step()`` before ``optimizer.step()``"
check sees the truth. Loading an optimizer state gives the stepping optimizer new group dicts
(torch's ``load_state_dict``, Gemini's ``load_param_groups``): :func:`rebind_replaced_optimizer`
shares them again (``ColossalAIAccelerator.load_optimizer`` calls it).
"""

from __future__ import annotations

import logging
import types

import torch

logger = logging.getLogger(__name__)

REPLACED_ATTRIBUTE = "_coati_hf_replaced_optimizer"


def inner_optimizer(optimizer):
    """The torch optimizer inside a boosted (or Accelerate-wrapped) optimizer."""
    from colossalai.interface import OptimizerWrapper

    while True:
        if isinstance(optimizer, OptimizerWrapper):
            optimizer = optimizer.optim
        elif hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer
        else:
            return optimizer


def to_hybrid_adam(optimizer):
    """Replace a torch ``Adam``/``AdamW`` with colossalai's ``HybridAdam`` over the same param groups.

    The HybridAdam holds the very group dicts of ``optimizer`` (same parameters, rates and
    hyper-parameters), and ``optimizer.param_groups`` becomes the HybridAdam's list, so a
    learning-rate scheduler built on ``optimizer`` keeps driving the optimizer that steps.
    Anything that is not Adam(W) is returned unchanged. Refuses an optimizer that already holds
    state (moments would be lost silently) and AMSGrad (HybridAdam has no AMSGrad).
    """
    from colossalai.nn import optimizer as colossal_optimizers

    hybrid_adam = colossal_optimizers.HybridAdam  # looked up at call time
    if isinstance(optimizer, (hybrid_adam, colossal_optimizers.CPUAdam, colossal_optimizers.FusedAdam)):
        return optimizer
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        logger.warning("Keeping optimizer %s (only Adam/AdamW are swapped for HybridAdam)", type(optimizer).__name__)
        return optimizer
    if any(optimizer.state.values()):
        raise ValueError(
            "This Adam/AdamW already holds state (it has stepped or a state was loaded into it); ColossalAI's "
            "HybridAdam swap would drop it. Prepare the optimizer before stepping it or loading its state."
        )
    if any(group.get("amsgrad") for group in optimizer.param_groups):
        raise ValueError("HybridAdam (used by zero2_cpu and Gemini) has no AMSGrad: create the optimizer with amsgrad=False")
    defaults = optimizer.defaults
    hybrid = hybrid_adam(
        optimizer.param_groups,  # the same dicts: torch's add_param_group keeps each dict it is given
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=isinstance(optimizer, torch.optim.AdamW) or bool(defaults.get("decoupled_weight_decay")),
    )
    _mark_replaced_when_stepping(hybrid, optimizer)
    rebind_replaced_optimizer(hybrid, optimizer)
    setattr(hybrid, REPLACED_ATTRIBUTE, optimizer)
    return hybrid


def rebind_replaced_optimizer(stepping, replaced=None) -> None:
    """Share ``stepping``'s param groups with the optimizer it replaced (again, after a state load
    gave ``stepping`` new group dicts). ``replaced=None``: the one recorded by :func:`to_hybrid_adam`."""
    replaced = replaced if replaced is not None else getattr(stepping, REPLACED_ATTRIBUTE, None)
    if replaced is not None and replaced is not stepping:
        replaced.param_groups = stepping.param_groups


def _mark_replaced_when_stepping(stepping, replaced) -> None:
    """Each ``stepping.step()`` also marks ``replaced`` as stepped (torch's LRScheduler checks the
    flag on the optimizer it was built on). ``step`` stays a bound method, so a scheduler built on
    ``stepping`` can wrap it as usual."""
    original = stepping.step

    def step(self, *args, **kwargs):
        replaced._opt_called = True
        return original(*args, **kwargs)

    stepping.step = types.MethodType(step, stepping)

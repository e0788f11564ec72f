r"""Gated (SwiGLU) MLPs that keep one activation fewer for backward, with the same numbers.

A SwiGLU MLP computes ``down(silu(gate(x)) * up(x))``. Under plain autograd its backward keeps
three ``(tokens, intermediate)`` tensors: ``g = gate(x)`` for the SiLU, and ``s = silu(g)`` and
``u = up(x)`` for the product. The product's backward needs ``s`` only to scale the incoming
gradient, and ``s`` is one cheap elementwise op away from ``g``:

    d/du [s * u] = s            (recomputed as silu(g))
    d/dg [s * u] = u * silu'(g) (aten.silu_backward, as autograd itself computes it)

:class:`SiLUMul` keeps ``g`` and ``u`` only. For SmolLM2-135M at 8 x 91 tokens that is 134 MiB
less per backbone whose MLPs are in the graph (a third of the MLP's saved activations, about a
fifth of all of them). Forward values are the same operations in the same order, and the
gradients come from the same kernels, so both are bitwise equal to plain autograd's (tested).

:func:`lean_gated_mlps` swaps the forward of every such MLP in a model for the duration of a
block (the PPO update's forward), after checking on a probe input that the swap computes
exactly what the module's own forward does; modules that differ are left alone.
"""

from __future__ import annotations

import types
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SiLUMul", "lean_gated_mlps"]


class SiLUMul(torch.autograd.Function):
    """``silu(gate) * up`` saving ``gate`` and ``up`` (not ``silu(gate)``) for backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiLUMul.apply(self.gate_proj(x), self.up_proj(x)))


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Module) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> _computes_the_same


def _computes_the_same(module: nn.Module) -> bool:
    """Whether the lean forward gives exactly the module's own output on a probe input (checked
    once per module)."""
    if module not in _VERDICTS:
        _VERDICTS[module] = _probe(module)
    return _VERDICTS[module]


def _probe(module: nn.Module) -> bool:
    weight = next((p for p in module.gate_proj.parameters() if p.dim() == 2), None)
    if weight is None or weight.is_meta or type(weight) is not nn.Parameter:  # sharded or chunk-managed weights
        return False
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[1], generator=generator).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        try:
            return torch.equal(module(probe), _lean_forward(module, probe))
        except Exception:  # noqa: BLE001 -- any failure means "not the MLP this was written for"
            return False


@contextmanager
def lean_gated_mlps(*models: nn.Module | None):
    """Within the block, every SwiGLU MLP of ``models`` whose forward is exactly
    ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with a SiLU runs through :class:`SiLUMul`.
    Each module's own ``forward`` is restored on exit (tensors saved for backward stay valid).
    Yields the number of modules swapped."""
    swapped: list[tuple[nn.Module, object]] = []
    try:
        for model in models:
            if model is None:
                continue
            for module in model.modules():
                if not _is_gated_mlp(module) or not _computes_the_same(module):
                    continue
                swapped.append((module, module.__dict__.get("forward")))
                module.forward = types.MethodType(_lean_forward, module)
        yield len(swapped)
    finally:
        for module, forward in swapped:
            if forward is None:
                del module.forward
            else:
                module.forward = forward

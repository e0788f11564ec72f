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

:func:`lean_gated_mlps` swaps the forward of such MLPs for the duration of a block (the PPO
update's forward). Which modules: only those whose exact class is on :data:`SWIGLU_MLP_CLASSES`
(transformers classes whose ``forward`` has been read and is exactly
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, reading nothing else), whose ``act_fn`` is a SiLU
(``hidden_act`` "silu" or "swish"), and whose projections are plain-``Parameter`` modules (a bias
or a LoRA wrapper on them is fine: the lean forward calls the same projection modules). Decided
from the class and its attributes, never from a probe: a unit-scale probe does not reach the
``swiglu_limit`` clamps of DeepSeek-V4, GLM-5-next, Step-3.7 or Ling, which act only on inputs of
realistic size, so those classes are simply not on the list.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SWIGLU_MLP_CLASSES", "SiLUMul", "is_lean_swiglu", "lean_gated_mlps"]


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


def _classes(*paths: str) -> frozenset[str]:
    return frozenset(f"transformers.models.{path}" for path in paths)


# MLP classes, by module and name, whose forward (transformers 5.x, read line by line) is
# ``self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))`` and nothing else. Gemma's
# MLPs have that form with a GELU by default: the SiLU check below leaves them alone unless
# configured with one. Not listed on purpose: DeepseekV4MLP, Glm5NextTextMLP, Step3p7MLP,
# BailingHybridMLP (swiglu_limit clamps), and fused gate_up_proj MLPs (Phi-3, GLM-4), which have
# no separate gate_proj to call.
SWIGLU_MLP_CLASSES: frozenset[str] = _classes(
    "llama.modeling_llama.LlamaMLP",
    "mistral.modeling_mistral.MistralMLP",
    "qwen2.modeling_qwen2.Qwen2MLP",
    "qwen3.modeling_qwen3.Qwen3MLP",
    "qwen2_moe.modeling_qwen2_moe.Qwen2MoeMLP",
    "qwen3_moe.modeling_qwen3_moe.Qwen3MoeMLP",
    "gemma.modeling_gemma.GemmaMLP",
    "gemma2.modeling_gemma2.Gemma2MLP",
    "gemma3.modeling_gemma3.Gemma3MLP",
    "olmo2.modeling_olmo2.Olmo2MLP",
    "cohere.modeling_cohere.CohereMLP",
    "cohere2.modeling_cohere2.Cohere2MLP",
    "granite.modeling_granite.GraniteMLP",
    "smollm3.modeling_smollm3.SmolLM3MLP",
    "exaone4.modeling_exaone4.Exaone4MLP",
    "stablelm.modeling_stablelm.StableLmMLP",
    "deepseek_v3.modeling_deepseek_v3.DeepseekV3MLP",
)

_SILU_CLASSES = ("transformers.activations.SiLUActivation", "torch.nn.modules.activation.SiLU")


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def is_lean_swiglu(module: nn.Module) -> bool:
    """Whether :func:`lean_gated_mlps` swaps ``module``: an exact class of
    :data:`SWIGLU_MLP_CLASSES` running its own class's forward, a SiLU ``act_fn`` whose forward is
    its class's, plain-``Parameter`` projections, and no ``swiglu_limit`` set in its config."""
    cls = type(module)
    if _class_path(module) not in SWIGLU_MLP_CLASSES or "forward" in vars(module):
        return False
    if getattr(vars(cls).get("forward"), "__qualname__", None) != f"{cls.__qualname__}.forward":
        return False
    act_fn = getattr(module, "act_fn", None)
    if _class_path(act_fn) not in _SILU_CLASSES or "forward" in vars(act_fn):
        return False
    if getattr(getattr(module, "config", None), "swiglu_limit", None) is not None:
        return False
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(projection, nn.Module) for projection in projections):
        return False
    weight = next((p for p in module.gate_proj.parameters() if p.dim() == 2), None)
    return weight is not None and not weight.is_meta and type(weight) is nn.Parameter  # sharded, chunk-managed: no


@contextmanager
def lean_gated_mlps(*models: nn.Module | None):
    """Within the block, every SwiGLU MLP of ``models`` known to compute exactly
    ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (:func:`is_lean_swiglu`) runs through
    :class:`SiLUMul`. Each module's own ``forward`` is restored on exit (tensors saved for
    backward stay valid). Yields the number of modules swapped."""
    swapped: list[nn.Module] = []
    try:
        for model in models:
            for module in model.modules() if model is not None else ():
                if is_lean_swiglu(module):  # False for one already swapped (a module shared by two models)
                    module.forward = types.MethodType(_lean_forward, module)
                    swapped.append(module)
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward

r"""Response log-probs straight from the last hidden states, without keeping the logits.

The policy's log-probs need the logits only at the response positions, and only long enough to
reduce them to one number per token. With ``x_t = W h_t + b`` (W: the frozen LM head) and the
model's own transform of the head's output (``c``: a soft-cap, ``s``: a scale, T: the
temperature):

    logits_t   = c tanh(s x_t / c) / T              (no soft-cap: s x_t / T)
    logprob_t  = logits_t[a_t] - logsumexp(logits_t)
    d logprob_t / d x_t = (onehot(a_t) - softmax(logits_t)) * s (1 - tanh^2(s x_t / c)) / T
    d logprob_t / d h_t = W^T d logprob_t / d x_t

Through plain autograd the (rows, positions, vocabulary) log-softmax is kept for backward, and
backward allocates two more tensors of that size while every layer's activations are still alive:
for SmolLM2 (49,152 tokens) at 8 x 32 positions that is ~150 MiB on top of the update's peak.
:class:`HeadLogprobs` keeps the hidden states only and recomputes the logits in backward (one
more LM-head matmul), a slice of the vocabulary at a time with a streaming log-sum-exp, so no pass
ever holds more than one slice's logits. The entropy (logged, never differentiated) is computed
from the same slices in the forward pass.

The forward is one and the same computation with or without gradients, so the rollout's log-probs
and the update's are bitwise equal (the first PPO ratio is exactly 1).

Which models: :func:`separable_lm_head` takes this path only for causal-LM classes whose
``forward`` has been read and is known to compute ``logits = lm_head(backbone(...))`` followed by
nothing, or by a transform :class:`LogitTransform` reproduces (:data:`HEAD_THEN`): Gemma-2 and
Gemma-3 soft-cap with ``config.final_logit_softcapping``, Cohere and Cohere-2 multiply by
``logit_scale``, Granite divides by ``config.logits_scaling``. The decision is made from the
exact class and the current config at every call, never from a probe (a probe on small logits
cannot see a soft-cap: ``c tanh(x / c) ~ x`` there). Any other class, a subclass, an instance
whose ``forward`` was replaced, a trainable or sharded head: the caller uses the model's own
forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEAD_THEN", "HeadLogprobs", "LogitTransform", "logit_transform", "separable_lm_head"]


VOCAB_CHUNK = 8192  # LM-head rows per step: every pass reads the head's weight once, in slices


@dataclass(frozen=True)
class LogitTransform:
    """What a causal LM applies to its head's output ``x`` before returning the logits:
    ``softcap * tanh(scale * x / softcap)``, or ``scale * x`` when ``softcap`` is None."""

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The transformed ``raw`` head output, and ``d out / d raw`` divided by ``scale``
        (``1 - tanh^2``; None when it is 1), in the model's own order of operations."""
        logits = raw * self.scale if self.scale != 1.0 else raw
        if self.softcap is None:
            return logits, None
        squashed = torch.tanh(logits / self.softcap)
        return squashed * self.softcap, 1.0 - squashed * squashed


PLAIN = LogitTransform()


def _chunk_logits(hidden, weight, bias, start, temperature, transform=PLAIN):
    """Logits of vocabulary entries ``[start, start + VOCAB_CHUNK)``, float32, transformed and
    over temperature; and the soft-cap's slope there (see :meth:`LogitTransform.apply`)."""
    stop = min(start + VOCAB_CHUNK, weight.shape[0])
    raw = F.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop]).float()
    logits, slope = transform.apply(raw)
    return (logits / temperature if temperature != 1.0 else logits), slope


def _labels_in_slice(labels, start, width):
    """Which ``labels`` fall in the vocabulary slice ``[start, start + width)``, and their column
    in it (clamped into range where they do not, for a gather or scatter that is then masked)."""
    inside = (labels >= start) & (labels < start + width)
    return inside, (labels - start).clamp(0, width - 1).unsqueeze(-1)


class HeadLogprobs(torch.autograd.Function):
    """``(logprobs, entropy)`` of ``labels`` (B, R) from ``hidden`` (B, R, H), a frozen linear
    head (``weight`` (V, H), ``bias``) and the model's :class:`LogitTransform` of its output;
    differentiable in ``hidden`` only (the entropy is not differentiable). The vocabulary is
    visited in slices of ``VOCAB_CHUNK`` with a running maximum (the streaming log-sum-exp), so
    no (B, R, V) tensor is ever allocated."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, transform=PLAIN):
        shape = hidden.shape[:-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = labels.reshape(-1)
        running_max = torch.full((flat.shape[0],), float("-inf"), device=flat.device)
        exp_sum = torch.zeros(flat.shape[0], device=flat.device)  # sum exp(l - max)
        weighted_sum = torch.zeros(flat.shape[0], device=flat.device)  # sum exp(l - max) * l
        label_logit = torch.zeros(flat.shape[0], device=flat.device)
        for start in range(0, weight.shape[0], VOCAB_CHUNK):
            logits, _ = _chunk_logits(flat, weight, bias, start, temperature, transform)
            new_max = torch.maximum(running_max, logits.max(dim=-1).values)
            rescale = torch.exp(running_max - new_max)
            exps = torch.exp(logits - new_max.unsqueeze(-1))
            exp_sum = exp_sum * rescale + exps.sum(dim=-1)
            weighted_sum = weighted_sum * rescale + (exps * logits).sum(dim=-1)
            running_max = new_max
            inside, index = _labels_in_slice(flat_labels, start, logits.shape[-1])
            label_logit = torch.where(inside, logits.gather(-1, index).squeeze(-1), label_logit)
        normaliser = running_max + torch.log(exp_sum)
        logprobs = (label_logit - normaliser).reshape(shape)
        entropy = (normaliser - weighted_sum / exp_sum).reshape(shape)
        ctx.save_for_backward(hidden, labels, normaliser)
        ctx.head = (weight, bias, temperature, transform)
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        hidden, labels, normaliser = ctx.saved_tensors
        weight, bias, temperature, transform = ctx.head
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = labels.reshape(-1)
        grad = grad_logprobs.reshape(-1, 1).float()
        grad_hidden = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        factor = transform.scale / temperature  # d logits / d (scaled, soft-capped head output)
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for start in range(0, weight.shape[0], VOCAB_CHUNK):
                logits, slope = _chunk_logits(flat, weight, bias, start, temperature, transform)
                # d logprob / d logits = onehot(label) - softmax; times the incoming gradient
                grad_logits = torch.exp(logits - normaliser.unsqueeze(-1)).mul_(-grad)
                inside, index = _labels_in_slice(flat_labels, start, logits.shape[-1])
                grad_logits.scatter_add_(-1, index, grad * inside.unsqueeze(-1))
                if slope is not None:
                    grad_logits = grad_logits * slope
                if factor != 1.0:
                    grad_logits = grad_logits * factor
                stop = start + logits.shape[-1]
                grad_hidden += (grad_logits.to(weight.dtype) @ weight[start:stop]).float()
        return grad_hidden.to(hidden.dtype).reshape(hidden.shape), None, None, None, None, None


def _autocast_state(device_type: str):
    if device_type not in ("cuda", "cpu", "xpu"):
        return device_type, False, None
    enabled = torch.is_autocast_enabled(device_type)
    return device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None


def _classes(*paths: str) -> list[str]:
    return [f"transformers.models.{path}" for path in paths]


# Causal-LM classes, by module and name, whose forward (transformers 5.x, read line by line) is
# ``hidden = self.<base_model_prefix>(...).last_hidden_state; logits = self.lm_head(hidden)`` and then
# applies exactly the config fields listed (in this order), nothing else. OPT calls
# ``self.model.decoder``, which is what ``self.model`` returns.
HEAD_THEN: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        _classes(
            "llama.modeling_llama.LlamaForCausalLM",
            "mistral.modeling_mistral.MistralForCausalLM",
            "qwen2.modeling_qwen2.Qwen2ForCausalLM",
            "qwen3.modeling_qwen3.Qwen3ForCausalLM",
            "qwen2_moe.modeling_qwen2_moe.Qwen2MoeForCausalLM",
            "qwen3_moe.modeling_qwen3_moe.Qwen3MoeForCausalLM",
            "mixtral.modeling_mixtral.MixtralForCausalLM",
            "gemma.modeling_gemma.GemmaForCausalLM",
            "phi3.modeling_phi3.Phi3ForCausalLM",
            "olmo2.modeling_olmo2.Olmo2ForCausalLM",
            "smollm3.modeling_smollm3.SmolLM3ForCausalLM",
            "glm4.modeling_glm4.Glm4ForCausalLM",
            "exaone4.modeling_exaone4.Exaone4ForCausalLM",
            "stablelm.modeling_stablelm.StableLmForCausalLM",
            "starcoder2.modeling_starcoder2.Starcoder2ForCausalLM",
            "gpt2.modeling_gpt2.GPT2LMHeadModel",
            "gpt_neox.modeling_gpt_neox.GPTNeoXForCausalLM",
            "opt.modeling_opt.OPTForCausalLM",
            "falcon.modeling_falcon.FalconForCausalLM",
            "deepseek_v3.modeling_deepseek_v3.DeepseekV3ForCausalLM",
            "deepseek_v4.modeling_deepseek_v4.DeepseekV4ForCausalLM",
        ),
        (),
    ),
    **dict.fromkeys(
        _classes("gemma2.modeling_gemma2.Gemma2ForCausalLM", "gemma3.modeling_gemma3.Gemma3ForCausalLM"),
        ("final_logit_softcapping",),  # if set: logits = c * tanh(logits / c)
    ),
    **dict.fromkeys(
        _classes("cohere.modeling_cohere.CohereForCausalLM", "cohere2.modeling_cohere2.Cohere2ForCausalLM"),
        ("logit_scale",),  # logits = logits * self.logit_scale (copied from the config at init)
    ),
    **dict.fromkeys(_classes("granite.modeling_granite.GraniteForCausalLM"), ("logits_scaling",)),  # logits / s
}

# Post-head fields some family applies: a config that sets one its class does not apply is not
# the config the class was read with, so it gets the model's own forward too.
_NEUTRAL = {"final_logit_softcapping": (None, 0), "logit_scale": (None, 1), "logits_scaling": (None, 1),
            "output_multiplier": (None, 1)}  # fmt: skip


def logit_transform(base: nn.Module) -> LogitTransform | None:
    """The :class:`LogitTransform` between ``base``'s LM head and its logits, read from its
    exact class (:data:`HEAD_THEN`) and its current config; None when it is not known (or the
    model's own forward would divide by zero: the fast path must not give numbers it does not)."""
    cls = type(base)
    applied = HEAD_THEN.get(f"{cls.__module__}.{cls.__qualname__}")
    own_forward = getattr(vars(cls).get("forward"), "__qualname__", None)
    if applied is None or "forward" in vars(base) or own_forward != f"{cls.__qualname__}.forward":
        return None
    config = getattr(base, "config", None)
    for name, neutral in _NEUTRAL.items():
        if name not in applied and getattr(config, name, None) not in neutral:
            return None
    scale, softcap = 1.0, None
    if "final_logit_softcapping" in applied and getattr(config, "final_logit_softcapping", None) is not None:
        softcap = float(config.final_logit_softcapping)
    if "logit_scale" in applied:
        scale = float(base.logit_scale)
    if "logits_scaling" in applied:
        divisor = float(config.logits_scaling)
        scale = 1.0 / divisor if divisor != 0 else math.inf
    if not math.isfinite(scale) or (softcap is not None and not (math.isfinite(softcap) and softcap > 0)):
        return None
    return LogitTransform(scale=scale, softcap=softcap)


def separable_lm_head(model, base: nn.Module) -> tuple[nn.Module, nn.Linear, LogitTransform] | None:
    """``(backbone, lm_head, transform)`` of the causal LM ``model`` (``base``: its
    peft-unwrapped module) when its logits are exactly
    ``transform(lm_head(backbone(...).last_hidden_state))`` with a frozen linear head, as
    known from its class and config (:func:`logit_transform`); None otherwise."""
    transform = logit_transform(base)
    if transform is None:
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(backbone, nn.Module) or type(head) is not nn.Linear or head.weight.requires_grad:
        return None
    if type(head.weight) is not nn.Parameter:  # sharded or chunk-managed (Gemini, FSDP): read only in hooks
        return None
    if head.bias is not None and head.bias.requires_grad:
        return None
    return backbone, head, transform

r"""Response log-probs straight from the last hidden states, without keeping the logits.

The policy's log-probs need the logits only at the response positions, and only long enough to
reduce them to one number per token:

    logits_t   = W h_t / T                          (W: the frozen LM head, T: the temperature)
    logprob_t  = logits_t[a_t] - logsumexp(logits_t)
    d logprob_t / d h_t = W^T (onehot(a_t) - softmax(logits_t)) / T

Through plain autograd the (rows, positions, vocabulary) log-softmax is kept for backward, and
backward allocates two more tensors of that size while every layer's activations are still alive:
for SmolLM2 (49,152 tokens) at 8 x 32 positions that is ~150 MiB on top of the update's peak.
:class:`HeadLogprobs` keeps the hidden states only and recomputes the logits in backward (one
more LM-head matmul), a slice of the vocabulary at a time with a streaming log-sum-exp, so no pass
ever holds more than one slice's logits. The entropy (logged, never differentiated) is computed
from the same slices in the forward pass.

The forward is one and the same computation with or without gradients, so the rollout's log-probs
and the update's are bitwise equal (the first PPO ratio is exactly 1). :func:`separable_lm_head`
decides, once per model, whether a causal LM's logits really are ``lm_head(hidden)`` (no
soft-capping or logit scaling after the head, a frozen linear head); otherwise the caller uses
the model's own forward.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadLogprobs", "separable_lm_head"]


VOCAB_CHUNK = 8192  # LM-head rows per step: every pass reads the head's weight once, in slices


def _chunk_logits(hidden, weight, bias, start, temperature):
    """Logits of vocabulary entries ``[start, start + VOCAB_CHUNK)``, float32, over temperature."""
    stop = min(start + VOCAB_CHUNK, weight.shape[0])
    logits = F.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop]).float()
    return logits / temperature if temperature != 1.0 else logits


def _labels_in_slice(labels, start, width):
    """Which ``labels`` fall in the vocabulary slice ``[start, start + width)``, and their column
    in it (clamped into range where they do not, for a gather or scatter that is then masked)."""
    inside = (labels >= start) & (labels < start + width)
    return inside, (labels - start).clamp(0, width - 1).unsqueeze(-1)


class HeadLogprobs(torch.autograd.Function):
    """``(logprobs, entropy)`` of ``labels`` (B, R) from ``hidden`` (B, R, H) and a frozen linear
    head (``weight`` (V, H), ``bias``); differentiable in ``hidden`` only (the entropy is not
    differentiable). The vocabulary is visited in slices of ``VOCAB_CHUNK`` with a running
    maximum (the streaming log-sum-exp), so no (B, R, V) tensor is ever allocated."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature):
        shape = hidden.shape[:-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = labels.reshape(-1)
        running_max = torch.full((flat.shape[0],), float("-inf"), device=flat.device)
        exp_sum = torch.zeros(flat.shape[0], device=flat.device)  # sum exp(l - max)
        weighted_sum = torch.zeros(flat.shape[0], device=flat.device)  # sum exp(l - max) * l
        label_logit = torch.zeros(flat.shape[0], device=flat.device)
        for start in range(0, weight.shape[0], VOCAB_CHUNK):
            logits = _chunk_logits(flat, weight, bias, start, temperature)
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
        ctx.head = (weight, bias, temperature)
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        hidden, labels, normaliser = ctx.saved_tensors
        weight, bias, temperature = ctx.head
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = labels.reshape(-1)
        grad = grad_logprobs.reshape(-1, 1).float()
        grad_hidden = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for start in range(0, weight.shape[0], VOCAB_CHUNK):
                logits = _chunk_logits(flat, weight, bias, start, temperature)
                # d logprob / d logits = onehot(label) - softmax; times the incoming gradient
                grad_logits = torch.exp(logits - normaliser.unsqueeze(-1)).mul_(-grad)
                inside, index = _labels_in_slice(flat_labels, start, logits.shape[-1])
                grad_logits.scatter_add_(-1, index, grad * inside.unsqueeze(-1))
                if temperature != 1.0:
                    grad_logits = grad_logits / temperature
                stop = start + logits.shape[-1]
                grad_hidden += (grad_logits.to(weight.dtype) @ weight[start:stop]).float()
        return grad_hidden.to(hidden.dtype).reshape(hidden.shape), None, None, None, None


def _autocast_state(device_type: str):
    if device_type not in ("cuda", "cpu", "xpu"):
        return device_type, False, None
    enabled = torch.is_autocast_enabled(device_type)
    return device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None


_SEPARABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # causal LM -> bool


def separable_lm_head(model, base: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """``(backbone, lm_head)`` of the causal LM ``model`` (``base``: its peft-unwrapped module)
    when its logits are exactly ``lm_head(backbone(...).last_hidden_state)`` with a frozen linear
    head, checked once per model on a probe; None otherwise."""
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(backbone, nn.Module) or type(head) is not nn.Linear or head.weight.requires_grad:
        return None
    if type(head.weight) is not nn.Parameter:  # sharded or chunk-managed (Gemini, FSDP): read only in hooks
        return None
    if head.bias is not None and head.bias.requires_grad:
        return None
    if model not in _SEPARABLE:
        _SEPARABLE[model] = _logits_come_from_the_head(model, backbone, head)
    return (backbone, head) if _SEPARABLE[model] else None


def _logits_come_from_the_head(model, backbone, head) -> bool:
    device = head.weight.device
    probe = torch.arange(4, device=device).unsqueeze(0) % head.weight.shape[0]
    mask = torch.ones_like(probe)
    try:
        with torch.no_grad():
            own = model(input_ids=probe, attention_mask=mask, use_cache=False).logits.float()
            ours = head(backbone(input_ids=probe, attention_mask=mask, use_cache=False).last_hidden_state).float()
    except Exception:  # noqa: BLE001 -- any failure means "use the model's own forward"
        return False
    scale = own.abs().max().clamp_min(1.0)
    return own.shape == ours.shape and bool(((own - ours).abs().max() / scale) < 1e-3)

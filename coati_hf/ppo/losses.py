r"""PPO losses, the PTX mix, Coati's ratio guard, and log-probs / entropy from logits.

Clipped surrogate policy loss (Schulman et al. 2017), per action token ``t``::

    ratio_t = exp(clamp(logp_t - old_logp_t, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    l_t     = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))

Aggregation (``reduction``):

- ``"token"`` (default, TRL): mean of ``l_t`` over every action token of the batch, so long
  responses weigh more.
- ``"sequence"`` (Coati): mean over each sequence's action tokens, then mean over sequences.

Statistics returned with it (all over action tokens only)::

    clipfrac   = mean[ -A*clip(ratio) > -A*ratio ]   (the clipped branch is active)
    approx_kl  = 0.5 * mean((logp - old_logp)^2)     (TRL's; TRL also averages over padding,
                                                      which only dilutes it: we do not)
    ratio_mean = mean(ratio)

Clipped value loss (as TRL and Coati), with ``R`` the returns and ``eps_v`` ``cliprange_value``::

    v_clip = clip(v, old_v - eps_v, old_v + eps_v)
    L_V    = 0.5 * mean_t max((v - R)^2, (v_clip - R)^2)      (token mean over the batch)
    vf_clipfrac = mean[ (v_clip - R)^2 > (v - R)^2 ]

PTX (InstructGPT's pretraining mix, Coati's ``ptx_coef``)::

    actor_loss = (1 - ptx_coef) * policy_loss + ptx_coef * ptx_lm_loss

The log-ratio is clamped to ``±LOG_RATIO_LIMIT`` (20: a ratio of 4.9e8) before ``exp`` so that
a runaway token cannot turn the loss, and through ``0 * inf`` its gradient, into inf/NaN; a
healthy update never comes near the limit (Coati clamps the ratio itself to [0, 10]; verl
clamps the log-ratio to ±20 as here). A token beyond the limit passes no gradient.

Coati's ratio guard skips a minibatch update whose mean ratio exceeds ``ratio_guard`` (20 by
default), or is not finite: it signals that the policy has moved far from the one that
sampled the data.

Log-probs use logits divided by the sampling temperature (TRL's convention: the log-probs are
those of the distribution that was actually sampled from):
``logp(a | s) = log_softmax(logits / T)[a]``. They are computed a few rows at a time so that no
full ``(batch, length, vocab)`` float32 copy is made. Entropy per position:
``H = logsumexp(z) - sum softmax(z) * z`` with ``z = logits / T``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .advantages import masked_mean

LOG_RATIO_LIMIT = 20.0
__all__ = [
    "LOG_RATIO_LIMIT",
    "policy_loss",
    "value_loss",
    "mix_ptx_loss",
    "ratio_guard_exceeded",
    "logprobs_from_logits",
    "entropy_from_logits",
    "masked_entropy",
]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    cliprange: float = 0.2,
    reduction: Literal["token", "sequence"] = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss and its statistics (``clipfrac``, ``approx_kl``, ``ratio_mean``).

    All inputs are ``(batch, T)``; ``old_logprobs`` and ``advantages`` are treated as constants.
    """
    mask = action_mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.max(unclipped, clipped)
    if reduction == "token":
        loss = masked_mean(per_token, mask)
    elif reduction == "sequence":
        per_sequence = masked_mean(per_token, mask, dim=-1)
        has_tokens = mask.any(dim=-1)
        loss = per_sequence[has_tokens].mean() if has_tokens.any() else per_sequence.sum() * 0.0
    else:
        raise ValueError(f"reduction must be 'token' or 'sequence', got {reduction!r}")
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio.float() ** 2, mask),
            "ratio_mean": masked_mean(ratio.float(), mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    action_mask: torch.Tensor,
    cliprange_value: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * masked_mean(max((v-R)^2, (v_clip-R)^2))`` and ``vf_clipfrac``.

    ``cliprange_value=None`` disables clipping (plain ``0.5 * masked_mean((v - R)^2)``).
    """
    mask = action_mask.bool()
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2
    if cliprange_value is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        clipfrac = torch.zeros((), device=values.device)
    else:
        v_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
        clipped = (v_clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
        with torch.no_grad():
            clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"vf_clipfrac": clipfrac.detach()}


def mix_ptx_loss(policy_loss: torch.Tensor, ptx_loss: torch.Tensor | None, ptx_coef: float) -> torch.Tensor:
    """``(1 - ptx_coef) * policy_loss + ptx_coef * ptx_loss``; just ``policy_loss`` when
    ``ptx_coef == 0`` (then ``ptx_loss`` may be None)."""
    if not 0.0 <= ptx_coef <= 1.0:
        raise ValueError(f"ptx_coef must be in [0, 1], got {ptx_coef}")
    if ptx_coef == 0.0:
        return policy_loss
    if ptx_loss is None:
        raise ValueError("ptx_coef > 0 needs a ptx_loss (the LM loss on a pretraining batch)")
    return (1.0 - ptx_coef) * policy_loss + ptx_coef * ptx_loss


def ratio_guard_exceeded(ratio_mean: torch.Tensor | float, ratio_guard: float | None) -> bool:
    """True when the update should be skipped: ``ratio_mean > ratio_guard`` or not finite.
    ``ratio_guard=None`` disables the guard (never skips)."""
    if ratio_guard is None:
        return False
    value = float(ratio_mean)
    return not math.isfinite(value) or value > ratio_guard


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = 8
) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` gathered at ``labels`` (``logits[..., i, :]`` scores
    ``labels[..., i]``), in float32, ``chunk_size`` rows at a time. Differentiable."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    flat_logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    flat_labels = labels.reshape(-1, labels.shape[-1])
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        index = flat_labels[start : start + chunk_size].unsqueeze(-1)
        out.append(chunk.gather(-1, index).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out, dim=0).reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = 8) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at every position, float32, chunked by rows."""
    flat = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        probs = torch.softmax(chunk, dim=-1)
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(dim=-1))
    return torch.cat(out, dim=0).reshape(logits.shape[:-1])


def masked_entropy(
    logits: torch.Tensor, action_mask: torch.Tensor, temperature: float = 1.0, chunk_size: int = 8
) -> torch.Tensor:
    """Mean per-token entropy over the action tokens."""
    return masked_mean(entropy_from_logits(logits, temperature, chunk_size), action_mask)

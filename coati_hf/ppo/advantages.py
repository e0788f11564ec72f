r"""Masked statistics, whitening, KL-shaped token rewards and GAE.

Every per-token tensor here has shape ``(batch, response_length)`` and comes with a boolean
``mask`` (the action mask) that is True on the tokens the policy chose. Positions outside the
mask are never read: they are selected away with ``torch.where`` (not multiplied by 0, so a
NaN or inf sitting on a padding position cannot leak in) and every output is 0 there.

Masked statistics (``M`` = the set of masked-in positions, ``n = |M|``)::

    masked_sum(x)  = sum_{i in M} x_i
    masked_mean(x) = masked_sum(x) / max(n, 1)                  (an empty mask gives 0)
    masked_var(x)  = masked_mean((x - mean)^2) * n / (n - 1)    (unbiased, Bessel; n = 1: no correction)
    masked_whiten(x) = (x - mean) / sqrt(var + eps)   [+ mean if shift_mean=False], 0 outside M

Reward shaping (Ziegler et al. 2019; Stiennon et al. 2020). With ``kl_t`` a per-token KL
estimate (see :mod:`coati_hf.ppo.kl`), ``beta`` the KL coefficient and ``s`` the sequence score::

    r_t = -beta * kl_t                         for every action token t
    r_T += s          placement="last_token"   (T = last action token: the stop token if any;
                                                TRL, DeepSpeed-Chat, OpenRLHF)
    r_t += s          placement="all_tokens"   (every action token; Coati v2)

``s`` is optionally clipped to ``[-score_clip, score_clip]`` first (Coati clips to ±5).

Generalised advantage estimation (Schulman et al. 2016), over the action positions only::

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                        (the value target, "returns")

where ``t + 1`` is the next *action* position of the same sequence; after the last action
there is no next state, so ``V_{T+1} = 0`` and ``A_{T+1} = 0`` (the episode ends with the
response: the score is the terminal reward). Values and rewards outside the mask never enter.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "shape_rewards",
    "last_true_index",
    "compute_gae",
]


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true (over everything, or along ``dim``)."""
    selected = torch.where(_bool(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true; 0 where the mask is empty."""
    mask = _bool(mask)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over the masked-in positions (all dimensions together).

    ``unbiased`` applies Bessel's correction ``n / (n - 1)`` (as TRL does); with a single
    masked-in value the correction is skipped (the variance is 0). An empty mask is an error.
    """
    mask = _bool(mask)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("masked_var: the mask selects no element (is the mini-batch empty?)")
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased and count > 1:
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean unless ``shift_mean=False``) using
    statistics of the masked-in positions only; positions outside the mask are 0 afterwards."""
    mask = _bool(mask)
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True along the last dimension of ``mask``; -1 for rows with none."""
    mask = _bool(mask)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=-1).values


def shape_rewards(
    scores: torch.Tensor,
    per_token_kl: torch.Tensor,
    action_mask: torch.Tensor,
    kl_coef: float,
    placement: Literal["last_token", "all_tokens"] = "last_token",
    score_clip: float | None = None,
) -> torch.Tensor:
    """Per-token rewards ``-kl_coef * kl`` on the action tokens plus the sequence score.

    Args:
        scores: ``(batch,)`` one score per sequence (reward model output, any penalties applied).
        per_token_kl: ``(batch, T)`` per-token KL estimate, aligned with ``action_mask``.
        action_mask: ``(batch, T)`` True on action tokens. A sequence that stopped early simply
            has fewer True positions; the score lands on its own last action token.
        kl_coef: the KL coefficient ``beta``.
        placement: ``"last_token"`` adds the score at the last action token of each sequence;
            ``"all_tokens"`` adds it to every action token (Coati).
        score_clip: clip the score to ``[-score_clip, score_clip]`` first (None: no clipping).

    Returns:
        ``(batch, T)`` rewards, 0 outside the action mask. A row with no action token gets none
        of its score.
    """
    mask = _bool(action_mask)
    scores = scores.to(per_token_kl.dtype)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    zero = torch.zeros((), dtype=per_token_kl.dtype, device=per_token_kl.device)
    rewards = torch.where(mask, -kl_coef * per_token_kl, zero)
    if placement == "last_token":
        last = last_true_index(mask)
        rows = torch.nonzero(last >= 0, as_tuple=True)[0]
        rewards[rows, last[rows]] += scores[rows]
    elif placement == "all_tokens":
        rewards = rewards + torch.where(mask, scores.unsqueeze(-1), zero)
    else:
        raise ValueError(f"placement must be 'last_token' or 'all_tokens', got {placement!r}")
    return rewards


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over the action positions.

    Positions outside ``action_mask`` are skipped: the recursion runs from one action token to
    the next action token of the same row, so masked rewards and values (padding after the
    stop token, or any hole in the mask) never enter, and the value after a row's last action
    is 0 (terminal). Returns ``(advantages, returns)`` with ``returns = advantages + values``,
    both 0 outside the mask. Advantages are not whitened here (see :func:`masked_whiten`).
    """
    mask = _bool(action_mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(mask, values, zero)
    rewards = torch.where(mask, rewards.to(values.dtype), zero)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(m, advantage, zero)
        next_advantage = torch.where(m, advantage, next_advantage)
        next_value = torch.where(m, values[:, t], next_value)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns

r"""KL estimators between the policy and the reference policy, and the KL-coefficient controllers.

Per-token estimators of ``KL(pi || pi_ref)`` from tokens sampled from ``pi`` (Schulman,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With
``logp = log pi(a_t | s_t)`` and ``logp_ref = log pi_ref(a_t | s_t)``::

    k1 = logp - logp_ref                     unbiased; a single token can be negative
    k2 = 0.5 * (logp - logp_ref)^2           biased, >= 0 (logging only)
    k3 = exp(r) - 1 - r,  r = logp_ref - logp   unbiased, >= 0, lower variance

Sign convention: ``r`` in k3 is the log-ratio *reference over policy* (so ``exp(r) =
pi_ref / pi``), the opposite sign of k1. TRL's PPO computes ``logr = ref - logp`` and
``k1 = -logr``: the same numbers as here.

Controllers give the coefficient ``beta`` of the KL penalty ``-beta * kl`` in the reward:

- :class:`FixedKLController`: constant ``beta``.
- :class:`AdaptiveKLController` (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
  Preferences", section 2.2): after a batch whose sequence-level KL is ``KL``::

      e    = clip(KL / target - 1, -0.2, 0.2)
      beta = beta * (1 + e * n_steps / horizon)

  where ``n_steps`` is the number of samples (episodes) in that batch.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "KL_ESTIMATORS",
    "kl_penalty",
    "FixedKLController",
    "AdaptiveKLController",
    "build_kl_controller",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k2", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token KL estimate (same shape as the inputs; mask it yourself)."""
    log_ratio = logprobs.float() - ref_logprobs.float()  # log pi / pi_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        r = -log_ratio  # log pi_ref / pi
        return torch.expm1(r) - r
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:  # noqa: ARG002 - same interface
        return self.value

    def __repr__(self) -> str:
        return f"FixedKLController(kl_coef={self.value})"


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller that steers the KL towards ``target``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust the coefficient after a batch of ``n_steps`` samples whose mean KL was
        ``current_kl`` (sequence level: the per-token KL summed over each response)."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"


def build_kl_controller(config) -> FixedKLController | AdaptiveKLController:
    """The controller a :class:`~coati_hf.ppo.config.PPOConfig` asks for (starts at ``kl_coef``)."""
    kind = getattr(config, "kl_controller", "fixed")
    if kind == "fixed":
        return FixedKLController(config.kl_coef)
    if kind == "adaptive":
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    raise ValueError(f"kl_controller must be 'fixed' or 'adaptive', got {kind!r}")

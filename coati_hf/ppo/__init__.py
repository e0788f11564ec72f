"""PPO for coati_hf: config, rollouts (experience), replay buffer, losses, KL control, GAE.

The math lives in small modules, each with a docstring that states it:
:mod:`.advantages` (masked statistics, whitening, reward shaping, GAE), :mod:`.kl` (KL estimators
and controllers), :mod:`.losses` (clipped policy / value losses, PTX mix, ratio guard, log-probs
and entropy), :mod:`.generation` (padding, sampling, action masks), :mod:`.experience_batch`
(``Experience``: a rollout batch's tensors and their conventions), :mod:`.experience`
(``ExperienceMaker``), :mod:`.forward` (the forward passes the rollout and the update share),
:mod:`.roles` (who plays which part), :mod:`.buffer` (``ReplayBuffer``). Names are imported lazily so that ``import coati_hf.ppo``
does not load torch or transformers.
"""

from __future__ import annotations

from coati_hf._lazy import install_lazy_attributes

_LAZY = {
    "PPOConfig": ".config",
    "PPOTrainer": ".trainer",
    "Experience": ".experience_batch",
    "ExperienceMaker": ".experience",
    "forward_logprobs": ".forward",
    "forward_values": ".forward",
    "forward_scores": ".forward",
    "PolicyAndValueWrapper": ".forward",
    "ReplayBuffer": ".buffer",
    "FixedKLController": ".kl",
    "AdaptiveKLController": ".kl",
    "build_kl_controller": ".kl",
    "kl_penalty": ".kl",
    "masked_mean": ".advantages",
    "masked_sum": ".advantages",
    "masked_var": ".advantages",
    "masked_whiten": ".advantages",
    "shape_rewards": ".advantages",
    "compute_gae": ".advantages",
    "policy_loss": ".losses",
    "value_loss": ".losses",
    "mix_ptx_loss": ".losses",
    "ratio_guard_exceeded": ".losses",
    "logprobs_from_logits": ".losses",
    "entropy_from_logits": ".losses",
    "masked_entropy": ".losses",
    "compute_action_mask": ".generation",
    "resolve_stop_token_ids": ".generation",
    "generate_responses": ".generation",
}


install_lazy_attributes(globals(), _LAZY)

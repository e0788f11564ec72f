r"""``Experience``: one batch of rollouts as tensors, and how they line up.

Tensor conventions (``B`` rows, ``P`` prompt columns, ``R`` response columns; see also
:mod:`coati_hf.ppo.generation`)::

    sequences       (B, P+R) long   [left-padded prompt | response, right-padded with the pad id]
    attention_mask  (B, P+R) long   1 on prompt tokens and on action tokens, 0 on all padding
    action_mask     (B, R)   bool   response tokens up to and including the first stop token
    logprobs        (B, R)   float  logprobs[:, t] = log pi(response[:, t] | sequences[:, :P+t]),
                                    from logits / temperature at sequence position P+t-1
    ref_logprobs    (B, R)   float  the same for the reference policy
    values          (B, R)   float  value_at="state" (default): V(s_t), the critic's output at
                                    position P+t-1 (the token *before* action t, the state it was
                                    chosen in), aligned with logprobs[:, t] (TRL, DeepSpeed-Chat).
                                    value_at="action" (Coati): the output at position P+t.
    kl              (B, R)   float  per-token KL estimate (config.kl_estimator) that entered the reward
    rewards         (B, R)   float  -kl_coef * kl, plus the score at the last action token
                                    (reward_placement="last_token") or on every action token
                                    ("all_tokens"); see :func:`coati_hf.ppo.advantages.shape_rewards`
    advantages      (B, R)   float  GAE (gamma, lam), whitened over the batch if whiten_advantages
    returns         (B, R)   float  GAE advantages (before whitening) + values: the critic's target
    scores          (B,)     float  reward-model score, minus missing_eos_penalty where no stop
                                    token was generated (before score_clip)
    has_stop        (B,)     bool   a stop token was generated
    critic_trunk_states  (B, P+R, H) or None
                                    the hidden states entering the critic's first trainable layer,
                                    recorded by the reward pass when the critic is the reward
                                    model plus an adapter on its top layers (the frozen layers
                                    below are then not run again; see coati_hf.ppo.forward)

Every ``(B, R)`` float tensor is 0 outside ``action_mask``. The score of a sequence is read
after its last action token (the stop token when there is one), never after padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

__all__ = ["Experience"]


@dataclass
class Experience:
    """One batch of rollouts; field conventions are in the module docstring."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    scores: torch.Tensor
    has_stop: torch.Tensor
    prompt_length: int
    pad_token_id: int = 0
    info: dict = field(default_factory=dict)
    critic_trunk_states: torch.Tensor | None = None

    TOKEN_FIELDS = ("action_mask", "logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns", "kl")
    ROW_FIELDS = ("scores", "has_stop")

    @property
    def prompt_ids(self) -> torch.Tensor:
        return self.sequences[:, : self.prompt_length]

    @property
    def response_ids(self) -> torch.Tensor:
        """``(B, R)`` responses; the pad id after the stop token."""
        return self.sequences[:, self.prompt_length :]

    @property
    def response_lengths(self) -> torch.Tensor:
        """Number of action tokens per row (stop token included)."""
        return self.action_mask.sum(dim=-1)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def _tensor_fields(self):
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]

    def to(self, device) -> Experience:
        return replace(self, **{name: getattr(self, name).to(device) for name in self._tensor_fields()})

    def select(self, index) -> Experience:
        """Rows ``index`` (a tensor/list of row indices or a bool mask); ``info`` is not carried."""
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(index, dtype=torch.long)
        index = index.to(self.sequences.device)
        return replace(self, info={}, **{name: getattr(self, name)[index] for name in self._tensor_fields()})

    def split(self, size: int) -> list[Experience]:
        """Consecutive chunks of ``size`` rows (the last one may be smaller), e.g. micro-batches."""
        return [self.select(torch.arange(start, min(start + size, len(self)))) for start in range(0, len(self), size)]

    def trimmed(self) -> Experience:
        """Drop prompt columns that are padding in every row and response columns after the
        longest action span. Model outputs do not change (positions come from the attention
        mask), only the work to compute them."""
        prompt_mask = self.attention_mask[:, : self.prompt_length].bool()
        keep_from = int(prompt_mask.any(dim=0).long().argmax()) if prompt_mask.any() else self.prompt_length
        keep_to = int(self.response_lengths.max()) if len(self) else 0
        keep_to = max(keep_to, 1)
        end = self.prompt_length + keep_to
        changes = {
            "sequences": self.sequences[:, keep_from:end],
            "attention_mask": self.attention_mask[:, keep_from:end],
            "prompt_length": self.prompt_length - keep_from,
        }
        if self.critic_trunk_states is not None:
            changes["critic_trunk_states"] = self.critic_trunk_states[:, keep_from:end]
        changes.update({name: getattr(self, name)[:, :keep_to] for name in self.TOKEN_FIELDS})
        return replace(self, **changes)

    @classmethod
    def concatenate(cls, experiences: Sequence[Experience]) -> Experience:
        """Stack experiences of different prompt / response widths: prompts are left-padded to
        the widest prompt, responses right-padded to the widest response (pad id in
        ``sequences``, 0 in masks and per-token tensors). ``info`` holds the list of the parts'
        infos under ``"parts"``; a single experience is returned as it is."""
        if not experiences:
            raise ValueError("nothing to concatenate")
        if len(experiences) == 1:
            return experiences[0]
        prompt_width = max(e.prompt_length for e in experiences)
        response_width = max(e.sequences.shape[1] - e.prompt_length for e in experiences)
        pad_id = experiences[0].pad_token_id

        def pad_sequence_tensor(e: Experience, tensor: torch.Tensor, value) -> torch.Tensor:
            left = prompt_width - e.prompt_length
            right = response_width - (tensor.shape[1] - e.prompt_length)
            trailing = (0, 0) * (tensor.dim() - 2)  # (B, T, H) tensors pad along T as well
            return torch.nn.functional.pad(tensor, (*trailing, left, right), value=value)

        def pad_token_tensor(tensor: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, response_width - tensor.shape[1]), value=0)

        merged = {
            "sequences": torch.cat([pad_sequence_tensor(e, e.sequences, pad_id) for e in experiences]),
            "attention_mask": torch.cat([pad_sequence_tensor(e, e.attention_mask, 0) for e in experiences]),
        }
        for name in cls.TOKEN_FIELDS:
            merged[name] = torch.cat([pad_token_tensor(getattr(e, name)) for e in experiences])
        for name in cls.ROW_FIELDS:
            merged[name] = torch.cat([getattr(e, name) for e in experiences])
        if all(e.critic_trunk_states is not None for e in experiences):  # padding: masked out of every attention
            merged["critic_trunk_states"] = torch.cat(
                [pad_sequence_tensor(e, e.critic_trunk_states, 0.0) for e in experiences]
            )
        return cls(
            **merged,
            prompt_length=prompt_width,
            pad_token_id=pad_id,
            info={"parts": [e.info for e in experiences]},
        )

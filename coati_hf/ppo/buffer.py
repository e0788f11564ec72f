"""An on-policy replay buffer: the experiences of one rollout phase, replayed for the PPO epochs.

Usage per PPO iteration::

    buffer.append(maker.make_experience(prompts))           # one or more times
    for minibatch in buffer.iter_minibatches(config.num_mini_batches, config.num_ppo_epochs):
        ...                                                  # update actor and critic
    buffer.clear()                                           # on-policy: never reuse old data

Experiences of different widths are stacked with :meth:`Experience.concatenate`: prompts are
**left**-padded to the widest prompt and responses **right**-padded to the widest response, so
column ``prompt_length`` is the first response token of every row and all per-token tensors stay
aligned with ``response_ids``. Padding is 0 in the masks and per-token tensors and the pad id in
``sequences``; it is invisible to the models because position ids come from the attention mask.

Each epoch draws a fresh random permutation of all samples and cuts it into
``num_mini_batches`` near-equal minibatches (``torch.tensor_split``: sizes differ by at most one
when the count does not divide evenly). Each
minibatch is trimmed to the columns it uses unless ``trim=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from .advantages import compute_gae, masked_whiten
from .experience_batch import Experience

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    def __init__(self, trim: bool = True):
        self.trim = trim
        self._parts: list[Experience] = []
        self._collated: Experience | None = None

    def append(self, experience: Experience) -> None:
        self._parts.append(experience)
        self._collated = None

    def clear(self) -> None:
        self._parts.clear()
        self._collated = None

    def __len__(self) -> int:
        """Number of samples (rows) held."""
        return sum(len(part) for part in self._parts)

    @property
    def infos(self) -> list[dict]:
        """The ``info`` dict of every appended experience, in order (after
        :meth:`whiten_advantages`, the same list under ``infos[0]["parts"]``)."""
        return [part.info for part in self._parts]

    def collate(self) -> Experience:
        """All samples as one experience (left-padded prompts, right-padded responses)."""
        if not self._parts:
            raise ValueError("the replay buffer is empty")
        if self._collated is None:
            self._collated = Experience.concatenate(self._parts)
        return self._collated

    def whiten_rewards(self, gamma: float, lam: float) -> None:
        """TRL's ``whiten_rewards``: scale the per-token rewards to unit variance (mean kept)
        over every stored sample, then recompute GAE advantages and returns from them.
        Use with ``whiten_rewards=False`` in the maker, so each sample is whitened once, with
        statistics of the whole rollout batch rather than of one experience chunk."""
        collated = self.collate()
        rewards = masked_whiten(collated.rewards, collated.action_mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, collated.values, collated.action_mask, gamma, lam)
        self._replace_all(collated, rewards=rewards, advantages=advantages, returns=returns)

    def whiten_advantages(self) -> None:
        """Whiten the advantages jointly over every stored sample (masked), replacing any
        per-experience whitening; use with ``whiten_advantages=False`` in the maker when an
        iteration collects several small experience batches."""
        collated = self.collate()
        self._replace_all(collated, advantages=masked_whiten(collated.advantages, collated.action_mask))

    def _replace_all(self, collated: Experience, **changes) -> None:
        """Hold one experience: ``collated`` with ``changes`` (the parts' infos are kept)."""
        merged = replace(collated, info={"parts": self.part_infos()}, **changes)
        self._parts = [merged]
        self._collated = merged

    def part_infos(self) -> list[dict]:
        """Every appended experience's own ``info``, however often the buffer was collated."""
        flat, pending = [], list(self.infos)
        while pending:
            info = pending.pop(0)
            if "parts" in info:
                pending[:0] = info["parts"]
            else:
                flat.append(info)
        return flat

    def merged_info(self) -> dict:
        """The ``info`` of every stored experience combined: means weighted by sample count
        (parts without a usable sample, whose means are NaN, weigh nothing; NaN when no part
        has one), ``num_*`` counts summed, the latest ``kl_coef``."""
        flat = [info for info in self.part_infos() if info]
        total = sum(info["num_samples"] for info in flat)
        merged = {}
        for key in flat[0]:
            if key.startswith("num_"):
                merged[key] = sum(info[key] for info in flat)
            elif key == "kl_coef":
                merged[key] = flat[-1][key]
            elif total == 0:
                merged[key] = float("nan")
            else:
                merged[key] = sum(info[key] * info["num_samples"] for info in flat if info["num_samples"]) / total
        return merged

    def usable_samples(self) -> int:
        """Number of stored rows with at least one action token (rows whose score or rewards
        were not finite have none)."""
        return sum(int(part.action_mask.any(dim=-1).sum()) for part in self._parts)

    def iter_minibatches(
        self,
        num_mini_batches: int,
        num_ppo_epochs: int = 1,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Experience]:
        """``num_ppo_epochs`` passes over the buffer, each in ``num_mini_batches`` minibatches."""
        full = self.collate()
        count = len(full)
        if num_mini_batches < 1 or num_mini_batches > count:
            raise ValueError(f"cannot split {count} samples into {num_mini_batches} minibatches")
        for _ in range(num_ppo_epochs):
            order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
            for index in torch.tensor_split(order, num_mini_batches):
                minibatch = full.select(index)
                yield minibatch.trimmed() if self.trim else minibatch

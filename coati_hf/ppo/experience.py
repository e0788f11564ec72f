r"""``ExperienceMaker``: prompts in, an :class:`~coati_hf.ppo.experience_batch.Experience` out.

The tensors of an ``Experience`` and their conventions are described in
:mod:`coati_hf.ppo.experience_batch`.

Rollout steps (all under ``torch.no_grad``, with every model in eval mode and its previous
train/eval state restored afterwards):

1. prompts -> left-padded ids (``max_prompt_length``: error, or keep the last tokens and count);
2. sample responses (:func:`~coati_hf.ppo.generation.generate_responses`), build the action mask,
   pad everything after the first stop token;
3. score: a sequence-classification reward model reads its ``score`` head at the last action
   token; a reward model with a different tokenizer gets the text re-tokenized with its own
   tokenizer (right padding, read at the last non-pad token); a reward model whose head pools
   its input (BERT, DeBERTa: ``classifier``) is scored by its own forward on right-padded
   input; a Python callable gets ``(prompts, completions)`` text. Rows whose score is NaN or
   infinite (in float32 or once cast to the policy's dtype) are masked out (they stay in the
   batch with no action token, so every rank keeps its row count, and every loss and statistic
   skips them), and so are rows whose rewards, returns or advantages overflow later (all
   counted in ``info["num_nan_scores"]``). A batch left without any usable row is not an error
   here: the trainer decides across ranks whether the update has a usable sample;
4. forward passes, ``local_rollout_forward_batch_size`` rows at a time: policy and reference
   log-probs (reference = ``ref_policy``, or the peft ``policy`` with its adapter disabled, or
   with ``config.ref_adapter_name`` active), critic values;
5. KL-shaped rewards, optional reward whitening, GAE, optional advantage whitening
   (:meth:`ExperienceMaker.complete`). ``make_experience(..., evaluate_policy_and_critic=False)``
   stops before the policy and critic passes of step 4; whoever computes those (the trainer's
   single-pass update, with gradients) calls ``complete`` with them.

The forward helpers :func:`forward_logprobs` and :func:`forward_values` are the ones the trainer
must use for the new log-probs and values, so that positions and temperature agree exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch

from .advantages import compute_gae, masked_sum, masked_whiten, shape_rewards
from .experience_batch import Experience
from .generation import (
    compute_action_mask,
    generate_responses,
    left_pad,
    lora_merged_for_generation,
    resolve_stop_token_ids,
    truncate_left,
)
from .forward import (  # noqa: F401 (forward_* re-exported for users)
    decoder_layers,
    forward_logprobs,
    forward_scores,
    forward_values,
    layer_inputs_captured,
    trunk_split,
)
from .kl import build_kl_controller, kl_penalty
from .roles import tokenizer_difference

logger = logging.getLogger(__name__)

__all__ = ["Experience", "ExperienceMaker", "forward_logprobs", "forward_values", "forward_scores"]  # Experience: re-exported

RewardFunction = Callable[[list[str], list[str]], Sequence[float]]


# ----------------------------------------------------------------------------------------------
# ExperienceMaker
# ----------------------------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _embeddable_pad_id(tokenizer, model) -> int:
    """The id that fills padding in model inputs: the tokenizer's pad id when the model can embed
    it, else EOS (or 0). Tokenizers often get a brand-new pad token (TRL's examples add
    ``[PAD]``) that the embedding table never grew for; padding is masked, so any embeddable id
    will do, but an out-of-range one crashes the embedding lookup."""
    pad_id = tokenizer.pad_token_id
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or pad_id < embeddings.num_embeddings:
        return pad_id
    eos_id = tokenizer.eos_token_id
    return eos_id if eos_id is not None and eos_id < embeddings.num_embeddings else 0


def _overflow_free_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows whose every value, and its square, is finite in float32. A finite but huge
    number (a reward of 3e38) is as unusable as an infinite one: its square overflows the value
    loss and the whitening variance, and would turn every other row of the batch into NaN."""
    keep = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        values = tensor.float()
        keep &= torch.isfinite(values * values).all(dim=-1)
    return keep


def _count_dropped(keep: torch.Tensor, what: str) -> int:
    """Number of rows ``keep`` drops, with a warning. Dropping every row is not an error here:
    whether an update has a usable sample is decided by the trainer across all ranks (a rank
    raising alone would leave the others waiting in their next collective call)."""
    dropped = int((~keep).sum())
    if dropped:
        everything = " (no usable sample left in this batch)" if dropped == len(keep) else ""
        logger.warning("Dropping %d of %d samples: their %s%s", dropped, len(keep), what, everything)
    return dropped


@contextmanager
def _eval_mode(*models):
    """Put every module of ``models`` in eval mode; restore each module's flag afterwards."""
    modules = [model for model in models if isinstance(model, torch.nn.Module)]
    saved = [(module, module.training) for model in modules for module in model.modules()]
    for model in modules:
        model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


class ExperienceMaker:
    """Turns prompts into an :class:`Experience` (see the module docstring for every convention).

    Args:
        policy: the causal LM being trained (pass it unwrapped: no DDP wrapper).
        ref_policy: the frozen reference causal LM, or None when ``policy`` is a peft model: the
            reference is then the policy with its adapter disabled (or with
            ``config.ref_adapter_name`` active).
        critic: a sequence-classification model (``num_labels=1``) sharing the policy's vocabulary;
            its ``score`` head is applied at every position. None: all values are 0.
        reward_model: a sequence-classification model, or a callable
            ``(prompts: list[str], completions: list[str]) -> list[float]``. It may be the very
            same peft model as ``critic`` (critic = reward model + adapter): then scores are
            computed with the adapter disabled.
        tokenizer: the policy's tokenizer (its pad id pads; its EOS is "eos").
        config: a :class:`~coati_hf.ppo.config.PPOConfig`.
        reward_tokenizer: the reward model's tokenizer when its vocabulary differs from the
            policy's; texts are then decoded and re-tokenized for it.
        kl_controller: defaults to :func:`~coati_hf.ppo.kl.build_kl_controller` of ``config``;
            the trainer calls ``kl_controller.update(info["kl"], n_steps)``.
        stop_token_ids: extra stop ids on top of ``config.stop_token`` / ``stop_token_id``.
        generation_kwargs: extra keyword arguments for ``model.generate`` (e.g. a
            ``logits_processor``); they override the defaults.
        reward_add_special_tokens: ``add_special_tokens`` for the re-tokenization path.
        prompt_add_special_tokens: ``add_special_tokens`` when tokenizing string prompts (they
            are expected to be chat-formatted already, so False by default).
        merge_lora_for_generation: sample with each LoRA delta folded into its base weight
            (:func:`~coati_hf.ppo.generation.lora_merged_for_generation`: as fast as the plain
            model, same distribution). Turn it off where weights are sharded (Gemini).
        share_critic_trunk: when the critic is ``reward_model`` plus an adapter on its top layers
            only, record the hidden states entering the first adapted layer during the reward
            pass (``Experience.critic_trunk_states``) so the critic's forward passes skip the
            frozen layers below. Turn it off where modules must run every forward (Gemini).
    """

    def __init__(
        self,
        policy,
        ref_policy,
        critic,
        reward_model,
        tokenizer,
        config,
        reward_tokenizer=None,
        *,
        kl_controller=None,
        stop_token_ids: list[int] | None = None,
        generation_kwargs: dict | None = None,
        reward_add_special_tokens: bool = True,
        prompt_add_special_tokens: bool = False,
        merge_lora_for_generation: bool = True,
        share_critic_trunk: bool = True,
    ):
        if ref_policy is not None and ref_policy is policy:
            raise ValueError("policy and ref_policy cannot be the same object: pass a copy, or None with a peft policy")
        if ref_policy is None and not hasattr(policy, "disable_adapter"):
            raise ValueError(
                "ref_policy=None needs a peft policy (the reference is the policy with its adapter disabled)"
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (see coati_hf.models.ensure_pad_token)")
        self.policy = policy
        self.pad_token_id = _embeddable_pad_id(tokenizer, policy)
        self.ref_policy = ref_policy
        self.critic = critic
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.config = config
        self.kl_controller = kl_controller if kl_controller is not None else build_kl_controller(config)
        self.stop_token_ids = resolve_stop_token_ids(
            tokenizer, config.stop_token, config.stop_token_id, stop_token_ids
        )
        self.generation_kwargs = dict(generation_kwargs or {})
        self.reward_add_special_tokens = reward_add_special_tokens
        self.prompt_add_special_tokens = prompt_add_special_tokens
        self.merge_lora_for_generation = merge_lora_for_generation
        self.share_critic_trunk = share_critic_trunk
        self.reward_is_function = callable(reward_model) and not isinstance(reward_model, torch.nn.Module)
        self.reward_tokenizer = reward_tokenizer
        self.retokenize_for_reward = not self.reward_is_function and tokenizer_difference(reward_tokenizer, tokenizer) is not None
        if self.retokenize_for_reward and reward_tokenizer.pad_token_id is None:
            raise ValueError("the reward tokenizer needs a pad token")
        if self.config.temperature <= 0:
            raise ValueError("temperature must be positive")

    # -- public entry point ------------------------------------------------------------------

    @torch.no_grad()
    def make_experience(
        self, prompts: Sequence[str] | Mapping[str, torch.Tensor], *, evaluate_policy_and_critic: bool = True
    ) -> Experience:
        """Generate, score and evaluate responses to ``prompts`` (chat-formatted strings, or a
        mapping with ``input_ids`` and ``attention_mask``, any padding side).

        ``evaluate_policy_and_critic=False`` stops after the reward scores and the reference
        log-probs: ``logprobs``, ``values`` and everything derived from them (``kl``,
        ``rewards``, ``advantages``, ``returns``) are left at 0 for :meth:`complete` to fill in
        from log-probs and values computed elsewhere (the trainer's single-pass update computes
        them once, with gradients, instead of twice).
        """
        config = self.config
        pad_id = self.pad_token_id
        chunk = config.local_rollout_forward_batch_size
        with _eval_mode(self.policy, self.ref_policy, self.critic, self.reward_model):
            prompt_ids, prompt_mask, prompt_texts, num_truncated = self._prepare_prompts(prompts)
            device = _device_of(self.policy)
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
            prompt_length = prompt_ids.shape[1]

            merged = lora_merged_for_generation(self.policy) if self.merge_lora_for_generation else nullcontext()
            with merged:
                responses, valid = generate_responses(
                    self.policy,
                    prompt_ids,
                    prompt_mask,
                    max_new_tokens=config.response_length,
                    temperature=config.temperature,
                    pad_token_id=pad_id,
                    stop_token_ids=self.stop_token_ids,
                    chunk_size=chunk,
                    generation_kwargs=self.generation_kwargs,
                )
            actions = compute_action_mask(responses, self.stop_token_ids, valid)
            action_mask = actions.mask
            has_stop = actions.has_stop
            if not self.stop_token_ids and self.tokenizer.eos_token_id is not None:
                # no stop token configured (TRL's stop_token=None): "missing EOS" still means no EOS
                has_stop = ((responses == self.tokenizer.eos_token_id) & action_mask).any(dim=-1)
            responses = responses.masked_fill(~action_mask, pad_id)
            sequences = torch.cat([prompt_ids, responses], dim=1)
            attention_mask = torch.cat([prompt_mask.long(), action_mask.long()], dim=1)

            # 3. scores; rows whose score is not finite (also once cast to the training dtype) are dropped
            scores, trunk_states = self._score(sequences, attention_mask, prompt_length, action_mask, prompt_texts)
            scores = scores.to(device)
            training_dtype = next(self.policy.parameters()).dtype
            finite = torch.isfinite(scores) & torch.isfinite(scores.to(training_dtype))
            num_bad = _count_dropped(finite, "reward score is NaN or infinite")
            if num_bad:  # kept as rows without action tokens: every loss and statistic skips them
                action_mask = action_mask & finite.unsqueeze(-1)
                attention_mask = torch.cat([prompt_mask.long(), action_mask.long()], dim=1)
                scores = torch.where(finite, scores, torch.zeros((), device=device))
            if config.missing_eos_penalty is not None:
                scores = scores - config.missing_eos_penalty * (~has_stop).float()

            # 4. log-probs (reference; policy) and values
            with self._reference() as reference:
                ref_logprobs = self._chunked(
                    lambda s, m: forward_logprobs(reference, s, m, prompt_length, config.temperature),
                    sequences, attention_mask, chunk, _device_of(reference),
                ).to(device)
            zero = torch.zeros((), device=device)
            ref_logprobs = torch.where(action_mask, ref_logprobs, zero)
            placeholder = torch.zeros_like(ref_logprobs)
            experience = Experience(
                sequences=sequences,
                attention_mask=attention_mask,
                action_mask=action_mask,
                logprobs=placeholder,
                ref_logprobs=ref_logprobs,
                values=placeholder,
                rewards=placeholder,
                advantages=placeholder,
                returns=placeholder,
                kl=placeholder,
                scores=scores,
                has_stop=has_stop,
                prompt_length=prompt_length,
                pad_token_id=pad_id,
                info={"num_nan_scores": num_bad, "num_truncated_prompts": num_truncated},
                critic_trunk_states=trunk_states,
            )
            if not evaluate_policy_and_critic:
                return experience
            logprobs = self._chunked(
                lambda s, m: forward_logprobs(self.policy, s, m, prompt_length, config.temperature),
                sequences, attention_mask, chunk, device,
            )
            if self.critic is not None:
                values = self._chunked(
                    lambda s, m, t: forward_values(self.critic, s, m, prompt_length, config.value_at, t),
                    sequences, attention_mask, chunk, _device_of(self.critic), trunk_states,
                ).to(device)
            else:
                values = torch.zeros_like(logprobs)
        return self.complete(experience, logprobs, values)

    @torch.no_grad()
    def complete(
        self,
        experience: Experience,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        *,
        whiten_rewards: bool | None = None,
        whiten_advantages: bool | None = None,
    ) -> Experience:
        """Step 5: KL-shaped rewards, GAE and ``info`` for ``experience`` (from
        :meth:`make_experience`), given its rows' policy log-probs and critic values ``(B, R)``.

        Rows whose rewards, returns or advantages overflow (a value or its square not finite)
        are masked out (no action token left: every loss and statistic ignores them) and counted
        in ``info["num_nan_scores"]``; rewards are whitened only after that, over the rows left.
        Rows without action tokens take no part in the statistics (with none left, the means in
        ``info`` are NaN and ``num_samples`` is 0). ``whiten_rewards`` and
        ``whiten_advantages`` default to the config's (a trainer that whitens a whole buffer at
        once turns them off here).
        """
        config, mask = self.config, experience.action_mask
        whiten_rewards = config.whiten_rewards if whiten_rewards is None else whiten_rewards
        if whiten_advantages is None:
            whiten_advantages = getattr(config, "whiten_advantages", True)
        zero = torch.zeros((), device=logprobs.device)
        logprobs, values = torch.where(mask, logprobs.float(), zero), torch.where(mask, values.float(), zero)
        ref_logprobs, scores = experience.ref_logprobs, experience.scores
        kl_coef = float(self.kl_controller.value)
        kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, config.kl_estimator), zero)
        rewards = shape_rewards(scores, kl, mask, kl_coef, config.reward_placement, config.score_clip)
        # Rows that overflow are masked out before any statistic spans the batch: one such row
        # would otherwise make every row's whitened reward NaN.
        keep = _overflow_free_rows(rewards)
        dropped = _count_dropped(keep | ~mask.any(dim=-1), "rewards overflow (a value or its square is not finite)")
        mask = mask & keep.unsqueeze(-1)
        rewards = torch.where(mask, rewards, zero)
        if whiten_rewards and mask.any():
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, config.gamma, config.lam)
        keep = _overflow_free_rows(returns, advantages)
        more = _count_dropped(keep | ~mask.any(dim=-1), "returns or advantages overflow")
        dropped += more
        if dropped:
            mask = mask & keep.unsqueeze(-1)
            logprobs, values, kl = (torch.where(mask, t, zero) for t in (logprobs, values, kl))
            rewards, advantages, returns = (torch.where(mask, t, zero) for t in (rewards, advantages, returns))
        if whiten_advantages and mask.any():
            advantages = masked_whiten(advantages, mask)

        rows = mask.any(dim=-1)  # real samples (not fillers, not masked out)
        non_score = masked_sum(-kl_coef * kl, mask, dim=-1)[rows]
        row_scores = scores[rows]
        info = {
            "kl": float(masked_sum(kl, mask, dim=-1)[rows].mean()),
            "kl_k3": float(masked_sum(kl_penalty(logprobs, ref_logprobs, "k3"), mask, dim=-1)[rows].mean()),
            "kl_coef": kl_coef,
            "entropy": float(masked_sum(-logprobs, mask, dim=-1)[rows].mean()),
            "score": float(row_scores.mean()),
            "non_score_reward": float(non_score.mean()),
            "rlhf_reward": float((non_score + row_scores).mean()),
            "response_length": float(mask.sum(dim=-1)[rows].float().mean()),
            "num_samples": int(rows.sum()),
            "num_no_stop": int((~experience.has_stop[rows]).sum()),
            "num_nan_scores": int(experience.info.get("num_nan_scores", 0)) + dropped,
            "num_truncated_prompts": int(experience.info.get("num_truncated_prompts", 0)),
        }
        return replace(
            experience,
            action_mask=mask,
            attention_mask=torch.cat([experience.attention_mask[:, : experience.prompt_length], mask.long()], dim=1),
            logprobs=logprobs,
            values=values,
            kl=kl,
            rewards=rewards,
            advantages=advantages,
            returns=returns,
            info=info,
        )

    # -- steps -------------------------------------------------------------------------------

    def _prepare_prompts(self, prompts):
        """Left-padded prompt ids and mask, the prompt strings (None where only ids were
        given or a prompt was truncated) and the number of truncated prompts."""
        tokenizer = self.tokenizer
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings (or a mapping of tensors), not a single string")
        if isinstance(prompts, Mapping):
            input_ids = torch.as_tensor(prompts["input_ids"])
            attention_mask = prompts.get("attention_mask")
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)
            texts: list[str | None] = [None] * input_ids.shape[0]
        else:
            texts = list(prompts)
            if not texts:
                raise ValueError("no prompts")
            batch = tokenizer(
                texts, add_special_tokens=self.prompt_add_special_tokens, padding=True, return_tensors="pt"
            )
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        input_ids, attention_mask = left_pad(input_ids, attention_mask, self.pad_token_id)
        if not bool(attention_mask.sum(dim=-1).gt(0).all()):
            raise ValueError("an empty prompt (no attended token) cannot be continued")
        num_truncated = 0
        limit = self.config.max_prompt_length
        if limit is not None and input_ids.shape[1] > limit:
            lengths = attention_mask.sum(dim=-1)
            if not self.config.truncate_prompts:
                raise ValueError(
                    f"{int((lengths > limit).sum())} prompt(s) are longer than max_prompt_length={limit} tokens "
                    f"(longest: {int(lengths.max())}); shorten them or set truncate_prompts=True"
                )
            input_ids, attention_mask, truncated = truncate_left(input_ids, attention_mask, limit)
            num_truncated = int(truncated.sum())
            texts = [None if cut else text for text, cut in zip(texts, truncated.tolist())]
            logger.info("Truncated %d prompt(s) to their last %d tokens", num_truncated, limit)
        return input_ids, attention_mask, texts, num_truncated

    def _score(self, sequences, attention_mask, prompt_length, action_mask, prompt_texts):
        """One score per row (float32, NaN allowed: the caller filters), and the critic's trunk
        states recorded on the way (None unless the critic shares the reward model's frozen
        lower layers: see ``share_critic_trunk``)."""
        lengths = action_mask.sum(dim=-1)
        if self.reward_is_function:
            prompts = [
                text if text is not None else self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
                for text, ids, mask in zip(
                    prompt_texts, sequences[:, :prompt_length], attention_mask[:, :prompt_length]
                )
            ]
            completions = self.tokenizer.batch_decode(
                [row[:n] for row, n in zip(sequences[:, prompt_length:], lengths.tolist())], skip_special_tokens=True
            )
            values = self.reward_model(prompts, completions)
            values = [float("nan") if v is None else float(v) for v in values]
            if len(values) != len(prompts):
                raise ValueError(f"the reward function returned {len(values)} scores for {len(prompts)} samples")
            return torch.tensor(values, dtype=torch.float32), None

        chunk = self.config.local_rollout_forward_batch_size
        if self.retokenize_for_reward:
            texts = [
                self.tokenizer.decode(row[mask.bool()], skip_special_tokens=False)
                for row, mask in zip(sequences, attention_mask)
            ]
            encoded = self.reward_tokenizer(
                texts,
                add_special_tokens=self.reward_add_special_tokens,
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            rm_ids, rm_mask = encoded["input_ids"], encoded["attention_mask"]
            score_index = rm_mask.sum(dim=-1) - 1  # right padding: the last non-pad token
        else:
            rm_ids, rm_mask = sequences, attention_mask
            score_index = prompt_length + lengths - 1  # the last action token
        device = _device_of(self.reward_model)
        split = self._critic_trunk_split()
        recorder = nullcontext([]) if split is None else layer_inputs_captured(decoder_layers(self.critic)[split])
        with self._reward_context(), recorder as trunk_states:
            scores = [
                forward_scores(
                    self.reward_model,
                    rm_ids[start : start + chunk].to(device),
                    rm_mask[start : start + chunk].to(device),
                    score_index[start : start + chunk],
                )
                for start in range(0, rm_ids.shape[0], chunk)
            ]
        usable = split is not None and trunk_states and all(states is not None for states in trunk_states)
        return torch.cat(scores), (torch.cat(trunk_states) if usable else None)

    def _critic_trunk_split(self) -> int | None:
        """The critic's :func:`~coati_hf.ppo.forward.trunk_split` when the reward pass can record
        its trunk states (the critic is the reward model plus an adapter on its top layers, read
        with the policy's ids), else None."""
        if not self.share_critic_trunk or self.reward_model is not self.critic or self.retokenize_for_reward:
            return None
        return trunk_split(self.critic)

    @staticmethod
    def _chunked(fn, sequences, attention_mask, chunk, device, *row_tensors) -> torch.Tensor:
        """``fn`` over ``chunk`` rows at a time of ``sequences``, ``attention_mask`` (moved to
        ``device``) and any further per-row tensors (None passes through as None)."""
        out = []
        for start in range(0, sequences.shape[0], chunk):
            rows = slice(start, start + chunk)
            extra = [None if tensor is None else tensor[rows].to(device) for tensor in row_tensors]
            out.append(fn(sequences[rows].to(device), attention_mask[rows].to(device), *extra))
        return torch.cat(out)

    @contextmanager
    def _reference(self):
        """The reference policy: ``ref_policy``, or the peft policy with the reference adapter
        (``config.ref_adapter_name``) active, or with its adapter disabled."""
        if self.ref_policy is not None:
            yield self.ref_policy
            return
        ref_adapter = getattr(self.config, "ref_adapter_name", None)
        if ref_adapter:
            self.policy.set_adapter(ref_adapter)
            try:
                yield self.policy
            finally:
                self.policy.set_adapter(getattr(self.config, "model_adapter_name", None) or "default")
        else:
            with self.policy.disable_adapter():
                yield self.policy

    @contextmanager
    def _reward_context(self):
        """Disable the critic's adapter while scoring when critic and reward model are one peft model."""
        if self.reward_model is self.critic and hasattr(self.reward_model, "disable_adapter"):
            with self.reward_model.disable_adapter():
                yield
        else:
            yield

r"""``PPOTrainer``: TRL 1.12's PPO interface, Coati's experience maker, critic and PTX loss inside.

One update (``global_step``) of the loop, top to bottom::

    prompts  = next batch of ``local_batch_size`` prompts (per_device_train_batch_size × GA)
    for chunk of ``experience_batch_size`` prompts:            # ExperienceMaker, no grad
        buffer.append(generate → score → log-probs → values → KL-shaped rewards → GAE)
    repeat num_ppo_epochs:
        for minibatch in num_mini_batches shuffled minibatches:   # one optimizer step each
            for micro-batch of per_device_train_batch_size rows:  # gradient accumulation
                logπ, V  = model(micro)                            # same positions as the rollout
                L_actor  = (1 − ptx_coef)·L_clip(logπ, logπ_old, A) + ptx_coef·L_LM(pretrain batch)
                L        = L_actor + vf_coef·L_V(V, V_old, R)
    KL controller update; lr_scheduler.step() if a step was taken; log; maybe save a checkpoint

The math of each term lives in :mod:`coati_hf.ppo.losses`, :mod:`.advantages` and :mod:`.kl`.

When the update is a single pass (one epoch, one minibatch, no accumulation) the rollout skips
the actor's and the critic's forward passes: the update's forward computes logπ and V once, with
gradients, and :meth:`~coati_hf.ppo.experience.ExperienceMaker.complete` turns them into
rewards and advantages before the loss (ratio exactly 1, as the general path's first pass).

Roles and memory. ``model`` is the actor. ``ref_model=None``: a frozen copy of it, or, with
``peft_config``, the actor with its adapter disabled. ``value_model=None``: a critic initialised
from the reward model (Coati), or from the actor's backbone when the reward is a Python callable;
with ``peft_config`` the critic *is* the reward model plus its own LoRA adapter and head, and the
reward is that model with the adapter disabled — four roles on two backbones.

Saving. ``save_model(dir)`` writes the actor at ``dir`` (merged weights when LoRA was used, the
adapter in ``dir/adapter``) and the critic in ``dir/critic`` as a sequence-classification model;
both reload with plain ``from_pretrained``. Checkpoints add the optimizer, scheduler, RNG states,
trainer state and the KL coefficient, so ``train(resume_from_checkpoint=...)`` continues exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections import defaultdict

import torch
from transformers import DataCollatorWithPadding, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput
from trl.trainer.base_trainer import _BaseTrainer

from ..colossalai import ColossalAIMixin
from ..colossalai.plugin import refuse_deepspeed
from ..colossalai.stepping import clip_and_step
from ..hub.stages import CRITIC_SUBFOLDER, export_ppo
from ..hub.trainer_mixin import AtomicCheckpointMixin, HubExportMixin
from ..numerics import check_finite_weights
from ..text import decode_whole_characters
from ..trainer_common import coati_tags, prepare_pad_token
from .buffer import ReplayBuffer
from .config import PPOConfig
from .experience import ExperienceMaker
from .forward import PolicyAndValueWrapper
from .advantages import masked_mean
from .kl import build_kl_controller
from .losses import mix_ptx_loss, policy_loss, ratio_guard_exceeded, value_loss
from .prompts import PromptBatcher, prepare_pretrain_blocks, prepare_prompt_dataset
from .roles import build_roles, dropout_config_restored

logger = logging.getLogger(__name__)

PPO_STATE_NAME = "ppo_state.json"


class PPOTrainer(ColossalAIMixin, HubExportMixin, AtomicCheckpointMixin, _BaseTrainer):
    """PPO with TRL 1.12's constructor, config names and attributes, and Coati's additions.

    Extra keyword arguments beyond TRL's: ``reward_processing_class`` (the reward model's own
    tokenizer, when it differs from the policy's), ``pretrain_dataset`` (text for the PTX loss,
    any source :func:`coati_hf.data.load_pretrain_dataset` reads), ``colossalai_plugin``.
    """

    _tag_names = ["trl", "ppo", *coati_tags("ppo")]
    _name = "PPO"
    _paper = {
        "title": "Fine-Tuning Language Models from Human Preferences",
        "id": "1909.08593",
        "citation": "@article{mziegler2019fine-tuning, title={Fine-Tuning Language Models from Human Preferences}, "
        "author={Daniel M. Ziegler and Nisan Stiennon and Jeffrey Wu and Tom B. Brown and Alec Radford and "
        "Dario Amodei and Paul F. Christiano and Geoffrey Irving}, year=2019, eprint={arXiv:1909.08593}}",
    }

    def __init__(
        self,
        args: PPOConfig,
        processing_class,
        model,
        ref_model,
        reward_model,
        train_dataset,
        value_model=None,
        data_collator=None,
        eval_dataset=None,
        optimizers=(None, None),
        callbacks: list[TrainerCallback] | None = None,
        peft_config=None,
        *,
        reward_processing_class=None,
        pretrain_dataset=None,
        colossalai_plugin=None,
    ) -> None:
        if not isinstance(args, PPOConfig):
            raise TypeError(f"args must be a coati_hf.PPOConfig, got {type(args).__name__}")
        refuse_deepspeed(args, "PPOTrainer")  # before any model work; names the ColossalAI strategy to use instead
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if ref_model is not None and ref_model is model:
            raise ValueError(
                "`model` and `ref_model` cannot be the same object. If you want `ref_model` to be the same as "
                "`model`, you must make a copy of it, or `None` if you use peft."
            )
        if processing_class is None:
            raise ValueError("processing_class (the policy's tokenizer) is required")
        prepare_pad_token(processing_class, model, role="policy")

        roles = build_roles(
            model, ref_model, reward_model, value_model, processing_class, reward_processing_class, peft_config,
            critic_adapter_fraction=args.critic_adapter_fraction,
        )  # fmt: skip
        model, ref_model, value_model = roles.policy, roles.ref_policy, roles.critic
        self.is_peft_model = roles.is_peft
        self.reward_shares_critic = roles.reward_shares_critic
        self.policy_model = model
        self.ref_model = ref_model
        self.reward_model = reward_model
        self.value_model = value_model
        self.reward_processing_class = roles.reward_tokenizer
        reward_is_function = roles.reward_is_function

        # --- data -------------------------------------------------------------------------
        max_context = getattr(model.config, "max_position_embeddings", None)
        train_dataset = prepare_prompt_dataset(train_dataset, processing_class, args, "train", max_context)
        if eval_dataset is not None:
            eval_dataset = prepare_prompt_dataset(eval_dataset, processing_class, args, "eval", max_context)
        self.pretrain_blocks = None
        if args.ptx_coef > 0:
            if pretrain_dataset is None:
                raise ValueError("ptx_coef > 0 needs a pretrain_dataset (text for the PTX language-modelling loss)")
            self.pretrain_blocks = prepare_pretrain_blocks(pretrain_dataset, processing_class, args)
        if data_collator is None:
            data_collator = DataCollatorWithPadding(processing_class)

        wrapper = PolicyAndValueWrapper(model, value_model)
        super().__init__(
            model=wrapper,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            colossalai_plugin=colossalai_plugin,
        )
        args.compute_batch_sizes(world_size=self.accelerator.num_processes, train_dataset_len=len(train_dataset))
        self.kl_controller = build_kl_controller(args)
        rollout_config = copy.copy(args)
        # whitened once over the whole buffer in train(), not per experience chunk
        rollout_config.whiten_rewards = False
        rollout_config.whiten_advantages = False
        gemini = getattr(self, "colossalai_enabled", False) and self.colossalai_plugin.is_gemini
        self.experience_maker = ExperienceMaker(
            policy=model,
            ref_policy=ref_model,
            critic=value_model,
            reward_model=value_model if self.reward_shares_critic else reward_model,
            tokenizer=processing_class,
            config=rollout_config,
            reward_tokenizer=roles.reward_tokenizer,
            kl_controller=self.kl_controller,
            # Gemini shards the weights into chunks: there is no whole base weight to fold LoRA into, and its
            # parameter hooks expect every module to run
            merge_lora_for_generation=not gemini,
            share_critic_trunk=not gemini,
        )
        device = self.accelerator.device
        if ref_model is not None:
            ref_model.to(device)
        if not reward_is_function and not self.reward_shares_critic:
            reward_model.to(device)
        if hasattr(model, "add_model_tags"):
            model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------------------------
    # training loop
    # ------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **_kwargs):
        args = self.args
        accelerator = self.accelerator
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in {args.output_dir} to resume from")

        self.create_optimizer()
        if args.activation_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs)
        self.model_wrapped, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        # As transformers' Trainer: the schedule is built on the optimizer that steps, which exists only after
        # prepare (ColossalAI's zero2_cpu/Gemini swap an AdamW for HybridAdam; a scheduler passed in `optimizers`
        # and built on the AdamW stays live too, the two share their param groups).
        self.create_scheduler(num_training_steps=args.num_total_batches)
        model = self.model_wrapped
        torch.manual_seed(args.seed + accelerator.process_index * 100003)  # ranks sample different responses

        self.state.max_steps = args.num_total_batches
        self.state.num_train_epochs = args.total_episodes / len(self.train_dataset)
        self.state.compute_steps(args, args.num_total_batches)
        self.state.global_step = 0
        self.state.episode = 0
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        batcher = PromptBatcher(len(self.train_dataset), args.local_batch_size, args.seed, accelerator.process_index, accelerator.num_processes)
        buffer = ReplayBuffer()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        start_time = time.time()
        start_step = self.state.global_step
        metrics: dict[str, float] = {}

        for update in range(self.state.global_step + 1, args.num_total_batches + 1):
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            rows = [self.train_dataset[int(i)] for i in batcher.batch(update - 1)]
            self.model.eval()
            single_pass = self._single_pass()
            with accelerator.autocast():  # the same precision as the update, or ratios start off 1
                for start in range(0, len(rows), args.experience_batch_size):
                    chunk = self.data_collator([{"input_ids": r["input_ids"]} for r in rows[start : start + args.experience_batch_size]])
                    buffer.append(self.experience_maker.make_experience(chunk, evaluate_policy_and_critic=not single_pass))
            learning_rate = self.lr_scheduler.get_last_lr()[0]  # the rate this update trains with
            if self._every_rank_has_a_usable_sample(buffer, update):
                # Whitening statistics span the whole local rollout batch, as in TRL (not one chunk).
                if args.whiten_rewards and not single_pass:
                    buffer.whiten_rewards(args.gamma, args.lam)
                if args.whiten_advantages and not single_pass:
                    buffer.whiten_advantages()
                self.model.train()
                stats = self._optimize(model, buffer, self._ptx_batches(update), single_pass)
                rollout = self._single_pass_info(buffer, stats.pop("completed")) if single_pass else buffer.merged_info()
            else:
                stats = defaultdict(list, skipped_updates=[1.0])
                rollout = _unusable_rollout_info(buffer, self.kl_controller.value)
            buffer.clear()
            check_finite_weights(self.accelerator.unwrap_model(model), f"update {update}", trainable_only=True)

            global_kl = self._global_mean_kl(rollout)
            if global_kl is not None:  # no sample anywhere: nothing to steer the coefficient by
                self.kl_controller.update(global_kl, args.batch_size)
            if stats["optimizer_steps"]:  # as transformers' Trainer: the schedule waits for a skipped step
                self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.episode += args.batch_size
            self.state.epoch = self.state.episode / len(self.train_dataset)
            metrics = self._metrics(rollout, stats, start_time, start_step, learning_rate)
            self.log(metrics)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_save:
                self._save_checkpoint(model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if args.num_sample_generations > 0 and (update - 1) % self._sample_generations_freq() == 0:
                self.generate_completions(sampling=True)
            if self.control.should_training_stop:
                break

        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return TrainOutput(self.state.global_step, metrics.get("loss/policy_avg", float("nan")), metrics)

    def _single_pass(self) -> bool:
        """Whether the update is one optimizer step on one micro-batch holding the whole local
        rollout batch (one PPO epoch, one minibatch, no accumulation). Then the rollout skips the
        policy's and the critic's forward passes: the update's own forward, with gradients, gives
        exactly the same log-probs and values (ratio 1, value unchanged) and serves both."""
        args = self.args
        return args.num_ppo_epochs == 1 and args.num_mini_batches == 1 and args.gradient_accumulation_steps == 1

    def _every_rank_has_a_usable_sample(self, buffer: ReplayBuffer, update: int) -> bool:
        """Whether every rank's rollout kept at least one row with action tokens (rows whose
        score or rewards were not finite have none). Decided over all ranks, so that they skip
        an update together: a rank that stopped alone would leave the others waiting in their
        next collective call."""
        empty = torch.tensor([0.0 if buffer.usable_samples() else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            empty = self.accelerator.reduce(empty, reduction="sum")
        if empty.item() == 0:
            return True
        logger.warning(
            "Skipping PPO update %d: %d rank(s) have no usable sample (every reward score or reward is NaN or "
            "infinite); check the reward model or function (score_clip bounds huge scores)", update, int(empty.item()),
        )  # fmt: skip
        return False

    def _single_pass_info(self, buffer: ReplayBuffer, completed: list[dict]) -> dict:
        """The rollout's info when :meth:`_single_pass` completed the experience in the update:
        the completed statistics plus the counts the rollout recorded (dropped rows, truncated
        prompts)."""
        info = dict(completed[0])
        for part in buffer.part_infos():
            info["num_nan_scores"] += part.get("num_nan_scores", 0)
            info["num_truncated_prompts"] += part.get("num_truncated_prompts", 0)
        return info

    def _optimize(self, model, buffer: ReplayBuffer, ptx_batches, single_pass: bool = False) -> dict[str, list]:
        """``num_ppo_epochs`` passes of ``num_mini_batches`` optimizer steps over the buffer.

        A minibatch is split into micro-batches of ``per_device_train_batch_size`` rows whose
        gradients accumulate into exactly one optimizer step, in every backend: the step and
        ``zero_grad`` run only on the micro-batch that synchronises gradients (ColossalAI's
        boosted optimizers step whenever asked, Accelerate's wrapper would skip silently).

        Non-finite numbers never reach the weights. A micro-batch whose loss is not finite, or
        whose mean ratio trips ``ratio_guard``, contributes nothing (its backward pass is
        replaced by a zero one that keeps every rank's collective calls in step; the decision
        is reduced over ranks so all of them skip it alike). A step whose accumulated gradient
        norm is not finite is not taken. Both are counted (``ppo/skipped_updates``,
        ``ppo/skipped_steps``). Rows masked out at rollout (non-finite score or rewards) keep
        their place in the batch; a micro-batch made only of them trains nothing and logs
        nothing. A rank left without any usable row skips the update, and so do all the others
        (:meth:`_every_rank_has_a_usable_sample`; in the single pass, at its one micro-batch).

        ``single_pass`` (see :meth:`_single_pass`): the buffer's experiences lack the policy's
        log-probs and the critic's values; the one micro-batch's forward provides them and
        :meth:`ExperienceMaker.complete` turns them into rewards and advantages (whitened over
        the whole batch, which this micro-batch is) before the loss. Its info is returned
        under ``"completed"``.
        """
        args, accelerator = self.args, self.accelerator
        stats: dict[str, list] = defaultdict(list)
        device = accelerator.device
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        max_norm = args.max_grad_norm if args.max_grad_norm else float("inf")  # inf: measure, do not clip
        # rows with a NaN score were dropped: never ask for more minibatches than samples
        for minibatch in buffer.iter_minibatches(min(args.num_mini_batches, len(buffer)), args.num_ppo_epochs):
            micro_batches = minibatch.split(args.per_device_train_batch_size)
            accelerator.gradient_accumulation_steps = len(micro_batches)
            accelerator.step = 0
            for micro in micro_batches:
                micro = micro.to(device)
                with accelerator.accumulate(model):
                    ptx = next(ptx_batches) if ptx_batches is not None else None
                    outputs = self._forward(model, micro, ptx)
                    if single_pass:
                        logprobs, _, values, _ = outputs
                        micro = self.experience_maker.complete(
                            micro, logprobs.detach(), values.detach(),
                            whiten_rewards=args.whiten_rewards, whiten_advantages=args.whiten_advantages,
                        )  # fmt: skip
                        stats["completed"].append(micro.info)
                    loss, parts = self._micro_batch_loss(outputs, micro)
                    has_actions = bool(micro.action_mask.any())
                    # in a single pass this micro-batch is the rank's whole batch: with no usable row left
                    # (every reward overflowed), every rank skips the update together
                    reason = self._skip_reason(loss, parts["ratio"], no_usable_sample=single_pass and not has_actions)
                    if reason is None:
                        if has_actions:  # masked-out rows have no ratio or loss to report: keep them out of the means
                            for name, value in parts.items():
                                stats[name].append(value)
                    else:
                        logger.warning("Skipping a PPO micro-batch at update %d: %s", self.state.global_step + 1, reason)
                        stats["skipped_updates"].append(1.0)
                        loss = sum(parameter.sum() * 0.0 for parameter in trainable)  # no NaN can flow back
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        # a loss scaler (fp16) skips an overflowing step itself and lowers its scale; otherwise a
                        # non-finite norm (the same on every rank) means no step
                        outcome = clip_and_step(accelerator, self.optimizer, trainable, max_norm)
                        if outcome.taken:
                            stats["optimizer_steps"].append(1.0)
                        else:
                            (logger.info if outcome.loss_scaled else logger.warning)(
                                "Not taking the optimizer step at update %d: the gradients are not finite (norm %s)%s",
                                self.state.global_step + 1, outcome.grad_norm,
                                " -- an fp16 overflow, the loss scaler adjusts its scale" if outcome.loss_scaled else "",
                            )  # fmt: skip
                            stats["skipped_steps"].append(1.0)
                        self.optimizer.zero_grad()
        return stats

    def _forward(self, model, micro, ptx):
        """``(logprobs, entropy, values, ptx_loss)`` of a micro-batch, with gradients (see
        :class:`PolicyAndValueWrapper`)."""
        device = self.accelerator.device
        return model(
            sequences=micro.sequences,
            attention_mask=micro.attention_mask,
            prompt_length=micro.prompt_length,
            temperature=self.args.temperature,
            value_at=self.args.value_at,
            ptx_input_ids=None if ptx is None else ptx["input_ids"].to(device),
            ptx_attention_mask=None if ptx is None else ptx["attention_mask"].to(device),
            critic_trunk_states=micro.critic_trunk_states,
        )

    def _micro_batch_loss(self, outputs, micro) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch from its forward ``outputs``, and its parts (floats)::

            L = (1 - ptx_coef) * L_clip + ptx_coef * L_ptx + vf_coef * L_V
        """
        args = self.args
        logprobs, entropy, values, ptx_loss = outputs
        pg_loss, pg_stats = policy_loss(
            logprobs, micro.logprobs, micro.advantages, micro.action_mask, args.cliprange, args.policy_loss_reduction
        )
        vf_loss, vf_stats = value_loss(values, micro.values, micro.returns, micro.action_mask, args.cliprange_value)
        loss = mix_ptx_loss(pg_loss, ptx_loss, args.ptx_coef) + args.vf_coef * vf_loss
        parts = {
            "policy_loss": float(pg_loss.detach()),
            "value_loss": float(vf_loss.detach()),
            "clipfrac": float(pg_stats["clipfrac"]),
            "approx_kl": float(pg_stats["approx_kl"]),
            "ratio": float(pg_stats["ratio_mean"]),
            "vf_clipfrac": float(vf_stats["vf_clipfrac"]),
            "entropy": float(masked_mean(entropy, micro.action_mask)),
        }
        if ptx_loss is not None:
            parts["ptx_loss"] = float(ptx_loss.detach())
        return loss, parts

    def _skip_reason(self, loss: torch.Tensor, ratio_mean: float, no_usable_sample: bool = False) -> str | None:
        """Why this micro-batch must not be applied (None: apply it). The same answer on every
        rank: a rank that must skip makes all of them skip."""
        if no_usable_sample:
            local = 3
        elif not torch.isfinite(loss.detach()).all():
            local = 1
        elif ratio_guard_exceeded(ratio_mean, self.args.ratio_guard):
            local = 2
        else:
            local = 0
        flags = torch.zeros(4, device=self.accelerator.device)
        flags[local] = 1.0
        flags = self.accelerator.reduce(flags, reduction="sum") if self.accelerator.num_processes > 1 else flags
        if flags[3] > 0:
            return f"no usable sample (every reward or return overflowed) on {int(flags[3])} rank(s)"
        if flags[1] > 0:
            return f"the loss is not finite (loss={float(loss.detach()):.4g}) on {int(flags[1])} rank(s)"
        if flags[2] > 0:
            return f"the mean importance ratio exceeds ratio_guard={self.args.ratio_guard} (here {ratio_mean:.4g})"
        return None

    def _global_mean_kl(self, rollout: dict) -> float | None:
        """The rollout's mean sequence KL over every rank, so all ranks steer the same
        coefficient; None when no rank has a sample."""
        count = float(rollout["num_samples"])
        local = torch.tensor([rollout["kl"] * count if count else 0.0, count], device=self.accelerator.device)
        total = self.accelerator.reduce(local, reduction="sum")
        return (total[0] / total[1]).item() if total[1] > 0 else None

    def _metrics(self, rollout: dict, stats: dict, start_time: float, start_step: int, learning_rate: float) -> dict[str, float]:
        """TRL 1.12's metric names, plus coati_hf's (PTX loss, KL coefficient, skips, counts)."""

        def mean(values):
            gathered = self.accelerator.gather_for_metrics(torch.tensor(values or [float("nan")], device=self.accelerator.device))
            return gathered.float().nanmean().item()

        def total(value):
            return self.accelerator.gather_for_metrics(torch.tensor([float(value)], device=self.accelerator.device)).sum().item()

        ratios = self.accelerator.gather_for_metrics(torch.tensor(stats["ratio"] or [float("nan")], device=self.accelerator.device))
        ratios = ratios[~torch.isnan(ratios)]
        elapsed = max(time.time() - start_time, 1e-9)
        metrics = {
            "eps": int((self.state.global_step - start_step) * self.args.batch_size / elapsed),
            "objective/kl": mean([rollout["kl"]]),
            "objective/kl_k3": mean([rollout["kl_k3"]]),
            "objective/kl_coef": rollout["kl_coef"],
            "objective/entropy": mean([rollout["entropy"]]),
            "objective/non_score_reward": mean([rollout["non_score_reward"]]),
            "objective/rlhf_reward": mean([rollout["rlhf_reward"]]),
            "objective/scores": mean([rollout["score"]]),
            "policy/approxkl_avg": mean(stats["approx_kl"]),
            "policy/clipfrac_avg": mean(stats["clipfrac"]),
            "policy/entropy_avg": mean(stats["entropy"]),
            "loss/policy_avg": mean(stats["policy_loss"]),
            "loss/value_avg": mean(stats["value_loss"]),
            "val/clipfrac_avg": mean(stats["vf_clipfrac"]),
            "val/ratio": ratios.float().mean().item() if ratios.numel() else float("nan"),
            "val/ratio_var": ratios.float().var().item() if ratios.numel() > 1 else 0.0,
            "val/num_eos_tokens": total(rollout["num_samples"] - rollout["num_no_stop"]),
            "rollout/response_length": mean([rollout["response_length"]]),
            "rollout/no_eos": total(rollout["num_no_stop"]),
            "rollout/nan_scores": total(rollout["num_nan_scores"]),
            "rollout/truncated_prompts": total(rollout["num_truncated_prompts"]),
            # every rank skips and steps together (the decisions are reduced over ranks): counts per update, not x ranks
            "ppo/skipped_updates": len(stats["skipped_updates"]),
            "ppo/skipped_steps": len(stats["skipped_steps"]),
            "ppo/optimizer_steps": len(stats["optimizer_steps"]),
            "lr": learning_rate,
            "episode": self.state.episode,
        }
        if stats.get("ptx_loss"):
            metrics["loss/ptx_avg"] = mean(stats["ptx_loss"])
        return metrics

    def _ptx_batches(self, update: int):
        """The pretraining batches of one update (None without PTX): an endless stream drawn from a
        generator seeded by ``(seed, update, rank)``, so a resumed run sees the same batches."""
        if self.pretrain_blocks is None:
            return None
        blocks, batch_size = self.pretrain_blocks, self.args.ptx_batch_size
        seed = hash((self.args.seed, update, self.accelerator.process_index)) % (2**63)
        generator = torch.Generator().manual_seed(seed)

        def stream():
            while True:
                order = torch.randperm(len(blocks), generator=generator)
                for start in range(0, len(order) - batch_size + 1, batch_size):
                    yield self.data_collator([blocks[int(i)] for i in order[start : start + batch_size]])

        return stream()

    def _sample_generations_freq(self) -> int:
        return max(1, self.args.num_total_batches // self.args.num_sample_generations)

    # ------------------------------------------------------------------------------------
    # generation for inspection
    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_completions(self, sampling: bool = False):
        """Near-greedy (temperature 0.01) completions of the eval prompts and their scores.

        Returns a ``pandas.DataFrame`` with TRL 1.12's columns ``query``, ``model response`` and
        ``score`` (None without an eval dataset). ``sampling=True`` (the periodic call during
        training) stops after one batch and logs the table; a caller gets the frame to show.
        """
        if self.eval_dataset is None:
            return None
        import pandas as pd

        inspect_config = copy.copy(self.args)
        inspect_config.temperature = 0.01
        maker = copy.copy(self.experience_maker)
        maker.config = inspect_config
        table = defaultdict(list)
        batch_size = self.args.per_device_eval_batch_size
        tokenizer = self.processing_class
        for start in range(0, len(self.eval_dataset), batch_size):
            rows = self.eval_dataset[start : start + batch_size]["input_ids"]
            with self.accelerator.autocast():
                experience = maker.make_experience(self.data_collator([{"input_ids": ids} for ids in rows]))
            prompt_mask = experience.attention_mask[:, : experience.prompt_length].bool()
            for row in range(len(experience)):
                prompt = experience.prompt_ids[row][prompt_mask[row]]
                response = experience.response_ids[row][experience.action_mask[row]]
                # a response cut at response_length may end inside a multi-byte character
                table["query"].append(decode_whole_characters(tokenizer, prompt, skip_special_tokens=True))
                table["model response"].append(decode_whole_characters(tokenizer, response, skip_special_tokens=False))
                table["score"].append(float(experience.scores[row]))
            if sampling:
                break
        frame = pd.DataFrame(table)
        if sampling and self.accelerator.is_main_process:  # the periodic table during training
            logger.info("Sample completions:\n%s", frame.head(5).to_string())
            if "wandb" in (self.args.report_to or []):
                import wandb

                if wandb.run is not None:
                    wandb.log({"completions": wandb.Table(dataframe=frame)})
        return frame

    # ------------------------------------------------------------------------------------
    # saving and resuming
    # ------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """The PPO export (:func:`coati_hf.hub.stages.export_ppo`): the actor at ``output_dir``
        (merged LoRA + ``adapter/``, or the adapter alone with ``save_adapter_only``), the critic
        in ``output_dir/critic``, a card for each and the training curves, replaced in one atomic
        step on the main process. Pushed when ``args.push_to_hub`` and called by the user."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        wrapper = self.accelerator.unwrap_model(self.model_wrapped if self.model_wrapped is not None else self.model)
        policy_state = critic_state = None
        if getattr(self, "colossalai_enabled", False) and self.colossalai_plugin.is_gemini and self.model_wrapped is not None:
            gathered = self.accelerator.get_state_dict(self.model_wrapped)  # collective: every rank
            policy_state = {k[len("policy."):]: v for k, v in gathered.items() if k.startswith("policy.")}
            critic_state = {k[len("value_model."):]: v for k, v in gathered.items() if k.startswith("value_model.")}
            check_finite_weights(None, f"saving {output_dir} at update {self.state.global_step}", state_dict=gathered)
        else:
            check_finite_weights(wrapper, f"saving {output_dir} at update {self.state.global_step}")
        if self.accelerator.is_main_process:
            with dropout_config_restored(wrapper.policy, wrapper.value_model):  # the user's config.json, not PPO's
                export_ppo(self, wrapper.policy, wrapper.value_model, output_dir, policy_state=policy_state, critic_state=critic_state)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:
            self.push_export(output_dir, commit_message="Model save")

    def _save_checkpoint(self, model, trial):
        """A checkpoint is complete or it does not exist.

        Weights, optimizer, scheduler, RNG states, trainer state and the KL coefficient are all
        written inside :meth:`~coati_hf.hub.trainer_mixin.AtomicCheckpointMixin.atomic_checkpoint`:
        into a hidden staging folder that becomes ``checkpoint-N`` in one rename once everything
        is in it; older checkpoints are rotated away only after that. A crash at any point leaves
        the previous checkpoints as they were, and ``resume_from_checkpoint=True`` takes the
        newest complete one. Non-finite weights are never written (``save_model`` raises).
        """
        args = self.args
        with self.atomic_checkpoint(trial) as checkpoint:
            self.save_model(str(checkpoint), _internal_call=True)
            if not args.save_only_model:
                self._save_optimizer_and_scheduler(str(checkpoint))
                self._save_scaler(str(checkpoint))
                self._save_rng_state(str(checkpoint))
            if args.should_save:
                (checkpoint / PPO_STATE_NAME).write_text(json.dumps({"kl_coef": self.kl_controller.value}))
                self.state.save_to_json(str(checkpoint / TRAINER_STATE_NAME))
            if args.push_to_hub:
                self._push_from_checkpoint(str(checkpoint))

    def _resume(self, checkpoint: str) -> None:
        """Load weights, optimizer, scheduler, RNG, trainer state and KL coefficient; a checkpoint
        missing any of them is an error (never a silently fresh optimizer)."""
        from transformers.trainer_callback import TrainerState

        if not os.path.isdir(checkpoint):
            raise ValueError(f"Checkpoint folder {checkpoint} does not exist")
        required = [TRAINER_STATE_NAME, PPO_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME]
        missing = [name for name in required if not os.path.isfile(os.path.join(checkpoint, name))]
        if missing:
            hint = " (it was saved with save_only_model=True)" if OPTIMIZER_NAME in missing and len(missing) == 2 else ""
            raise ValueError(
                f"Cannot resume from {checkpoint}: it has no {', '.join(missing)}{hint}. Resuming without them would "
                "restart the optimizer or schedule silently; pick a complete checkpoint or start a new run."
            )
        wrapper = self.accelerator.unwrap_model(self.model_wrapped)
        _load_weights(wrapper.policy, checkpoint)
        _load_weights(wrapper.value_model, os.path.join(checkpoint, CRITIC_SUBFOLDER))
        self._load_optimizer_and_scheduler(checkpoint)
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        self.state.global_step = state.global_step
        self.state.episode = getattr(state, "episode", state.global_step * self.args.batch_size)
        self.state.log_history = state.log_history
        self.state.epoch = state.epoch
        with open(os.path.join(checkpoint, PPO_STATE_NAME)) as handle:
            self.kl_controller.value = json.load(handle)["kl_coef"]
        self._load_rng_state(checkpoint)
        logger.info("Resumed from %s at step %d", checkpoint, self.state.global_step)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _unusable_rollout_info(buffer: ReplayBuffer, kl_coef: float) -> dict:
    """The rollout statistics of a batch without a usable sample: NaN means (logged as "no
    data", left out of the averages), the counts the rollout recorded."""
    parts = buffer.part_infos()
    info = {key: float("nan") for key in ("kl", "kl_k3", "entropy", "score", "non_score_reward", "rlhf_reward", "response_length")}
    info.update(kl_coef=kl_coef, num_samples=0, num_no_stop=0)
    for key in ("num_nan_scores", "num_truncated_prompts"):
        info[key] = sum(part.get(key, 0) for part in parts)
    return info


def _load_weights(model, folder: str) -> None:
    """Load the weights ``save_for_hub`` wrote into a live (possibly peft) model."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        adapter = os.path.join(folder, "adapter", "adapter_model.safetensors")
        set_peft_model_state_dict(model, load_file(adapter))
        return
    state = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(folder, name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [key for key in missing if key not in tied and not key.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing={missing} unexpected={unexpected}")


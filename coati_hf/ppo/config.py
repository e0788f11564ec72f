"""``PPOConfig``: TRL 1.12's experimental ``PPOConfig``, field for field, plus Coati's options.

Code written for ``trl.experimental.ppo.PPOConfig`` (TRL <= 1.12) keeps working after an
import change: every field of it exists here with the same name, default and meaning, and the
TRL-wide overrides of ``TrainingArguments`` defaults are the same (``logging_steps=10``,
``learning_rate=3e-6``). ``exp_name`` from TRL's older ``OnPolicyConfig`` is accepted too.

Three deliberate differences from TRL:

- Activation (gradient) checkpointing is off unless asked for. TRL 1.12's ``PPOConfig``
  declared ``gradient_checkpointing=True``, but its PPO loop (which replaces
  ``Trainer.train``, where transformers switches checkpointing on) never enabled it: TRL's
  PPO runs trained without it. coati_hf's default is what those runs did; set
  ``activation_checkpointing=True`` (or the deprecated ``gradient_checkpointing=True``) and it
  is really switched on, trading a second forward pass of the actor for its activations.

- ``bf16`` left unset means "bf16 where the hardware trains in it (a CUDA device with bf16),
  else fp32", not TRL's unconditional bf16 (which stops CPU users before training starts).
- The derived batch sizes (``world_size``, ``local_batch_size``, ``micro_batch_size``,
  ``batch_size``, ``mini_batch_size``, ``local_mini_batch_size``, ``num_total_batches``) are
  filled in at construction from the current process group, with TRL's formulas and checks;
  the trainer calls :meth:`PPOConfig.compute_batch_sizes` again once it knows the number of
  processes and the dataset length.

Coati's additions (see the field help texts): ``ptx_coef``, ``ptx_batch_size``,
``experience_batch_size``, ``kl_controller``/``kl_target``/``kl_horizon``, ``reward_placement``,
``score_clip``, ``ratio_guard``, ``value_at``, ``policy_loss_reduction``, ``whiten_advantages``,
``max_prompt_length``/``truncate_prompts``; coati_hf's own: ``critic_adapter_fraction`` (how much
of the reward model's backbone the recommended critic adapts). ``colossalai_strategy`` and the
bf16 rule come from :class:`coati_hf.trainer_common.CoatiArgumentsMixin`, shared with the SFT and reward configs.
Defaults are the TRL / textbook behaviour; Coati's own choices are one option away
(``reward_placement="all_tokens"``, ``score_clip=5.0``, ``value_at="action"``,
``policy_loss_reduction="sequence"``, ``whiten_advantages=False``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from ..trainer_common import CoatiArgumentsMixin, DataArgumentsMixin

logger = logging.getLogger(__name__)

__all__ = ["PPOConfig"]


def _exact_div(a: int, b: int, message: str) -> int:
    quotient = a // b
    if a != quotient * b:
        raise ValueError(f"{message}, inexact division: {a} / {b} = {a / b}")
    return quotient


@dataclass
class PPOConfig(CoatiArgumentsMixin, DataArgumentsMixin, TrainingArguments):
    r"""Configuration of coati_hf's PPO trainer (fields of TRL 1.12's experimental ``PPOConfig``
    plus Coati's). Parse it from the command line with ``HfArgumentParser``.

    Defaults that differ from ``TrainingArguments`` (as in TRL): ``learning_rate=3e-6``,
    ``logging_steps=10``; ``bf16=None`` (resolved to what the hardware supports); activation
    checkpointing off unless either of its names is set (what TRL 1.12's PPO loop did).
    """

    # ---- TrainingArguments defaults overridden as in TRL ---------------------------------------
    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X updates steps. Should be an integer or a float in range `[0,1)`. If smaller than 1, "
            "will be interpreted as ratio of total training steps."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to use bf16 (mixed) precision instead of 32-bit. If not set, bf16 is used where the "
            "hardware supports it (a CUDA device with bf16) and `fp16` is not set; fp32 otherwise (e.g. on CPU)."
        },
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Additional parameters for the lr_scheduler, such as {'num_cycles': 1} for cosine with hard "
            "restarts. See the documentation of each scheduler for possible values."
        },
    )
    use_liger_kernel: bool = field(
        default=False,
        metadata={
            "help": "Enable Liger Kernel optimizations. Increases throughput by ~20%% and reduces memory by ~60%%."
        },
    )
    torch_empty_cache_steps: int | None = field(
        default=None,
        metadata={
            "help": "Number of steps to wait before calling `torch.<device>.empty_cache()`. Helps avoid CUDA OOM at a "
            "cost of ~10%% slower performance. If None, cache will not be emptied."
        },
    )

    # ---- TRL 1.12 experimental PPOConfig ---------------------------------------------------------
    exp_name: str = field(
        default="ppo_config",
        metadata={"help": "Name of this experiment (kept from TRL's older OnPolicyConfig)."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for processing the dataset."}
    )
    num_mini_batches: int = field(default=1, metadata={"help": "Number of minibatches to split a batch into."})
    total_episodes: int | None = field(default=None, metadata={"help": "Total number of episodes in the dataset."})
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Per rank no grad forward pass in the rollout phase."}
    )
    num_sample_generations: int = field(
        default=10,
        metadata={
            "help": "Number of debugging samples generations (i.e., `generate_completions` calls) throughout training."
        },
    )
    response_length: int = field(default=53, metadata={"help": "Length of the response."})
    stop_token: Literal["eos"] | None = field(
        default=None,
        metadata={
            "help": "Specifies the stop token to use for text generation. This parameter is mutually exclusive with "
            "`stop_token_id`. `None`: no stop token is applied, unless `stop_token_id` is specified. `'eos'`: uses "
            "the tokenizer's `eos_token`."
        },
    )
    stop_token_id: int | None = field(
        default=None,
        metadata={
            "help": "Specifies the ID of the stop token to use for text generation. If `None`, no stop token ID is "
            "applied, unless `stop_token` is specified. This parameter is mutually exclusive with `stop_token`."
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Penalty applied to the score when the model fails to generate an EOS token. This is useful to "
            "encourage to generate completions shorter than the maximum length (`max_new_tokens`). The penalty must be "
            "a positive value."
        },
    )
    sft_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path to the SFT model."})
    world_size: int | None = field(
        default=None, metadata={"help": "Number of processes (GPUs) to use for the training."}
    )
    num_total_batches: int | None = field(default=None, metadata={"help": "Number of total batches to train."})
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "Micro batch size across devices (HF's `per_device_train_batch_size` * `world_size`)."},
    )
    local_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size per GPU (HF's `per_device_train_batch_size` * `gradient_accumulation_steps`)."},
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size across devices (HF's `per_device_train_batch_size` * `world_size` * "
            "`gradient_accumulation_steps`)."
        },
    )
    local_mini_batch_size: int | None = field(default=None, metadata={"help": "Mini batch size per GPU."})
    mini_batch_size: int | None = field(default=None, metadata={"help": "Mini batch size across GPUs."})
    push_to_hub: bool = field(default=False, metadata={"help": "Whether to push the model to the Hub after training."})
    reward_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path to the reward model."})
    model_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Name of the train target PEFT adapter, when using LoRA with multiple adapters."},
    )
    ref_adapter_name: str | None = field(
        default=None, metadata={"help": "Name of the reference PEFT adapter, when using LoRA with multiple adapters."}
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Number of epochs to train."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whether to whiten the rewards."})
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "KL coefficient (the initial one when `kl_controller='adaptive'`)."},
    )
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={
            "help": "Which estimator for KL-Divergence to use from Approximating KL Divergence "
            "(http://joschu.net/blog/kl-approx.html). Defaults to 'k1', a straightforward, unbiased estimator. Can be "
            "set to 'k3', an unbiased estimator with lower variance which 'appears to be a strictly better "
            "estimator'. Cannot be set to 'k2', as it is used for logging purposes."
        },
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value function coefficient."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range for the value function."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda value for GAE."})
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={
            "help": "This setting applies to DeepSpeed ZeRO-3. If enabled, the policy model weights are gathered for "
            "generation, improving generation speed. However, disabling this option allows training models that "
            "exceed the VRAM capacity of a single GPU, albeit at the cost of slower generation."
        },
    )

    # ---- Coati (ColossalChat) additions -----------------------------------------------------------
    ptx_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the pretraining (PTX) language-modelling loss: actor loss = (1 - ptx_coef) * policy "
            "loss + ptx_coef * PTX loss. 0 disables PTX (needs no pretraining data)."
        },
    )
    ptx_batch_size: int | None = field(
        default=None,
        metadata={"help": "Per-device batch size of the pretraining (PTX) data. None: per_device_train_batch_size."},
    )
    experience_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Number of prompts per experience-making call (generation + scoring). None: "
            "per_device_train_batch_size."
        },
    )
    kl_controller: Literal["fixed", "adaptive"] = field(
        default="fixed",
        metadata={
            "help": "'fixed' keeps kl_coef constant; 'adaptive' is Ziegler et al.'s controller that steers the "
            "sequence-level KL towards kl_target over kl_horizon episodes."
        },
    )
    kl_target: float = field(default=6.0, metadata={"help": "Target KL of the adaptive KL controller."})
    kl_horizon: float = field(
        default=10000.0, metadata={"help": "Horizon (in episodes) of the adaptive KL controller."}
    )
    reward_placement: Literal["last_token", "all_tokens"] = field(
        default="last_token",
        metadata={
            "help": "Where the reward-model score enters the per-token rewards: 'last_token' (the last response "
            "token, i.e. the stop token; TRL and DeepSpeed-Chat) or 'all_tokens' (added to every response token, "
            "as Coati does)."
        },
    )
    score_clip: float | None = field(
        default=None,
        metadata={"help": "Clip the reward-model score to [-score_clip, score_clip] (Coati uses 5.0). None: no clip."},
    )
    ratio_guard: float | None = field(
        default=20.0,
        metadata={
            "help": "Skip a minibatch update whose mean importance ratio exceeds this value (or is not finite), as "
            "Coati does. None disables the guard."
        },
    )
    value_at: Literal["state", "action"] = field(
        default="state",
        metadata={
            "help": "Which position the critic's value of step t is read at. 'state': the position before the "
            "action token, i.e. V(s_t) of the state the action was chosen in, aligned with the log-prob of a_t "
            "(TRL, DeepSpeed-Chat). 'action': the action token itself (Coati)."
        },
    )
    policy_loss_reduction: Literal["token", "sequence"] = field(
        default="token",
        metadata={
            "help": "How the clipped policy loss is averaged: 'token' = over every response token of the minibatch "
            "(TRL); 'sequence' = per sequence, then over sequences (Coati)."
        },
    )
    whiten_advantages: bool = field(
        default=True,
        metadata={"help": "Whiten the advantages over each experience batch (TRL does; Coati does not)."},
    )
    critic_adapter_fraction: float = field(
        default=0.25,
        metadata={
            "help": "With value_model=None and a peft_config, the critic is the reward model plus its own LoRA "
            "adapter and value head. This fraction of the reward backbone's layers, counted from the top, carry "
            "that adapter; the layers below stay the reward model's own, so the critic's backward pass and its "
            "saved activations stop there, and the reward pass computes them once for both. 1.0: every layer."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt (in tokens) accepted. None: no limit."},
    )
    truncate_prompts: bool = field(
        default=False,
        metadata={
            "help": "What to do with a prompt longer than max_prompt_length: True keeps its last max_prompt_length "
            "tokens (and counts it); False raises an error."
        },
    )

    def __post_init__(self):
        # bf16=None is resolved by CoatiArgumentsMixin (bf16 only where the hardware supports it).
        # Off unless asked for under either name (transformers 5's `activation_checkpointing`, or the deprecated
        # `gradient_checkpointing`): TRL 1.12's PPO loop never enabled it, whatever its config said.
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = False
        self._validate_ppo_fields()
        world_size = self.world_size
        # TRL declares `world_size` as a field, which hides TrainingArguments' property of the same name; the
        # parent's __post_init__ only needs the device set up, so the field is filled in afterwards.
        super().__post_init__()  # CoatiArgumentsMixin (bf16), then TrainingArguments
        if self.experience_batch_size is None:
            self.experience_batch_size = self.per_device_train_batch_size
        if self.ptx_batch_size is None:
            self.ptx_batch_size = self.per_device_train_batch_size
        if world_size is None:
            world_size = TrainingArguments.world_size.fget(self)
        self.compute_batch_sizes(world_size=world_size)

    def _validate_ppo_fields(self) -> None:
        """Refuse, at construction, every value that would train on wrong numbers later.

        Each message names the field, the allowed range and the value given.
        """

        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

        def number(name, allowed: str, ok) -> None:
            value = getattr(self, name)
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"PPOConfig.{name} must be {allowed}, got {value!r}")

        choice("kl_estimator", ("k1", "k3"))
        choice("kl_controller", ("fixed", "adaptive"))
        choice("reward_placement", ("last_token", "all_tokens"))
        choice("value_at", ("state", "action"))
        choice("policy_loss_reduction", ("token", "sequence"))
        choice("stop_token", ("eos", None))
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("You cannot set both `stop_token` and `stop_token_id`.")
        for name in (
            "response_length",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "experience_batch_size",
            "ptx_batch_size",
            "local_rollout_forward_batch_size",
            "num_mini_batches",
            "num_ppo_epochs",
        ):
            number(name, "an integer >= 1", lambda v: v >= 1 and float(v).is_integer())
        number("kl_coef", "a finite number >= 0", lambda v: v >= 0)
        number("vf_coef", "a finite number >= 0", lambda v: v >= 0)
        number("cliprange", "a finite number > 0", lambda v: v > 0)
        number("cliprange_value", "a finite number > 0 (or None: no value clipping)", lambda v: v > 0)
        number("gamma", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        number("lam", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        number("ptx_coef", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        number("temperature", "a finite number > 0 (PPO samples its responses)", lambda v: v > 0)
        number("missing_eos_penalty", "a finite number >= 0 (it is subtracted from the score)", lambda v: v >= 0)
        number("critic_adapter_fraction", "in (0, 1]", lambda v: 0.0 < v <= 1.0)
        for name in ("score_clip", "ratio_guard", "max_prompt_length"):
            number(name, "a finite number > 0, or None", lambda v: v > 0)
        if self.kl_controller == "adaptive":
            number("kl_target", "a finite number > 0 for the adaptive KL controller", lambda v: v > 0)
            number("kl_horizon", "a finite number > 0 for the adaptive KL controller", lambda v: v > 0)
        if self.total_episodes is not None:
            number("total_episodes", "an integer >= 1, or None", lambda v: v >= 1)

    def compute_batch_sizes(self, world_size: int | None = None, train_dataset_len: int | None = None) -> None:
        """Fill in TRL's derived batch sizes (same formulas and divisibility checks as TRL's
        ``PPOTrainer.__init__``). ``train_dataset_len`` turns ``num_train_epochs`` into
        ``total_episodes`` when that is unset, and gives ``num_total_batches``."""
        if world_size is not None:
            self.world_size = int(world_size)
        world = self.world_size or 1
        if self.total_episodes is None and train_dataset_len is not None:
            self.total_episodes = int(self.num_train_epochs * train_dataset_len)
        self.local_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps
        self.micro_batch_size = int(self.per_device_train_batch_size * world)
        self.batch_size = int(self.local_batch_size * world)
        self.mini_batch_size = _exact_div(
            self.batch_size, self.num_mini_batches, "`batch_size` must be a multiple of `num_mini_batches`"
        )
        self.local_mini_batch_size = _exact_div(
            self.local_batch_size, self.num_mini_batches, "`local_batch_size` must be a multiple of `num_mini_batches`"
        )
        if self.whiten_rewards and self.local_mini_batch_size < 8:
            # TRL asserts here; coati_hf whitens rewards over the whole experience batch, not per minibatch.
            logger.warning(
                "whiten_rewards with a per-rank minibatch of %d: whitening statistics from few samples are noisy.",
                self.local_mini_batch_size,
            )
        if self.total_episodes is not None:
            self.num_total_batches = math.ceil(self.total_episodes / self.batch_size)

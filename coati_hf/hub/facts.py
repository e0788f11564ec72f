"""What a card says about how a model was trained, read from the run: settings and counts.

Every value here is one that acted in the run, with its unit and count as they were:

- :func:`hyperparameters`: the settings table. SFT and the reward model train for
  ``max_steps`` (or epochs when that is unset); PPO for ``total_episodes`` prompts, so its
  table has no epoch or step budget that did not act.
- :func:`describe_optimizer`: "AdamW (`adamw_torch_fused`), β1=0.9, β2=0.999, ε=1e-08, ...".
- :func:`examples_seen`: optimizer steps × global batch (rows of a partial last batch of an
  epoch counted as they were); :func:`ppo_optimizer_steps`: the logged ``ppo/optimizer_steps``
  totals, else updates × epochs × minibatches.
- :func:`lora_summary`: LoRA's rank, alpha, dropout, modules and which layers it covers
  (peft's ``layers_to_transform``; every layer when unset).
"""

from __future__ import annotations

import math

from .export import is_peft_model

STAGE_HYPERPARAMETERS = {
    "sft": ("max_length", "packing", "completion_only_loss", "assistant_only_loss"),
    "reward-model": ("loss_fn", "max_length", "center_rewards_coefficient"),
    "ppo": (
        "response_length", "temperature", "stop_token", "missing_eos_penalty", "kl_coef", "kl_estimator", "kl_controller",
        "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "whiten_rewards", "reward_placement", "value_at", "ptx_coef",
    ),
}  # fmt: skip
CRITIC_HYPERPARAMETERS = ("vf_coef", "cliprange_value", "gamma", "lam", "value_at", "whiten_rewards")
_OPTIMIZER_FAMILIES = (("adamw", "AdamW"), ("adafactor", "Adafactor"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop"),
                       ("lion", "Lion"), ("sgd", "SGD"), ("adam", "Adam"))  # fmt: skip


def _args(trainer, name, default=None):
    return getattr(trainer.args, name, default)


def _value(setting):
    """An enum setting's own value (``"adamw_torch_fused"``), anything else as it is."""
    return getattr(setting, "value", setting)


def describe_optimizer(args) -> str:
    """The optimizer as a person writes it, with the settings that act for it."""
    name = str(_value(args.optim))
    family = next((title for prefix, title in _OPTIMIZER_FAMILIES if name.lower().startswith(prefix) or prefix in name.lower()), name)
    parts = [f"{family} (`{name}`)" if family != name else f"`{name}`"]
    if "adam" in name.lower():
        parts.append(f"β1={args.adam_beta1}, β2={args.adam_beta2}, ε={args.adam_epsilon}")
    parts.append(f"weight decay {args.weight_decay}")
    if args.optim_args:
        parts.append(f"optim_args {args.optim_args}")
    return ", ".join(parts)


def _world(args) -> int:
    return int(getattr(args, "world_size", None) or 1)


def global_batch_size(args) -> int:
    return int(args.per_device_train_batch_size * args.gradient_accumulation_steps * _world(args))


def _dataset_size(dataset) -> int | None:
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def examples_seen(trainer) -> int:
    """Training examples the optimizer steps used: steps × global batch, where an epoch that ends
    in a partial batch (single process, ``dataloader_drop_last`` off) counts the rows it had."""
    args, steps = trainer.args, trainer.state.global_step
    batch = global_batch_size(args)
    rows = _dataset_size(getattr(trainer, "train_dataset", None))
    if not rows or rows % batch == 0 or args.dataloader_drop_last or _world(args) > 1:
        return steps * batch
    steps_per_epoch = math.ceil(rows / batch)
    epochs, rest = divmod(steps, steps_per_epoch)
    return epochs * rows + min(rest * batch, rows)


def ppo_optimizer_steps(trainer) -> int:
    """Optimizer steps a PPO run took: the logged ``ppo/optimizer_steps`` of each update, else
    (nothing logged) updates × ``num_ppo_epochs`` × ``num_mini_batches``."""
    logged = [entry["ppo/optimizer_steps"] for entry in trainer.state.log_history if "ppo/optimizer_steps" in entry]
    if logged:
        return int(sum(logged))
    return trainer.state.global_step * trainer.args.num_ppo_epochs * trainer.args.num_mini_batches


def _count(number, unit: str) -> str:
    return f"{number} {unit}{'' if number == 1 else 's'}"


def scale_note(trainer, stage: str) -> str:
    """One sentence with the run's size, and what that size means."""
    rows = _dataset_size(getattr(trainer, "train_dataset", None))
    steps = trainer.state.global_step
    if stage.startswith("ppo"):
        episodes = getattr(trainer.state, "episode", None) or steps * trainer.args.batch_size
        prompts = f"; the prompt set has {rows}" if rows is not None else ""
        note = (f"This run took {_count(steps, 'PPO update')} of {trainer.args.batch_size} prompts ({episodes} episodes{prompts}), "
                f"{_count(ppo_optimizer_steps(trainer), 'optimizer step')}")  # fmt: skip
    else:
        seen = f"{examples_seen(trainer)} examples seen" + (f" from a training set of {rows} examples" if rows is not None else "")
        note = f"This run took {_count(steps, 'optimizer step')} of {global_batch_size(trainer.args)} examples ({seen})"
    if steps < 100:
        note += "; at that scale it demonstrates the pipeline rather than giving a useful model"
    return note + "."


def _layers(config, model) -> str | None:
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    chosen = getattr(config, "layers_to_transform", None)
    if chosen is None:
        return f"all {num_layers} layers" if num_layers else "all layers"
    chosen = [chosen] if isinstance(chosen, int) else sorted(chosen)
    of = f" of {num_layers}" if num_layers else ""
    return f"{len(chosen)}{of} (layers_to_transform={chosen})"


def lora_summary(model) -> dict:
    """LoRA settings of a PEFT model (empty for a full fine-tune)."""
    if not is_peft_model(model):
        return {}
    config = next(iter(model.peft_config.values()))
    targets = getattr(config, "target_modules", None)
    return {
        "lora_r": getattr(config, "r", None),
        "lora_alpha": getattr(config, "lora_alpha", None),
        "lora_dropout": getattr(config, "lora_dropout", None),
        "lora_target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "lora_layers": _layers(config, model),
    }


def adapted_layers(model) -> tuple[list[int] | None, int | None]:
    """``(layers_to_transform or None for all, num_hidden_layers)`` of a PEFT model."""
    config = next(iter(model.peft_config.values()))
    chosen = getattr(config, "layers_to_transform", None)
    chosen = [chosen] if isinstance(chosen, int) else (sorted(chosen) if chosen is not None else None)
    return chosen, getattr(getattr(model, "config", None), "num_hidden_layers", None)


def adaptation(model) -> str:
    lora = lora_summary(model)
    return f"LoRA r={lora['lora_r']}" if lora else "full fine-tune"


def _common_settings(trainer) -> dict:
    args = trainer.args
    values = {"learning_rate": args.learning_rate, "per_device_train_batch_size": args.per_device_train_batch_size}
    if args.gradient_accumulation_steps > 1:
        values["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    if _world(args) > 1:
        values["num_devices"] = _world(args)
    return values


def _schedule(args) -> dict:
    values = {"optimizer": describe_optimizer(args), "lr_scheduler_type": _value(args.lr_scheduler_type)}
    if args.warmup_steps:
        values["warmup_steps"] = args.warmup_steps
    if getattr(args, "max_grad_norm", None):
        values["max_grad_norm"] = args.max_grad_norm
    values["seed"] = args.seed
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else None
    if precision:
        values["mixed_precision"] = precision
    return values


def hyperparameters(trainer, stage: str, model) -> dict:
    """The settings that acted in the run (see the module docstring), the stage's own and LoRA's."""
    args = trainer.args
    values = _common_settings(trainer)
    if stage == "ppo":
        values.update(
            batch_size=args.batch_size, num_mini_batches=args.num_mini_batches, mini_batch_size=args.mini_batch_size,
            num_ppo_epochs=args.num_ppo_epochs, total_episodes=args.total_episodes, ppo_updates=args.num_total_batches,
        )  # fmt: skip
    else:
        values["global_batch_size"] = global_batch_size(args)
        if getattr(trainer, "eval_dataset", None) is not None:
            values["per_device_eval_batch_size"] = args.per_device_eval_batch_size
        if args.max_steps and args.max_steps > 0:
            values["max_steps"] = args.max_steps
        else:
            values["num_train_epochs"] = args.num_train_epochs
    values.update(_schedule(args))
    for name in STAGE_HYPERPARAMETERS.get(stage, ()):
        value = _args(trainer, name)
        if value is not None:
            values[name] = _value(value)
    values.update({key: value for key, value in lora_summary(model).items() if value is not None})
    return values


def critic_hyperparameters(trainer, critic) -> dict:
    values = {name: _value(_args(trainer, name)) for name in CRITIC_HYPERPARAMETERS if _args(trainer, name) is not None}
    values.update({key: value for key, value in lora_summary(critic).items() if value is not None})
    return values


def stage_settings(trainer, stage: str, model) -> str:
    """The one-line "key settings" of a lineage step."""
    args = trainer.args
    parts = [adaptation(model), f"lr {args.learning_rate}"]
    if stage == "reward-model":
        parts.insert(1, f"loss {_args(trainer, 'loss_fn', 'log_sig')}")
    if stage == "ppo":
        parts.insert(1, f"kl_coef {_args(trainer, 'kl_coef')}")
        parts += [_count(trainer.state.global_step, "PPO update"), _count(ppo_optimizer_steps(trainer), "optimizer step")]
    else:
        parts.append(f"{_count(trainer.state.global_step, 'optimizer step')} × {global_batch_size(args)} examples")
    return ", ".join(parts)

"""A trainer's model → a complete export: weights, card, plots, manifest, in one atomic step.

:func:`export_trainer_model` serves the SFT and reward trainers (one model);
:func:`export_ppo` the PPO trainer (the actor at the root, the critic in ``critic/``, both
inside the same atomic replacement, so an old critic never sits beside a new actor).

What the card says is read from the run: the model's origin (:mod:`coati_hf.hub.origin`), the
config (``card_*`` fields and transformers' ``extract_hyperparameters_from_trainer``), the
datasets, and the log history (``parse_log_history`` for evaluation rows, the logged steps
otherwise). Stage names: ``"sft"``, ``"reward-model"``, ``"ppo"``, and ``"ppo-critic"`` for the
critic's own card.
"""

from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path

from .cards import (
    PIPELINE_TAGS,
    key_value_table,
    library_versions,
    lineage_table,
    log_table,
    plots_markdown,
    render_card,
)
from .export import ExportError, export_directory, export_layout, is_peft_model, local_paths_of, save_weights
from .origin import (
    CARD_KEY,
    Origin,
    dataset_identifier,
    describe_datasets,
    lineage_entry,
    merge_lineages,
    nearest_hub_id,
    resolve_origin,
)
from .plots import STAGE_PLOTS, write_plots

logger = logging.getLogger(__name__)

CRITIC_SUBFOLDER = "critic"
UNKNOWN_LICENSE = "unknown"
TITLES = {
    "sft": "SFT policy trained with coati_hf",
    "reward-model": "Reward model trained with coati_hf",
    "ppo": "PPO policy trained with coati_hf",
    "ppo-critic": "PPO critic trained with coati_hf",
}
STAGE_HYPERPARAMETERS = {
    "sft": ("max_length", "packing", "completion_only_loss", "assistant_only_loss"),
    "reward-model": ("loss_fn", "max_length", "center_rewards_coefficient"),
    "ppo": (
        "total_episodes", "response_length", "temperature", "stop_token", "missing_eos_penalty", "kl_coef",
        "kl_estimator", "kl_controller", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam",
        "num_ppo_epochs", "num_mini_batches", "whiten_rewards", "reward_placement", "value_at", "ptx_coef",
    ),
}  # fmt: skip
CRITIC_HYPERPARAMETERS = ("vf_coef", "cliprange_value", "gamma", "lam", "value_at", "whiten_rewards")


# ---------------------------------------------------------------------------------------------
# facts read from a run
# ---------------------------------------------------------------------------------------------


def _args(trainer, name, default=None):
    return getattr(trainer.args, name, default)


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
    }


def hyperparameters(trainer, stage: str, model) -> dict:
    """transformers' summary of the training arguments, the stage's own settings, and LoRA's."""
    from transformers.modelcard import extract_hyperparameters_from_trainer

    values = extract_hyperparameters_from_trainer(trainer)
    for name in STAGE_HYPERPARAMETERS.get(stage, ()):
        value = _args(trainer, name)
        if value is not None:
            values[name] = value
    values.update({k: v for k, v in lora_summary(model).items() if v is not None})
    return values


def _adaptation(model) -> str:
    lora = lora_summary(model)
    return f"LoRA r={lora['lora_r']}" if lora else "full fine-tune"


def _last(log_history, key):
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None


def _steps(log_history, key) -> list[float]:
    return [float(e[key]) for e in log_history if key in e and e[key] == e[key]]


def _dataset_size(dataset) -> int | None:
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def scale_note(trainer) -> str:
    steps = trainer.state.global_step
    rows = _dataset_size(getattr(trainer, "train_dataset", None))
    note = f"This run took {steps} optimizer step(s)" + (f" over {rows} training examples" if rows is not None else "")
    if steps < 100:
        note += "; at that scale it demonstrates the pipeline rather than giving a useful model"
    return note + "."


def run_datasets(trainer) -> list[str]:
    """The training data as the card names it: ``push_to_hub(dataset_name=...)`` or
    ``create_model_card(dataset_name=...)``, else the config's ``card_datasets``, else what the
    train dataset records about its source (:func:`coati_hf.hub.origin.describe_datasets`)."""
    for chosen in (getattr(trainer, "_coati_card_options", {}).get("dataset_name"), _args(trainer, "card_datasets")):
        if chosen:
            return [chosen] if isinstance(chosen, str) else list(chosen)
    return describe_datasets(getattr(trainer, "train_dataset", None))


def _eval_result(stage, dataset, metric_type, name, value):
    from huggingface_hub import EvalResult

    return EvalResult(
        task_type=PIPELINE_TAGS[stage],
        dataset_type=dataset_identifier(dataset),
        dataset_name=dataset,
        metric_type=metric_type,
        metric_name=name,
        metric_value=round(float(value), 6),
    )


def stage_results(trainer, stage: str) -> tuple[list, dict]:
    """``(eval_results for model-index, summary for the lineage)`` of a finished run."""
    history = trainer.state.log_history
    eval_data = describe_datasets(getattr(trainer, "eval_dataset", None)) if getattr(trainer, "eval_dataset", None) is not None else None
    train_data = (run_datasets(trainer) or ["training data"])[0]
    results, summary = [], {}
    if stage == "sft":
        loss = _last(history, "loss")
        if loss is not None:
            results.append(_eval_result(stage, train_data, "loss", "train loss (last logged step)", loss))
            summary["train loss"] = loss
        if _last(history, "eval_loss") is not None:
            results.append(_eval_result(stage, eval_data[0], "loss", "eval loss", _last(history, "eval_loss")))
            summary["eval loss"] = _last(history, "eval_loss")
        accuracy = _last(history, "eval_mean_token_accuracy")
        if accuracy is not None:
            results.append(_eval_result(stage, eval_data[0], "accuracy", "eval mean token accuracy", accuracy))
    elif stage == "reward-model":
        for prefix, data, where in (("eval_", eval_data[0] if eval_data else None, "eval"), ("", train_data, "train")):
            accuracy = _last(history, f"{prefix}accuracy")
            if accuracy is None or data is None:
                continue
            results.append(_eval_result(stage, data, "accuracy", f"{where} reward accuracy", accuracy))
            summary[f"{where} reward accuracy"] = accuracy
            margin = _last(history, f"{prefix}margin")
            if margin is not None:
                results.append(_eval_result(stage, data, "margin", f"{where} mean reward margin", margin))
            break  # the eval set's figures when there is one, else the last training figures
    elif stage == "ppo":
        scores = _steps(history, "objective/scores")
        if scores:
            kl = _steps(history, "objective/kl")
            values = [
                ("mean_reward", "mean reward over training", statistics.fmean(scores)),
                ("reward_before", "reward at the first update", scores[0]),
                ("reward_after", "reward at the last update", scores[-1]),
            ]
            if kl:
                values.append(("kl", "KL from the reference policy at the last update", kl[-1]))
            results = [_eval_result(stage, train_data, kind, name, value) for kind, name, value in values]
            summary = {"reward before": scores[0], "reward after": scores[-1], "KL": kl[-1] if kl else None}
    return results, summary


def results_table(trainer, stage: str) -> str:
    """Evaluation rows from ``parse_log_history`` when the run evaluated, else the logged steps."""
    from transformers.modelcard import make_markdown_table, parse_log_history

    history = trainer.state.log_history
    train_log, eval_lines, _ = parse_log_history(history)
    parts = []
    if eval_lines:
        parts.append(make_markdown_table(eval_lines).strip())
    columns = {
        "sft": {"loss": "Training loss", "mean_token_accuracy": "Token accuracy", "learning_rate": "Learning rate"},
        "reward-model": {"loss": "Training loss", "accuracy": "Accuracy", "margin": "Margin", "learning_rate": "Learning rate"},
        "ppo": {
            "objective/scores": "Reward", "objective/rlhf_reward": "Reward - KL penalty", "objective/kl": "KL",
            "objective/entropy": "Entropy", "loss/policy_avg": "Policy loss", "loss/value_avg": "Value loss",
        },
        "ppo-critic": {"loss/value_avg": "Value loss", "val/clipfrac_avg": "Value clip fraction"},
    }[stage]  # fmt: skip
    steps = log_table([e for e in history if not any(k.startswith("eval_") for k in e)], columns)
    if steps:
        parts.append(steps)
    if train_log and "train_loss" in train_log:
        parts.append(f"Mean training loss {train_log['train_loss']:.4g} over {train_log.get('step', trainer.state.global_step)} steps.")
    return "\n\n".join(parts) if parts else "No metrics were logged in this run."


def stage_settings(trainer, stage: str, model, summary: dict) -> str:
    """The one-line "key settings" of a lineage step."""
    parts = [_adaptation(model), f"lr {_args(trainer, 'learning_rate')}", f"{trainer.state.global_step} steps"]
    if stage == "reward-model":
        parts.insert(1, f"loss {_args(trainer, 'loss_fn', 'log_sig')}")
    if stage == "ppo":
        parts.insert(1, f"kl_coef {_args(trainer, 'kl_coef')}")
    for key, value in summary.items():
        if value is not None:
            parts.append(f"{key} {value:.4g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------


def build_card(
    trainer,
    *,
    stage: str,
    model,
    origin: Origin,
    lineage: list[dict],
    reference: str,
    layout: str,
    plots: list[dict],
    tags: list[str],
    datasets: list[str],
    results: list,
    hyperparameters_table: str,
    results_table_md: str,
    subfolder: str | None = None,
    **context,
):
    from huggingface_hub import ModelCardData

    base = origin.hub_id or nearest_hub_id(lineage)
    relation = "adapter" if layout == "adapter" else "finetune"
    block = {"stage": stage, "reference": reference, "layout": layout, "lineage": lineage}
    if subfolder:
        block["subfolder"] = subfolder
    notes = list(dict.fromkeys(origin.notes))
    if notes:
        block["notes"] = notes
    options = getattr(trainer, "_coati_card_options", {})
    license = options.get("license") or _args(trainer, "card_license") or origin.license or UNKNOWN_LICENSE
    data = ModelCardData(
        base_model=base,
        base_model_relation=relation if base else None,
        datasets=datasets or None,
        library_name="peft" if layout == "adapter" else "transformers",
        pipeline_tag=PIPELINE_TAGS[stage],
        license=license,
        tags=tags,
        model_name=reference if results else None,
        eval_results=results or None,
        **{CARD_KEY: block},
    )
    return render_card(
        stage,
        data,
        title=TITLES[stage],
        model_id=reference,
        layout=layout,
        adapter_base=origin.reference,
        lineage_table=lineage_table(lineage),
        datasets=datasets or ["not recorded"],
        hyperparameters_table=hyperparameters_table,
        results_table=results_table_md,
        plots_markdown=plots_markdown(plots),
        versions_table=key_value_table(library_versions(), ("Library", "Version")),
        scale_note=scale_note(trainer),
        notes=[f"Base model: {note}." for note in notes] + ([] if base else ["The base model is not on the Hub or was not recorded; set card_base_model to name it."]),
        **context,
    )


def _tags(trainer, model, extra=()) -> list[str]:
    tags = list(getattr(trainer, "_tag_names", []))
    tags += list(getattr(model, "model_tags", None) or [])
    tags += list(getattr(trainer, "_coati_card_options", {}).get("tags") or [])
    tags += list(extra)
    return sorted(dict.fromkeys(tag for tag in tags if tag))


def _check_adapter_base(layout: str, origin: Origin, what: str) -> None:
    if layout == "adapter" and not origin.reference:
        raise ExportError(
            f"An adapter-only export of the {what} must name its base model, and this model's origin is unknown "
            "(a random-init model or a folder without a card): set card_base_model to its Hub id, or export full weights."
        )


def _export_reference(trainer, output_dir: Path) -> str:
    hub_id = getattr(trainer, "hub_model_id", None) or _args(trainer, "hub_model_id")
    return hub_id if hub_id and "/" in hub_id else output_dir.name


# ---------------------------------------------------------------------------------------------
# exports
# ---------------------------------------------------------------------------------------------


def export_trainer_model(trainer, model, output_dir, *, stage: str, state_dict=None) -> str:
    """The SFT or reward-model export of ``model`` (the unwrapped live model) into ``output_dir``."""
    import torch

    output_dir = Path(os.path.abspath(output_dir))
    adapter_only = bool(_args(trainer, "save_adapter_only", False))
    layout = export_layout(model, adapter_only)
    origin = resolve_origin(model, output_dir.parent, _args(trainer, "card_base_model"))
    _check_adapter_base(layout, origin, "model")
    reference = _export_reference(trainer, output_dir)
    results, summary = stage_results(trainer, stage)
    lineage = origin.lineage + [lineage_entry(stage, reference, "/" in reference, stage_settings(trainer, stage, model, summary))]
    datasets = run_datasets(trainer)
    with export_directory(output_dir, stage=stage, layout=layout, local_paths=local_paths_of(model)) as staged:
        score_label = "reward" if stage == "reward-model" else None
        save_weights(model, trainer.processing_class, staged, adapter_only=adapter_only, state_dict=state_dict,
                     score_label=score_label, adapter_base=origin.reference)  # fmt: skip
        plots = write_plots(trainer.state.log_history, staged, STAGE_PLOTS[stage])
        card = build_card(
            trainer, stage=stage, model=model, origin=origin, lineage=lineage, reference=reference, layout=layout,
            plots=plots, tags=_tags(trainer, model), datasets=datasets, results=results,
            hyperparameters_table=key_value_table(hyperparameters(trainer, stage, model)),
            results_table_md=results_table(trainer, stage), loss_fn=_args(trainer, "loss_fn", "log_sig"),
        )  # fmt: skip
        card.save(staged / "README.md")
        torch.save(trainer.args, staged / "training_args.bin")
    logger.info("Exported the %s model to %s (%s)", stage, output_dir, layout)
    return str(output_dir)


def _reward_description(trainer, reward_origin: Origin | None) -> str:
    reward = getattr(trainer, "reward_model", None)
    if reward is None:
        return "not recorded"
    if callable(reward) and not hasattr(reward, "config"):
        return f"the Python function `{getattr(reward, '__name__', type(reward).__name__)}`"
    if reward_origin is not None and reward_origin.reference:
        return f"the reward model `{reward_origin.reference}`"
    return "a reward model given in memory (its origin was not recorded)"


def export_ppo(trainer, policy, critic, output_dir, *, policy_state=None, critic_state=None) -> str:
    """The PPO export: actor at ``output_dir``, critic in ``output_dir/critic``, one atomic step."""
    import torch

    output_dir = Path(os.path.abspath(output_dir))
    adapter_only = bool(_args(trainer, "save_adapter_only", False))
    base_override = _args(trainer, "card_base_model")
    actor_layout, critic_layout = export_layout(policy, adapter_only), export_layout(critic, adapter_only)
    actor_origin = resolve_origin(policy, output_dir.parent, base_override)
    critic_origin = resolve_origin(critic, output_dir.parent, base_override)
    reward = getattr(trainer, "reward_model", None)
    reward_origin = resolve_origin(reward, output_dir.parent) if hasattr(reward, "config") else None
    _check_adapter_base(actor_layout, actor_origin, "PPO policy")
    _check_adapter_base(critic_layout, critic_origin, "PPO critic")

    reference = _export_reference(trainer, output_dir)
    results, summary = stage_results(trainer, "ppo")
    parents = merge_lineages(actor_origin.lineage, reward_origin.lineage if reward_origin else [])
    lineage = parents + [lineage_entry("ppo", reference, "/" in reference, stage_settings(trainer, "ppo", policy, summary))]
    critic_lineage = critic_origin.lineage + [
        lineage_entry("ppo-critic", reference, "/" in reference, f"in {CRITIC_SUBFOLDER}/: {_adaptation(critic)}, trained with the policy")
    ]
    datasets = run_datasets(trainer)
    history = trainer.state.log_history
    tags = _tags(trainer, policy)
    local = local_paths_of(policy, critic, reward if hasattr(reward, "config") else None)
    with export_directory(output_dir, stage="ppo", layout=actor_layout, local_paths=local) as staged:
        save_weights(policy, trainer.processing_class, staged, adapter_only=adapter_only, state_dict=policy_state,
                     adapter_base=actor_origin.reference)  # fmt: skip
        critic_dir = staged / CRITIC_SUBFOLDER
        save_weights(critic, trainer.processing_class, critic_dir, adapter_only=adapter_only, state_dict=critic_state,
                     score_label="value", adapter_base=critic_origin.reference)  # fmt: skip
        plots = write_plots(history, staged, STAGE_PLOTS["ppo"])
        card = build_card(
            trainer, stage="ppo", model=policy, origin=actor_origin, lineage=lineage, reference=reference,
            layout=actor_layout, plots=plots, tags=tags, datasets=datasets, results=results,
            hyperparameters_table=key_value_table(hyperparameters(trainer, "ppo", policy)),
            results_table_md=results_table(trainer, "ppo"), kl_coef=_args(trainer, "kl_coef"),
            reward_description=_reward_description(trainer, reward_origin),
        )  # fmt: skip
        card.save(staged / "README.md")
        critic_plots = write_plots(history, critic_dir, STAGE_PLOTS["ppo-critic"])
        critic_values = {name: _args(trainer, name) for name in CRITIC_HYPERPARAMETERS if _args(trainer, name) is not None}
        critic_values.update({k: v for k, v in lora_summary(critic).items() if v is not None})
        critic_card = build_card(
            trainer, stage="ppo-critic", model=critic, origin=critic_origin, lineage=critic_lineage,
            reference=reference, layout=critic_layout, plots=critic_plots, tags=_tags(trainer, critic, ["coati-ppo-critic"]),
            datasets=datasets, results=[], hyperparameters_table=key_value_table(critic_values),
            results_table_md=results_table(trainer, "ppo-critic"), subfolder=CRITIC_SUBFOLDER,
            critic_start=f"`{critic_origin.reference}`" if critic_origin.reference else "a model given in memory",
        )  # fmt: skip
        critic_card.save(critic_dir / "README.md")
        torch.save(trainer.args, staged / "training_args.bin")
    logger.info("Exported the PPO policy and critic to %s (%s)", output_dir, actor_layout)
    return str(output_dir)


__all__ = ["export_trainer_model", "export_ppo", "run_datasets", "CRITIC_SUBFOLDER"]

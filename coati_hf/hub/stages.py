"""A trainer's model → a complete export: weights, card, plots, manifest, in one atomic step.

:func:`export_trainer_model` serves the SFT and reward trainers (one model);
:func:`export_ppo` the PPO trainer (the actor at the root, the critic in ``critic/``, both
inside the same atomic replacement, so an old critic never sits beside a new actor).

What the card says is read from the run: the model's origin (:mod:`coati_hf.hub.origin`), the
settings and counts (:mod:`coati_hf.hub.facts`), the held-out results and training statistics
(:mod:`coati_hf.hub.results`), the data's languages (:mod:`coati_hf.hub.language`). Stage
names: ``"sft"``, ``"reward-model"``, ``"ppo"``, and ``"ppo-critic"`` for the critic's own card.

A PPO policy's lineage is its own chain (base → SFT → PPO); the reward model it was optimised
against is recorded as the PPO step's ``reward``, not as a parent. The critic's chain runs
through the model it was initialised from (the reward model, usually).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .cards import PIPELINE_TAGS, key_value_table, library_versions, plots_markdown, render_card
from .export import ExportError, export_directory, export_layout, local_paths_of, save_weights
from .facts import adaptation, adapted_layers, critic_hyperparameters, hyperparameters, scale_note, stage_settings
from .language import dataset_languages
from .origin import CARD_KEY, Origin, describe_datasets, lineage_entry, nearest_hub_id, resolve_origin
from .plots import write_plots
from .results import merge_results, run_results, training_statistics

logger = logging.getLogger(__name__)

CRITIC_SUBFOLDER = "critic"
UNKNOWN_LICENSE = "unknown"
TITLES = {
    "sft": "SFT policy trained with coati_hf",
    "reward-model": "Reward model trained with coati_hf",
    "ppo": "PPO policy trained with coati_hf",
    "ppo-critic": "PPO critic trained with coati_hf",
}


def _args(trainer, name, default=None):
    return getattr(trainer.args, name, default)


def _options(trainer) -> dict:
    return getattr(trainer, "_coati_card_options", {})


def run_datasets(trainer) -> list[str]:
    """The training data as the card names it: ``push_to_hub(dataset_name=...)`` or
    ``create_model_card(dataset_name=...)``, else the config's ``card_datasets``, else what the
    train dataset records about its source (:func:`coati_hf.hub.origin.describe_datasets`)."""
    for chosen in (_options(trainer).get("dataset_name"), _args(trainer, "card_datasets")):
        if chosen:
            return [chosen] if isinstance(chosen, str) else list(chosen)
    return describe_datasets(getattr(trainer, "train_dataset", None))


def run_languages(trainer) -> list[str]:
    """``create_model_card(language=...)``, else the languages detected in the training data."""
    chosen = _options(trainer).get("language")
    if chosen:
        return [chosen] if isinstance(chosen, str) else list(chosen)
    return dataset_languages(getattr(trainer, "train_dataset", None), getattr(trainer, "processing_class", None))


def _loss_scope(trainer) -> str:
    """What SFT's loss was computed on, as the prepared data and settings decided it."""
    columns = set(getattr(getattr(trainer, "train_dataset", None), "column_names", None) or ())
    if _args(trainer, "assistant_only_loss") and "assistant_masks" in columns:
        return "The loss was computed on the assistant turns only."
    if "completion_mask" in columns and _args(trainer, "completion_only_loss") in (None, True):
        return "The loss was computed on the completions only."
    return "The loss was computed on every token of each conversation."


# ---------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------


def build_card(trainer, *, stage: str, model, origin: Origin, lineage: list[dict], reference: str, layout: str,
               plots: list[dict], tags: list[str], results: list, hyperparameters_table: str,
               subfolder: str | None = None, **context):  # fmt: skip
    from huggingface_hub import ModelCardData

    base = origin.hub_id or nearest_hub_id(lineage[:-1])
    relation = "adapter" if layout == "adapter" else "finetune"
    block = {"stage": stage, "reference": reference, "layout": layout, "lineage": lineage}
    if layout != "full" and origin.reference_entry():
        block["adapter_base"] = origin.reference_entry()
    if subfolder:
        block["subfolder"] = subfolder
    notes = list(dict.fromkeys(origin.notes))
    if notes:
        block["notes"] = notes
    options = _options(trainer)
    datasets = run_datasets(trainer)
    license = options.get("license") or _args(trainer, "card_license") or origin.license or UNKNOWN_LICENSE
    data = ModelCardData(
        base_model=base,
        base_model_relation=relation if base else None,
        datasets=datasets or None,
        language=run_languages(trainer) or None,
        library_name="peft" if layout == "adapter" else "transformers",
        pipeline_tag=PIPELINE_TAGS[stage],
        license=license,
        tags=tags,
        model_name=reference if results else None,
        eval_results=results or None,
        **{CARD_KEY: block},
    )
    body_notes = [f"Base model: {note}." for note in notes]
    if not base:
        body_notes.append("The base model is not on the Hub or was not recorded; set card_base_model to name it.")
    return render_card(
        stage,
        data,
        title=TITLES[stage],
        model_id=reference,
        layout=layout,
        adapter_base=origin.reference,
        datasets=datasets or ["not recorded"],
        hyperparameters_table=hyperparameters_table,
        training_statistics=training_statistics(trainer, stage),
        plots_markdown=plots_markdown(plots),
        versions_table=key_value_table(library_versions(), ("Library", "Version")),
        scale_note=scale_note(trainer, stage),
        notes=body_notes,
        **context,
    )


def _tags(trainer, model, extra=()) -> list[str]:
    tags = list(getattr(trainer, "_tag_names", []))
    tags += list(getattr(model, "model_tags", None) or [])
    tags += list(_options(trainer).get("tags") or [])
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


def _held_out(trainer, stage: str) -> list:
    """The stage's own held-out results and those given to ``create_model_card(eval_results=...)``."""
    return merge_results(run_results(trainer, stage), _options(trainer).get("eval_results"))


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
    lineage = origin.lineage + [lineage_entry(stage, reference, "/" in reference, stage_settings(trainer, stage, model))]
    with export_directory(output_dir, stage=stage, layout=layout, local_paths=local_paths_of(model)) as staged:
        score_label = "reward" if stage == "reward-model" else None
        save_weights(model, trainer.processing_class, staged, adapter_only=adapter_only, state_dict=state_dict,
                     score_label=score_label, adapter_base=origin.reference, base_name=origin.base_name)  # fmt: skip
        plots = write_plots(trainer.state.log_history, staged, stage)
        card = build_card(
            trainer, stage=stage, model=model, origin=origin, lineage=lineage, reference=reference, layout=layout,
            plots=plots, tags=_tags(trainer, model), results=_held_out(trainer, stage),
            hyperparameters_table=key_value_table(hyperparameters(trainer, stage, model)),
            loss_fn=_args(trainer, "loss_fn", "log_sig"), loss_scope=_loss_scope(trainer),
        )  # fmt: skip
        card.save(staged / "README.md")
        torch.save(trainer.args, staged / "training_args.bin")
    logger.info("Exported the %s model to %s (%s)", stage, output_dir, layout)
    return str(output_dir)


def _reward_entry(trainer, reward_origin: Origin | None) -> dict | None:
    """The PPO step's ``reward``: the reward model's reference, or the reward function's name."""
    reward = getattr(trainer, "reward_model", None)
    if reward is None:
        return None
    if callable(reward) and not hasattr(reward, "config"):
        return {"function": getattr(reward, "__name__", type(reward).__name__)}
    return reward_origin.reference_entry() if reward_origin is not None else None


def _critic_coverage(critic, critic_origin: Origin, reward_origin: Origin | None) -> str:
    """Which layers of its starting model the critic's adapter covers."""
    from .export import is_peft_model

    if not is_peft_model(critic):
        return "It was fully fine-tuned (no adapter)."
    chosen, num_layers = adapted_layers(critic)
    whose = "the reward model's" if reward_origin and reward_origin.reference == critic_origin.reference else "its starting model's"
    if chosen is None:
        return f"Its LoRA adapter covers {f'all {num_layers}' if num_layers else 'all'} of {whose} layers."
    return (f"Its LoRA adapter covers {len(chosen)} of {whose} {num_layers} layers (layers_to_transform={chosen}); "
            "below them the critic is that model, frozen.")  # fmt: skip


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
    on_hub = "/" in reference
    ppo_step = lineage_entry("ppo", reference, on_hub, stage_settings(trainer, "ppo", policy))
    reward_entry = _reward_entry(trainer, reward_origin)
    if reward_entry:
        ppo_step["reward"] = reward_entry
    lineage = actor_origin.lineage + [ppo_step]
    critic_lineage = critic_origin.lineage + [
        lineage_entry("ppo-critic", reference, on_hub, f"in {CRITIC_SUBFOLDER}/: {adaptation(critic)}, trained with the policy")
    ]
    history = trainer.state.log_history
    local = local_paths_of(policy, critic, reward if hasattr(reward, "config") else None)
    with export_directory(output_dir, stage="ppo", layout=actor_layout, local_paths=local) as staged:
        save_weights(policy, trainer.processing_class, staged, adapter_only=adapter_only, state_dict=policy_state,
                     adapter_base=actor_origin.reference, base_name=actor_origin.base_name)  # fmt: skip
        critic_dir = staged / CRITIC_SUBFOLDER
        save_weights(critic, trainer.processing_class, critic_dir, adapter_only=adapter_only, state_dict=critic_state,
                     score_label="value", adapter_base=critic_origin.reference, base_name=critic_origin.base_name)  # fmt: skip
        card = build_card(
            trainer, stage="ppo", model=policy, origin=actor_origin, lineage=lineage, reference=reference,
            layout=actor_layout, plots=write_plots(history, staged, "ppo"), tags=_tags(trainer, policy),
            results=_options(trainer).get("eval_results") or [],
            hyperparameters_table=key_value_table(hyperparameters(trainer, "ppo", policy)), kl_coef=_args(trainer, "kl_coef"),
        )  # fmt: skip
        card.save(staged / "README.md")
        critic_card = build_card(
            trainer, stage="ppo-critic", model=critic, origin=critic_origin, lineage=critic_lineage,
            reference=reference, layout=critic_layout, plots=write_plots(history, critic_dir, "ppo-critic"),
            tags=_tags(trainer, critic, ["coati-ppo-critic"]), results=[],
            hyperparameters_table=key_value_table(critic_hyperparameters(trainer, critic)), subfolder=CRITIC_SUBFOLDER,
            adapter_coverage=_critic_coverage(critic, critic_origin, reward_origin),
        )  # fmt: skip
        critic_card.save(critic_dir / "README.md")
        torch.save(trainer.args, staged / "training_args.bin")
    logger.info("Exported the PPO policy and critic to %s (%s)", output_dir, actor_layout)
    return str(output_dir)


__all__ = ["export_trainer_model", "export_ppo", "run_datasets", "CRITIC_SUBFOLDER"]

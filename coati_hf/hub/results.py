"""The numbers a card reports: held-out results (``model-index``) and training statistics (body).

Held-out results are measurements on data the model did not train on, as
``huggingface_hub.EvalResult`` s: the card's ``model-index`` holds these and nothing else.

- SFT and the reward model measure their own on the trainer's eval split (:func:`run_results`):
  SFT's loss and mean token accuracy, the reward model's accuracy (chosen scored above rejected)
  and mean margin. Each entry's dataset ``name`` says which data and how many rows
  (``"<description>: 16 held-out pairs"``); data that is not on the Hub gets the ``type``
  :data:`LOCAL_DATASET_TYPE`, never a slug posing as a dataset id.
- Results measured elsewhere (PPO's held-out mean reward and win rate from ``coati-hf eval``,
  :mod:`coati_hf.evaluation`) reach a card two ways: ``trainer.create_model_card(eval_results=[...])``
  before ``save_model``, or :func:`add_evaluation_results` on an export already written.

Without held-out results a card has no ``model-index`` and its Results section says how to
measure them (:func:`results_text`). Training statistics (the last logged batch's loss, the
reward of the first and the last PPO rollout batch) are in the body only, labelled as training
(:func:`training_statistics`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .cards import PIPELINE_TAGS, card_block, log_table, markdown_table, refresh_card
from .origin import CARD_KEY, LOCAL_DATASET_TYPE, dataset_identifier, describe_datasets
from .plots import STEP_LABELS

HELD_OUT_UNITS = {"sft": "conversations", "reward-model": "pairs", "ppo": "prompts", "ppo-critic": "prompts"}
# stage -> [(log key after "eval_", metric type, metric name)]
RUN_METRICS = {
    "sft": [("loss", "loss", "held-out loss (mean token cross-entropy, nats)"),
            ("mean_token_accuracy", "accuracy", "held-out mean token accuracy")],
    "reward-model": [("accuracy", "accuracy", "held-out reward accuracy (chosen scored above rejected)"),
                     ("margin", "margin", "held-out mean reward margin (chosen - rejected)")],
}  # fmt: skip
EVAL_COMMAND = "coati-hf eval {model} --prompts HELD_OUT_PROMPTS --reward-model {reward} --baseline {baseline}"
TRAINING_COLUMNS = {
    "sft": {"loss": "Training loss", "mean_token_accuracy": "Token accuracy", "learning_rate": "Learning rate"},
    "reward-model": {"loss": "Training loss", "accuracy": "Accuracy", "margin": "Margin", "learning_rate": "Learning rate"},
    "ppo": {
        "objective/scores": "Reward (rollout batch)", "objective/rlhf_reward": "Reward - KL penalty",
        "objective/kl": "KL (nats per response)", "policy/entropy_avg": "Entropy (nats per token)",
        "objective/entropy": "−log π of the response (nats per response)", "loss/policy_avg": "Policy loss",
        "loss/value_avg": "Value loss",
    },
    "ppo-critic": {"loss/value_avg": "Value loss", "val/clipfrac_avg": "Value clip fraction"},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# held-out results
# ---------------------------------------------------------------------------------------------


def held_out_result(stage: str, description: str, count: int | None, unit: str, metric_type: str, metric_name: str, value):
    """One ``EvalResult`` measured on ``count`` held-out ``unit`` of the data ``description``."""
    from huggingface_hub import EvalResult

    name = f"{description}: {count} held-out {unit}" if count is not None else f"{description} (held out)"
    return EvalResult(
        task_type=PIPELINE_TAGS[stage],
        dataset_type=dataset_identifier(description),
        dataset_name=name,
        metric_type=metric_type,
        metric_name=metric_name,
        metric_value=round(float(value), 6),
    )


def _eval_sets(trainer) -> list[tuple[str, object]]:
    """``[(log prefix, dataset)]`` of the trainer's eval split(s)."""
    eval_dataset = getattr(trainer, "eval_dataset", None)
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval_{name}_", dataset) for name, dataset in eval_dataset.items()]
    return [("eval_", eval_dataset)]


def _last(history, key):
    for entry in reversed(history):
        if key in entry:
            return entry[key]
    return None


def run_results(trainer, stage: str) -> list:
    """SFT's and the reward model's held-out results, from the last evaluation of their eval split."""
    options = getattr(trainer, "_coati_card_options", {})
    results = []
    for prefix, dataset in _eval_sets(trainer):
        description = options.get("eval_dataset_name") or (describe_datasets(dataset) or ["eval split"])[0]
        count = len(dataset) if hasattr(dataset, "__len__") else None
        for key, metric_type, metric_name in RUN_METRICS.get(stage, []):
            value = _last(trainer.state.log_history, prefix + key)
            if value is not None:
                results.append(held_out_result(stage, description, count, HELD_OUT_UNITS[stage], metric_type, metric_name, value))
    return results


def _key(result) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config, result.dataset_split,
            result.metric_type, result.metric_name, result.metric_config)  # fmt: skip


def merge_results(existing, new) -> list:
    """``existing`` with each result of ``new`` added, replacing one of the same measurement."""
    merged = {_key(result): result for result in existing or []}
    merged.update({_key(result): result for result in new or []})
    return list(merged.values())


def check_results(results) -> list:
    """``results`` as a list of ``EvalResult`` s; a TypeError or ValueError naming what is wrong."""
    from huggingface_hub import EvalResult

    results = list(results or [])
    for result in results:
        if not isinstance(result, EvalResult):
            raise TypeError(f"held-out results must be huggingface_hub.EvalResult objects, got {type(result).__name__}")
        for name in ("dataset_name", "dataset_type", "source_url"):
            value = getattr(result, name, None)
            if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
                raise ValueError(f"EvalResult.{name} names the local path {value}; describe the data instead")
    return results


def _eval_hint(block: dict) -> str:
    lineage = block.get("lineage", [])
    reward = (lineage[-1].get("reward") or {}).get("name") if lineage else None
    baseline = lineage[-2]["name"] if len(lineage) > 1 else "SFT_MODEL"
    command = EVAL_COMMAND.format(model=block.get("reference", "MODEL"), reward=reward or "REWARD_MODEL", baseline=baseline)
    return (
        "No held-out evaluation yet. The rewards in the training statistics below are of the rollout batches the policy "
        "trained on, not a measure of the model. Measure its mean reward on held-out prompts and its win rate against "
        f"the model it started from with\n\n```bash\n{command}\n```\n\nand add the results to this card with "
        "`coati_hf.hub.add_evaluation_results(folder, results)`."
    )


def results_text(data: dict) -> str:
    """The Results section's held-out part, from the card's YAML ``data``."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    block = card_block(data)
    results = model_index_to_eval_results(data["model-index"])[1] if data.get("model-index") else []
    if results:
        rows = [[r.metric_name or r.metric_type, r.metric_value, r.dataset_name] for r in results]
        return "Measured on held-out data (also in this card's `model-index`):\n\n" + markdown_table(["Metric", "Value", "Held-out data"], rows)
    stage = block.get("stage")
    if stage == "ppo":
        return _eval_hint(block)
    if stage == "ppo-critic":
        return ("The critic has no held-out evaluation of its own: its values serve the PPO update only. Its value loss "
                "on the training rollouts is in the training statistics below.")  # fmt: skip
    return ("No held-out results: this run did not evaluate on an eval split. Pass `eval_dataset=` to the trainer (with an "
            "`eval_strategy`, or call `trainer.evaluate()` before `save_model`) to measure them.")  # fmt: skip


def add_evaluation_results(folder: str | os.PathLike, results, *, subfolder: str | None = None) -> str:
    """Add held-out ``results`` (``huggingface_hub.EvalResult`` s) to the card of the export in
    ``folder`` (``subfolder="critic"`` for a PPO critic's), in place: into ``model-index``,
    replacing earlier results of the same measurement, and into the Results section of the body.

    The card is replaced in one step; a push afterwards publishes it. Returns the card's path.
    """
    from huggingface_hub import ModelCard

    results = check_results(results)
    path = Path(folder) / (subfolder or "") / "README.md"
    card = ModelCard.load(path)
    block = card.data.to_dict().get(CARD_KEY)
    if not isinstance(block, dict):
        raise ValueError(f"{path} is not a coati_hf model card (no '{CARD_KEY}' block in its YAML)")
    card.data.eval_results = merge_results(card.data.eval_results, results)
    card.data.model_name = card.data.model_name or block.get("reference")
    refresh_card(card)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        handle.write(str(card))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# training statistics
# ---------------------------------------------------------------------------------------------


def _summary(history: list[dict], stage: str) -> str:
    if stage == "ppo":
        scores = [e["objective/scores"] for e in history if "objective/scores" in e]
        if not scores:
            return ""
        return (f"The reward-model score of the rollout batch was, at the first update: {scores[0]:.4g}; at the last "
                f"update: {scores[-1]:.4g}. These are different batches of prompts, scored as the policy trained on them, "
                "so their difference is not a measured improvement (see Results for that).")  # fmt: skip
    if stage == "ppo-critic":
        return ""
    last = next((e for e in reversed(history) if "loss" in e and "step" in e), None)
    if last is None:
        return ""
    text = f"Loss of the last logged training step (step {last['step']}): {last['loss']:.4g}"
    if stage == "reward-model" and "accuracy" in last:
        text += f"; accuracy on that step's training pairs: {last['accuracy']:.4g}"
    return text + "."


def _heading(label: str) -> str:
    return label[:1].upper() + label[1:]


def training_statistics(trainer, stage: str) -> str:
    """The body's training statistics (measured on training batches, labelled as such)."""
    from transformers.modelcard import make_markdown_table, parse_log_history

    history = trainer.state.log_history
    parts = ["Measured on the training batches as the run went: not held-out results."]
    summary = _summary(history, stage)
    if summary:
        parts.append(summary)
    table = log_table([e for e in history if not any(k.startswith("eval_") for k in e)], TRAINING_COLUMNS[stage], _heading(STEP_LABELS[stage]))
    if table:
        parts.append(table)
    train_log, eval_lines, _ = parse_log_history(history) if stage in ("sft", "reward-model") else ({}, None, None)
    if train_log and "train_loss" in train_log:
        parts.append(f"Mean training loss over the run's {train_log.get('step', trainer.state.global_step)} steps: {train_log['train_loss']:.4g}.")
    if eval_lines:
        parts.append("Evaluations on the held-out split during training:\n\n" + make_markdown_table(eval_lines).strip())
    return "\n\n".join(parts) if len(parts) > 1 else "No metrics were logged in this run."


__all__ = ["add_evaluation_results", "held_out_result", "run_results", "merge_results", "LOCAL_DATASET_TYPE"]

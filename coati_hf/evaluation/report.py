"""The results of a held-out evaluation: per-model figures, the table, JSON, the bar chart, and
``model-index`` entries for a model card.

What each figure is (the math is in :mod:`coati_hf.evaluation.stats` and
:mod:`coati_hf.evaluation.core`):

- ``mean`` (``mean_reward``): the mean score over the prompts, with its 95% t-interval;
- ``win_rate``: the share of prompts on which the model's answer scores above the baseline's
  answer to the same prompt (ties count half), with its 95% Wilson interval; None for the
  baseline itself;
- ``mean_length``: tokens per answer (the model's own tokenizer; the end token not counted);
- ``kl_to_reference``: mean over prompts of ``sum_t log pi(a_t|...) - log pi_ref(a_t|...)``
  over the model's own greedy answer, in nats per answer; None for the reference itself or when
  it cannot be measured (``kl_note`` says why).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCORER_LABELS = {"reward_model": "reward (RM)", "judge": "judge score"}
SCORER_SHORT = {"reward_model": "RM", "judge": "judge"}
INDEX_METRICS = {"reward_model": ("mean_reward", "mean reward (RM)"), "judge": ("mean_score", "mean score (judge)")}


@dataclass
class ScoreSummary:
    """One scorer's verdict on one model's answers."""

    scorer: str  # "reward_model" or "judge"
    mean: float
    ci95: tuple[float, float]
    num_scored: int  # prompts with a finite score
    win_rate: float | None = None
    win_rate_ci95: tuple[float, float] | None = None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None


@dataclass
class ModelResult:
    """Everything measured about one model; ``rows`` are its per-prompt records."""

    name: str
    source: str
    num_prompts: int
    mean_length: float
    num_truncated: int  # answers that reached max_new_tokens without an end token
    scores: dict[str, ScoreSummary]
    rows: list[dict] = field(default_factory=list)
    kl_to_reference: float | None = None
    kl_ci95: tuple[float, float] | None = None
    kl_note: str | None = None
    is_baseline: bool = False
    is_reference: bool = False

    @property
    def primary(self) -> ScoreSummary:
        """The reward model's summary when there is one, else the judge's."""
        return self.scores.get("reward_model") or self.scores["judge"]

    @property
    def mean_reward(self) -> float:
        return self.primary.mean

    @property
    def ci95(self) -> tuple[float, float]:
        return self.primary.ci95

    @property
    def win_rate(self) -> float | None:
        return self.primary.win_rate

    @property
    def win_rate_ci95(self) -> tuple[float, float] | None:
        return self.primary.win_rate_ci95


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(ci: tuple[float, float] | None, digits: int = 3) -> str:
    if ci is None or not all(math.isfinite(v) for v in ci):
        return "[n/a]"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _prompts(count: int) -> str:
    return f"{count} prompt" + ("" if count == 1 else "s")


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


@dataclass
class EvaluationReport:
    """The models' results on one prompt set, and how they were obtained."""

    models: list[ModelResult]
    prompts: dict  # source, rows, count, description
    settings: dict
    reward_model: str | None = None
    judge: str | None = None
    baseline: str | None = None  # a model's name
    reference: str | None = None  # the KL reference's name
    reference_source: str | None = None  # where it was loaded from (it may be no evaluated model)

    def result(self, name: str) -> ModelResult:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model named {name!r}; models: {', '.join(m.name for m in self.models)}")

    @property
    def scorers(self) -> list[str]:
        return list(self.models[0].scores) if self.models else []

    def table(self) -> str:
        """The results as text: a header naming the prompts, scorers and settings, one row per
        model, and a legend that says what each column is."""
        count = self.prompts["count"]
        limit = self.settings["max_new_tokens"]
        lines = [
            f"Held-out evaluation on {_prompts(count)} ({self.prompts['description']}); "
            f"greedy answers of at most {limit} new tokens.",
        ]
        judged = [f"reward model {self.reward_model}"] if self.reward_model else []
        judged += [f"judge {self.judge}"] if self.judge else []
        lines.append("Scored by " + " and ".join(judged) + ".")
        header = ["model"]
        for scorer in self.scorers:
            header.append(f"{SCORER_LABELS[scorer]} [95% CI]")
            if self.baseline:
                judged_by = f" ({SCORER_SHORT[scorer]})" if len(self.scorers) > 1 else ""
                header.append(f"win rate vs {self.baseline}{judged_by} [95% CI] W-T-L")
        header.append("length (tokens)")
        if self.reference:
            header.append(f"KL to {self.reference} (nats/answer)")
        table = [header]
        for model in self.models:
            name = model.name + (" (baseline)" if model.is_baseline else "")
            row = [name]
            for scorer in self.scorers:
                summary = model.scores[scorer]
                row.append(f"{_number(summary.mean)} {_interval(summary.ci95)}")
                if self.baseline:
                    row.append(
                        "-"
                        if summary.win_rate is None
                        else f"{_number(summary.win_rate)} {_interval(summary.win_rate_ci95)} "
                        f"{summary.wins}-{summary.ties}-{summary.losses}"
                    )
            row.append(f"{model.mean_length:.1f}")
            if self.reference:
                row.append("- (reference)" if model.is_reference else _number(model.kl_to_reference))
            table.append(row)
        lines += ["", _columns(table), ""]
        lines += self._legend()
        return "\n".join(lines)

    def _legend(self) -> list[str]:
        count = self.prompts["count"]
        limit = self.settings["max_new_tokens"]
        legend = [
            f"{'/'.join(SCORER_LABELS[s] for s in self.scorers)}: mean score over the {_prompts(count)}, "
            "95% t-interval over prompts" + (" (n/a: one prompt gives no interval)." if count < 2 else "."),
        ]
        if self.baseline:
            legend.append(
                f"win rate: share of the prompts where the model's answer scores above {self.baseline}'s answer "
                "(ties count half), 95% Wilson interval; W-T-L: wins-ties-losses."
            )
        truncated = ", ".join(f"{m.name} {m.num_truncated}" for m in self.models if m.num_truncated)
        legend.append(
            "length: mean tokens per answer, end token not counted"
            + (f"; answers cut at {limit} tokens: {truncated}." if truncated else "; no answer was cut.")
        )
        if self.reference:
            legend.append(
                f"KL: sum over the answer's tokens of log pi - log pi_{self.reference}, on the model's own greedy answer, "
                "mean over prompts (an estimate, not the exact KL)."
            )
            legend += [f"{m.name}: no KL ({m.kl_note})" for m in self.models if m.kl_note]
        return legend

    def to_dict(self) -> dict:
        """Everything, JSON-ready (NaN as null)."""
        return _clean(
            {
                "prompts": self.prompts,
                "reward_model": self.reward_model,
                "judge": self.judge,
                "baseline": self.baseline,
                "reference": self.reference,
                "reference_source": self.reference_source,
                "settings": self.settings,
                "statistics": {
                    "mean": "mean score over prompts; ci95: Student t-interval, mean +- t(0.975, n-1) * sd / sqrt(n)",
                    "win_rate": "per prompt 1 (model's score above the baseline's), 0.5 (tie or same answer), 0; "
                    "mean over prompts; ci95: Wilson score interval",
                    "length": "tokens per answer in the model's tokenizer, end token not counted",
                    "kl_to_reference": "nats per answer: sum over the greedy answer's tokens (end token included) of "
                    "log pi(a_t|prompt, a_<t) - log pi_ref(a_t|prompt, a_<t); mean over prompts, ci95 as for the mean",
                },
                "models": [
                    {
                        "name": m.name,
                        "source": m.source,
                        "is_baseline": m.is_baseline,
                        "is_reference": m.is_reference,
                        "num_prompts": m.num_prompts,
                        "mean_length": m.mean_length,
                        "num_truncated": m.num_truncated,
                        "kl_to_reference": m.kl_to_reference,
                        "kl_ci95": m.kl_ci95,
                        "kl_note": m.kl_note,
                        "scores": {key: vars(summary) for key, summary in m.scores.items()},
                        "rows": m.rows,
                    }
                    for m in self.models
                ],
            }
        )

    def to_json(self, path: str | os.PathLike) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return str(path)

    def plot(self, path: str | os.PathLike) -> str:
        """A PNG bar chart: per scorer, each model's mean score with its 95% CI as error bars."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        scorers = self.scorers
        width = max(4.0, 1.2 * len(self.models) + 2)
        figure = Figure(figsize=(width * len(scorers), 4), dpi=100)
        FigureCanvasAgg(figure)
        for index, scorer in enumerate(scorers, start=1):
            axes = figure.add_subplot(1, len(scorers), index)
            means, errors = [], [[], []]
            for model in self.models:
                summary = model.scores[scorer]
                mean = summary.mean if math.isfinite(summary.mean) else 0.0
                means.append(mean)
                finite = all(math.isfinite(v) for v in summary.ci95)
                errors[0].append(mean - summary.ci95[0] if finite else 0.0)
                errors[1].append(summary.ci95[1] - mean if finite else 0.0)
            colors = ["0.6" if model.is_baseline else "C0" for model in self.models]
            labels = [m.name + ("\n(baseline)" if m.is_baseline else "") for m in self.models]
            axes.bar(labels, means, yerr=errors, capsize=6, color=colors)
            axes.axhline(0, color="0.3", linewidth=0.8)
            axes.set_title(f"{SCORER_LABELS[scorer]} on {self.prompts['count']} held-out prompts")
            axes.set_ylabel(f"mean {SCORER_LABELS[scorer]} (error bars: 95% CI)")
            axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
        return str(path)

    def model_index(self, name: str) -> list:
        """``model-index`` entries for model ``name`` (see :func:`model_index_results`)."""
        return model_index_results(self.result(name), self)


def model_index_results(result: ModelResult, report: EvaluationReport) -> list:
    """``huggingface_hub.EvalResult`` s for a card's ``model-index``: task text-generation, the
    dataset named by the held-out prompts (never a local path), and the metrics "mean reward
    (RM)" / "mean score (judge)", "win rate vs <baseline> (RM|judge)" (not for the baseline
    itself) and "KL to <reference> (nats per answer)" when measured."""
    from huggingface_hub import EvalResult

    from ..hub.origin import dataset_identifier

    dataset = f"{report.prompts['count']} held-out prompts: {report.prompts['description']}"

    def entry(metric_type: str, metric_name: str, value: float) -> Any:
        return EvalResult(
            task_type="text-generation",
            dataset_type=dataset_identifier(dataset),
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(value), 6),
        )

    def card_name(name: str | None) -> str:  # a card never names a local path
        return Path(name).name if name and (os.path.isabs(name) or os.path.exists(name)) else str(name)

    entries = []
    for scorer, summary in result.scores.items():
        metric_type, metric_name = INDEX_METRICS[scorer]
        if math.isfinite(summary.mean):
            entries.append(entry(metric_type, metric_name, summary.mean))
        if summary.win_rate is not None and math.isfinite(summary.win_rate):
            entries.append(entry("win_rate", f"win rate vs {card_name(report.baseline)} ({SCORER_SHORT[scorer]})", summary.win_rate))
    if result.kl_to_reference is not None and math.isfinite(result.kl_to_reference):
        entries.append(entry("kl", f"KL to {card_name(report.reference)} (nats per answer)", result.kl_to_reference))
    return entries

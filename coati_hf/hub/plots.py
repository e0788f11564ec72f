"""Training-curve PNGs for a model card, drawn from a trainer's ``log_history``.

One PNG per group of related metrics (``training_<group>.png``); a group is drawn only when at
least one of its metrics was logged. Rules, so that a plot claims no more than the log holds:

- the x axis says what a step is (:data:`STEP_LABELS`: an optimizer step for SFT and the reward
  model, a PPO update for PPO) and has integer ticks only;
- a series of fewer than :data:`LINE_FROM` points is drawn as points (markers), not as a line
  that would suggest a trend between them;
- each y label names its unit; PPO's entropy is the per-token one (``policy/entropy_avg``), not
  ``objective/entropy`` (TRL's name for the sampled response's −log π summed over its tokens).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no GUI backend, no global
state), so this runs on headless machines and inside any process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# group -> (title, y label, [(log key, legend label)])
PLOT_GROUPS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss": ("Loss", "loss", [("loss", "training batches"), ("eval_loss", "held-out (eval)")]),
    "accuracy": ("Reward accuracy (chosen scored above rejected)", "accuracy",
                 [("accuracy", "training batches"), ("eval_accuracy", "held-out (eval)")]),
    "margin": ("Reward margin (chosen - rejected)", "margin", [("margin", "training batches"), ("eval_margin", "held-out (eval)")]),
    "reward": ("Reward of each update's rollout batch", "reward", [("objective/scores", "reward model score"),
                                                                    ("objective/rlhf_reward", "score - KL penalty")]),
    "kl": ("KL divergence from the reference policy", "KL (nats per response)", [("objective/kl", "KL")]),
    "entropy": ("Policy entropy during the update", "entropy (nats per token)", [("policy/entropy_avg", "entropy")]),
    "ppo_loss": ("PPO losses", "loss", [("loss/policy_avg", "policy"), ("loss/value_avg", "value")]),
    "value_loss": ("Critic value loss", "loss", [("loss/value_avg", "value")]),
}  # fmt: skip
STAGE_PLOTS = {
    "sft": ["loss"],
    "reward-model": ["loss", "accuracy", "margin"],
    "ppo": ["reward", "kl", "entropy", "ppo_loss"],
    "ppo-critic": ["value_loss"],
}
STEP_LABELS = {"sft": "optimizer step", "reward-model": "optimizer step", "ppo": "PPO update", "ppo-critic": "PPO update"}
LINE_FROM = 3  # fewer points than this are drawn as markers only
MARKERS_UP_TO = 30  # lines of up to this many points also mark each point


def plot_file(group: str) -> str:
    return f"training_{group}.png"


def _series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def _figure(title: str, ylabel: str, xlabel: str, lines: list[tuple[str, list[int], list[float]]]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, steps, values in lines:
        if len(steps) < LINE_FROM:
            axes.plot(steps, values, linestyle="none", marker="o", markersize=6, label=label)
        else:
            axes.plot(steps, values, marker="o" if len(steps) <= MARKERS_UP_TO else None, markersize=3, label=label)
    all_steps = [step for _, steps, _ in lines for step in steps]
    if min(all_steps) == max(all_steps):  # one step: give the axis a width so its ticks are integers around it
        axes.set_xlim(min(all_steps) - 1, max(all_steps) + 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if len(lines) > 1:
        axes.legend()
    figure.tight_layout()
    return figure


def stage_figures(log_history: list[dict], stage: str) -> dict:
    """``{group: matplotlib Figure}`` of the stage's groups that have logged values."""
    figures = {}
    for group in STAGE_PLOTS[stage]:
        title, ylabel, keys = PLOT_GROUPS[group]
        lines = [(label, *_series(log_history, key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if lines:
            figures[group] = _figure(title, ylabel, STEP_LABELS[stage], lines)
    return figures


def write_plots(log_history: list[dict], folder: str | os.PathLike, stage: str) -> list[dict]:
    """Draw the stage's plots into ``folder``; returns ``[{"title", "file"}]`` for the PNGs written."""
    written = []
    for group, figure in stage_figures(log_history, stage).items():
        name = plot_file(group)
        figure.savefig(Path(folder) / name, format="png")
        written.append({"title": PLOT_GROUPS[group][0], "file": name})
    return written

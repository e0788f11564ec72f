"""Training-curve PNGs for a model card, drawn from a trainer's ``log_history``.

One PNG per group of related metrics (``training_<group>.png``); a group is drawn only when at
least one of its metrics was logged, each metric as a line over the logged steps. Figures are
drawn on matplotlib's Agg canvas directly (no pyplot, no GUI backend, no global state), so this
runs on headless machines and inside any process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# group -> (title, y label, [(log key, legend label)])
PLOT_GROUPS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss": ("Loss", "loss", [("loss", "train"), ("eval_loss", "eval")]),
    "accuracy": ("Reward accuracy (chosen scored above rejected)", "accuracy", [("accuracy", "train"), ("eval_accuracy", "eval")]),
    "margin": ("Reward margin (chosen - rejected)", "margin", [("margin", "train"), ("eval_margin", "eval")]),
    "reward": ("Reward", "reward", [("objective/scores", "reward model score"), ("objective/rlhf_reward", "score - KL penalty")]),
    "kl": ("KL divergence from the reference policy", "KL (nats per sequence)", [("objective/kl", "KL")]),
    "entropy": ("Policy entropy", "entropy (nats per token)", [("objective/entropy", "entropy")]),
    "ppo_loss": ("PPO losses", "loss", [("loss/policy_avg", "policy"), ("loss/value_avg", "value")]),
    "value_loss": ("Critic value loss", "loss", [("loss/value_avg", "value")]),
}
STAGE_PLOTS = {
    "sft": ["loss"],
    "reward-model": ["loss", "accuracy", "margin"],
    "ppo": ["reward", "kl", "entropy", "ppo_loss"],
    "ppo-critic": ["value_loss"],
}


def plot_file(group: str) -> str:
    return f"training_{group}.png"


def _series(log_history: list[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps.append(entry["step"])
            values.append(float(value))
    return steps, values


def write_plots(log_history: list[dict], folder: str | os.PathLike, groups: list[str]) -> list[dict]:
    """Draw ``groups`` into ``folder``; returns ``[{"title", "file"}]`` for the PNGs written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for group in groups:
        title, ylabel, keys = PLOT_GROUPS[group]
        lines = [(label, *_series(log_history, key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        figure = Figure(figsize=(6, 3.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for label, steps, values in lines:
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if len(lines) > 1:
            axes.legend()
        figure.tight_layout()
        name = plot_file(group)
        figure.savefig(Path(folder) / name, format="png")
        written.append({"title": title, "file": name})
    return written

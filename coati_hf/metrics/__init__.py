"""Metrics shipped as local `evaluate` modules (``evaluate.load("accuracy")`` needs the Hub)."""

from __future__ import annotations

from pathlib import Path

_METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    """Path of a shipped metric module, for ``evaluate.load(path)``."""
    path = _METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in _METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No shipped metric named {name!r}; available: {available}")
    return str(path)


def load_metric(name: str):
    """Load a shipped metric with `evaluate`, offline."""
    import evaluate

    return evaluate.load(metric_path(name))

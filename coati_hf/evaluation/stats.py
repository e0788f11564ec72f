r"""The statistics of a held-out evaluation, in plain Python (no numpy, no scipy).

Mean with a 95% confidence interval (:func:`mean_ci95`): the Student t-interval over the
``n`` per-prompt values ``x_1..x_n``::

    mean = (1/n) sum x_i,   s^2 = (1/(n-1)) sum (x_i - mean)^2
    CI   = mean -+ t_{0.975, n-1} * s / sqrt(n)

It treats the prompts as a random sample of the prompt distribution and the per-prompt values
as independent; with greedy decoding the only randomness is the choice of prompts. ``n < 2``
gives a NaN interval (no spread can be estimated from one prompt).

Win rate against a baseline (:func:`win_rate`): per prompt the model's score ``a_i`` is
compared with the baseline's score ``b_i`` on the same prompt; the outcome is 1 if
``a_i - b_i > tol``, 0 if ``b_i - a_i > tol``, and 0.5 (a tie) otherwise or when both answers
are the same text (the judge then saw the same input). The win rate is the mean outcome
``p = (wins + ties/2) / n``. Its 95% interval is the Wilson score interval at that ``p``::

    z = 1.959964,  centre = (p + z^2/(2n)) / (1 + z^2/n)
    half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))

Wilson assumes 0/1 outcomes; a tie's outcome (1/2) has less variance than a win or a loss,
so with ties the interval is conservative (wider than needed), never too narrow.

:func:`t_quantile_975` is the exact 0.975 quantile of Student's t with integer degrees of
freedom (Abramowitz & Stegun 26.7.3/26.7.4 for the CDF, inverted by bisection), with the
Cornish-Fisher expansion above 1000 degrees of freedom (error < 1e-8 there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

Z_975 = NormalDist().inv_cdf(0.975)  # 1.959964...
NAN_INTERVAL = (float("nan"), float("nan"))


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3, 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:  # odd: (2/pi) [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)]
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        series = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
        return 2 / math.pi * (theta + series)
    total, term = 0.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df >= 1`` degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    df = int(df)
    if df > 1000:
        z = Z_975
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    low, high = 0.0, 100.0 if df > 1 else 13.0
    for _ in range(200):
        middle = (low + high) / 2
        if _t_two_sided_mass(middle, df) < 0.95:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """``(mean, (low, high))``: the mean and its 95% t-interval (module rules). NaN mean for no
    values; NaN interval for fewer than two."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return float("nan"), NAN_INTERVAL
    mean = math.fsum(values) / n
    if n < 2:
        return mean, NAN_INTERVAL
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def wilson_ci95(successes: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``successes / n`` (module rules)."""
    if n <= 0:
        return NAN_INTERVAL
    p = successes / n
    z2 = Z_975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_975 / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class WinRate:
    """A model against a baseline on the same prompts (module rules)."""

    rate: float
    ci95: tuple[float, float]
    wins: int
    ties: int
    losses: int
    outcomes: list[float]  # per prompt: 1 win, 0.5 tie, 0 loss

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def prompt_outcome(score: float, baseline_score: float, same_answer: bool = False, tolerance: float = 0.0) -> float:
    """1, 0.5 or 0: the model's answer to one prompt against the baseline's (module rules)."""
    if same_answer or abs(score - baseline_score) <= tolerance:
        return 0.5
    return 1.0 if score > baseline_score else 0.0


def win_rate(
    scores: Sequence[float],
    baseline_scores: Sequence[float],
    same_answers: Sequence[bool] | None = None,
    tolerance: float = 0.0,
) -> WinRate:
    """The win rate of ``scores`` over ``baseline_scores`` (same prompts, same order), ties
    counted half, with its Wilson 95% interval (module rules). Pairs where either score is NaN
    are left out (and so out of ``n``)."""
    if len(scores) != len(baseline_scores):
        raise ValueError(f"{len(scores)} scores but {len(baseline_scores)} baseline scores")
    same_answers = list(same_answers) if same_answers is not None else [False] * len(scores)
    outcomes = [
        prompt_outcome(a, b, same, tolerance)
        for a, b, same in zip(scores, baseline_scores, same_answers)
        if math.isfinite(a) and math.isfinite(b)
    ]
    wins, ties = outcomes.count(1.0), outcomes.count(0.5)
    n = len(outcomes)
    rate = (wins + ties / 2) / n if n else float("nan")
    return WinRate(rate, wilson_ci95(wins + ties / 2, n), wins, ties, n - wins - ties, outcomes)

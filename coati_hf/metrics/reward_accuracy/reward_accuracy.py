"""Pairwise reward-model metrics, as an `evaluate` module that loads from a local path.

Given the scores a reward model gives the chosen and the rejected answer of each pair:

    accuracy        = mean(r_chosen > r_rejected)
    margin          = mean(r_chosen - r_rejected)
    chosen_reward   = mean(r_chosen),   chosen_reward_std   = std(r_chosen)
    rejected_reward = mean(r_rejected), rejected_reward_std = std(r_rejected)

A tie counts as wrong: a reward model that scores both answers alike has not ranked them.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy, mean margin and chosen/rejected reward statistics of a pairwise reward model."
_KWARGS_DESCRIPTION = """
Args:
    predictions: scores of the chosen answers.
    references: scores of the rejected answers.
Returns:
    accuracy, margin, chosen_reward, chosen_reward_std, rejected_reward, rejected_reward_std.
"""


class RewardAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        chosen = np.asarray(predictions, dtype=np.float64)
        rejected = np.asarray(references, dtype=np.float64)
        if chosen.size == 0:
            raise ValueError("reward_accuracy needs at least one pair of scores")
        return {
            "accuracy": float(np.mean(chosen > rejected)),
            "margin": float(np.mean(chosen - rejected)),
            "chosen_reward": float(np.mean(chosen)),
            "chosen_reward_std": float(np.std(chosen)),
            "rejected_reward": float(np.mean(rejected)),
            "rejected_reward_std": float(np.std(rejected)),
        }

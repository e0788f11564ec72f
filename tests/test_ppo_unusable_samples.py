"""PPO with samples that cannot be used: non-finite or overflowing rewards.

- A row whose score is NaN/inf, or whose rewards overflow (a value or its square is not finite
  in float32), is masked out of the batch; the other rows train as if it were not there, also
  with ``whiten_rewards`` in the single-pass update (the statistics span the rows left).
- An update without any usable sample is skipped and counted, never an exception: whether to
  skip is decided across ranks (tests/test_ppo_unusable_samples_distributed.py runs 2 ranks).
- Masked-out rows leave no ratio or loss of 0 in the logged averages.

Tiny random Llamas with the SmolLM2 tokenizer, as in tests/test_ppo_guards.py.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from coati_hf.ppo.advantages import compute_gae, masked_whiten, shape_rewards
from coati_hf.ppo.kl import kl_penalty
from test_ppo_guards import all_finite, build, step_logs, weights

pytestmark = pytest.mark.usefixtures("single_torch_thread")

HUGE = 3e38  # finite in float32, but its square (and any variance it enters) is not


@pytest.fixture
def tok(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def second_row(bad):
    """A reward function: ``bad`` for the second completion of each batch, ordinary scores else."""

    def reward(prompts, completions):
        return [bad if i == 1 else 0.5 + 0.25 * i for i in range(len(completions))]

    return reward


def test_single_pass_whitened_rewards_lose_only_the_overflowing_row(tmp_path, tok):
    """Before: the 3e38 row entered the whitening statistics, every row's reward became NaN and
    each update was skipped ("no usable sample"). Now that row alone is masked out."""
    trainer = build(tmp_path, tok, reward_model=second_row(HUGE), whiten_rewards=True, total_episodes=8)
    assert trainer._single_pass()
    before = weights(trainer.model.policy)
    trainer.train()
    logs = step_logs(trainer)
    assert [entry["rollout/nan_scores"] for entry in logs] == [1, 1]
    assert [entry["ppo/skipped_updates"] for entry in logs] == [0, 0]
    assert [entry["ppo/optimizer_steps"] for entry in logs] == [1, 1]
    assert all(torch.isfinite(torch.tensor(entry["loss/value_avg"])) for entry in logs)
    assert all(entry["objective/scores"] == pytest.approx((0.5 + 1.0 + 1.25) / 3) for entry in logs)
    after = weights(trainer.model.policy)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert all_finite(trainer.model)


def test_complete_whitens_over_the_rows_left(tmp_path, tok):
    """ExperienceMaker.complete against a direct computation on the three usable rows."""
    trainer = build(tmp_path, tok, reward_model=second_row(HUGE), total_episodes=4)
    maker = trainer.experience_maker
    experience = maker.make_experience(
        {"input_ids": torch.tensor([trainer.train_dataset[i]["input_ids"][-6:] for i in range(4)])},
        evaluate_policy_and_critic=False,
    )
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(experience.action_mask.shape, generator=generator)
    values = torch.randn(experience.action_mask.shape, generator=generator)
    done = maker.complete(experience, logprobs, values, whiten_rewards=True, whiten_advantages=True)

    keep = torch.tensor([True, False, True, True])
    mask = experience.action_mask & keep.unsqueeze(-1)
    assert torch.equal(done.action_mask, mask)
    assert done.info["num_nan_scores"] == 1 and done.info["num_samples"] == 3
    config = maker.config
    masked_logprobs = torch.where(mask, logprobs, 0.0)
    kl = torch.where(mask, kl_penalty(masked_logprobs, experience.ref_logprobs, config.kl_estimator), 0.0)
    rewards = shape_rewards(experience.scores, kl, mask, config.kl_coef, config.reward_placement, config.score_clip)
    rewards = masked_whiten(torch.where(mask, rewards, 0.0), mask, shift_mean=False)
    advantages, returns = compute_gae(rewards, torch.where(mask, values, 0.0), mask, config.gamma, config.lam)
    torch.testing.assert_close(done.rewards, rewards)
    torch.testing.assert_close(done.returns, returns)
    torch.testing.assert_close(done.advantages, masked_whiten(advantages, mask))
    assert torch.isfinite(done.rewards).all() and (done.rewards[1] == 0).all()


@pytest.mark.parametrize("single_pass", [True, False], ids=["single_pass", "general"])
def test_an_update_without_a_usable_sample_is_skipped_and_counted(tmp_path, tok, single_pass):
    """Every score infinite: each update is skipped (counted, warned), the weights, the KL
    coefficient and the learning-rate schedule stay where they were, and training ends
    normally instead of raising on one rank."""
    extra = {} if single_pass else {"num_ppo_epochs": 2}
    trainer = build(
        tmp_path, tok, reward_model=lambda prompts, completions: [float("inf")] * len(completions),
        kl_controller="adaptive", kl_target=1.0, lr_scheduler_type="linear", **extra,
    )  # fmt: skip
    assert trainer._single_pass() == single_pass
    before = weights(trainer.model)
    kl_coef = trainer.kl_controller.value
    trainer.train()
    logs = step_logs(trainer)
    assert [entry["ppo/skipped_updates"] for entry in logs] == [1, 1]
    assert [entry["ppo/optimizer_steps"] for entry in logs] == [0, 0]
    assert [entry["rollout/nan_scores"] for entry in logs] == [4, 4]
    assert logs[0]["lr"] == logs[1]["lr"]  # the schedule waits for the step that was not taken
    assert trainer.kl_controller.value == kl_coef
    after = weights(trainer.model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_masked_out_rows_stay_out_of_the_logged_averages(tmp_path, tok):
    """One row per micro-batch, two of the four rows NaN-scored: their micro-batches have no
    action token. Before, they logged a ratio of 0 and a loss of 0 into the averages (the first
    update's mean ratio read 0.5); now the averages are over the usable micro-batches only."""

    def reward(prompts, completions):
        return [float("nan") if i % 2 else 1.0 + i for i in range(len(completions))]

    trainer = build(
        tmp_path, tok, reward_model=reward, per_device_train_batch_size=1, gradient_accumulation_steps=4,
        experience_batch_size=4, total_episodes=4, num_ppo_epochs=1,
    )  # fmt: skip
    trainer.train()
    (entry,) = step_logs(trainer)
    assert entry["rollout/nan_scores"] == 2
    assert entry["val/ratio"] == pytest.approx(1.0, abs=1e-6)  # the first epoch of an update: ratio exactly 1
    assert entry["policy/clipfrac_avg"] == 0.0
    assert entry["loss/value_avg"] > 0  # a mean over real rows, not diluted by zeros


def test_buffer_counts_usable_samples_and_merges_infos_without_them(tmp_path, tok):
    from coati_hf.ppo.buffer import ReplayBuffer

    trainer = build(tmp_path, tok, reward_model=second_row(float("nan")), total_episodes=4, num_ppo_epochs=2)
    maker = trainer.experience_maker
    ids = torch.tensor([trainer.train_dataset[i]["input_ids"][-6:] for i in range(4)])
    good = maker.make_experience({"input_ids": ids})
    empty = replace(good, action_mask=torch.zeros_like(good.action_mask))
    empty = maker.complete(empty, good.logprobs, good.values)
    assert empty.info["num_samples"] == 0
    buffer = ReplayBuffer()
    buffer.append(good)
    buffer.append(empty)
    assert buffer.usable_samples() == 3 and len(buffer) == 8
    merged = buffer.merged_info()
    assert merged["kl"] == pytest.approx(good.info["kl"]) and merged["score"] == pytest.approx(good.info["score"])
    assert merged["num_samples"] == 3

"""PPO math against straightforward reference implementations (explicit Python loops)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from coati_hf.ppo.advantages import (
    compute_gae,
    last_true_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    shape_rewards,
)
from coati_hf.ppo.generation import compute_action_mask, left_pad, resolve_stop_token_ids, truncate_left
from coati_hf.ppo.kl import AdaptiveKLController, FixedKLController, build_kl_controller, kl_penalty
from coati_hf.ppo.losses import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_entropy,
    mix_ptx_loss,
    policy_loss,
    ratio_guard_exceeded,
    value_loss,
)

EOS, PAD = 2, 0


def prefix_mask(lengths, width):
    return torch.tensor([[t < n for t in range(width)] for n in lengths])


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def randn(*shape, generator):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------


def test_masked_stats_match_statistics_of_the_selected_elements(gen):
    x = randn(4, 7, generator=gen)
    mask = prefix_mask([7, 3, 1, 5], 7)
    x_poisoned = x.masked_fill(~mask, float("nan"))  # nothing outside the mask may leak in
    selected = [x[b, t].item() for b in range(4) for t in range(7) if mask[b, t]]
    n = len(selected)
    mean = sum(selected) / n
    var_biased = sum((v - mean) ** 2 for v in selected) / n
    assert masked_sum(x_poisoned, mask).item() == pytest.approx(sum(selected))
    assert masked_mean(x_poisoned, mask).item() == pytest.approx(mean)
    assert masked_var(x_poisoned, mask, unbiased=False).item() == pytest.approx(var_biased)
    assert masked_var(x_poisoned, mask).item() == pytest.approx(var_biased * n / (n - 1))
    rows = masked_mean(x_poisoned, mask, dim=1)
    for b in range(4):
        vals = [x[b, t].item() for t in range(7) if mask[b, t]]
        assert rows[b].item() == pytest.approx(sum(vals) / len(vals))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError):
        masked_var(x, torch.zeros_like(mask))


def test_masked_whiten_uses_masked_statistics_and_zeroes_outside(gen):
    x = randn(3, 6, generator=gen) * 5 + 2
    mask = prefix_mask([6, 2, 4], 6)
    poisoned = x.masked_fill(~mask, float("inf"))
    white = masked_whiten(poisoned, mask)
    selected = torch.tensor([x[b, t].item() for b in range(3) for t in range(6) if mask[b, t]], dtype=torch.float64)
    expected = (x - selected.mean()) / torch.sqrt(selected.var(unbiased=True) + 1e-8)
    assert torch.allclose(white[mask], expected[mask])
    assert torch.all(white[~mask] == 0)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(white, mask).item() == pytest.approx(1.0, rel=1e-6)
    kept_mean = masked_whiten(poisoned, mask, shift_mean=False)
    assert masked_mean(kept_mean, mask).item() == pytest.approx(selected.mean().item())
    assert torch.allclose(kept_mean[mask], (expected + selected.mean())[mask])
    assert torch.all(kept_mean[~mask] == 0)


# ---------------------------------------------------------------------------------------------
# KL estimators and controllers
# ---------------------------------------------------------------------------------------------


def test_kl_estimators_elementwise(gen):
    logp = -randn(3, 5, generator=gen).abs()
    ref = -randn(3, 5, generator=gen).abs()
    k1, k2, k3 = (kl_penalty(logp, ref, e) for e in ("k1", "k2", "k3"))
    for b in range(3):
        for t in range(5):
            a, r = logp[b, t].item(), ref[b, t].item()
            assert k1[b, t].item() == pytest.approx(a - r, abs=1e-6)
            assert k2[b, t].item() == pytest.approx(0.5 * (a - r) ** 2, abs=1e-6)
            log_r = r - a  # log pi_ref / pi
            assert k3[b, t].item() == pytest.approx(math.exp(log_r) - 1 - log_r, abs=1e-5)
    assert torch.all(k3 >= 0)
    assert torch.any(k1 < 0)  # per token, k1 can be negative; k3 cannot
    assert torch.all(kl_penalty(logp, logp, "k3") == 0) and torch.all(kl_penalty(logp, logp, "k1") == 0)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=gen), 0)
    q = torch.softmax(torch.randn(6, generator=gen), 0)
    true_kl = (p * (p.log() - q.log())).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, logq = p.log()[samples], q.log()[samples]
    assert kl_penalty(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_penalty(logp, logq, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


def test_adaptive_kl_controller_trajectory():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    expected = 0.2
    for current_kl, n in [(3.0, 256), (6.0, 256), (7.2, 128), (100.0, 512), (0.0, 512), (6.6, 64)]:
        error = max(-0.2, min(0.2, current_kl / 6.0 - 1))
        expected *= 1 + error * n / 10000
        assert controller.update(current_kl, n) == pytest.approx(expected)
        assert controller.value == pytest.approx(expected)
    # the error is clipped at +-0.2: a huge KL moves the coefficient exactly as much as 1.2 * target
    a, b = AdaptiveKLController(0.1, 6.0, 1000), AdaptiveKLController(0.1, 6.0, 1000)
    a.update(1e6, 100)
    b.update(7.2, 100)
    assert a.value == pytest.approx(b.value) == pytest.approx(0.1 * 1.02)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05


def test_build_kl_controller_from_config():
    fixed = build_kl_controller(SimpleNamespace(kl_controller="fixed", kl_coef=0.3))
    adaptive = build_kl_controller(SimpleNamespace(kl_controller="adaptive", kl_coef=0.3, kl_target=2.0, kl_horizon=50))
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.3
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.3, 2.0, 50)
    with pytest.raises(ValueError):
        build_kl_controller(SimpleNamespace(kl_controller="pid", kl_coef=0.3))


# ---------------------------------------------------------------------------------------------
# reward shaping and GAE
# ---------------------------------------------------------------------------------------------


def reference_rewards(scores, kl, lengths, width, coef, placement, clip):
    out = [[0.0] * width for _ in lengths]
    for b, n in enumerate(lengths):
        s = scores[b]
        if clip is not None:
            s = max(-clip, min(clip, s))
        for t in range(n):
            out[b][t] = -coef * kl[b][t]
            if placement == "all_tokens" or t == n - 1:
                out[b][t] += s
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("placement", ["last_token", "all_tokens"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_shape_rewards_with_early_eos(gen, placement, clip):
    lengths = [6, 2, 4, 1]  # rows 1-3 stopped early
    kl = randn(4, 6, generator=gen)
    scores = torch.tensor([0.5, -3.0, 2.5, 0.25], dtype=torch.float64)
    mask = prefix_mask(lengths, 6)
    rewards = shape_rewards(scores, kl.masked_fill(~mask, float("nan")), mask, 0.1, placement, clip)
    expected = reference_rewards(scores.tolist(), kl.tolist(), lengths, 6, 0.1, placement, clip)
    assert torch.allclose(rewards, expected)
    assert torch.all(rewards[~mask] == 0)


def test_score_lands_on_the_last_action_token_only():
    mask = prefix_mask([3, 5], 5)
    rewards = shape_rewards(torch.tensor([1.0, 2.0]), torch.zeros(2, 5), mask, kl_coef=0.1)
    assert rewards.tolist() == [[0, 0, 1.0, 0, 0], [0, 0, 0, 0, 2.0]]
    assert last_true_index(mask).tolist() == [2, 4]
    assert last_true_index(torch.zeros(1, 3, dtype=torch.bool)).tolist() == [-1]


def reference_gae(rewards, values, mask, gamma, lam):
    batch, width = len(rewards), len(rewards[0])
    adv = [[0.0] * width for _ in range(batch)]
    ret = [[0.0] * width for _ in range(batch)]
    for b in range(batch):
        steps = [t for t in range(width) if mask[b][t]]
        last_gae = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = values[b][steps[i + 1]] if i + 1 < len(steps) else 0.0
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            last_gae = delta + gamma * lam * last_gae
            adv[b][t] = last_gae
            ret[b][t] = last_gae + values[b][t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0), (0.5, 0.7)])
def test_gae_matches_reference(gen, gamma, lam):
    lengths = [8, 5, 1, 3]
    mask = prefix_mask(lengths, 8)
    rewards, values = randn(4, 8, generator=gen), randn(4, 8, generator=gen)
    # garbage beyond the mask must not leak in (the value after the last action is 0)
    adv, ret = compute_gae(
        rewards.masked_fill(~mask, 1e6), values.masked_fill(~mask, float("nan")), mask, gamma, lam
    )
    ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, ref_adv) and torch.allclose(ret, ref_ret)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_gae_special_cases(gen):
    mask = prefix_mask([4], 6)
    rewards, values = randn(1, 6, generator=gen), randn(1, 6, generator=gen)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # gamma = lam = 1: returns are the undiscounted rewards-to-go (Monte Carlo)
    to_go = torch.flip(torch.cumsum(torch.flip(rewards[:, :4], [1]), 1), [1])
    assert torch.allclose(ret[:, :4], to_go)
    adv0, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.0)
    # lam = 0: one-step TD errors, with V after the last action = 0
    td = [rewards[0, t] + 0.9 * (values[0, t + 1] if t < 3 else 0.0) - values[0, t] for t in range(4)]
    assert torch.allclose(adv0[0, :4], torch.stack([torch.as_tensor(v) for v in td]))


def test_gae_skips_holes_in_the_mask(gen):
    mask = torch.tensor([[1, 1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    rewards, values = randn(1, 8, generator=gen), randn(1, 8, generator=gen)
    adv, ret = compute_gae(rewards, values, mask, 0.95, 0.9)
    ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.95, 0.9)
    assert torch.allclose(adv, ref_adv) and torch.allclose(ret, ref_ret)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def reference_policy_loss(logp, old, adv, mask, eps, reduction):
    per_seq, tokens, clipped_count, kl_sum, ratio_sum = [], [], 0, 0.0, 0.0
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logp[b][t] - old[b][t])
            a = adv[b][t]
            unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            row.append(max(unclipped, clipped))
            clipped_count += clipped > unclipped
            kl_sum += 0.5 * (logp[b][t] - old[b][t]) ** 2
            ratio_sum += ratio
        tokens += row
        if row:
            per_seq.append(sum(row) / len(row))
    n = len(tokens)
    loss = sum(tokens) / n if reduction == "token" else sum(per_seq) / len(per_seq)
    return loss, clipped_count / n, kl_sum / n, ratio_sum / n


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_clipped_policy_loss_matches_reference(gen, reduction):
    mask = prefix_mask([6, 2, 0, 4], 6)  # one row with no action token at all
    old = -randn(4, 6, generator=gen).abs()
    logp = old + 0.3 * randn(4, 6, generator=gen)
    adv = randn(4, 6, generator=gen)
    loss, stats = policy_loss(logp.masked_fill(~mask, float("nan")), old, adv, mask, 0.2, reduction)
    ref_loss, clipfrac, approx_kl, ratio_mean = reference_policy_loss(
        logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, reduction
    )
    assert loss.item() == pytest.approx(ref_loss)
    assert stats["clipfrac"].item() == pytest.approx(clipfrac)
    assert 0 < clipfrac < 1  # the random data exercises both branches
    assert stats["approx_kl"].item() == pytest.approx(approx_kl)
    assert stats["ratio_mean"].item() == pytest.approx(ratio_mean)


def test_policy_loss_gradient_vanishes_on_the_clipped_branch():
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[math.log(1.5), math.log(1.1)]], dtype=torch.float64, requires_grad=True)
    adv = torch.ones(1, 2, dtype=torch.float64)
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 2, dtype=torch.bool), cliprange=0.2)
    loss.backward()
    # token 0: ratio 1.5 > 1.2 with A > 0 -> clipped, no gradient; token 1: d(-A*ratio/2)/dlogp = -1.1/2
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-1.1 / 2)
    assert stats["clipfrac"].item() == 0.5


def test_clipped_value_loss_matches_reference(gen):
    mask = prefix_mask([5, 3, 1], 5)
    old = randn(3, 5, generator=gen)
    values = old + 0.5 * randn(3, 5, generator=gen)
    returns = randn(3, 5, generator=gen)
    loss, stats = value_loss(values.masked_fill(~mask, float("nan")), old, returns, mask, cliprange_value=0.2)
    terms, clipped = [], 0
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                v, o, r = values[b, t].item(), old[b, t].item(), returns[b, t].item()
                vc = min(max(v, o - 0.2), o + 0.2)
                terms.append(max((v - r) ** 2, (vc - r) ** 2))
                clipped += (vc - r) ** 2 > (v - r) ** 2
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms))
    assert stats["vf_clipfrac"].item() == pytest.approx(clipped / len(terms))
    unclipped, _ = value_loss(values, old, returns, mask, cliprange_value=None)
    plain = [(values[b, t] - returns[b, t]).item() ** 2 for b in range(3) for t in range(5) if mask[b, t]]
    assert unclipped.item() == pytest.approx(0.5 * sum(plain) / len(plain))


def test_ptx_mixing():
    pg, ptx = torch.tensor(2.0), torch.tensor(10.0)
    assert mix_ptx_loss(pg, ptx, 0.25).item() == pytest.approx(0.75 * 2 + 0.25 * 10)
    assert mix_ptx_loss(pg, ptx, 1.0).item() == pytest.approx(10.0)
    assert mix_ptx_loss(pg, None, 0.0) is pg
    with pytest.raises(ValueError):
        mix_ptx_loss(pg, None, 0.5)
    with pytest.raises(ValueError):
        mix_ptx_loss(pg, ptx, 1.5)


def test_ratio_guard():
    assert ratio_guard_exceeded(torch.tensor(20.5), 20.0)
    assert not ratio_guard_exceeded(torch.tensor(20.0), 20.0)
    assert not ratio_guard_exceeded(1.3, 20.0)
    assert ratio_guard_exceeded(float("nan"), 20.0) and ratio_guard_exceeded(float("inf"), 20.0)
    assert not ratio_guard_exceeded(1e9, None)
    # wired to the loss statistics: a policy that moved far trips the guard
    old = torch.zeros(1, 3)
    far = torch.full((1, 3), math.log(30.0))
    _, stats = policy_loss(far, old, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    assert ratio_guard_exceeded(stats["ratio_mean"], 20.0)


def test_logprobs_and_entropy_from_logits(gen):
    logits = torch.randn(5, 4, 11, generator=gen)
    labels = torch.randint(0, 11, (5, 4), generator=gen)
    for temperature in (1.0, 0.7):
        expected = torch.log_softmax(logits / temperature, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        for chunk in (1, 2, 8):  # chunk sizes that do and do not divide the batch
            got = logprobs_from_logits(logits, labels, temperature, chunk_size=chunk)
            assert torch.allclose(got, expected, atol=1e-6)
        entropy = entropy_from_logits(logits, temperature, chunk_size=3)
        expected_entropy = torch.distributions.Categorical(logits=logits / temperature).entropy()
        assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    mask = prefix_mask([4, 1, 2, 3, 4], 4)
    expected_mean = torch.distributions.Categorical(logits=logits).entropy()[mask].mean()
    assert masked_entropy(logits, mask).item() == pytest.approx(expected_mean.item(), abs=1e-5)
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, labels, 0.0)


# ---------------------------------------------------------------------------------------------
# action masks, stop tokens, prompt padding
# ---------------------------------------------------------------------------------------------


def test_action_mask_eos_in_the_middle_at_the_end_and_missing():
    responses = torch.tensor(
        [
            [11, EOS, PAD, PAD, PAD],  # EOS in the middle, padding after it
            [11, 12, 13, 14, EOS],  # EOS at the last position
            [11, 12, 13, 14, 15],  # no EOS
            [PAD, 12, EOS, 14, EOS],  # the pad id sampled as a token is not a stop; only the first EOS counts
            [EOS, PAD, PAD, PAD, PAD],  # empty answer: just the stop token
        ]
    )
    result = compute_action_mask(responses, [EOS])
    assert result.mask.int().tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
    ]
    assert result.has_stop.tolist() == [True, True, False, True, True]
    assert result.lengths.tolist() == [2, 5, 5, 3, 1]


def test_action_mask_with_several_stop_ids_and_ragged_generation():
    responses = torch.tensor([[5, 7, 9, 9], [5, 5, 5, PAD], [5, 3, 5, 7]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    result = compute_action_mask(responses, [7, 3], valid)
    assert result.mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert result.has_stop.tolist() == [True, False, True]
    no_stop = compute_action_mask(responses, [], valid)
    assert torch.equal(no_stop.mask, valid) and not no_stop.has_stop.any()


def test_resolve_stop_token_ids():
    tok = SimpleNamespace(eos_token_id=EOS)
    assert resolve_stop_token_ids(tok, "eos") == [EOS]
    assert resolve_stop_token_ids(tok, None, 7) == [7]
    assert resolve_stop_token_ids(tok) == []
    assert resolve_stop_token_ids(tok, "eos", extra=[9, EOS]) == [EOS, 9]
    with pytest.raises(ValueError):
        resolve_stop_token_ids(tok, "eos", 7)
    with pytest.raises(ValueError):
        resolve_stop_token_ids(tok, "newline")


def test_left_pad_and_truncate_left():
    ids = torch.tensor([[1, 2, 3, PAD], [4, PAD, PAD, PAD], [PAD, PAD, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]])
    out_ids, out_mask = left_pad(ids, mask, PAD)
    assert out_ids.tolist() == [[1, 2, 3], [PAD, PAD, 4], [PAD, 5, 6]]
    assert out_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    cut_ids, cut_mask, truncated = truncate_left(out_ids, out_mask, 2)
    assert cut_ids.tolist() == [[2, 3], [PAD, 4], [5, 6]]
    assert cut_mask.tolist() == [[1, 1], [0, 1], [1, 1]]
    assert truncated.tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------------
# PPOConfig
# ---------------------------------------------------------------------------------------------

# Every field of TRL 1.12's trl.experimental.ppo.PPOConfig (and its _BaseConfig overrides) with its default.
TRL_112_PPO_DEFAULTS = {
    "learning_rate": 3e-6,
    "logging_steps": 10,
    "lr_scheduler_kwargs": None,
    "use_liger_kernel": False,
    "torch_empty_cache_steps": None,
    "dataset_num_proc": None,
    "num_mini_batches": 1,
    "total_episodes": None,
    "local_rollout_forward_batch_size": 64,
    "num_sample_generations": 10,
    "response_length": 53,
    "stop_token": None,
    "stop_token_id": None,
    "temperature": 0.7,
    "missing_eos_penalty": None,
    "sft_model_path": "EleutherAI/pythia-160m",
    "world_size": None,
    "num_total_batches": None,
    "micro_batch_size": None,
    "local_batch_size": None,
    "batch_size": None,
    "local_mini_batch_size": None,
    "mini_batch_size": None,
    "push_to_hub": False,
    "reward_model_path": "EleutherAI/pythia-160m",
    "model_adapter_name": None,
    "ref_adapter_name": None,
    "num_ppo_epochs": 4,
    "whiten_rewards": False,
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "cliprange": 0.2,
    "vf_coef": 0.1,
    "cliprange_value": 0.2,
    "gamma": 1.0,
    "lam": 0.95,
    "ds3_gather_for_generation": True,
}


def test_config_has_every_trl_field_with_its_default():
    from coati_hf.ppo.config import PPOConfig

    fields = {f.name: f for f in dataclasses.fields(PPOConfig)}
    for name, default in TRL_112_PPO_DEFAULTS.items():
        assert name in fields, name
        assert fields[name].default == default, name
        assert fields[name].metadata.get("help"), name
    for name in ("ptx_coef", "kl_controller", "reward_placement", "score_clip", "ratio_guard", "value_at"):
        assert fields[name].metadata.get("help"), name
    assert (fields["ptx_coef"].default, fields["reward_placement"].default, fields["value_at"].default) == (
        0.0,
        "last_token",
        "state",
    )
    assert fields["ratio_guard"].default == 20.0 and fields["score_clip"].default is None


def test_config_precision_batch_sizes_and_validation(tmp_path):
    from coati_hf.ppo.config import PPOConfig

    config = PPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=4
    )
    if not torch.cuda.is_available():
        assert config.bf16 is False and config.fp16 is False  # fp32 on a CPU, unlike TRL's bf16 default
    # TRL 1.12's config said gradient_checkpointing=True but its PPO loop never switched it on: off here too
    assert config.activation_checkpointing is False
    assert PPOConfig(output_dir=str(tmp_path), gradient_checkpointing=True).activation_checkpointing is True
    assert (config.world_size, config.local_batch_size, config.micro_batch_size, config.batch_size) == (1, 8, 4, 8)
    assert (config.mini_batch_size, config.local_mini_batch_size) == (2, 2)
    assert config.experience_batch_size == 4 and config.ptx_batch_size == 4
    config.compute_batch_sizes(world_size=2, train_dataset_len=100)
    assert (config.batch_size, config.mini_batch_size) == (16, 4)
    assert (config.total_episodes, config.num_total_batches) == (300, 19)  # 3 epochs x 100 prompts / 16
    assert PPOConfig(output_dir=str(tmp_path), activation_checkpointing=False).gradient_checkpointing is False
    bad = [
        dict(per_device_train_batch_size=3, num_mini_batches=2),
        dict(stop_token="eos", stop_token_id=5),
        dict(kl_estimator="k2"),
        dict(reward_placement="first_token"),
        dict(value_at="next"),
        dict(ptx_coef=1.5),
        dict(kl_controller="pid"),
        dict(score_clip=0.0),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            PPOConfig(output_dir=str(tmp_path), **kwargs)

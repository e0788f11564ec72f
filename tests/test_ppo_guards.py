"""PPO on the paths around the default one: non-finite numbers, checkpoints, stepping, config.

Each test pins a behaviour a user cannot see from the logs when it goes wrong:

- non-finite rewards, ratios and gradients never reach the weights, and a NaN is never saved;
- a checkpoint is complete or absent, and resuming never silently restarts the optimizer;
- one optimizer step per minibatch, whatever the gradient accumulation;
- the first micro-batches of an update see ratio 1 and unchanged values; the PTX blend is
  ``(1 - ptx_coef) * L_policy + ptx_coef * L_ptx (+ vf_coef * L_V)``;
- reward whitening spans the whole rollout batch; ``lr`` is the rate the update used;
- PPOConfig refuses bad values at construction.

Tiny random Llamas (hidden 64, 2 layers) with the SmolLM2 tokenizer; a few updates each.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

import pytest
import torch
from datasets import Dataset

from coati_hf.models import make_tiny_llama
from coati_hf.numerics import NonFiniteWeightsError
from coati_hf.ppo import trainer as trainer_module
from coati_hf.ppo.advantages import compute_gae, masked_whiten
from coati_hf.ppo.buffer import ReplayBuffer
from coati_hf.ppo.config import PPOConfig
from coati_hf.ppo.trainer import PPOTrainer

PROMPTS = [f"Question {i}: what comes after {i}?" for i in range(16)]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def tok(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def config(tmp_path, **overrides) -> PPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        total_episodes=8,
        response_length=5,
        num_ppo_epochs=1,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        num_sample_generations=0,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def build(tmp_path, tokenizer, reward_model=None, **overrides) -> PPOTrainer:
    policy, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    if reward_model is None:
        reward_model, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    pretrain = overrides.pop("pretrain_dataset", None)
    peft_config = overrides.pop("peft_config", None)
    prompts = Dataset.from_dict({"prompt": PROMPTS})
    return PPOTrainer(
        args=config(tmp_path, **overrides),
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=prompts,
        pretrain_dataset=pretrain,
        peft_config=peft_config,
    )


def step_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "objective/kl" in entry]


def all_finite(module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def weights(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Non-finite numbers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3e38, float("inf"), float("nan")], ids=["3e38", "inf", "nan"])
def test_absurd_rewards_never_reach_the_weights(tmp_path, tok, bad):
    """Half the completions get an absurd reward. inf/NaN rows are masked out at rollout, a
    finite 3e38 once its rewards overflow (tests/test_ppo_unusable_samples.py has the details).
    Either way every weight stays finite and the checkpoint written afterwards holds finite
    numbers."""

    def reward(prompts, completions):
        return [bad if i % 2 else 0.5 for i in range(len(completions))]

    trainer = build(tmp_path, tok, reward_model=reward, save_strategy="steps", save_steps=1, total_episodes=8)
    trainer.train()
    assert all_finite(trainer.model)
    logs = step_logs(trainer)
    assert all(entry["rollout/nan_scores"] == 2 for entry in logs)
    assert all(entry["ppo/skipped_updates"] == 0 for entry in logs)  # the other half still trains
    from safetensors.torch import load_file

    saved = load_file(os.path.join(tmp_path, "out", "checkpoint-2", "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())


@pytest.mark.parametrize("injected", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_ratio_is_skipped_not_propagated(tmp_path, tok, monkeypatch, injected):
    """The policy's log-probs of the first micro-batch are replaced by NaN / +inf. With the ratio
    guard off, a NaN loss is skipped (counted) and +inf is clamped (log-ratio at most 20, no
    gradient through the clamp): the weights stay finite and the other micro-batches train."""
    calls = {"count": 0}
    original = trainer_module.PolicyAndValueWrapper.forward

    def forward(self, *args, **kwargs):
        logprobs, entropy, values, ptx = original(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 1:
            logprobs = logprobs + injected
        return logprobs, entropy, values, ptx

    monkeypatch.setattr(trainer_module.PolicyAndValueWrapper, "forward", forward)
    trainer = build(tmp_path, tok, per_device_train_batch_size=2, gradient_accumulation_steps=2, ratio_guard=None)
    before = weights(trainer.model.policy)
    trainer.train()
    assert all_finite(trainer.model)
    skipped = sum(entry["ppo/skipped_updates"] for entry in step_logs(trainer))
    assert skipped == (1 if math.isnan(injected) else 0)
    after = weights(trainer.model.policy)
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the rest trained


def test_a_non_finite_gradient_skips_the_optimizer_step(tmp_path, tok):
    """The step is not taken, and the learning-rate schedule waits for it (as transformers'
    Trainer does when a step is skipped): the next update trains at the rate the skipped one
    would have used, and PyTorch's 'scheduler before optimizer' warning never fires."""
    trainer = build(tmp_path, tok, total_episodes=8, lr_scheduler_type="linear")
    parameter = trainer.model.policy.model.layers[0].mlp.up_proj.weight
    poisoned = [True]
    handle = parameter.register_hook(lambda grad: torch.full_like(grad, float("inf")) if poisoned[0] else grad)
    before, after_first = weights(trainer.model), {}
    original_optimize = trainer._optimize

    def optimize(*args, **kwargs):  # the first update's gradients are poisoned, the second's are not
        stats = original_optimize(*args, **kwargs)
        if poisoned[0]:
            after_first.update(weights(trainer.model))
            poisoned[0] = False
        return stats

    trainer._optimize = optimize
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    handle.remove()
    logs = step_logs(trainer)
    assert logs[0]["ppo/skipped_steps"] == 1 and logs[0]["ppo/optimizer_steps"] == 0
    assert logs[1]["ppo/skipped_steps"] == 0 and logs[1]["ppo/optimizer_steps"] == 1
    assert all(torch.equal(before[name], after_first[name]) for name in before)  # the skipped update changed nothing
    assert logs[1]["lr"] == logs[0]["lr"] == trainer.args.learning_rate  # the schedule waited for the step
    assert trainer.lr_scheduler.last_epoch == 1  # one step taken, one scheduler step
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_weights_that_turn_nan_stop_training_before_any_checkpoint(tmp_path, tok, monkeypatch):
    trainer = build(tmp_path, tok, save_strategy="steps", save_steps=1)
    original_optimize = PPOTrainer._optimize

    def poisoned(self, *args, **kwargs):
        stats = original_optimize(self, *args, **kwargs)
        with torch.no_grad():
            self.model.policy.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
        return stats

    monkeypatch.setattr(PPOTrainer, "_optimize", poisoned)
    with pytest.raises(NonFiniteWeightsError, match=r"update 1: parameter .*q_proj.* holds nan"):
        trainer.train()
    output = trainer.args.output_dir
    assert not os.path.isdir(output) or not [name for name in os.listdir(output) if "checkpoint" in name]


def test_save_model_refuses_nan_weights_and_leaves_the_folder_alone(tmp_path, tok):
    trainer = build(tmp_path, tok)
    folder = tmp_path / "export"
    trainer.save_model(str(folder))
    written = {name: (folder / name).read_bytes() for name in os.listdir(folder) if (folder / name).is_file()}
    with torch.no_grad():
        trainer.model.value_model.score.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="score.weight.* holds inf"):
        trainer.save_model(str(folder))
    assert {name: (folder / name).read_bytes() for name in written} == written


# ---------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_to_resume(tmp_path, tok, monkeypatch):
    trainer = build(tmp_path, tok, save_strategy="steps", save_steps=1, save_total_limit=1, total_episodes=12)
    original = PPOTrainer._save_rng_state

    def crash_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise OSError("disk full")
        return original(self, output_dir)

    monkeypatch.setattr(PPOTrainer, "_save_rng_state", crash_at_step_2)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    output = trainer.args.output_dir
    # checkpoint-1 was neither rotated away nor replaced by a half-written checkpoint-2
    assert sorted(name for name in os.listdir(output) if name.startswith("checkpoint-")) == ["checkpoint-1"]
    monkeypatch.setattr(PPOTrainer, "_save_rng_state", original)
    resumed = build(tmp_path, tok, save_strategy="steps", save_steps=1, save_total_limit=1, total_episodes=12)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert [entry["episode"] for entry in step_logs(resumed)] == [4, 8, 12]
    assert sorted(name for name in os.listdir(output) if "checkpoint" in name) == ["checkpoint-3"]


def test_resuming_from_a_checkpoint_without_optimizer_state_is_an_error(tmp_path, tok):
    trainer = build(tmp_path, tok, save_strategy="steps", save_steps=1, save_only_model=True)
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-1")
    assert os.path.isdir(checkpoint) and not os.path.exists(os.path.join(checkpoint, "optimizer.pt"))
    resumed = build(tmp_path, tok, save_strategy="no")
    with pytest.raises(ValueError, match=r"no optimizer\.pt, scheduler\.pt \(it was saved with save_only_model=True\)"):
        resumed.train(resume_from_checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# Stepping, ratios and the loss blend
# ---------------------------------------------------------------------------------------------


def count_optimizer_steps():
    counter = {"steps": 0}

    def hook(optimizer, args, kwargs):
        counter["steps"] += 1

    from torch.optim.optimizer import register_optimizer_step_post_hook

    return counter, register_optimizer_step_post_hook(hook)


def test_one_optimizer_step_per_minibatch_with_gradient_accumulation(tmp_path, tok):
    trainer = build(
        tmp_path, tok, per_device_train_batch_size=2, gradient_accumulation_steps=4, num_mini_batches=2,
        num_ppo_epochs=2, total_episodes=16,
    )  # fmt: skip
    counter, handle = count_optimizer_steps()
    try:
        trainer.train()
    finally:
        handle.remove()
    assert trainer.state.global_step == 2
    assert counter["steps"] == 2 * 2 * 2  # updates x epochs x minibatches, not x micro-batches
    assert [entry["ppo/optimizer_steps"] for entry in step_logs(trainer)] == [4, 4]


def test_before_the_first_step_ratio_is_one_and_values_unchanged(tmp_path, tok, monkeypatch):
    """Temperature 0.7 and value_at="action": the update recomputes exactly what the rollout had,
    so every micro-batch before the update's first optimizer step sees ratio 1 and old values."""
    seen = []
    original_policy_loss, original_value_loss = trainer_module.policy_loss, trainer_module.value_loss

    def policy_loss(logprobs, old, *args, **kwargs):
        seen.append({"max_log_ratio": float((logprobs - old).abs().max())})
        return original_policy_loss(logprobs, old, *args, **kwargs)

    def value_loss(values, old_values, returns, mask, *args, **kwargs):
        seen[-1]["max_value_change"] = float(torch.where(mask, values - old_values, 0.0).abs().max())
        return original_value_loss(values, old_values, returns, mask, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "policy_loss", policy_loss)
    monkeypatch.setattr(trainer_module, "value_loss", value_loss)
    trainer = build(
        tmp_path, tok, temperature=0.7, value_at="action", per_device_train_batch_size=2, gradient_accumulation_steps=2,
        num_ppo_epochs=2, total_episodes=8,
    )  # fmt: skip
    trainer.train()
    # per update: 2 epochs x 1 minibatch x 2 micro-batches; the first 2 come before any step
    assert len(seen) == 2 * 4
    for update in range(2):
        for micro in seen[4 * update : 4 * update + 2]:
            assert micro["max_log_ratio"] < 1e-5 and micro["max_value_change"] < 1e-5, micro
    assert max(micro["max_log_ratio"] for micro in seen) > 1e-4  # later micro-batches did see a moved policy


def test_the_loss_is_the_ptx_blend_plus_the_value_term(tmp_path, tok, monkeypatch):
    """On the first micro-batch (ratio 1, values unchanged: no clipping is active) the loss that
    is back-propagated equals, computed here from the model's own outputs,
    (1 - c) * (-mean A) + c * L_ptx + vf_coef * 0.5 * mean((V - R)^2)."""
    from coati_hf.data import load_sample

    captured = {}
    original_forward = trainer_module.PolicyAndValueWrapper.forward
    original_loss = PPOTrainer._micro_batch_loss

    def forward(self, *args, **kwargs):
        outputs = original_forward(self, *args, **kwargs)
        captured.setdefault("outputs", outputs)
        return outputs

    def micro_batch_loss(self, outputs, micro):
        loss, parts = original_loss(self, outputs, micro)
        captured.setdefault("micro", micro)
        captured.setdefault("loss", float(loss.detach()))
        return loss, parts

    monkeypatch.setattr(trainer_module.PolicyAndValueWrapper, "forward", forward)
    monkeypatch.setattr(PPOTrainer, "_micro_batch_loss", micro_batch_loss)
    trainer = build(
        tmp_path, tok, ptx_coef=0.3, vf_coef=0.25, total_episodes=4, pretrain_dataset=load_sample("pretrain"), ptx_batch_size=2,
    )  # fmt: skip
    trainer.train()
    _, _, values, ptx_loss = captured["outputs"]
    micro = captured["micro"]
    mask = micro.action_mask
    policy_term = -micro.advantages[mask].mean()
    value_term = 0.5 * ((values.detach() - micro.returns)[mask] ** 2).mean()
    expected = 0.7 * policy_term + 0.3 * float(ptx_loss) + 0.25 * value_term
    assert captured["loss"] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert float(ptx_loss) > 1.0  # a real language-modelling loss entered the blend


def test_reward_whitening_spans_the_whole_rollout(tmp_path, tok, monkeypatch):
    """Two experience chunks per update: rewards are whitened with the statistics of all rows
    together (TRL), and GAE is computed from the whitened rewards."""
    raw, trained_on = [], []
    original_iter = ReplayBuffer.iter_minibatches

    def iter_minibatches(self, *args, **kwargs):
        trained_on.append(self.collate())
        return original_iter(self, *args, **kwargs)

    monkeypatch.setattr(ReplayBuffer, "iter_minibatches", iter_minibatches)
    trainer = build(
        tmp_path, tok, whiten_rewards=True, whiten_advantages=False, experience_batch_size=4,
        per_device_train_batch_size=8, total_episodes=8, num_ppo_epochs=2,  # 2 epochs: the general path
    )  # fmt: skip
    original_make = trainer.experience_maker.make_experience

    def make_experience(prompts, **kwargs):
        experience = original_make(prompts, **kwargs)
        raw.append(experience)
        return experience

    trainer.experience_maker.make_experience = make_experience
    trainer.train()
    assert len(raw) == 2
    from coati_hf.ppo.experience import Experience

    together = Experience.concatenate(raw)
    expected_rewards = masked_whiten(together.rewards, together.action_mask, shift_mean=False)
    expected_advantages, expected_returns = compute_gae(
        expected_rewards, together.values, together.action_mask, trainer.args.gamma, trainer.args.lam
    )
    buffer = trained_on[0]
    torch.testing.assert_close(buffer.rewards, expected_rewards)
    torch.testing.assert_close(buffer.advantages, expected_advantages)
    torch.testing.assert_close(buffer.returns, expected_returns)
    # whitening each chunk on its own would have given other rewards
    per_chunk = torch.cat([masked_whiten(e.rewards, e.action_mask, shift_mean=False) for e in raw[:1]])
    assert not torch.allclose(per_chunk, expected_rewards[: len(raw[0])][:, : per_chunk.shape[1]])


def test_logged_lr_is_the_rate_the_update_used(tmp_path, tok):
    trainer = build(tmp_path, tok, learning_rate=1e-3, lr_scheduler_type="linear", total_episodes=12)
    trainer.train()
    assert [entry["lr"] for entry in step_logs(trainer)] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])


# ---------------------------------------------------------------------------------------------
# Strict configuration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("response_length", 0, "response_length must be an integer >= 1"),
        ("kl_coef", float("nan"), "kl_coef must be a finite number >= 0"),
        ("kl_coef", -0.1, "kl_coef must be a finite number >= 0"),
        ("kl_coef", float("inf"), "kl_coef must be a finite number >= 0"),
        ("per_device_train_batch_size", 0, "per_device_train_batch_size must be an integer >= 1"),
        ("experience_batch_size", 0, "experience_batch_size must be an integer >= 1"),
        ("local_rollout_forward_batch_size", 0, "local_rollout_forward_batch_size must be an integer >= 1"),
        ("cliprange", 0.0, "cliprange must be a finite number > 0"),
        ("cliprange_value", -0.2, "cliprange_value must be a finite number > 0"),
        ("gamma", 1.5, r"gamma must be in \[0, 1\]"),
        ("lam", -0.1, r"lam must be in \[0, 1\]"),
        ("vf_coef", -1.0, "vf_coef must be a finite number >= 0"),
        ("ptx_coef", 1.2, r"ptx_coef must be in \[0, 1\]"),
        ("ptx_coef", float("nan"), r"ptx_coef must be in \[0, 1\]"),
        ("temperature", float("nan"), "temperature must be a finite number > 0"),
        ("colossalai_strategy", "zero9", "colossalai_strategy: Unknown ColossalAI strategy 'zero9'"),
    ],
)
def test_config_refuses_bad_values_at_construction(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{field: value})


def test_a_bad_strategy_variable_is_named_as_such(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("COATI_HF_STRATEGY", "zero9")
    with pytest.raises(ValueError, match="Unknown ColossalAI strategy 'zero9'.*environment variable COATI_HF_STRATEGY"):
        build(tmp_path, tok)


def test_activation_checkpointing_is_off_by_default_and_really_on_when_asked(tmp_path, tok):
    """TRL 1.12's PPO loop never switched checkpointing on, whatever its config said; coati_hf's
    default matches what it ran, and asking for it switches it on for real, for the actor and
    the critic."""
    default = build(tmp_path / "default", tok, total_episodes=4)
    assert default.args.activation_checkpointing is False
    default.train()
    assert not default.model.policy.is_activation_checkpointing
    asked = build(tmp_path / "asked", tok, total_episodes=4, activation_checkpointing=True)
    asked.train()
    assert asked.model.policy.is_activation_checkpointing
    assert asked.model.value_model.is_activation_checkpointing  # the critic's backbone keeps as much as the actor's


def test_the_single_pass_update_is_the_general_one_with_fewer_forwards(tmp_path, tok, monkeypatch):
    """One epoch, one minibatch, one micro-batch: the rollout leaves the policy's log-probs and
    the critic's values to the update's forward. The metrics and the trained weights are those
    of the general path (which computes them twice), with one critic forward per update instead
    of two; reward whitening and PTX included."""
    from coati_hf.data import load_sample
    from coati_hf.ppo import experience as experience_module
    from coati_hf.ppo import forward as forward_module

    runs = {}
    for name, single in (("general", False), ("single", True)):
        calls = {"values": 0}
        original_values = experience_module.forward_values

        def counted(*args, _original=original_values, _calls=calls, **kwargs):
            _calls["values"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(experience_module, "forward_values", counted)
        monkeypatch.setattr(forward_module, "forward_values", counted)  # the update's (PolicyAndValueWrapper)
        monkeypatch.setattr(PPOTrainer, "_single_pass", lambda self, _single=single: _single)
        trainer = build(
            tmp_path / name, tok, whiten_rewards=True, ptx_coef=0.2, pretrain_dataset=load_sample("pretrain"),
            ptx_batch_size=2, total_episodes=8,
        )  # fmt: skip
        trainer.train()
        runs[name] = (step_logs(trainer), weights(trainer.model), calls["values"])
    (general_logs, general_weights, general_calls), (single_logs, single_weights, single_calls) = runs["general"], runs["single"]
    assert (general_calls, single_calls) == (4, 2)  # 2 updates: rollout + update, or the update alone
    # update 1 starts from the same weights; update 2 from weights that differ by rounding (see below)
    for (general, single), (rel, abs_) in zip(zip(general_logs, single_logs, strict=True), ((1e-5, 1e-6), (1e-3, 1e-5))):
        for key, value in general.items():
            if key in ("eps",) or not isinstance(value, float):
                continue
            assert single[key] == pytest.approx(value, rel=rel, abs=abs_), key
    # Adam divides by sqrt(v): weights whose gradient is ~0 can move by rounding-level amounts (1e-6) when the
    # rollout's no-grad forward and the update's differ in their last bit; lr is 1e-3
    for name in general_weights:
        torch.testing.assert_close(single_weights[name], general_weights[name], rtol=1e-4, atol=1e-5)


def test_checkpointing_changes_memory_not_numbers_for_lora_roles(tmp_path, tok):
    """Four roles on two backbones (LoRA actor, critic adapter on the reward model's backbone):
    with activation checkpointing on both the actor and the critic recompute their forwards
    in backward, and the trained adapters and logged losses equal those of a run without it;
    the reward model, which shares the critic's backbone, still never moves."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    runs = {}
    for checkpointing in (False, True):
        reward_model, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tok)
        probe = tok(PROMPTS[:2], return_tensors="pt", padding=True)
        with torch.no_grad():
            reward_before = reward_model(**probe).logits.clone()
        trainer = build(tmp_path / str(checkpointing), tok, reward_model=reward_model, peft_config=lora,
                        total_episodes=8, num_ppo_epochs=2, activation_checkpointing=checkpointing)  # fmt: skip
        trainer.train()
        logs = step_logs(trainer)
        actor, critic = trainer.model.policy, trainer.model.value_model
        assert actor.is_activation_checkpointing is checkpointing and critic.is_activation_checkpointing is checkpointing
        runs[checkpointing] = (
            {name: value.detach().clone() for name, value in trainer.model.named_parameters() if value.requires_grad},
            [log["loss/policy_avg"] for log in logs if "loss/policy_avg" in log],
        )
        with torch.no_grad(), critic.disable_adapter():
            torch.testing.assert_close(reward_model(**probe).logits, reward_before, rtol=0, atol=0)
    (plain_weights, plain_losses), (checkpointed_weights, checkpointed_losses) = runs[False], runs[True]
    assert plain_losses and checkpointed_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-7)
    assert plain_weights.keys() == checkpointed_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(checkpointed_weights[name], plain_weights[name], rtol=1e-5, atol=1e-6)

"""coati_hf.PPOTrainer end to end on tiny models: learning, PTX, roles, saving, resuming."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from coati_hf import PPOConfig, PPOTrainer
from coati_hf.data import load_sample
from coati_hf.models import load_tokenizer


def _config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "ppo"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=4,
        total_episodes=8 * 4,
        response_length=8,
        learning_rate=3e-3,
        kl_coef=0.05,
        temperature=1.0,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def _punctuation_reward(tokenizer):
    """Rule-based reward: the fraction of completion tokens that are '.' or ','."""
    targets = {tokenizer.convert_tokens_to_ids("."), tokenizer.convert_tokens_to_ids(",")}

    def reward(prompts, completions):
        encoded = tokenizer(completions, add_special_tokens=False)["input_ids"]
        return [sum(token in targets for token in ids) / max(1, len(ids)) for ids in encoded]

    return reward


def _warm_policy(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder), load_tokenizer(folder)


def _mean_sampled_score(trainer, prompts: list[str], repeats: int = 3) -> float:
    torch.manual_seed(1234)
    scores = [trainer.experience_maker.make_experience(prompts).scores.mean().item() for _ in range(repeats)]
    return sum(scores) / len(scores)


def _held_out_prompts(tokenizer, count=16):
    rows = load_sample("prompts").select(range(96, 96 + count))
    return [tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) for messages in rows["prompt"]]


def _lm_loss(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return model(**batch, labels=labels).loss.item()


def test_ppo_raises_a_rule_based_reward_with_bounded_kl(tmp_path, warm_tiny_policy_dir):
    policy, tokenizer = _warm_policy(warm_tiny_policy_dir)
    trainer = PPOTrainer(
        args=_config(tmp_path, per_device_train_batch_size=16, total_episodes=16 * 12),
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=_punctuation_reward(tokenizer),
        train_dataset=load_sample("prompts").select(range(96)),
        value_model=None,
    )
    held_out = _held_out_prompts(tokenizer)
    before = _mean_sampled_score(trainer, held_out)
    trainer.train()
    after = _mean_sampled_score(trainer, held_out)
    assert after > 1.5 * before and after > before + 0.03, (before, after)

    logs = [entry for entry in trainer.state.log_history if "objective/kl" in entry]
    assert len(logs) == 12 and trainer.state.global_step == 12
    assert max(entry["objective/kl"] for entry in logs) < 15.0  # nats per sequence: the KL penalty holds it
    for key in ("objective/scores", "objective/entropy", "loss/value_avg", "val/ratio", "policy/clipfrac_avg"):
        assert all(key in entry for entry in logs)
    # the reference policy is a frozen copy: it did not move
    reference_out = trainer.ref_model(**tokenizer(held_out[:2], return_tensors="pt", padding=True)).logits
    frozen, _ = _warm_policy(warm_tiny_policy_dir)
    torch.testing.assert_close(reference_out, frozen(**tokenizer(held_out[:2], return_tensors="pt", padding=True)).logits)


def test_ptx_keeps_the_pretraining_loss_lower(tmp_path, warm_tiny_policy_dir):
    pretrain_texts = list(load_sample("pretrain")["text"])
    losses = {}
    for ptx_coef in (0.0, 0.5):
        policy, tokenizer = _warm_policy(warm_tiny_policy_dir)
        trainer = PPOTrainer(
            args=_config(tmp_path / str(ptx_coef), ptx_coef=ptx_coef, learning_rate=5e-3, total_episodes=8 * 6, ptx_batch_size=4),
            processing_class=tokenizer,
            model=policy,
            ref_model=None,
            reward_model=_punctuation_reward(tokenizer),
            train_dataset=load_sample("prompts"),
            value_model=None,
            pretrain_dataset=load_sample("pretrain"),
        )
        trainer.train()
        losses[ptx_coef] = _lm_loss(trainer.model.policy, tokenizer, pretrain_texts)
        if ptx_coef:
            assert all("loss/ptx_avg" in entry for entry in trainer.state.log_history if "objective/kl" in entry)
    assert losses[0.5] < losses[0.0] - 0.05, losses


def test_ptx_without_pretraining_data_is_a_clear_error(tmp_path, tiny_causal_lm):
    policy, tokenizer = tiny_causal_lm
    with pytest.raises(ValueError, match="ptx_coef > 0 needs a pretrain_dataset"):
        PPOTrainer(args=_config(tmp_path, ptx_coef=0.3), processing_class=tokenizer, model=policy, ref_model=None,
                   reward_model=lambda p, c: [0.0] * len(c), train_dataset=load_sample("prompts"), value_model=None)


def test_roles_default_to_copies_and_critic_from_reward_model(tmp_path, tiny_causal_lm, tiny_reward_model):
    policy, tokenizer = tiny_causal_lm
    reward_model, _ = tiny_reward_model
    trainer = PPOTrainer(args=_config(tmp_path), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=load_sample("prompts"), value_model=None)
    assert trainer.model.policy is policy and trainer.reward_model is reward_model
    assert trainer.ref_model is not policy and not any(p.requires_grad for p in trainer.ref_model.parameters())
    # the critic starts as a copy of the reward model (Coati), trained separately
    critic = trainer.model.value_model
    assert critic is not reward_model
    torch.testing.assert_close(critic.score.weight, reward_model.score.weight)
    assert not any(p.requires_grad for p in reward_model.parameters())


def test_lora_shares_backbones_and_saves_reloadable_folders(tmp_path, tiny_causal_lm, tiny_reward_model):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    policy, tokenizer = tiny_causal_lm
    reward_model, _ = tiny_reward_model
    batch = tokenizer(["Hello there, how are you?", "一二三"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reward_before = reward_model(**batch).logits.clone()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=_config(tmp_path, total_episodes=16, learning_rate=1e-2), processing_class=tokenizer, model=policy,
                         ref_model=None, reward_model=reward_model, train_dataset=load_sample("prompts"), value_model=None,
                         peft_config=lora)
    actor, critic = trainer.model.policy, trainer.model.value_model
    assert isinstance(actor, PeftModel) and isinstance(critic, PeftModel)
    assert trainer.ref_model is None  # the reference is the actor with its adapter disabled
    assert critic.get_base_model() is reward_model  # critic = reward backbone + its own adapter and head
    backbones = {id(p) for m in (actor, critic) for n, p in m.named_parameters() if n.endswith("embed_tokens.weight")}
    assert len(backbones) == 2  # four roles, two backbones

    trainer.train()
    with torch.no_grad(), critic.disable_adapter():
        torch.testing.assert_close(reward_model(**batch).logits, reward_before)  # the reward never moved

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    reloaded_actor = AutoModelForCausalLM.from_pretrained(out)
    reloaded_critic = AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "critic" / "adapter" / "adapter_config.json").is_file()
    actor.eval()
    critic.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded_actor(**batch).logits, actor(**batch).logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(reloaded_critic(**batch).logits, critic(**batch).logits, atol=1e-4, rtol=1e-4)
        with actor.disable_adapter():
            assert not torch.allclose(reloaded_actor(**batch).logits, actor(**batch).logits, atol=1e-4)


def test_save_model_writes_actor_and_critic_for_plain_from_pretrained(tmp_path, tiny_causal_lm):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    policy, tokenizer = tiny_causal_lm
    trainer = PPOTrainer(args=_config(tmp_path, total_episodes=8), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=lambda p, c: [float(len(x)) for x in c], train_dataset=load_sample("prompts"), value_model=None)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    actor = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    critic = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final" / "critic")
    assert AutoTokenizer.from_pretrained(tmp_path / "final").pad_token == tokenizer.pad_token
    batch = tokenizer(["some words"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(actor(**batch).logits, trainer.model.policy(**batch).logits)
        torch.testing.assert_close(critic(**batch).logits, trainer.model.value_model(**batch).logits)
    assert critic.config.num_labels == 1


def test_resume_gives_the_same_next_step_metrics(tmp_path, warm_tiny_policy_dir):
    keys = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "val/ratio", "objective/kl_coef")

    def run(output_dir, resume=None):
        policy, tokenizer = _warm_policy(warm_tiny_policy_dir)
        args = _config(output_dir, total_episodes=8 * 4, save_strategy="steps", save_steps=2, kl_controller="adaptive",
                       kl_target=0.5, kl_horizon=100, num_mini_batches=2)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=_punctuation_reward(tokenizer), train_dataset=load_sample("prompts"), value_model=None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, {e["step"]: e for e in trainer.state.log_history if "objective/kl" in e}

    _, full = run(tmp_path / "a")
    resumed_trainer, resumed = run(tmp_path / "a", resume=str(tmp_path / "a" / "ppo" / "checkpoint-2"))
    assert resumed_trainer.state.global_step == 4
    assert full[1]["objective/kl_coef"] != full[4]["objective/kl_coef"]  # the adaptive coefficient moved and was restored
    for step in (3, 4):
        for key in keys:
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (step, key)


def test_prompts_follow_trls_rule_text_is_text_messages_get_the_template(tmp_path, tiny_causal_lm):
    """A string prompt is tokenized as it is (TRL's standard format); a message list gets the chat
    template with the generation prompt; strings_as_chat=True puts strings into a user turn;
    pre-tokenized input_ids are taken as they are."""
    policy, tokenizer = tiny_causal_lm
    text = Dataset.from_list([{"prompt": "What is tea?"}] * 8)
    messages = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is tea?"}]}] * 8)
    as_text = tokenizer("What is tea?", add_special_tokens=False)["input_ids"]
    as_chat = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "What is tea?"}], tokenize=False,
                                                      add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    ids = Dataset.from_list([{"input_ids": as_chat}] * 8)
    cases = [(text, {}, as_text), (text, {"strings_as_chat": True}, as_chat), (messages, {}, as_chat), (ids, {}, as_chat)]
    for dataset, options, expected in cases:
        trainer = PPOTrainer(args=_config(tmp_path, **options), processing_class=tokenizer, model=copy.deepcopy(policy),
                             ref_model=None, reward_model=lambda p, c: [0.0] * len(c), train_dataset=dataset, value_model=None)
        assert trainer.train_dataset[0]["input_ids"] == expected, options


def test_conversational_prompts_without_a_chat_template_are_one_clear_error(tmp_path, tiny_causal_lm):
    from coati_hf.data import ChatTemplateError

    policy, tokenizer = tiny_causal_lm
    tokenizer.chat_template = None
    messages = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is tea?"}]}] * 8)
    with pytest.raises(ChatTemplateError, match="train dataset: the rows are conversational"):
        PPOTrainer(args=_config(tmp_path), processing_class=tokenizer, model=policy, ref_model=None,
                   reward_model=lambda p, c: [0.0] * len(c), train_dataset=messages, value_model=None)


def test_metrics_reach_callbacks_like_any_trainer(tmp_path, tiny_causal_lm):
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.logs, self.steps = [], []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    policy, tokenizer = tiny_causal_lm
    recorder = Recorder()
    trainer = PPOTrainer(args=_config(tmp_path, total_episodes=16, activation_checkpointing=True), processing_class=tokenizer,
                         model=policy, ref_model=None, reward_model=lambda p, c: [1.0] * len(c),
                         train_dataset=load_sample("prompts"), value_model=None, callbacks=[recorder])
    trainer.train()
    assert recorder.steps == [1, 2]
    assert [log["episode"] for log in recorder.logs] == [8, 16]
    assert all(log["objective/scores"] == pytest.approx(1.0) for log in recorder.logs)


def _capture_buffers(trainer):
    """Record the experience each update optimises on (the collated replay buffer)."""
    captured = []
    original = trainer._optimize

    def spy(model, buffer, *args):
        captured.append(buffer.collate())
        return original(model, buffer, *args)

    trainer._optimize = spy
    return captured


def test_advantages_are_whitened_once_over_the_whole_rollout(tmp_path, tiny_causal_lm):
    """Two experience chunks with different rewards: whitening per chunk would erase the difference."""
    from coati_hf.ppo.advantages import masked_mean

    policy, tokenizer = tiny_causal_lm
    calls = []

    def reward(prompts, completions):
        calls.append(len(completions))
        return [10.0 if len(calls) % 2 == 1 else 0.0] * len(completions)

    args = _config(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, experience_batch_size=4, total_episodes=8)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=load_sample("prompts"), value_model=None)
    captured = _capture_buffers(trainer)
    trainer.train()
    experience = captured[0]
    assert calls == [4, 4] and len(experience) == 8
    assert masked_mean(experience.advantages, experience.action_mask).abs() < 1e-4
    first, second = masked_mean(experience.advantages[:4], experience.action_mask[:4]), masked_mean(experience.advantages[4:], experience.action_mask[4:])
    assert first > 0.5 and second < -0.5, (first, second)


def test_rows_dropped_for_nan_scores_are_refilled_as_masked_rows(tmp_path, tiny_causal_lm):
    """Every rank must run the same number of micro-batches: dropped rows come back fully masked."""
    policy, tokenizer = tiny_causal_lm

    def reward(prompts, completions):
        return [float("nan") if i < 3 else 1.0 for i in range(len(completions))]

    trainer = PPOTrainer(args=_config(tmp_path, total_episodes=8), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward, train_dataset=load_sample("prompts"), value_model=None)
    captured = _capture_buffers(trainer)
    trainer.train()
    experience = captured[0]
    assert len(experience) == 8
    assert int((experience.action_mask.sum(dim=-1) == 0).sum()) == 3
    assert trainer.state.log_history[-1]["rollout/nan_scores"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.policy.parameters())


def _punctuation_reward_model(policy_folder, tokenizer, steps=30):
    """A sequence-classification reward model (the warm tiny policy's backbone, new head) trained
    with the pairwise loss to prefer completions with '.' and ',' over the same words without."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(policy_folder, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    words = load_sample("pretrain")["text"][0].replace(".", " ").replace(",", " ").split()
    chosen, rejected = [], []
    for start in range(0, 8 * 24, 8):
        plain = words[start : start + 8]
        chosen.append(" ".join(word + ("." if k % 2 else ",") for k, word in enumerate(plain)))
        rejected.append(" ".join(plain))
    optimizer = torch.optim.AdamW(reward_model.parameters(), lr=3e-3)
    for step in range(steps):
        index = torch.randint(0, len(chosen), (8,), generator=torch.Generator().manual_seed(step))
        batch = tokenizer([chosen[i] for i in index] + [rejected[i] for i in index], return_tensors="pt", padding=True)
        scores = reward_model(**batch).logits.squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(scores[:8] - scores[8:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return reward_model.eval()


def test_recommended_set_up_raises_a_reward_models_score(tmp_path, warm_tiny_policy_dir):
    """value_model=None with LoRA (the recommended set-up): the critic is the reward model plus an
    adapter on its top layer(s), sharing the frozen trunk with the reward pass; PPO still raises
    the learned reward model's score, and the critic fits its targets (here from ~0.1 to ~3, and
    the value loss from ~8 to ~1.6)."""
    from peft import LoraConfig

    policy, tokenizer = _warm_policy(warm_tiny_policy_dir)
    reward_model = _punctuation_reward_model(warm_tiny_policy_dir, tokenizer)
    trainer = PPOTrainer(
        args=_config(tmp_path, per_device_train_batch_size=16, total_episodes=16 * 12),  # critic_adapter_fraction=0.25
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=load_sample("prompts").select(range(96)),
        value_model=None,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                               task_type="CAUSAL_LM"),
    )  # fmt: skip
    assert trainer.reward_shares_critic and trainer.experience_maker.make_experience(["Hi"]).critic_trunk_states is not None
    held_out = _held_out_prompts(tokenizer)
    before = _mean_sampled_score(trainer, held_out)
    trainer.train()
    after = _mean_sampled_score(trainer, held_out)
    logs = [entry for entry in trainer.state.log_history if "objective/kl" in entry]
    value_losses = [entry["loss/value_avg"] for entry in logs]
    assert after > before + 0.5, (before, after)
    assert sum(value_losses[-3:]) < sum(value_losses[:3]), value_losses

"""coati_hf.RewardTrainer: Coati losses, score position, learning, export, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from coati_hf import RewardConfig, RewardTrainer
from coati_hf.data import load_sample
from coati_hf.metrics import load_metric
from coati_hf.reward import pairwise_ranking_loss


def _config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=2e-3,
        num_train_epochs=4,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        max_length=256,
        gradient_checkpointing=False,
        seed=0,
    )
    settings.update(overrides)
    return RewardConfig(**settings)


def _pairs(rows):
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}]}
            for p, c, r in rows
        ]
    )


@pytest.mark.parametrize("loss_fn", ["log_sig", "log_exp"])
def test_losses_equal_reference_formula(loss_fn):
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(64, generator=generator) * 3, torch.randn(64, generator=generator) * 3
    margin = torch.rand(64, generator=generator)
    for m in (None, margin):
        m_value = 0.0 if m is None else m
        if loss_fn == "log_sig":
            reference = -torch.log(torch.sigmoid(chosen - rejected - m_value)).mean()
        else:
            reference = torch.log(1 + torch.exp(rejected - chosen + m_value)).mean()
        torch.testing.assert_close(pairwise_ranking_loss(chosen, rejected, loss_fn, m), reference)


def test_unknown_loss_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="loss_fn must be one of"):
        _config(tmp_path, loss_fn="hinge")


def test_metric_module_matches_numpy():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=50), rng.normal(size=50)
    result = load_metric("reward_accuracy").compute(predictions=chosen, references=rejected)
    assert result["accuracy"] == pytest.approx(np.mean(chosen > rejected))
    assert result["margin"] == pytest.approx(np.mean(chosen - rejected))
    assert result["rejected_reward_std"] == pytest.approx(np.std(rejected))


def test_score_is_read_at_last_token_with_left_and_right_padding(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    texts = ["short", "a considerably longer sentence to pad the other one"]
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            assert (batch["attention_mask"] == 0).any()
            torch.testing.assert_close(model(**batch).logits, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss_fn", ["log_sig", "log_exp"])
def test_reward_model_learns_held_out_preferences(tmp_path, tiny_reward_model, loss_fn):
    model, tokenizer = tiny_reward_model
    data = load_sample("preferences").shuffle(seed=0)
    held_out = data.select(range(40))
    train = data.select(range(40, len(data)))
    trainer = RewardTrainer(model=model, args=_config(tmp_path, loss_fn=loss_fn), train_dataset=train, eval_dataset=held_out, processing_class=tokenizer)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_accuracy"] >= 0.9, (before, after)
    assert after["eval_margin"] > before["eval_margin"]
    assert {"eval_chosen_reward", "eval_rejected_reward", "eval_chosen_reward_std"} <= set(after)
    assert any("accuracy" in entry for entry in trainer.state.log_history if "loss" in entry)


def test_saved_reward_model_reloads_with_plain_from_pretrained(tmp_path, tiny_reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model, tokenizer = tiny_reward_model
    trainer = RewardTrainer(model=model, args=_config(tmp_path, num_train_epochs=1), train_dataset=load_sample("preferences"), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "rm"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert reloaded.config.num_labels == 1 and reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    texts = ["I am glad to help you with that.", "whatever"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits)
    scorer = pipeline("text-classification", model=reloaded, tokenizer=reloaded_tokenizer, function_to_apply="none")
    assert scorer(texts[0])[0]["score"] == pytest.approx(reloaded(**tokenizer(texts[:1], return_tensors="pt")).logits.item(), abs=1e-4)


def test_reward_model_head_must_have_one_label(tmp_path, smol_tokenizer):
    from coati_hf.models import make_tiny_llama

    model, tokenizer = make_tiny_llama("sequence_classification", tokenizer=smol_tokenizer)
    model.config.num_labels = 2
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardTrainer(model=model, args=_config(tmp_path), train_dataset=load_sample("preferences"), processing_class=tokenizer)


def test_over_long_pairs_are_dropped_with_a_count(tmp_path, tiny_reward_model, caplog):
    model, tokenizer = tiny_reward_model
    rows = [("q?", "good answer", "bad")] * 3 + [("q?", "long " * 300, "bad")]
    with caplog.at_level(logging.WARNING, logger="coati_hf.reward"):
        trainer = RewardTrainer(model=model, args=_config(tmp_path, max_length=64), train_dataset=_pairs(rows), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 3
    assert "dropped 1 of 4 preference pairs" in caplog.text


def test_preference_row_with_empty_side_names_row_and_field(tmp_path, tiny_reward_model):
    import json

    from coati_hf.data import DataFormatError

    model, tokenizer = tiny_reward_model
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"context": [{"from": "user", "content": "hi"}], "chosen": [{"from": "assistant", "content": "hello"}], "rejected": [{"from": "assistant", "content": "go away"}]},
        {"context": [{"from": "user", "content": "hi"}], "chosen": [{"from": "assistant", "content": ""}], "rejected": [{"from": "assistant", "content": "go away"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataFormatError, match=r"prefs.jsonl.*row 2.*chosen"):
        RewardTrainer(model=model, args=_config(tmp_path), train_dataset=str(path), processing_class=tokenizer)


def test_tokenizer_without_pad_token_gets_a_distinct_one(tmp_path, tiny_reward_model):
    model, tokenizer = tiny_reward_model
    tokenizer.pad_token = None
    trainer = RewardTrainer(model=model, args=_config(tmp_path, num_train_epochs=1), train_dataset=_pairs([("q", "yes", "no")] * 2), processing_class=tokenizer)
    assert trainer.processing_class.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == trainer.processing_class.pad_token_id


def test_tokenizer_that_can_only_pad_with_eos_trains_with_a_warning(tmp_path, tiny_reward_model, monkeypatch, caplog):
    """Llama 3 and Pythia tokenizers have no pad token but EOS; TRL trains on them, so coati_hf does too."""
    from coati_hf.models import loading

    monkeypatch.setattr(loading, "_PAD_CANDIDATES", ())  # a vocabulary with no spare special token
    model, tokenizer = tiny_reward_model
    tokenizer.pad_token = None
    with caplog.at_level(logging.WARNING, logger="coati_hf.trainer_common"):
        trainer = RewardTrainer(model=model, args=_config(tmp_path, max_steps=1), train_dataset=_pairs([("q", "yes", "no")] * 2), processing_class=tokenizer)
    assert trainer.processing_class.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    assert "pads with its EOS token" in caplog.text and "score is read at the token before the final EOS" in caplog.text
    trainer.train()
    assert trainer.state.global_step == 1


def test_resume_continues_step_count_and_loss_curve(tmp_path, smol_tokenizer):
    from coati_hf.models import make_tiny_llama

    def run(resume=None):
        model, tokenizer = make_tiny_llama("sequence_classification", seed=0, tokenizer=smol_tokenizer)
        args = _config(tmp_path, output_dir=str(tmp_path / "rm"), num_train_epochs=1, max_steps=6, logging_steps=1,
                       save_strategy="steps", save_steps=3, per_device_train_batch_size=8)
        trainer = RewardTrainer(model=model, args=args, train_dataset=load_sample("preferences"), processing_class=tokenizer)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}

    _, full = run()
    resumed_trainer, resumed = run(resume=str(tmp_path / "rm" / "checkpoint-3"))
    assert resumed_trainer.state.global_step == 6
    for step in (4, 5, 6):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-4)
        assert resumed[step]["accuracy"] == pytest.approx(full[step]["accuracy"])


def test_reward_is_learnt_where_ppo_reads_it(tmp_path, tiny_reward_model):
    """PPO stops at EOS and reads the score there; ChatML adds a newline after EOS that the
    reward model must not be trained to score on."""
    from coati_hf.reward import end_at_last_eos

    model, tokenizer = tiny_reward_model
    trainer = RewardTrainer(model=model, args=_config(tmp_path), train_dataset=_pairs([("q?", "yes", "no")] * 2), processing_class=tokenizer)
    for row in trainer.train_dataset:
        assert row["chosen_ids"][-1] == tokenizer.eos_token_id and row["rejected_ids"][-1] == tokenizer.eos_token_id
    assert end_at_last_eos([5, 2, 7, 2, 9], eos_id=2) == [5, 2, 7, 2]
    assert end_at_last_eos([5, 7], eos_id=2) == [5, 7]

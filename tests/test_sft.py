"""coati_hf.SFTTrainer: Coati formats in, completions-only loss, LoRA, resume, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from coati_hf import SFTConfig, SFTTrainer
from coati_hf.data import load_sample
from coati_hf.sft import tokenize_conversation


def _config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        max_steps=20,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        max_length=96,
        gradient_checkpointing=False,
        seed=0,
        dataset_num_proc=None,
    )
    settings.update(overrides)
    return SFTConfig(**settings)


def _single_turn(rows):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]} for p, c in rows]
    )


def test_default_precision_fits_the_hardware(tmp_path):
    config = SFTConfig(output_dir=str(tmp_path), report_to="none")
    assert config.bf16 is torch.cuda.is_available()
    assert SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=True, use_cpu=True).bf16 is True


def test_sft_lowers_held_out_loss_and_masks_prompts(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    data = load_sample("sft").shuffle(seed=0)
    train, held_out = data.select(range(20, len(data))), data.select(range(20))
    trainer = SFTTrainer(model=model, args=_config(tmp_path, assistant_only_loss=True), train_dataset=train, eval_dataset=held_out, processing_class=tokenizer)

    # Labels: -100 exactly on the non-assistant tokens of each example (Coati's per-turn loss).
    example = trainer.train_dataset[0]
    assert any(label == -100 for label in example["labels"]) and any(label != -100 for label in example["labels"])
    for token, label in zip(example["input_ids"], example["labels"]):
        assert label in (-100, token)

    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 1.0, (before, after)
    assert "coati_hf" in trainer.model.model_tags and "coati-sft" in trainer.model.model_tags


def test_prompt_completion_labels_cover_exactly_the_completion(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    prompt, completion = "Name a colour.", "Blue is a colour."
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=1), train_dataset=_single_turn([(prompt, completion)] * 2), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    n_prompt = len(tokenizer(prompt_ids, add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in row["labels"][:n_prompt])
    learned = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tokenizer.decode(learned).startswith(completion)


def test_multi_turn_assistant_mask_covers_every_assistant_turn(smol_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "你好吗？"},
        {"role": "assistant", "content": "我很好。"},
    ]
    out = tokenize_conversation(smol_tokenizer, messages)
    learned = smol_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert learned.replace("\n", "") == "Hello!<|im_end|>我很好。<|im_end|>"
    assert "Hi" not in learned and "Be brief" not in learned


def test_lora_adapter_saves_and_reloads_with_peft(tmp_path, tiny_causal_lm):
    from peft import LoraConfig, PeftModel

    model, tokenizer = tiny_causal_lm
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=4), train_dataset=load_sample("sft"), processing_class=tokenizer, peft_config=lora)
    trainer.train()
    trainer.save_model(str(tmp_path / "sft"))  # merged weights at the root, the adapter in adapter/
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").is_file()

    from coati_hf.models import make_tiny_llama

    fresh_base, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    for key, value in fresh_base.state_dict().items():
        torch.testing.assert_close(value, base_state[key])
    reloaded = PeftModel.from_pretrained(fresh_base, str(tmp_path / "sft"), subfolder="adapter")
    batch = tokenizer(["some text to score"], return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits)
        with reloaded.disable_adapter():
            assert not torch.allclose(reloaded(**batch).logits, trainer.model(**batch).logits)


def test_resume_continues_step_count_and_loss_curve(tmp_path, smol_tokenizer):
    from coati_hf.models import make_tiny_llama

    def run(output_dir, resume=None, max_steps=6):
        model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=smol_tokenizer)
        args = _config(tmp_path, output_dir=str(output_dir), max_steps=max_steps, logging_steps=1, save_strategy="steps", save_steps=3, per_device_train_batch_size=4)
        trainer = SFTTrainer(model=model, args=args, train_dataset=load_sample("sft"), processing_class=tokenizer)
        trainer.train(resume_from_checkpoint=resume)
        losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
        return trainer, losses

    _, full = run(tmp_path / "full")
    resumed_trainer, resumed = run(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed_trainer.state.global_step == 6
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's log history
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-4)


def test_over_long_prompts_are_dropped_with_a_count(tmp_path, tiny_causal_lm, caplog):
    model, tokenizer = tiny_causal_lm
    rows = [("short question?", "short answer.")] * 3 + [("long " * 200, "answer")] * 2
    with caplog.at_level(logging.WARNING, logger="coati_hf.sft"):
        trainer = SFTTrainer(model=model, args=_config(tmp_path, max_length=64, max_steps=1), train_dataset=_single_turn(rows), processing_class=tokenizer)
    assert len(trainer.train_dataset) == 3
    assert "dropped 2 of 5 examples" in caplog.text
    with pytest.raises(ValueError, match="train dataset: all 2 examples have a prompt of max_length"):
        SFTTrainer(model=model, args=_config(tmp_path, max_length=64, max_steps=1), train_dataset=_single_turn(rows[3:]), processing_class=tokenizer)


def test_tokenizer_without_pad_token_gets_one_with_a_warning(tmp_path, tiny_causal_lm, caplog):
    model, tokenizer = tiny_causal_lm
    tokenizer.pad_token = None
    with caplog.at_level(logging.WARNING, logger="coati_hf.trainer_common"):
        trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=1), train_dataset=_single_turn([("q", "a")] * 2), processing_class=tokenizer)
    assert trainer.processing_class.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == trainer.processing_class.pad_token_id
    assert "had no pad token" in caplog.text


def test_sft_reads_a_coati_file_by_path(tmp_path, tiny_causal_lm):
    import json

    model, tokenizer = tiny_causal_lm
    path = tmp_path / "conversations.jsonl"
    rows = [{"messages": [{"from": "user", "content": "1+1?"}, {"from": "assistant", "content": "2"}]}] * 4
    path.write_text("\n".join(json.dumps(r) for r in rows))
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=1, assistant_only_loss=True), train_dataset=str(path), processing_class=tokenizer)
    labels = trainer.train_dataset[0]["labels"]
    learned = tokenizer.decode([t for t in labels if t != -100])
    assert learned.strip().startswith("2<|im_end|>")


def test_packing_keeps_prompt_tokens_out_of_the_loss(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=2, packing=True, max_length=256, assistant_only_loss=True), train_dataset=load_sample("sft"), processing_class=tokenizer)
    packed = trainer.train_dataset
    assert len(packed) < len(load_sample("sft")) and max(len(lengths) for lengths in packed["seq_lengths"]) > 1
    turn_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for input_ids, labels in zip(packed["input_ids"], packed["labels"]):
        assert all(label == -100 for token, label in zip(input_ids, labels) if token == turn_start)
        assert any(label != -100 for label in labels)
    trainer.train()
    assert trainer.state.global_step == 2

"""coati_hf.models: the embedded SmolLM2, its conversion cache, loaders and the tiny test model."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coati_hf.models import embedded as embedded_module
from coati_hf.models import (
    ensure_pad_token,
    find_embedded_gguf,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    value_head,
)

FIXED_SENTENCE = "The quick brown fox jumps over the lazy dog. 今天天气很好。"


def _lm_loss(model, tokenizer, text):
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, labels=batch["input_ids"]).loss.item()


def test_import_is_lazy():
    """`import coati_hf` must not pull in torch/transformers/trl (that is what makes it fast)."""
    code = "import sys, coati_hf; print(','.join(m for m in ('torch', 'transformers', 'trl', 'colossalai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_attribute_resolves_and_unknown_name_fails():
    import coati_hf

    assert coati_hf.load_tokenizer is load_tokenizer
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        coati_hf.NotAThing  # noqa: B018


def test_embedded_round_trip_matches_gguf(embedded_dir):
    """The converted checkpoint loads with plain from_pretrained, generates, and equals the GGUF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    assert model.config.model_type == "llama" and not hasattr(model.config, "quantization_config")

    gguf = find_embedded_gguf()
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert _lm_loss(model, tokenizer, FIXED_SENTENCE) == pytest.approx(_lm_loss(gguf_model, tokenizer, FIXED_SENTENCE), abs=1e-5)

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text  # a real, pretrained model answers


def test_conversion_cache_is_reused(embedded_dir, monkeypatch):
    """A second call returns the cached folder without converting again."""
    def must_not_convert(*_args, **_kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(embedded_module, "convert_gguf", must_not_convert)
    weights = Path(embedded_dir) / "model.safetensors"
    mtime = weights.stat().st_mtime
    assert embedded_module.embedded_model_dir() == Path(embedded_dir)
    assert weights.stat().st_mtime == mtime


def _convert_in_child(cache_dir, log_path, result_queue):
    def slow_fake_convert(gguf_path, output_dir):
        with open(log_path, "a") as log:
            log.write("convert\n")
        time.sleep(1.0)
        (Path(output_dir) / "config.json").write_text("{}")
        (Path(output_dir) / embedded_module._CONVERTED_MARKER).write_text("fake\n")

    embedded_module.convert_gguf = slow_fake_convert
    result_queue.put(str(embedded_module.embedded_model_dir(cache_dir)))


def test_two_processes_converting_at_once_convert_once(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    log_path = tmp_path / "conversions.log"
    workers = [context.Process(target=_convert_in_child, args=(tmp_path / "cache", log_path, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    results = {queue.get(timeout=5) for _ in workers}
    assert len(results) == 1
    assert log_path.read_text().count("convert") == 1
    assert (Path(results.pop()) / "config.json").is_file()
    assert not list((tmp_path / "cache").glob(".converting-*"))  # no half-written folder left behind


def test_embedded_name_loads_policy_and_reward_model_from_one_checkpoint():
    policy, tokenizer = load_causal_lm("embedded:SmolLM2-135M-Instruct")
    reward, _ = load_sequence_classifier("embedded:smollm2")
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == tokenizer.pad_token_id
    # Same backbone weights; the value head is new and initialised as Coati does.
    torch.testing.assert_close(reward.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    hidden = reward.config.hidden_size
    assert value_head(reward).weight.std().item() == pytest.approx(1.0 / (hidden + 1), rel=0.2)


def test_sequence_classifier_saved_reloads_with_same_scores(tmp_path, tiny_reward_model):
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = tiny_reward_model
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    batch = tokenizer(["hello there", "a longer sentence here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits)


def test_ensure_pad_token_prefers_unused_special_token(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token  # the SmolLM2 GGUF pads with EOS
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>"


def test_tiny_model_trains(tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    assert len(tokenizer) == model.config.vocab_size
    batch = tokenizer([FIXED_SENTENCE] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5

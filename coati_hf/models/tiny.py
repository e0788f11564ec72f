"""A tiny random-init Llama that shares the embedded SmolLM2 tokenizer, for fast tests.

Same vocabulary, chat template and special tokens as the real model, so every code path
(chat formatting, EOS handling, padding) is exercised; ~3.3M parameters (mostly the tied
embedding), a training step takes milliseconds on a CPU.
"""

from __future__ import annotations

import os


def tiny_llama_config(vocab_size: int, pad_token_id: int, eos_token_id: int, bos_token_id: int | None = None, **overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def make_tiny_llama(kind: str = "causal_lm", seed: int = 0, tokenizer=None, **config_overrides):
    """``(model, tokenizer)``: a random-init tiny Llama with the SmolLM2 tokenizer.

    ``kind`` is ``"causal_lm"`` or ``"sequence_classification"`` (``num_labels=1``, value
    head initialised as Coati does).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .embedded import embedded_model_dir
    from .loading import ensure_pad_token, init_value_head, load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(embedded_model_dir())
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **config_overrides,
    )
    torch.manual_seed(seed)
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_config(config)
    elif kind == "sequence_classification":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
        init_value_head(model)
    else:
        raise ValueError(f"kind must be 'causal_lm' or 'sequence_classification', got {kind!r}")
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def save_tiny_llama(output_dir: str | os.PathLike, kind: str = "causal_lm", seed: int = 0) -> str:
    """Write a tiny model + tokenizer as an ordinary checkpoint folder and return its path."""
    model, tokenizer = make_tiny_llama(kind=kind, seed=seed)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)

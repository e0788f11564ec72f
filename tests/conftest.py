"""Shared fixtures: the embedded SmolLM2 checkpoint (converted once per machine) and tiny models."""

from __future__ import annotations

import os

import pytest

# Nothing in the test suite may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_dir():
    """Folder of the converted embedded SmolLM2 (converted on the first run, then cached)."""
    from coati_hf.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_dir):
    from coati_hf.models import load_tokenizer

    return load_tokenizer(embedded_dir)


@pytest.fixture
def tiny_causal_lm(smol_tokenizer):
    """A fresh random-init tiny Llama (causal LM) and a copy of the SmolLM2 tokenizer."""
    import copy

    from coati_hf.models import make_tiny_llama

    return make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))


@pytest.fixture
def tiny_reward_model(smol_tokenizer):
    import copy

    from coati_hf.models import make_tiny_llama

    return make_tiny_llama("sequence_classification", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))

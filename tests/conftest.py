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


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread while a module's tiny models run, restored for the modules after it.

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spin-waiting
    threads made such modules ~10x slower. With one thread, greedy choices also match those of
    the CLI subprocesses, which run with OMP_NUM_THREADS=1. Use it with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")`` or as a module fixture's argument.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama (untied embeddings) saved with the SmolLM2 tokenizer, as an export
    folder the chat, generate and serve commands load."""
    import copy

    from coati_hf.models import make_tiny_llama

    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer), tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("exported") / "policy"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def warm_tiny_policy_dir(tmp_path_factory, smol_tokenizer):
    """A tiny Llama briefly trained on the shipped pretraining text, saved to a folder.

    A random-init policy over SmolLM2's 49k-token vocabulary samples any given token with
    probability ~2e-5, so no reward on specific tokens would ever be observed. After a few
    dozen language-modelling steps it emits common tokens ('.', ',', ' and') at a few percent:
    a starting point from which PPO can be seen to learn, as from an SFT model.
    """
    import torch

    from coati_hf.data import load_sample
    from coati_hf.models import make_tiny_llama

    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=smol_tokenizer)
    ids = []
    for text in load_sample("pretrain")["text"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = torch.tensor([ids[i : i + 64] for i in range(0, len(ids) - 64, 64)])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        batch = blocks[torch.randint(0, len(blocks), (8,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("warm_tiny_policy")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)

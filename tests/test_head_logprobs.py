"""HeadLogprobs: response log-probs and entropy from hidden states and a frozen LM head, without
keeping any (rows, positions, vocabulary) tensor; checked against log_softmax on random tensors,
its gradient against autograd's, and forward_logprobs against the model's own logits."""

from __future__ import annotations

import pytest
import torch

from coati_hf.models import make_tiny_llama
from coati_hf.ppo import head_logprobs as head_module
from coati_hf.ppo.forward import forward_logprobs
from coati_hf.ppo.head_logprobs import HeadLogprobs, separable_lm_head
from coati_hf.ppo.losses import entropy_from_logits, logprobs_from_logits

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_log_probs_entropy_and_gradient_match_log_softmax(monkeypatch, temperature, with_bias):
    monkeypatch.setattr(head_module, "VOCAB_CHUNK", 16)  # 50 entries: four slices, labels in each
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=generator, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 8, generator=generator) * 2
    bias = torch.randn(50, generator=generator) if with_bias else None
    labels = torch.tensor([[0, 15, 16, 31, 49], [48, 32, 1, 17, 33], [5, 5, 20, 40, 47]])
    upstream = torch.randn(3, 5, generator=generator)

    logprobs, entropy = HeadLogprobs.apply(hidden, weight, bias, labels, temperature)
    logits = torch.nn.functional.linear(hidden, weight, bias)
    expected = logprobs_from_logits(logits, labels, temperature)
    torch.testing.assert_close(logprobs, expected, rtol=1e-5, atol=1e-6)
    # entropy is a difference of near-equal numbers where the distribution is peaked: float32 absolute error
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach(), temperature), rtol=1e-5, atol=1e-5)
    assert not entropy.requires_grad
    (grad,) = torch.autograd.grad(logprobs, hidden, upstream)
    (expected_grad,) = torch.autograd.grad(expected, hidden, upstream)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_nothing_of_vocabulary_size_is_kept_for_backward():
    hidden = torch.randn(8, 32, 64, requires_grad=True)
    weight = torch.randn(50_000, 64)
    labels = torch.randint(0, 50_000, (8, 32))
    kept = []

    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
        HeadLogprobs.apply(hidden, weight, None, labels, 0.7)
    assert kept and max(kept) == hidden.numel()  # hidden states, labels, normaliser: nothing (B, R, V)


class ScaledLogits(torch.nn.Module):
    """A causal LM whose logits are not lm_head(hidden) (as soft-capping or logit scaling)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.base_model_prefix = "model"
        self.model = inner.model

    def get_output_embeddings(self):
        return self.inner.lm_head

    def forward(self, **kwargs):
        kwargs.pop("logits_to_keep", None)
        output = self.inner(**kwargs)
        output.logits = output.logits * 0.5
        return output


def test_forward_logprobs_equals_the_models_own_logits_and_falls_back_when_they_differ():
    model, tokenizer = make_tiny_llama(seed=0)
    model.requires_grad_(False)
    batch = tokenizer(["a prompt and its response", "short"], return_tensors="pt", padding=True, padding_side="left")
    sequences, mask = batch["input_ids"], batch["attention_mask"]
    prompt_length = 3
    assert separable_lm_head(model, model) is not None
    ours, entropy = forward_logprobs(model, sequences, mask, prompt_length, 0.7, return_entropy=True)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    own_logits = logits[:, prompt_length - 1 : -1]
    torch.testing.assert_close(ours, logprobs_from_logits(own_logits, sequences[:, prompt_length:], 0.7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, entropy_from_logits(own_logits, 0.7), rtol=1e-5, atol=1e-5)

    scaled = ScaledLogits(model)
    assert separable_lm_head(scaled, scaled) is None
    fallback = forward_logprobs(scaled, sequences, mask, prompt_length, 0.7)
    torch.testing.assert_close(fallback, logprobs_from_logits(own_logits * 0.5, sequences[:, prompt_length:], 0.7),
                               rtol=1e-5, atol=1e-5)  # fmt: skip

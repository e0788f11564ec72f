"""HeadLogprobs: response log-probs and entropy from hidden states and a frozen LM head, without
keeping any (rows, positions, vocabulary) tensor; checked against log_softmax on random tensors
(with the soft-caps and scalings some families apply), its gradient against autograd's, and
forward_logprobs against the model's own logits, at initialisation and at realistic logit sizes.
The path is chosen from the model's exact class and current config."""

from __future__ import annotations

import pytest
import torch

from architectures import assert_update_matches_own_forward, build, byte_tokenizer, family_named, rollout_batch
from architectures import scale_head_to_logit_spread
from coati_hf.models import make_tiny_llama
from coati_hf.ppo import head_logprobs as head_module
from coati_hf.ppo.forward import forward_logprobs
from coati_hf.ppo.head_logprobs import HeadLogprobs, LogitTransform, logit_transform, separable_lm_head
from coati_hf.ppo.losses import entropy_from_logits, logprobs_from_logits

pytestmark = pytest.mark.usefixtures("single_torch_thread")


TRANSFORMS = {
    "plain": LogitTransform(),
    "scaled": LogitTransform(scale=0.25),
    "soft_capped": LogitTransform(softcap=5.0),  # logits of ~20 here: far from the identity
    "scaled_and_soft_capped": LogitTransform(scale=2.0, softcap=5.0),
}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("transform_name", list(TRANSFORMS))
def test_log_probs_entropy_and_gradient_match_log_softmax(monkeypatch, temperature, with_bias, transform_name):
    """Against autograd through ``c tanh(s (W h + b) / c) / T`` and a plain log-softmax."""
    monkeypatch.setattr(head_module, "VOCAB_CHUNK", 16)  # 50 entries: four slices, labels in each
    transform = TRANSFORMS[transform_name]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=generator, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 8, generator=generator) * 2
    bias = torch.randn(50, generator=generator) if with_bias else None
    labels = torch.tensor([[0, 15, 16, 31, 49], [48, 32, 1, 17, 33], [5, 5, 20, 40, 47]])
    upstream = torch.randn(3, 5, generator=generator)

    logprobs, entropy = HeadLogprobs.apply(hidden, weight, bias, labels, temperature, transform)
    logits = torch.nn.functional.linear(hidden, weight, bias) * transform.scale
    if transform.softcap is not None:
        assert logits.abs().max() > 3 * transform.softcap  # the cap is far from the identity here
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
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


def test_the_path_is_decided_from_the_exact_class_and_its_current_config():
    tokenizer = byte_tokenizer()
    gemma2 = build(family_named("gemma2"), tokenizer)
    assert logit_transform(gemma2) == LogitTransform(softcap=30.0)
    gemma2.config.final_logit_softcapping = None
    assert logit_transform(gemma2) == LogitTransform()  # read at every call: nothing is cached
    assert logit_transform(build(family_named("cohere"), tokenizer)) == LogitTransform(scale=0.25)
    assert logit_transform(build(family_named("granite"), tokenizer)) == LogitTransform(scale=0.25)  # 1 / logits_scaling

    llama = build(family_named("llama"), tokenizer)
    assert logit_transform(llama) == LogitTransform()
    llama.config.final_logit_softcapping = 30.0  # a post-head field Llama's forward was not read with
    assert logit_transform(llama) is None
    llama.config.final_logit_softcapping = None
    llama.forward = lambda **kwargs: None  # an instance whose forward was replaced
    assert logit_transform(llama) is None and separable_lm_head(llama, llama) is None
    del llama.forward

    class ScaledLlama(type(llama)):  # a subclass may change what forward does: not on the list
        def forward(self, **kwargs):
            output = super().forward(**kwargs)
            output.logits = output.logits * 0.5
            return output

    llama.__class__ = ScaledLlama
    assert logit_transform(llama) is None


@pytest.mark.parametrize("family_name", ["gemma2", "cohere", "granite"])
def test_transformed_logits_at_realistic_size_match_the_models_own_forward(family_name):
    """Gemma-2 soft-caps its logits (30 tanh(x / 30)), Cohere multiplies them by logit_scale,
    Granite divides them by logits_scaling. At initialisation the logits are tiny and the
    soft-cap is the identity to 1e-6; once training has made them realistic (tens: here the
    head's weights scaled up) it is not. The log-probs, entropy and gradients PPO uses must be
    those of the model's own forward at both sizes, for the same model object."""
    tokenizer = byte_tokenizer()
    model = build(family_named(family_name), tokenizer)
    model.get_output_embeddings().weight.requires_grad_(False)  # the frozen head of a LoRA or fine-tuned policy
    sequences, mask, prompt_length = rollout_batch(len(tokenizer), tokenizer.pad_token_id)
    assert_update_matches_own_forward(model, sequences, mask, prompt_length)  # the first rollout, at init
    assert scale_head_to_logit_spread(model, sequences, mask) > 10, "the test needs logits of realistic size"
    assert_update_matches_own_forward(model, sequences, mask, prompt_length)

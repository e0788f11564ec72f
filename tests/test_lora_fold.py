"""lora_merged_for_generation folds a LoRA adapter into the weights only where the folded model
computes exactly what the unmerged peft model computes: plain LoRA ``Linear`` layers, one active
adapter, no variant (DoRA, aLoRA, ...), its bias folded into a base bias or not folded at all.
Everything else generates unfolded: the rollout must sample from the distribution whose
log-probs PPO then computes (with the unmerged model)."""

from __future__ import annotations

import pytest
import torch

from architectures import build, byte_tokenizer, family_named, rollout_batch
from coati_hf.ppo.generation import lora_merged_for_generation

pytestmark = pytest.mark.usefixtures("single_torch_thread")

INVOCATION = [65, 66]  # aLoRA's invocation tokens, placed in every row of the test batch


def _peft_model(family_name: str, **lora_options):
    from peft import LoraConfig, get_peft_model

    tokenizer = byte_tokenizer()
    options = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    options.update(lora_options)
    model = get_peft_model(build(family_named(family_name), tokenizer), LoraConfig(**options))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:  # lora_B and its bias start at zero: make every part of the adapter matter
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval(), tokenizer


def _lora_wrappers(model) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(module, LoraLayer) for module in model.modules())


def _logits_unmerged_and_in_the_fold(model, tokenizer):
    sequences, mask, _ = rollout_batch(len(tokenizer), tokenizer.pad_token_id)
    sequences[:, 3:5] = torch.tensor(INVOCATION)  # for aLoRA; ordinary tokens to the others
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(input_ids=sequences, attention_mask=mask).logits
        with model.disable_adapter():
            without_adapter = model(input_ids=sequences, attention_mask=mask).logits
        with lora_merged_for_generation(model):
            wrappers_inside = _lora_wrappers(model)
            folded = model(input_ids=sequences, attention_mask=mask).logits
    assert not torch.allclose(without_adapter, unmerged, atol=1e-2)  # the adapter matters: the comparison can fail
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # every weight and bias is put back
    return unmerged, folded, wrappers_inside


def test_plain_lora_is_folded_and_exact():
    model, tokenizer = _peft_model("llama")
    unmerged, folded, wrappers_inside = _logits_unmerged_and_in_the_fold(model, tokenizer)
    assert wrappers_inside == 0
    torch.testing.assert_close(folded, unmerged, rtol=1e-5, atol=1e-5)


def test_lora_bias_is_folded_into_the_base_bias():
    """Qwen2's q/k/v projections have a bias: ``W x + b + s (B A x + b_B)`` folds exactly into
    ``(W + s B A) x + (b + s b_B)``."""
    model, tokenizer = _peft_model("qwen2", lora_bias=True)
    unmerged, folded, wrappers_inside = _logits_unmerged_and_in_the_fold(model, tokenizer)
    assert wrappers_inside == 0
    torch.testing.assert_close(folded, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family_name, lora_options",
    [
        ("llama", dict(lora_bias=True)),  # Llama's projections have no bias to fold b_B into
        ("llama", dict(use_dora=True)),
        ("llama", dict(alora_invocation_tokens=INVOCATION)),  # aLoRA: the adapter acts only after its invocation
        ("llama", dict(target_modules=["q_proj", "embed_tokens"])),  # an Embedding LoRA layer
        ("gemma", dict(target_modules=["q_proj", "lm_head"])),  # the head's weight is the embeddings' too
    ],
    ids=["lora_bias_without_base_bias", "dora", "alora", "embedding_layer", "tied_head"],
)
def test_what_the_fold_cannot_reproduce_is_not_folded(family_name, lora_options):
    model, tokenizer = _peft_model(family_name, **lora_options)
    wrappers = _lora_wrappers(model)
    unmerged, folded, wrappers_inside = _logits_unmerged_and_in_the_fold(model, tokenizer)
    assert wrappers_inside == wrappers  # nothing swapped
    assert torch.equal(folded, unmerged)


def test_two_active_adapters_or_active_dropout_are_not_folded():
    from peft import LoraConfig

    model, tokenizer = _peft_model("llama", lora_dropout=0.5)
    model.train()  # dropout on the adapter's input: the unmerged model is random, the fold is not
    with lora_merged_for_generation(model):
        assert _lora_wrappers(model) > 0
    model.eval()
    model.add_adapter("second", LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.base_model.set_adapter(["default", "second"])
    with lora_merged_for_generation(model):
        assert _lora_wrappers(model) > 0

"""PPO's speed paths on many transformers families, each against the model's own forward.

For every family of :mod:`architectures` (tiny random-init models, no download):

- PPO's response log-probs and entropy (``forward_logprobs``, as the update runs it: inside
  ``lean_gated_mlps``) and their gradients w.r.t. every trainable parameter equal those from the
  model's own ``forward`` logits, at initialisation and at realistic magnitudes (logits with a
  standard deviation of tens; MLP pre-activations far above unit scale), and the fast paths
  apply exactly where :data:`STREAMED_HEAD` / :data:`LEAN_MLP` say (README, "Which models get
  the fast paths");
- the LoRA fold for generation gives the unmerged peft model's logits (plain LoRA, lora_bias,
  DoRA): folded exactly, or refused;
- one PPO update runs end to end with a LoRA policy, a value-head critic and a reward model of
  the family (of Llama where the family has no sequence classifier), and moves the actor's
  adapter and the critic, every logged number finite.
"""

from __future__ import annotations

import math

import pytest
import torch

from architectures import (
    FAMILIES,
    assert_update_matches_own_forward,
    build,
    byte_tokenizer,
    family_named,
    has_sequence_classifier,
    rollout_batch,
    scale_head_to_logit_spread,
)
from coati_hf.ppo.generation import lora_merged_for_generation
from coati_hf.ppo.head_logprobs import separable_lm_head

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed"),  # the fold matrix asks for it on purpose
    pytest.mark.filterwarnings("ignore:You have passed exclude_modules"),
]

# Families whose logits PPO streams from the hidden states (every family here: their forward is
# lm_head(hidden) plus, for Gemma-2/3, Cohere(-2) and Granite, a transform applied exactly).
STREAMED_HEAD = {f.name for f in FAMILIES}
# Families with SwiGLU MLPs (gate_proj, up_proj, down_proj, SiLU) swapped for the lean backward.
# Not: Gemma (GELU), Phi-3 and GLM-4 (fused gate_up_proj), Mixtral (experts only), DeepSeek-V4
# (swiglu_limit clamps), and the non-gated MLPs of Starcoder2, GPT-2, GPT-NeoX, OPT, Falcon.
LEAN_MLP = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "olmo2", "cohere", "cohere2", "granite",
            "smollm3", "exaone4", "stablelm", "deepseek_v3"}  # fmt: skip

MLP_INPUT_PROJECTIONS = ("gate_proj", "up_proj", "gate_up_proj", "c_fc", "dense_h_to_4h", "fc1")
# Random init gives MLP pre-activations of ~0.1 (std) and ~0.5 at most; x100 makes them ~10 and
# up to ~45: the size of a trained model's, and well past DeepSeek-V4's swiglu_limit (10).
MLP_SCALE = 100.0


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def _scale_mlp_inputs(model, factor: float = MLP_SCALE) -> None:
    """Multiply the input projections of every MLP (dense and expert ones) by ``factor``: each
    MLP then computes what it would on an input ``factor`` times larger."""
    scaled = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and any(part in MLP_INPUT_PROJECTIONS for part in name.split(".")[-2:]):
                parameter.mul_(factor)
                scaled += 1
    assert scaled, "no MLP input projection found"


def _largest_pre_activation(model, sequences, mask) -> float:
    """The largest magnitude any dense MLP input projection outputs on a batch (0 if none)."""
    largest = [0.0]

    def record(module, args, output):
        largest[0] = max(largest[0], float(output.detach().abs().max()))

    handles = [module.register_forward_hook(record) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in MLP_INPUT_PROJECTIONS]  # fmt: skip
    with torch.no_grad():
        model(input_ids=sequences, attention_mask=mask)
    for handle in handles:
        handle.remove()
    return largest[0]


@pytest.mark.parametrize("family_name", [f.name for f in FAMILIES])
def test_logprobs_entropy_and_gradients_equal_the_models_own(family_name, tokenizer):
    model = build(family_named(family_name), tokenizer)
    model.get_output_embeddings().weight.requires_grad_(False)  # a frozen head (LoRA, or tied and frozen)
    assert any(p.requires_grad for p in model.parameters())
    sequences, mask, prompt_length = rollout_batch(len(tokenizer), tokenizer.pad_token_id)

    assert (separable_lm_head(model, model) is not None) == (family_name in STREAMED_HEAD)
    swapped = assert_update_matches_own_forward(model, sequences, mask, prompt_length)
    assert (swapped > 0) == (family_name in LEAN_MLP)

    # realistic magnitudes: logits of tens, MLP pre-activations far beyond unit scale
    _scale_mlp_inputs(model)
    spread = scale_head_to_logit_spread(model, sequences, mask)
    assert spread >= 10, spread
    largest = _largest_pre_activation(model, sequences, mask)
    assert largest > 30 or family_name == "mixtral", largest  # Mixtral's MLPs are all fused experts (scaled too)
    assert_update_matches_own_forward(model, sequences, mask, prompt_length)


def _lora_wrappers(model) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(module, LoraLayer) for module in model.modules())


# Where LoRA goes in the fold matrix: every linear layer but the head, MoE routers and experts,
# and DeepSeek-V4's grouped o_a_proj (an nn.Linear subclass whose input peft's LoRA forward cannot
# take at all). In a MoE model peft also wraps the experts' fused parameters when a target names
# their MLP projections (gate_proj, up_proj, down_proj) in a ParamWrapper, which the fold refuses
# and which takes no lora_bias: those are adapted only in the "experts_too" case.
NOT_ADAPTED = {"lm_head", "gate", "experts", "o_a_proj"}
EXPERT_PARAMETER_NAMES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj"}
LORA_VARIANTS = {
    "plain": dict(),
    "lora_bias": dict(lora_bias=True),
    "dora": dict(use_dora=True),
    "experts_too": dict(target_modules="all-linear", exclude_modules=["o_a_proj"]),
}


def _linear_layers(model, has_experts: bool) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    left_out = NOT_ADAPTED | (EXPERT_PARAMETER_NAMES if has_experts else set())
    linear = (torch.nn.Linear, Conv1D)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, linear)}
    return sorted(names - left_out)


def _lora_fold_is_exact(model, sequences, mask):
    """Logits unmerged and inside the fold (compared by the caller), and the number of LoRA
    wrappers before and inside it (0 inside: folded; all of them: refused)."""
    with torch.no_grad():
        unmerged = model(input_ids=sequences, attention_mask=mask).logits
        with model.disable_adapter():
            assert not torch.allclose(model(input_ids=sequences, attention_mask=mask).logits, unmerged, atol=1e-3)
        wrappers = _lora_wrappers(model)
        with lora_merged_for_generation(model):
            folded_wrappers = _lora_wrappers(model)
            folded = model(input_ids=sequences, attention_mask=mask).logits
    torch.testing.assert_close(folded, unmerged, rtol=1e-4, atol=1e-4)
    return wrappers, folded_wrappers


@pytest.mark.parametrize("family_name", [f.name for f in FAMILIES])
def test_the_lora_fold_equals_the_unmerged_adapter_or_is_refused(family_name, tokenizer):
    """Folded exactly where every LoRA layer is a plain ``lora.Linear`` (and, with lora_bias,
    every adapted layer has a bias to fold it into); otherwise nothing is swapped."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    base = build(family_named(family_name), tokenizer)
    sequences, mask, _ = rollout_batch(len(tokenizer), tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(0)
    has_experts = any(name.endswith(".experts") for name, _ in base.named_modules())
    for variant, options in LORA_VARIANTS.items():
        if variant == "experts_too" and not has_experts:
            continue
        settings = dict(r=2, lora_alpha=4, target_modules=_linear_layers(base, has_experts))
        model = get_peft_model(base, LoraConfig(**{**settings, **options}), adapter_name=variant)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:  # lora_B (and its bias) start at zero: make the adapter matter
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        layers = [module for module in model.modules() if hasattr(module, "lora_A")]
        plain = all(type(layer) is LoraLinear for layer in layers)
        with_bias = all(getattr(layer.get_base_layer(), "bias", None) is not None for layer in layers)
        can_fold = plain and variant != "dora" and (variant != "lora_bias" or with_bias)
        wrappers, folded_wrappers = _lora_fold_is_exact(model, sequences, mask)
        assert folded_wrappers == (0 if can_fold else wrappers), variant
        assert can_fold or variant != "plain"  # plain LoRA on linear layers always folds
        base = model.unload()


def _ppo_config(tmp_path):
    from coati_hf import PPOConfig

    return PPOConfig(output_dir=str(tmp_path / "ppo"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
                     num_mini_batches=1, num_ppo_epochs=2, total_episodes=2, response_length=5, learning_rate=1e-2,
                     temperature=1.0, report_to="none", logging_steps=1, save_strategy="no",
                     activation_checkpointing=False, disable_tqdm=True, seed=0)  # fmt: skip


@pytest.mark.parametrize("family_name", [f.name for f in FAMILIES])
def test_one_ppo_update_with_policy_critic_and_reward_model_of_the_family(family_name, tokenizer, tmp_path):
    """A LoRA policy (so its head is frozen: the update streams its log-probs, and the rollout
    generates with the adapter folded), a fully trained value-head critic and a frozen reward
    model; one update with two PPO epochs (the rollout computes the old log-probs and values)."""
    from datasets import Dataset
    from peft import LoraConfig

    from coati_hf import PPOTrainer

    policy = build(family_named(family_name), tokenizer)
    judge = family_named(family_name) if has_sequence_classifier(family_named(family_name)) else family_named("llama")
    critic = build(judge, tokenizer, "sequence_classification", seed=1)
    reward_model = build(judge, tokenizer, "sequence_classification", seed=2)
    has_experts = any(name.endswith(".experts") for name, _ in policy.named_modules())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=_linear_layers(policy, has_experts), task_type="CAUSAL_LM")
    prompts = Dataset.from_list([{"prompt": "Tea or coffee?"}, {"prompt": "Name a colour."}])
    reward_before = {n: p.detach().clone() for n, p in reward_model.named_parameters()}
    trainer = PPOTrainer(args=_ppo_config(tmp_path), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=prompts, value_model=critic, peft_config=lora)  # fmt: skip
    actor, value_model = trainer.model.policy, trainer.model.value_model
    assert separable_lm_head(actor, actor.get_base_model()) is not None
    before = {role: {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
              for role, model in (("policy", actor), ("critic", value_model))}  # fmt: skip
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "objective/kl" in entry]
    assert trainer.state.global_step == 1 and len(logs) == 1
    assert all(math.isfinite(value) for value in logs[0].values() if isinstance(value, float)), logs[0]
    for key in ("loss/policy_avg", "loss/value_avg", "objective/scores", "objective/entropy"):
        assert key in logs[0]
    for role, model in (("policy", actor), ("critic", value_model)):
        parameters = dict(model.named_parameters())
        assert any(not torch.equal(parameters[n], p) for n, p in before[role].items()), f"the {role} did not change"
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(p, reward_before[n]) for n, p in reward_model.named_parameters())


@pytest.mark.parametrize("family_name", [f.name for f in FAMILIES if not has_sequence_classifier(f)])
def test_a_critic_from_a_policy_without_a_sequence_classifier_is_a_clear_error(family_name, tokenizer, tmp_path):
    """value_model=None with a rule-based reward builds the critic from the policy's backbone;
    transformers has no sequence classifier for these families, and the error says what to pass."""
    from datasets import Dataset

    from coati_hf import PPOTrainer

    policy = build(family_named(family_name), tokenizer)
    with pytest.raises(ValueError, match=rf"no sequence-classification class for model_type '{policy.config.model_type}'.*value_model="):
        PPOTrainer(args=_ppo_config(tmp_path), processing_class=tokenizer, model=policy, ref_model=None,
                   reward_model=lambda prompts, completions: [1.0] * len(completions),
                   train_dataset=Dataset.from_list([{"prompt": "Hi?"}]), value_model=None)  # fmt: skip

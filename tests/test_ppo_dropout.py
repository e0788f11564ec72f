"""PPO's roles have no dropout of any kind.

Dropout is not always an ``nn.Dropout`` module: OPT passes ``self.dropout`` and ``layerdrop``
to ``F.dropout`` / a coin flip, Llama-family attention passes ``attention_dropout`` to the
kernel, Falcon and GPT-Neo read ``config.attention_dropout`` at call time. Any of them left on
makes a train-mode forward random, and the single-pass update computes KL, advantages and
returns from a train-mode forward (before: 0.07 nats of KL on OPT between a policy and its
identical reference).
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM

from coati_hf.models import make_tiny_llama
from coati_hf.ppo.roles import disable_dropout

pytestmark = pytest.mark.usefixtures("single_torch_thread")

P = 0.3
FAMILIES = {
    "opt": dict(dropout=P, attention_dropout=P, activation_dropout=P, layerdrop=P, word_embed_proj_dim=32, ffn_dim=64),
    "llama": dict(attention_dropout=P, intermediate_size=64),
    "falcon": dict(attention_dropout=P, hidden_dropout=P, new_decoder_architecture=True, num_kv_heads=2),
    "gpt_neo": dict(attention_dropout=P, embed_dropout=P, resid_dropout=P, attention_types=[[["global"], 2]], max_position_embeddings=64),
    "gpt2": dict(attn_pdrop=P, resid_pdrop=P, embd_pdrop=P, n_embd=32, n_layer=2, n_head=4),
}


def tiny(family: str, vocab_size: int = 128, **extra):
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=vocab_size)
    if family == "gpt2":
        settings = dict(vocab_size=vocab_size)
    settings.update(FAMILIES[family], **extra)
    config = AutoConfig.for_model(family, **settings)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_train_mode_forward_is_the_eval_forward(family):
    model = tiny(family)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    model.train()
    noisy = model(input_ids=ids).logits
    assert not torch.allclose(noisy, model(input_ids=ids).logits)  # the test has dropout to find
    disable_dropout(model)
    model.train()
    first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    model.eval()
    torch.testing.assert_close(first, model(input_ids=ids).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_the_config_loses_its_dropout_too():
    model = tiny("falcon")
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0 and model.config.hidden_dropout == 0.0


def test_single_pass_kl_of_an_opt_policy_against_its_identical_reference_is_zero(tmp_path, smol_tokenizer):
    """LoRA starts at zero, so the policy equals its reference (the adapter-disabled model) and
    the first update's KL must be 0: the rollout's reference pass runs in eval mode, the single
    pass's policy forward in train mode."""
    from peft import LoraConfig

    from coati_hf.ppo.config import PPOConfig
    from coati_hf.ppo.trainer import PPOTrainer

    tokenizer = copy.deepcopy(smol_tokenizer)
    policy = tiny("opt", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    args = PPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, total_episodes=4, response_length=6, num_ppo_epochs=1,
        report_to="none", logging_steps=1, save_strategy="no", num_sample_generations=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": [f"Question {i}?" for i in range(4)]}),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )  # fmt: skip
    assert trainer._single_pass()
    trainer.train()
    (entry,) = [h for h in trainer.state.log_history if "objective/kl" in h]
    assert abs(entry["objective/kl"]) < 1e-5 and entry["objective/kl_k3"] < 1e-6


def test_the_export_keeps_the_users_dropout_config(tmp_path, smol_tokenizer):
    """Training runs without dropout; the saved config.json still says what the user's did."""
    import json

    from coati_hf.ppo.config import PPOConfig
    from coati_hf.ppo.trainer import PPOTrainer

    tokenizer = copy.deepcopy(smol_tokenizer)
    policy = tiny("falcon", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    args = PPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, total_episodes=2, response_length=3, num_ppo_epochs=1,
        report_to="none", save_strategy="no", num_sample_generations=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": ["Hi?", "Why?"]}),
    )  # fmt: skip
    assert trainer.policy_model.config.attention_dropout == 0.0  # while training
    trainer.save_model(str(tmp_path / "export"))
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert saved["attention_dropout"] == P and saved["hidden_dropout"] == P
    assert trainer.policy_model.config.attention_dropout == 0.0  # and training would go on without it

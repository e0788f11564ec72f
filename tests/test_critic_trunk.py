"""The recommended critic (value_model=None with LoRA): the reward model plus an adapter on its top
layers only, sharing the frozen layers below with the reward pass.

What must hold: the adapter sits on exactly the top ``ceil(fraction * layers)`` layers; values
(and their gradients) computed from the trunk states the reward pass recorded equal a full
forward of the critic, without running the frozen layers again; and whole PPO runs, single-pass
and general (minibatches, experience chunks, trimming), train to the same weights with the
sharing on or off.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from coati_hf import PPOConfig, PPOTrainer
from coati_hf.models import make_tiny_llama
from coati_hf.ppo.experience import ExperienceMaker
from coati_hf.ppo.forward import decoder_layers, forward_values, trunk_split
from coati_hf.ppo.roles import build_roles

PROMPTS = [f"Question {i}: what comes after {i}?" for i in range(16)]
LAYERS = 4

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def tok(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def lora(**overrides):
    settings = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    settings.update(overrides)
    return LoraConfig(**settings)


def tiny(kind, seed, tok):
    model, _ = make_tiny_llama(kind, seed=seed, tokenizer=tok, num_hidden_layers=LAYERS)
    return model


def adapted_layers(critic) -> list[int]:
    return [
        index
        for index, layer in enumerate(decoder_layers(critic))
        if any("lora_" in name for name, _ in layer.named_parameters())
    ]


def critic_for(tok, fraction, peft_config=None):
    roles = build_roles(tiny("causal_lm", 0, tok), None, tiny("sequence_classification", 1, tok), None, tok,
                        peft_config=peft_config or lora(), critic_adapter_fraction=fraction)  # fmt: skip
    assert roles.reward_shares_critic
    return roles


@pytest.mark.parametrize(("fraction", "expected"), [(0.25, [3]), (0.5, [2, 3]), (0.6, [1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_the_critic_adapter_covers_the_top_layers_only(tok, fraction, expected):
    critic = critic_for(tok, fraction).critic
    assert adapted_layers(critic) == expected
    assert trunk_split(critic) == (expected[0] or None)
    trainable = {name for name, p in critic.named_parameters() if p.requires_grad}
    assert any("score" in name for name in trainable)  # the value head trains too
    assert all("lora_" in name or "score" in name for name in trainable)


def test_a_pattern_or_explicit_layers_in_peft_config_are_kept(tok):
    pattern = critic_for(tok, 0.25, lora(target_modules=r".*\.(q_proj|v_proj)")).critic
    assert adapted_layers(pattern) == [0, 1, 2, 3]  # peft cannot combine a pattern with layer indices
    explicit = critic_for(tok, 0.25, lora(layers_to_transform=[0])).critic
    assert adapted_layers(explicit) == [0]  # the user's choice; no frozen trunk below layer 0
    assert trunk_split(explicit) is None


def _config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, total_episodes=8, response_length=5,
        num_ppo_epochs=1, learning_rate=1e-3, report_to="none", logging_steps=1, save_strategy="no",
        num_sample_generations=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return PPOConfig(**settings)


def test_values_from_the_recorded_trunk_equal_a_full_critic_forward(tmp_path, tok):
    """The reward pass records the input of the first adapted layer; values computed from it
    equal the critic's full forward, so do their gradients, and the frozen layers do not run."""
    roles = critic_for(tok, 0.5, lora(init_lora_weights=False))
    critic = roles.critic
    maker = ExperienceMaker(roles.policy, None, critic, critic, tok, _config(tmp_path))
    torch.manual_seed(0)
    experience = maker.make_experience(PROMPTS[:4])
    trunk = experience.critic_trunk_states
    assert trunk is not None and trunk.shape[:2] == experience.sequences.shape
    assert trunk.shape[2] == critic.config.hidden_size

    args = (experience.sequences, experience.attention_mask, experience.prompt_length)
    lower_layer_calls = []
    hooks = [layer.self_attn.register_forward_hook(lambda *_: lower_layer_calls.append(1))
             for layer in decoder_layers(critic)[:2]]  # fmt: skip
    critic.train()
    replayed = forward_values(critic, *args, trunk_states=trunk)
    assert lower_layer_calls == []  # the frozen trunk was not run again
    full = forward_values(critic, *args)
    assert len(lower_layer_calls) == 2  # the layers' own forward is back afterwards
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(replayed, full, rtol=1e-5, atol=1e-6)

    adapter = [p for p in critic.parameters() if p.requires_grad]
    mask = experience.action_mask
    grads_replayed = torch.autograd.grad((replayed * mask).sum(), adapter)
    grads_full = torch.autograd.grad((full * mask).sum(), adapter)
    for replayed_grad, full_grad in zip(grads_replayed, grads_full):
        torch.testing.assert_close(replayed_grad, full_grad, rtol=1e-4, atol=1e-6)
    # the rollout's values came from the same trunk
    torch.testing.assert_close(experience.values, torch.where(mask, full.detach(), 0.0), rtol=1e-5, atol=1e-6)


def _train(tmp_path, tok, share: bool, **overrides):
    reward_model = tiny("sequence_classification", 1, tok)
    trainer = PPOTrainer(
        args=_config(tmp_path / str(share), **overrides), processing_class=tok, model=tiny("causal_lm", 0, tok),
        ref_model=None, reward_model=reward_model, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=lora(),
    )  # fmt: skip
    trainer.experience_maker.share_critic_trunk = share
    recorded = []
    original = trainer._forward

    def forward(model, micro, ptx):
        recorded.append(micro.critic_trunk_states is not None)
        return original(model, micro, ptx)

    trainer._forward = forward
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "objective/kl" in entry]
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    return trained, logs, recorded


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(num_ppo_epochs=2, num_mini_batches=2, experience_batch_size=2)],
    ids=["single-pass", "epochs-minibatches-chunks"],
)
def test_ppo_trains_the_same_with_and_without_the_shared_trunk(tmp_path, tok, overrides):
    shared_weights, shared_logs, shared_used = _train(tmp_path, tok, True, **overrides)
    plain_weights, plain_logs, plain_used = _train(tmp_path, tok, False, **overrides)
    assert shared_used and all(shared_used) and not any(plain_used)
    assert len(shared_logs) == len(plain_logs) == 2
    for shared, plain in zip(shared_logs, plain_logs):
        for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
            assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert shared_weights.keys() == plain_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(shared_weights[name], plain_weights[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan")])
def test_the_fraction_is_checked_at_construction(tmp_path, bad):
    with pytest.raises(ValueError, match=r"critic_adapter_fraction must be in \(0, 1\]"):
        _config(tmp_path, critic_adapter_fraction=bad)

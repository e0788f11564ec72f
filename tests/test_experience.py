"""ExperienceMaker and ReplayBuffer on tiny random Llamas: every tensor convention pinned down.

Responses are steered with a logits processor that forces chosen tokens at chosen steps (EOS in
the middle, at the end, never; the pad id as an ordinary token), so each case is deterministic.
Every expected number is recomputed independently: one row at a time, without any padding.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from coati_hf.models import make_tiny_llama, value_head
from coati_hf.ppo.advantages import compute_gae, masked_whiten
from coati_hf.ppo.buffer import ReplayBuffer
from coati_hf.ppo.config import PPOConfig
from coati_hf.ppo.experience import Experience, ExperienceMaker, forward_logprobs, forward_values

EOS = 2  # <|im_end|>
PAD = 0  # <|endoftext|>
RESPONSE_LENGTH = 6


class ForceTokens(LogitsProcessor):
    """Force ``plan[row][step]`` (global row index across chunked generate calls); forbid EOS
    elsewhere so unplanned stops cannot happen."""

    def __init__(self, plan: dict[int, dict[int, int]]):
        self.plan = plan
        self.offset, self.seen, self.last_width, self.prompt_width = 0, 0, None, None

    def __call__(self, input_ids, scores):
        if self.last_width is None or input_ids.shape[1] <= self.last_width:  # a new generate call (chunk)
            self.offset, self.seen = self.seen, self.seen + input_ids.shape[0]
            self.prompt_width = input_ids.shape[1]
        self.last_width = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.clone()
        scores[:, EOS] = -math.inf
        for local in range(input_ids.shape[0]):
            token = self.plan.get(self.offset + local, {}).get(step)
            if token is not None:
                scores[local] = -math.inf
                scores[local, token] = 0.0
        return scores


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


@pytest.fixture(scope="module")
def models(tokenizer):
    policy, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    critic, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    reward, _ = make_tiny_llama("sequence_classification", seed=2, tokenizer=tokenizer)
    with torch.no_grad():  # make values and scores clearly non-zero and distinct per position
        value_head(critic).weight.normal_(0, 0.5)
        value_head(reward).weight.normal_(0, 0.5)
    return policy, critic, reward


@pytest.fixture(scope="module")
def prompts(tokenizer):
    questions = ["hi", "Tell me a long story about a cat and a dog.", "2+2?", "Why is the sky blue?"]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


# row 0: EOS in the middle; row 1: no EOS; row 2: EOS as the last generated token;
# row 3: the pad id sampled as an ordinary token, then EOS
PLAN = {0: {2: EOS}, 2: {RESPONSE_LENGTH - 1: EOS}, 3: {1: PAD, 3: EOS}}
EXPECTED_LENGTHS = [3, RESPONSE_LENGTH, RESPONSE_LENGTH, 4]
EXPECTED_HAS_STOP = [True, False, True, True]


def make_config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        response_length=RESPONSE_LENGTH,
        stop_token="eos",
        temperature=0.7,
        local_rollout_forward_batch_size=3,  # 4 prompts -> chunks of 3 and 1
        kl_coef=0.1,
        report_to=[],
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def make(policy, ref, critic, reward, tokenizer, config, prompts, plan=PLAN, seed=0, **kwargs):
    processor = ForceTokens(plan)
    maker = ExperienceMaker(
        policy, ref, critic, reward, tokenizer, config,
        generation_kwargs={"logits_processor": LogitsProcessorList([processor])}, **kwargs,
    )
    torch.manual_seed(seed)
    return maker, maker.make_experience(prompts)


def unpadded_row(experience: Experience, row: int) -> tuple[torch.Tensor, int, int]:
    """The row's real tokens (prompt + actions, no padding), its prompt length and action count."""
    prompt = experience.prompt_ids[row][experience.attention_mask[row, : experience.prompt_length].bool()]
    n = int(experience.action_mask[row].sum())
    tokens = torch.cat([prompt, experience.response_ids[row, :n]])
    return tokens, prompt.numel(), n


def manual_logprobs(model, tokens, prompt_len, n, temperature):
    with torch.no_grad():
        logits = model(input_ids=tokens[None]).logits[0].float() / temperature
    logprobs = torch.log_softmax(logits, -1)
    return torch.stack([logprobs[prompt_len + t - 1, tokens[prompt_len + t]] for t in range(n)])


def manual_head_outputs(model, tokens):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        hidden = getattr(base, base.base_model_prefix)(input_ids=tokens[None]).last_hidden_state[0]
        return value_head(base)(hidden).squeeze(-1)


# ---------------------------------------------------------------------------------------------


def test_masks_shapes_and_padding(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    _, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, make_config(tmp_path), prompts)
    assert exp.sequences.shape == (4, exp.prompt_length + RESPONSE_LENGTH)
    assert exp.response_lengths.tolist() == EXPECTED_LENGTHS
    assert exp.has_stop.tolist() == EXPECTED_HAS_STOP
    for row, n in enumerate(EXPECTED_LENGTHS):
        assert exp.action_mask[row].tolist() == [t < n for t in range(RESPONSE_LENGTH)]
        assert torch.equal(exp.attention_mask[row, exp.prompt_length :].bool(), exp.action_mask[row])
        assert torch.all(exp.response_ids[row, n:] == PAD)  # pad after the stop token
        if EXPECTED_HAS_STOP[row]:
            assert exp.response_ids[row, n - 1].item() == EOS
        for name in Experience.TOKEN_FIELDS[1:]:  # every per-token float tensor is 0 after the stop token
            assert torch.all(getattr(exp, name)[row, n:] == 0), name
    assert exp.response_ids[3, 1].item() == PAD  # the sampled pad token is kept as an action
    # prompts are left-padded: the last prompt column is real for every row
    assert torch.all(exp.attention_mask[:, exp.prompt_length - 1] == 1)
    assert exp.info["num_no_stop"] == 1 and exp.info["num_samples"] == 4


def test_without_a_stop_token_generation_runs_on_as_in_trl(models, tokenizer, prompts, tmp_path):
    """TRL's default stop_token=None: EOS does not end the response, but "missing EOS" still
    means no EOS was generated (for missing_eos_penalty)."""
    policy, critic, reward = models
    config = make_config(tmp_path, stop_token=None, missing_eos_penalty=1.0)
    _, exp = make(policy, copy.deepcopy(policy), critic, lambda p, c: [0.0] * len(c), tokenizer, config, prompts,
                  plan={0: {2: EOS}})
    assert exp.response_lengths.tolist() == [RESPONSE_LENGTH] * 4
    assert exp.response_ids[0, 2].item() == EOS and exp.response_ids[0, 3].item() != PAD
    assert exp.has_stop.tolist() == [True, False, False, False]
    assert exp.scores.tolist() == [0.0, -1.0, -1.0, -1.0]


def test_output_is_only_as_wide_as_the_longest_response(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    plan = {0: {1: EOS}, 1: {0: EOS}, 2: {2: EOS}, 3: {1: EOS}}
    _, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, make_config(tmp_path), prompts, plan=plan)
    assert exp.sequences.shape[1] - exp.prompt_length == 3  # not padded to response_length=6
    assert exp.response_lengths.tolist() == [2, 1, 3, 2]


@pytest.mark.parametrize("value_at", ["state", "action"])
def test_logprobs_values_and_scores_at_documented_positions(models, tokenizer, prompts, tmp_path, value_at):
    policy, critic, reward = models
    config = make_config(tmp_path, value_at=value_at, whiten_advantages=False)
    ref = copy.deepcopy(policy)
    _, exp = make(policy, ref, critic, reward, tokenizer, config, prompts)
    for row in range(4):
        tokens, prompt_len, n = unpadded_row(exp, row)
        # log-probs: column t = log pi(response_t | prompt, response_<t), logits / temperature
        expected = manual_logprobs(policy, tokens, prompt_len, n, config.temperature)
        assert torch.allclose(exp.logprobs[row, :n], expected, atol=1e-4)
        # values: "state" = critic output at the token before action t; "action" = at action t
        outputs = manual_head_outputs(critic, tokens)
        shift = -1 if value_at == "state" else 0
        expected_values = torch.stack([outputs[prompt_len + t + shift] for t in range(n)])
        assert torch.allclose(exp.values[row, :n], expected_values, atol=1e-4)
        # score: reward head at the last action token (the stop token when there is one)
        assert exp.scores[row].item() == pytest.approx(manual_head_outputs(reward, tokens)[-1].item(), abs=1e-4)
    # a copy of the policy as reference: identical log-probs, zero KL
    assert torch.allclose(exp.ref_logprobs, exp.logprobs, atol=1e-6)
    assert exp.info["kl"] == pytest.approx(0.0, abs=1e-5)
    # returns = GAE advantages + values (advantages not whitened here)
    advantages, returns = compute_gae(exp.rewards, exp.values, exp.action_mask, config.gamma, config.lam)
    assert torch.allclose(exp.advantages, advantages) and torch.allclose(exp.returns, returns)


@pytest.mark.parametrize("placement", ["last_token", "all_tokens"])
def test_score_placement_in_rewards(models, tokenizer, prompts, tmp_path, placement):
    policy, critic, reward = models
    config = make_config(tmp_path, reward_placement=placement, score_clip=0.05)
    _, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts)
    clipped = exp.scores.clamp(-0.05, 0.05)
    assert not torch.equal(clipped, exp.scores)  # the clip is exercised
    for row, n in enumerate(EXPECTED_LENGTHS):
        kl_part = -config.kl_coef * exp.kl[row, :n]  # ~0 here: the reference is a copy
        expected = kl_part.clone()
        if placement == "last_token":
            expected[n - 1] += clipped[row]
        else:
            expected += clipped[row]
        assert torch.allclose(exp.rewards[row, :n], expected, atol=1e-6)
    # whitened advantages: zero mean / unit variance over action tokens only
    assert masked_whiten(exp.advantages, exp.action_mask).sub(exp.advantages).abs().max() < 1e-4


def test_kl_shaping_with_a_different_reference(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    ref, _ = make_tiny_llama("causal_lm", seed=7, tokenizer=tokenizer)
    config = make_config(tmp_path, kl_estimator="k3")
    _, exp = make(policy, ref, critic, reward, tokenizer, config, prompts)
    for row in range(4):
        tokens, prompt_len, n = unpadded_row(exp, row)
        ref_expected = manual_logprobs(ref, tokens, prompt_len, n, config.temperature)
        assert torch.allclose(exp.ref_logprobs[row, :n], ref_expected, atol=1e-4)
        r = ref_expected - exp.logprobs[row, :n]
        assert torch.allclose(exp.kl[row, :n], torch.exp(r) - 1 - r, atol=1e-4)
        expected = -config.kl_coef * exp.kl[row, :n]
        expected[n - 1] += exp.scores[row]
        assert torch.allclose(exp.rewards[row, :n], expected, atol=1e-5)
    assert exp.info["kl"] > 0 and exp.info["kl"] == pytest.approx(exp.kl.sum(1).mean().item(), rel=1e-5)


def test_callable_reward_missing_eos_penalty_and_nan_scores(models, tokenizer, prompts, tmp_path):
    policy, critic, _ = models
    seen = {}

    def reward_fn(prompt_texts, completions):
        seen["prompts"], seen["completions"] = list(prompt_texts), list(completions)
        return [float(len(c)) for c in completions]

    config = make_config(tmp_path, missing_eos_penalty=100.0)
    _, exp = make(policy, copy.deepcopy(policy), critic, reward_fn, tokenizer, config, prompts)
    assert seen["prompts"] == prompts
    for row, n in enumerate(EXPECTED_LENGTHS):
        text = tokenizer.decode(exp.response_ids[row, :n], skip_special_tokens=True)
        assert seen["completions"][row] == text
        assert "<|im_end|>" not in seen["completions"][row]
        penalty = 0.0 if EXPECTED_HAS_STOP[row] else 100.0
        assert exp.scores[row].item() == pytest.approx(len(text) - penalty)

    def flaky(prompt_texts, completions):
        return [1.0, float("nan"), None, 2.0]

    _, exp = make(policy, copy.deepcopy(policy), critic, flaky, tokenizer, make_config(tmp_path), prompts)
    # rows 1 and 2 stay in the batch (every rank keeps its row count) without an action token
    assert len(exp) == 4 and exp.info["num_nan_scores"] == 2 and exp.info["num_samples"] == 2
    assert exp.response_lengths.tolist() == [EXPECTED_LENGTHS[0], 0, 0, EXPECTED_LENGTHS[3]]
    assert exp.scores[[0, 3]].tolist() == [1.0, 2.0] and torch.isfinite(exp.scores).all()
    assert exp.info["score"] == pytest.approx(1.5)
    for name in ("rewards", "advantages", "returns", "kl"):
        assert not getattr(exp, name)[[1, 2]].any(), name

    # no usable row at all: not an error here (the trainer decides across ranks), NaN statistics
    _, empty = make(policy, copy.deepcopy(policy), critic, lambda p, c: [float("nan")] * len(c), tokenizer,
                    make_config(tmp_path), prompts)
    assert empty.info["num_samples"] == 0 and empty.info["num_nan_scores"] == 4 and not empty.action_mask.any()


def test_reward_model_with_its_own_tokenizer_is_fed_retokenized_text(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    reward_tokenizer = copy.deepcopy(tokenizer)
    reward_tokenizer.add_tokens(["<only-in-the-reward-vocab>"])  # a different vocabulary
    reward_tokenizer.padding_side = "left"  # the maker must right-pad regardless
    config = make_config(tmp_path)
    maker, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts,
                      reward_tokenizer=reward_tokenizer)
    assert maker.retokenize_for_reward
    for row in range(4):
        tokens, _, _ = unpadded_row(exp, row)
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        rm_tokens = torch.tensor(reward_tokenizer(text)["input_ids"])
        assert exp.scores[row].item() == pytest.approx(manual_head_outputs(reward, rm_tokens)[-1].item(), abs=1e-4)
    # same text, same tokens here: the re-tokenized path agrees with the direct one
    _, direct = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts)
    assert torch.equal(direct.sequences, exp.sequences)
    assert torch.allclose(direct.scores, exp.scores, atol=1e-4)


def test_peft_policy_reference_is_the_adapter_disabled_model(tokenizer, prompts, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    plain = copy.deepcopy(base)
    policy = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    critic, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    policy.train()
    _, exp = make(policy, None, critic, lambda p, c: [1.0] * len(c), tokenizer, make_config(tmp_path), prompts)
    assert policy.training  # train/eval state restored
    for row in range(4):
        tokens, prompt_len, n = unpadded_row(exp, row)
        assert torch.allclose(exp.ref_logprobs[row, :n], manual_logprobs(plain, tokens, prompt_len, n, 0.7), atol=1e-4)
        assert torch.allclose(exp.logprobs[row, :n], manual_logprobs(policy, tokens, prompt_len, n, 0.7), atol=1e-4)
    assert (exp.logprobs - exp.ref_logprobs).abs().max() > 1e-3  # the adapter matters ...
    tokens, prompt_len, n = unpadded_row(exp, 0)
    after = manual_logprobs(policy, tokens, prompt_len, n, 0.7)
    assert torch.allclose(after, exp.logprobs[0, :n], atol=1e-4)  # ... and is enabled again afterwards
    with pytest.raises(ValueError):
        ExperienceMaker(plain, None, critic, lambda p, c: [0.0], tokenizer, make_config(tmp_path))


def test_critic_sharing_the_reward_backbone_scores_with_its_adapter_disabled(models, tokenizer, prompts, tmp_path):
    from peft import LoraConfig, get_peft_model

    policy, _, reward = models
    reward_copy = copy.deepcopy(reward)
    critic = get_peft_model(
        copy.deepcopy(reward),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"], init_lora_weights=False,
                   task_type="SEQ_CLS"),
    )
    with torch.no_grad():
        value_head(critic.get_base_model()).modules_to_save["default"].weight.normal_(0, 0.5)
    _, exp = make(policy, copy.deepcopy(policy), critic, critic, tokenizer, make_config(tmp_path), prompts)
    for row in range(4):
        tokens, prompt_len, n = unpadded_row(exp, row)
        assert exp.scores[row].item() == pytest.approx(manual_head_outputs(reward_copy, tokens)[-1].item(), abs=1e-4)
        critic_out = manual_head_outputs(critic, tokens)
        assert torch.allclose(exp.values[row, :n], critic_out[prompt_len - 1 : prompt_len - 1 + n], atol=1e-4)
    assert not torch.allclose(critic_out, manual_head_outputs(reward_copy, tokens), atol=1e-3)


def test_tensor_prompts_any_padding_and_prompt_length_limit(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    config = make_config(tmp_path)
    _, from_text = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts)
    right_padded = tokenizer(prompts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt")
    _, from_ids = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, dict(right_padded))
    assert torch.equal(from_ids.sequences, from_text.sequences)  # re-padded to the left, same samples
    assert torch.allclose(from_ids.logprobs, from_text.logprobs, atol=1e-5)

    lengths = right_padded["attention_mask"].sum(1)
    limit = int(lengths.min()) + 1
    with pytest.raises(ValueError, match="max_prompt_length"):
        make(policy, copy.deepcopy(policy), critic, reward, tokenizer, make_config(tmp_path, max_prompt_length=limit),
             prompts)
    seen = {}

    def reward_fn(p, c):
        seen["prompts"] = p
        return [0.0] * len(c)

    config = make_config(tmp_path, max_prompt_length=limit, truncate_prompts=True)
    _, cut = make(policy, copy.deepcopy(policy), critic, reward_fn, tokenizer, config, prompts)
    assert cut.prompt_length == limit
    assert cut.info["num_truncated_prompts"] == int((lengths > limit).sum()) > 0
    for row in range(4):
        if lengths[row] > limit:  # the last `limit` tokens are kept (the generation cue)
            original = right_padded["input_ids"][row, : lengths[row]]
            assert torch.equal(cut.prompt_ids[row], original[-limit:])
            assert seen["prompts"][row] == tokenizer.decode(original[-limit:])
        else:
            assert seen["prompts"][row] == prompts[row]


def test_forward_helpers_match_the_experience(models, tokenizer, prompts, tmp_path):
    """The trainer recomputes log-probs and values with the same helpers: at the start of the
    update they must reproduce the rollout's numbers (ratio = 1, no value drift)."""
    policy, critic, reward = models
    config = make_config(tmp_path)
    _, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts)
    logprobs, entropy = forward_logprobs(
        policy, exp.sequences, exp.attention_mask, exp.prompt_length, config.temperature, return_entropy=True
    )
    values = forward_values(critic, exp.sequences, exp.attention_mask, exp.prompt_length, config.value_at)
    mask = exp.action_mask
    assert torch.allclose(logprobs[mask], exp.logprobs[mask], atol=1e-5)
    assert torch.allclose(values[mask], exp.values[mask], atol=1e-5)
    assert logprobs.requires_grad and values.requires_grad  # differentiable outside no_grad
    assert torch.all(entropy >= 0) and entropy.shape == mask.shape


# ---------------------------------------------------------------------------------------------
# replay buffer
# ---------------------------------------------------------------------------------------------


def test_buffer_concatenates_experiences_of_different_widths(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    config = make_config(tmp_path)
    _, first = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts[:2], plan={0: {1: EOS}})
    _, second = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts[2:],
                     plan={0: {0: EOS}, 1: {2: EOS}})
    assert first.prompt_length != second.prompt_length
    assert first.sequences.shape[1] - first.prompt_length != second.sequences.shape[1] - second.prompt_length
    buffer = ReplayBuffer()
    buffer.append(first)
    buffer.append(second)
    merged = buffer.collate()
    assert len(buffer) == len(merged) == 4
    assert merged.prompt_length == max(first.prompt_length, second.prompt_length)
    for part, offset in ((first, 0), (second, 2)):
        for row in range(len(part)):
            original, _, n = unpadded_row(part, row)
            padded, _, n_merged = unpadded_row(merged, offset + row)
            assert torch.equal(original, padded) and n == n_merged
            for name in Experience.TOKEN_FIELDS:
                assert torch.equal(getattr(merged, name)[offset + row, :n], getattr(part, name)[row, :n]), name
                assert not getattr(merged, name)[offset + row, n:].any(), name
    # position ids come from the attention mask: the extra padding changes no model output
    logprobs = forward_logprobs(policy, merged.sequences, merged.attention_mask, merged.prompt_length, 0.7)
    assert torch.allclose(logprobs[merged.action_mask], merged.logprobs[merged.action_mask], atol=1e-5)


def test_buffer_minibatches_cover_every_sample_once_per_epoch(models, tokenizer, prompts, tmp_path):
    policy, critic, reward = models
    config = make_config(tmp_path)
    _, exp = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts)
    _, more = make(policy, copy.deepcopy(policy), critic, reward, tokenizer, config, prompts[:1], seed=1)
    buffer = ReplayBuffer()
    buffer.append(exp)
    buffer.append(more)
    merged = buffer.collate()
    key = {tuple(merged.sequences[i][merged.attention_mask[i].bool()].tolist()): i for i in range(len(merged))}
    generator = torch.Generator().manual_seed(0)
    batches = list(buffer.iter_minibatches(num_mini_batches=2, num_ppo_epochs=3, generator=generator))
    assert len(batches) == 6
    orders = []
    for epoch in range(3):
        seen = []
        for mb in batches[2 * epoch : 2 * epoch + 2]:
            assert len(mb) in (2, 3)
            # trimmed, and still aligned: the same per-token numbers as the source rows
            assert torch.all(mb.attention_mask[:, : mb.prompt_length].any(dim=0)[:1])
            assert int(mb.response_lengths.max()) == mb.sequences.shape[1] - mb.prompt_length
            for i in range(len(mb)):
                source = key[tuple(mb.sequences[i][mb.attention_mask[i].bool()].tolist())]
                n = int(mb.action_mask[i].sum())
                assert torch.equal(mb.advantages[i, :n], merged.advantages[source, :n])
                seen.append(source)
        assert sorted(seen) == list(range(5))
        orders.append(seen)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled every epoch
    buffer.whiten_advantages()
    whitened = buffer.collate().advantages[buffer.collate().action_mask]
    assert whitened.mean().abs() < 1e-5 and whitened.std().item() == pytest.approx(1.0, abs=1e-4)
    buffer.clear()
    assert len(buffer) == 0
    with pytest.raises(ValueError):
        buffer.collate()


# ---------------------------------------------------------------------------------------------
# Sampling uses exactly softmax(logits / T): the model's generation_config does not leak in
# ---------------------------------------------------------------------------------------------


def test_the_models_generation_config_does_not_change_the_sampling(tokenizer, prompts, tmp_path):
    """A policy that puts ~98.5% of its mass on one token, whose checkpoint asks for a huge
    repetition penalty and suppresses that very token. PPO's log-probs describe the plain
    tempered softmax, so the rollout must sample from it: the favourite token almost always,
    repeated, and the recorded log-probs are log 0.985."""
    policy, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    favourite = tokenizer.convert_tokens_to_ids("Ġthe")
    hidden, vocab = policy.config.hidden_size, policy.config.vocab_size
    with torch.no_grad():  # logits = bias: 15 for the favourite, 0 elsewhere
        policy.model.norm.weight.zero_()
        policy.lm_head = torch.nn.Linear(hidden, vocab, bias=True)
        policy.lm_head.weight.zero_()
        policy.lm_head.bias.zero_()
        policy.lm_head.bias[favourite] = 15.0
    policy.generation_config.repetition_penalty = 1e4
    policy.generation_config.suppress_tokens = [favourite]
    policy.generation_config.top_k = 5
    policy.generation_config.no_repeat_ngram_size = 1
    maker = ExperienceMaker(policy, copy.deepcopy(policy), None, lambda p, c: [0.0] * len(c), tokenizer,
                            make_config(tmp_path, temperature=1.0, stop_token=None))
    torch.manual_seed(0)
    experience = maker.make_experience(prompts * 4)
    actions = experience.response_ids[experience.action_mask]
    assert (actions == favourite).float().mean() > 0.9
    expected = math.log(math.exp(15.0) / (math.exp(15.0) + vocab - 1))
    chosen = experience.logprobs[experience.action_mask][actions == favourite]
    assert torch.allclose(chosen, torch.full_like(chosen, expected), atol=1e-4)
    # the checkpoint's own settings are back in place afterwards
    assert policy.generation_config.repetition_penalty == 1e4 and policy.generation_config.suppress_tokens == [favourite]


# ---------------------------------------------------------------------------------------------
# Encoder reward models (BERT, DeBERTa-v2) with their own tokenizers
# ---------------------------------------------------------------------------------------------


def encoder_tokenizer():
    """A BERT-style WordPiece tokenizer ([CLS] text [SEP]) trained here on the shipped samples."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from coati_hf.data import load_sample

    texts = list(load_sample("pretrain")["text"])
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=special))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def encoder_reward_model(architecture: str, reward_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification

    common = dict(vocab_size=len(reward_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_labels=1, pad_token_id=reward_tokenizer.pad_token_id,
                  max_position_embeddings=512, initializer_range=0.5)
    torch.manual_seed(5)
    if architecture == "bert":
        return BertForSequenceClassification(BertConfig(**common)).eval()
    return DebertaV2ForSequenceClassification(DebertaV2Config(**common, pooler_hidden_size=32)).eval()


@pytest.mark.parametrize("architecture", ["bert", "deberta-v2"])
def test_encoder_reward_models_score_with_their_own_forward(models, tokenizer, prompts, tmp_path, architecture):
    """BERT pools [CLS] through its pooler, DeBERTa through a ContextPooler: their score is what
    the model's own forward gives on its own tokenization of the decoded text, not a head
    applied to the last token's hidden state."""
    policy, critic, _ = models
    reward_tokenizer = encoder_tokenizer()
    reward_model = encoder_reward_model(architecture, reward_tokenizer)
    _, exp = make(policy, copy.deepcopy(policy), critic, reward_model, tokenizer, make_config(tmp_path), prompts,
                  reward_tokenizer=reward_tokenizer)
    texts = [tokenizer.decode(unpadded_row(exp, row)[0], skip_special_tokens=False) for row in range(len(exp))]
    with torch.no_grad():
        own = torch.stack([reward_model(**reward_tokenizer(text, return_tensors="pt")).logits[0, 0] for text in texts])
    torch.testing.assert_close(exp.scores, own, atol=1e-5, rtol=1e-4)
    assert own.std() > 1e-4  # the texts get different scores: the comparison can fail


def test_an_encoder_model_cannot_be_the_critic(models, tokenizer):
    from coati_hf.ppo.roles import build_roles

    policy, _, reward = models
    reward_tokenizer = encoder_tokenizer()
    with pytest.raises(ValueError, match="no per-position `score` head"):
        build_roles(copy.deepcopy(policy), None, reward, encoder_reward_model("bert", reward_tokenizer), tokenizer)


def test_lora_is_folded_into_the_weights_for_generation_and_put_back_exactly(tokenizer, prompts):
    """Inside the block the model computes what the unmerged adapter computes (to rounding) with
    one matmul per layer; afterwards every weight is bit-for-bit what it was, so the reference
    policy (adapter disabled) never drifts."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from coati_hf.ppo.generation import lora_merged_for_generation

    base, _ = make_tiny_llama("causal_lm", seed=0, tokenizer=tokenizer)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    before = {name: parameter.detach().clone() for name, parameter in model.state_dict().items()}
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        unmerged = model(**batch).logits
        with model.disable_adapter():
            without_adapter = model(**batch).logits
        calls = []
        hook = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].register_forward_hook(
            lambda *args: calls.append(1)
        )
        modules_before = dict(model.named_modules())
        with lora_merged_for_generation(model):
            merged = model(**batch).logits
            wrappers_inside = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
        hook.remove()
        with pytest.raises(RuntimeError, match="mid-generation"), lora_merged_for_generation(model):
            raise RuntimeError("mid-generation")
    assert not calls  # the adapter branch did not run: the delta was in the weights
    assert not wrappers_inside  # plain Linear layers generate: no per-layer wrapper call per step
    assert dict(model.named_modules()) == modules_before  # the same module objects are back, after an error too
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(without_adapter, unmerged, atol=1e-2)  # the adapter does change the outputs
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)

"""Tiny random-init models of many transformers families, built from their config classes (no
download), sharing one byte-level tokenizer, for the architecture matrix.

Every family gets hidden size 32, two layers, four heads (two key/value heads where the family
has grouped-query attention) and the tokenizer's 258-token vocabulary; mixture-of-experts families
get four experts, two per token. ``config_overrides`` holds what differs from those defaults, in
the family's own field names. Families whose logits are not plain ``lm_head(hidden)`` keep (or
are given) a visible transform: Cohere's ``logit_scale``, Granite's ``logits_scaling`` and
Gemma-2's ``final_logit_softcapping`` are all in effect, as in their released checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

HIDDEN = 32
LAYERS = 2
HEADS = 4

_COMMON = dict(
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
_MOE = dict(num_experts_per_tok=2)


@dataclass(frozen=True)
class Family:
    """One transformers model family: its ``model_type`` and the config fields that differ from
    the tiny defaults (``common=False``: the config takes none of the Llama-style defaults)."""

    name: str
    model_type: str
    config_overrides: dict = field(default_factory=dict)
    common: bool = True

    def __str__(self) -> str:  # pytest ids
        return self.name


FAMILIES = [
    Family("llama", "llama"),
    Family("mistral", "mistral", dict(sliding_window=None)),
    Family("qwen2", "qwen2"),
    Family("qwen3", "qwen3", dict(head_dim=8)),
    Family("qwen2_moe", "qwen2_moe", dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                          **_MOE)),
    # layer 0 dense (a Qwen3MoeMLP), layer 1 experts
    Family("qwen3_moe", "qwen3_moe", dict(num_experts=4, moe_intermediate_size=32, head_dim=8, mlp_only_layers=[0],
                                          **_MOE)),
    Family("mixtral", "mixtral", dict(num_local_experts=4, sliding_window=None, **_MOE)),
    Family("gemma", "gemma", dict(head_dim=8)),
    Family("gemma2", "gemma2", dict(head_dim=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8)),
    Family("gemma3_text", "gemma3_text", dict(head_dim=8, query_pre_attn_scalar=8)),
    Family("phi3", "phi3"),
    Family("olmo2", "olmo2"),
    Family("cohere", "cohere", dict(logit_scale=0.25)),
    Family("cohere2", "cohere2", dict(logit_scale=0.25)),
    Family("granite", "granite", dict(logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5)),
    Family("smollm3", "smollm3"),
    Family("glm4", "glm4", dict(head_dim=8)),
    Family("exaone4", "exaone4"),
    Family("stablelm", "stablelm"),
    Family("starcoder2", "starcoder2"),
    Family("gpt2", "gpt2", dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128), common=False),
    Family(
        "gpt_neox",
        "gpt_neox",
        dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             max_position_embeddings=128),
        common=False,
    ),  # fmt: skip
    Family(
        "opt",
        "opt",
        dict(hidden_size=HIDDEN, ffn_dim=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             word_embed_proj_dim=HIDDEN, max_position_embeddings=128),
        common=False,
    ),  # fmt: skip
    Family("falcon", "falcon", dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS), common=False),
    Family(
        "deepseek_v3",
        "deepseek_v3",
        dict(n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
             topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
             num_key_value_heads=HEADS,
             **_MOE),
    ),  # fmt: skip
    Family(
        "deepseek_v4",
        "deepseek_v4",
        dict(hidden_size=HIDDEN, moe_intermediate_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             num_key_value_heads=1, head_dim=16, q_lora_rank=16, n_routed_experts=4, n_shared_experts=1,
             num_experts_per_tok=2, layer_types=["sliding_attention"] * LAYERS, mlp_layer_types=["moe"] * LAYERS,
             hc_mult=2, hc_sinkhorn_iters=3, o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=8,
             index_topk=8, sliding_window=16, max_position_embeddings=128, num_nextn_predict_layers=0),
        common=False,
    ),  # fmt: skip
]


def byte_tokenizer():
    """A byte-level tokenizer with no merges: the 256 byte symbols, then ``<pad>`` and ``<eos>``
    (258 tokens). Any text round-trips; nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<pad>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tokenizer.padding_side = "left"
    return tokenizer


def family_config(family: Family, tokenizer, **extra):
    """The tiny config of ``family`` for ``tokenizer``'s vocabulary (fp32, eager attention)."""
    from transformers import AutoConfig

    settings = dict(_COMMON) if family.common else {}
    settings.update(family.config_overrides)
    settings.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    settings.update(extra)
    config = AutoConfig.for_model(family.model_type, **settings)
    config._attn_implementation = "eager"
    return config


def build(family: Family, tokenizer, kind: str = "causal_lm", seed: int = 0, **extra):
    """A random-init ``kind`` ("causal_lm" or "sequence_classification", num_labels=1) model of
    ``family``, in eval mode, fp32."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_config(family_config(family, tokenizer, **extra))
    elif kind == "sequence_classification":
        model = AutoModelForSequenceClassification.from_config(family_config(family, tokenizer, num_labels=1, **extra))
    else:
        raise ValueError(kind)
    return model.float().eval()


def has_sequence_classifier(family: Family) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return family.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES


def family_named(name: str) -> Family:
    return next(entry for entry in FAMILIES if entry.name == name)


def rollout_batch(vocab_size: int, pad_id: int, rows: int = 3, prompt_length: int = 5, response_length: int = 5,
                  seed: int = 0):
    """``(sequences, attention_mask, prompt_length)`` laid out as a rollout: left-padded prompts
    (row ``r`` has ``r`` pad columns) followed by responses, random non-pad ids."""
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, vocab_size - 2, (rows, prompt_length + response_length), generator=generator)
    mask = torch.ones_like(sequences)
    for row in range(rows):
        sequences[row, :row] = pad_id
        mask[row, :row] = 0
    return sequences, mask, prompt_length


def own_logprobs_and_entropy(model, sequences, attention_mask, prompt_length: int, temperature: float = 1.0):
    """The reference: response log-probs and entropy from the model's own ``forward`` logits
    (plain ``log_softmax``; positions ``cumsum(mask) - 1`` as PPO uses them)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
    log_probs = torch.log_softmax(logits[:, prompt_length - 1 : -1].float() / temperature, dim=-1)
    labels = sequences[:, prompt_length:]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1), entropy.detach()


def logit_spread(model, sequences, attention_mask) -> float:
    """Standard deviation of the model's own logits on a batch."""
    with torch.no_grad():
        return float(model(input_ids=sequences, attention_mask=attention_mask).logits.float().std())


def scale_head_to_logit_spread(model, sequences, attention_mask, target: float = 20.0) -> float:
    """Scale the LM head's weight until the model's own logits have standard deviation about
    ``target`` (tens: the size of a trained model's logits, where soft-caps and scalings
    matter); returns the spread reached. A tied head scales the embeddings with it, so this
    iterates."""
    head = model.get_output_embeddings()
    spread = logit_spread(model, sequences, attention_mask)
    for _ in range(4):
        if spread >= 0.8 * target:
            break
        with torch.no_grad():
            head.weight.mul_(min(target / spread, 100.0))
        spread = logit_spread(model, sequences, attention_mask)
    return spread


def gradient_error(ours, reference) -> float:
    """Largest per-parameter error ``|g - g_ref| / max(|g_ref|, 1e-3 * largest |g_ref|)``
    (Frobenius norms): relative for every gradient that matters, and for gradients a thousand
    times smaller than the largest one relative to that floor (their float32 rounding noise is
    that of the sums they come from, not of their own size)."""
    largest = max(float(g.norm()) for g in reference if g is not None)
    errors = [0.0]
    for mine, theirs in zip(ours, reference):
        if theirs is None:
            assert mine is None or not mine.any()
            continue
        mine = torch.zeros_like(theirs) if mine is None else mine
        errors.append(float((mine - theirs).norm()) / max(float(theirs.norm()), 1e-3 * largest))
    return max(errors)


def assert_update_matches_own_forward(model, sequences, attention_mask, prompt_length: int, temperature: float = 0.7) -> int:
    """Check PPO's response log-probs and entropy, computed as the update computes them
    (``forward_logprobs`` inside ``lean_gated_mlps``), and the gradient of a random weighting of
    the log-probs w.r.t. every trainable parameter, against the model's own forward. Returns the
    number of MLPs the lean path swapped."""
    from coati_hf.ppo.forward import forward_logprobs
    from coati_hf.ppo.lean_mlp import lean_gated_mlps

    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(sequences.shape[0], sequences.shape[1] - prompt_length, generator=torch.Generator().manual_seed(3))
    with lean_gated_mlps(model) as swapped:  # as PolicyAndValueWrapper.forward runs the update
        ours, entropy = forward_logprobs(model, sequences, attention_mask, prompt_length, temperature, return_entropy=True)
    grads = torch.autograd.grad((ours * weights).sum(), params, allow_unused=True)
    own, own_entropy = own_logprobs_and_entropy(model, sequences, attention_mask, prompt_length, temperature)
    own_grads = torch.autograd.grad((own * weights).sum(), params, allow_unused=True)
    torch.testing.assert_close(ours.detach(), own.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(entropy, own_entropy, rtol=1e-4, atol=1e-4)
    error = gradient_error(grads, own_grads)
    assert error < 1e-4, f"gradients differ by {error:.2e} (relative)"
    return swapped

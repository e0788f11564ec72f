"""Forward passes shared by the rollout and the update, so both read the same positions.

For ``sequences`` = ``[left-padded prompt (P columns) | response (R columns)]``:

    forward_logprobs  (B, R)  log pi(response[t] | prefix), from the logits at position P+t-1,
                              divided by the sampling temperature
    forward_values    (B, R)  the critic's score head on the last hidden state at P+t-1 (V of the
                              state before action t, value_at="state") or at P+t ("action", Coati)
    forward_scores    (B,)    a reward model's score head at a given position per row; a model
                              whose head pools its input (BERT's pooler, DeBERTa's
                              ContextPooler: a ``classifier``, not a per-position ``score``) is
                              scored by its own forward on right-packed input instead

Position ids are ``cumsum(attention_mask) - 1`` everywhere, so left padding never shifts them.
Only a model with a ``score`` head that applies to every position's hidden state (transformers'
``*ForSequenceClassification`` of a causal LM: Llama, Qwen, GPT-2, ...) can be a critic.
The rollout (:class:`~coati_hf.ppo.experience.ExperienceMaker`) calls these under no_grad and the
trainer calls them with gradients, through :class:`PolicyAndValueWrapper`: the first update's
probability ratio is exactly 1.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..models import value_head
from .generation import position_ids_from_attention_mask
from .losses import entropy_from_logits, logprobs_from_logits

__all__ = ["forward_logprobs", "forward_values", "forward_scores", "scores_every_position", "PolicyAndValueWrapper"]


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _accepts_kwarg(model, name: str) -> bool:
    try:
        return name in inspect.signature(_unwrap_peft(model).forward).parameters
    except (TypeError, ValueError):
        return False


def scores_every_position(model) -> bool:
    """Whether ``model``'s head is a per-position ``score`` layer (a causal LM's sequence
    classifier reads it at the last token) rather than a head that pools the whole input."""
    head = getattr(_unwrap_peft(model), "score", None)
    head = getattr(head, "original_module", head)  # peft's modules_to_save wrapper around the head
    return isinstance(head, torch.nn.Linear)


def _backbone_and_head(model):
    """The transformer body and the ``score`` head of a sequence-classification model (peft
    models unwrapped; their injected adapters and ``modules_to_save`` stay in effect)."""
    base = _unwrap_peft(model)
    if not scores_every_position(base):
        raise ValueError(
            f"{type(base).__name__} has no per-position `score` head (its head pools the whole input), so it cannot "
            "give a value per token: use a causal LM's AutoModelForSequenceClassification (num_labels=1) as the critic, "
            "or leave value_model=None."
        )
    backbone = getattr(base, base.base_model_prefix, None)
    if backbone is None:
        raise ValueError(f"{type(base).__name__} has no '{base.base_model_prefix}' backbone")
    return backbone, value_head(base)


def forward_logprobs(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    *,
    return_entropy: bool = False,
    chunk_size: int = 8,
):
    """Log-probs ``(B, R)`` of the response tokens ``sequences[:, prompt_length:]`` under
    ``model`` (logits divided by ``temperature``): column ``t`` comes from the logits at
    position ``prompt_length + t - 1``. With ``return_entropy`` also the per-position entropy
    (without gradient: it is logged, not optimised).
    Differentiable (call under ``torch.no_grad`` for rollouts). Not masked."""
    response_width = sequences.shape[1] - prompt_length
    kwargs = dict(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
    )
    if _accepts_kwarg(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_width + 1
    logits = model(**kwargs).logits
    logits = logits[:, -(response_width + 1) : -1]
    labels = sequences[:, prompt_length:]
    logprobs = logprobs_from_logits(logits, labels, temperature, chunk_size)
    if return_entropy:
        with torch.no_grad():  # for logging only: keeping its graph would hold a (B, R, V) softmax
            entropy = entropy_from_logits(logits.detach(), temperature, chunk_size)
        return logprobs, entropy
    return logprobs


def _hidden_states_and_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The last hidden states of a sequence-classification model's backbone at every position,
    and its ``score`` head (applied by the caller at the positions it needs)."""
    backbone, head = _backbone_and_head(model)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return hidden, head


def forward_values(
    critic, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int, value_at: str = "state"
) -> torch.Tensor:
    """Critic values ``(B, R)`` in float32: the ``score`` head applied to the backbone's last
    hidden state at position ``prompt_length + t - 1`` (``value_at="state"``) or
    ``prompt_length + t`` (``"action"``). Differentiable. Not masked."""
    if value_at not in ("state", "action"):
        raise ValueError(f"value_at must be 'state' or 'action', got {value_at!r}")
    hidden, head = _hidden_states_and_head(critic, sequences, attention_mask)
    response_width = sequences.shape[1] - prompt_length
    start = prompt_length - 1 if value_at == "state" else prompt_length
    return head(hidden[:, start : start + response_width]).squeeze(-1).float()


def forward_scores(
    reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor
) -> torch.Tensor:
    """Reward-model scores ``(B,)`` in float32: the ``score`` head at ``score_index[b]`` of row b
    (the last attended token of each row), or, for a model whose head pools its input, the
    model's own forward on the attended tokens packed to the left (right padding, positions
    from 0: what its own tokenizer would have given it)."""
    if not scores_every_position(reward_model):
        packed_ids, packed_mask = _right_packed(input_ids, attention_mask, _pad_id(reward_model))
        return reward_model(input_ids=packed_ids, attention_mask=packed_mask).logits[:, 0].float()
    hidden, head = _hidden_states_and_head(reward_model, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, score_index.to(hidden.device)]).squeeze(-1).float()


def _pad_id(model) -> int:
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    return 0 if pad_id is None else int(pad_id)


def _right_packed(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int):
    """Each row's attended tokens moved to the front, padding (``pad_id``, mask 0) after them."""
    mask = attention_mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # attended positions first, in order
    packed_mask = torch.gather(mask, 1, order)
    packed_ids = torch.gather(input_ids, 1, order).masked_fill(~packed_mask, pad_id)
    width = max(int(packed_mask.sum(dim=1).max()), 1)
    return packed_ids[:, :width], packed_mask[:, :width].long()


class PolicyAndValueWrapper(nn.Module):
    """Actor and critic as one module, so one optimizer and one distributed wrapper hold both.

    ``forward`` returns the response log-probs, their entropy and the critic's values at the
    same positions the :class:`~coati_hf.ppo.experience.ExperienceMaker` used, and, when a
    pretraining batch is given, the actor's language-modelling loss on it (the PTX term).
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.critic_backbone = getattr(value_model, "base_model_prefix", "model")

    @property
    def config(self):
        return self.policy.config

    def activation_checkpointing_enable(self, **kwargs):
        """Checkpoint the actor's and the critic's activations: both backbones keep the same
        per-layer tensors for backward (~0.7 GiB each for SmolLM2-135M at 8 x 91 tokens); only
        the critic's head output is small."""
        for model in (self.policy, self.value_model):
            if not hasattr(model, "activation_checkpointing_enable"):
                continue
            model.activation_checkpointing_enable(**kwargs)
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()  # frozen embeddings under LoRA still pass gradients on

    def activation_checkpointing_disable(self):
        for model in (self.policy, self.value_model):
            if hasattr(model, "activation_checkpointing_disable"):
                model.activation_checkpointing_disable()

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_length: int,
        temperature: float = 1.0,
        value_at: str = "state",
        ptx_input_ids: torch.Tensor | None = None,
        ptx_attention_mask: torch.Tensor | None = None,
    ):
        logprobs, entropy = forward_logprobs(
            self.policy, sequences, attention_mask, prompt_length, temperature, return_entropy=True
        )
        values = forward_values(self.value_model, sequences, attention_mask, prompt_length, value_at)
        ptx_loss = None
        if ptx_input_ids is not None:
            labels = ptx_input_ids.masked_fill(ptx_attention_mask == 0, -100)
            ptx_loss = self.policy(input_ids=ptx_input_ids, attention_mask=ptx_attention_mask, labels=labels).loss
        return logprobs, entropy, values, ptx_loss

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

A critic whose lower layers are frozen (the reward model plus an adapter on its top layers only,
see :func:`coati_hf.ppo.roles.critic_adapter_config`) shares those layers with the reward model:
the reward pass records the hidden states entering the first adapted layer
(:func:`layer_inputs_captured`) and ``forward_values(..., trunk_states=...)`` starts from them
(:func:`trunk_replayed`) instead of recomputing the frozen layers.

Position ids are ``cumsum(attention_mask) - 1`` everywhere, so left padding never shifts them.
Only a model with a ``score`` head that applies to every position's hidden state (transformers'
``*ForSequenceClassification`` of a causal LM: Llama, Qwen, GPT-2, ...) can be a critic.
The rollout (:class:`~coati_hf.ppo.experience.ExperienceMaker`) calls these under no_grad and the
trainer calls them with gradients, through :class:`PolicyAndValueWrapper`: the first update's
probability ratio is exactly 1.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ..models import value_head
from .generation import position_ids_from_attention_mask
from .head_logprobs import HeadLogprobs, separable_lm_head
from .lean_mlp import lean_gated_mlps
from .losses import entropy_from_logits, logprobs_from_logits

__all__ = [
    "forward_logprobs",
    "forward_values",
    "forward_scores",
    "scores_every_position",
    "decoder_layers",
    "trunk_split",
    "layer_inputs_captured",
    "trunk_replayed",
    "PolicyAndValueWrapper",
]


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


def decoder_layers(model) -> nn.ModuleList | None:
    """The transformer blocks of a (peft-wrapped) model's backbone, bottom to top, or None when
    they are not one ``ModuleList`` under a known name."""
    base = _unwrap_peft(model)
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), base)
    for name in ("layers", "h", "blocks", "layer"):
        layers = getattr(backbone, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    return None


def trunk_split(critic) -> int | None:
    """Index of the critic's first layer with a trainable parameter when the layers below it are
    all frozen (its "trunk": the reward model's own layers, see
    :func:`coati_hf.ppo.roles.critic_adapter_config`); None when there is no such trunk."""
    layers = decoder_layers(critic)
    if layers is None:
        return None
    for index, layer in enumerate(layers):
        if any(parameter.requires_grad for parameter in layer.parameters()):
            return index or None
    return None


def _layer_input(args, kwargs) -> torch.Tensor:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"a decoder layer was called without a hidden-states tensor ({type(hidden).__name__})")
    return hidden


@contextmanager
def layer_inputs_captured(layer: nn.Module):
    """Within the block, every call of ``layer`` appends its input hidden states (detached) to
    the yielded list. A layer that returns anything but its hidden states (older architectures
    return tuples) appends None as well: :func:`trunk_replayed` could not stand in for it."""
    captured: list[torch.Tensor | None] = []

    def record(module, args, kwargs):
        captured.append(_layer_input(args, kwargs).detach())

    def check_output(module, args, output):
        if not isinstance(output, torch.Tensor):
            captured.append(None)

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True), layer.register_forward_hook(check_output)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def trunk_replayed(layers: nn.ModuleList, split: int, trunk_states: torch.Tensor):
    """Within the block, a forward of the backbone owning ``layers`` skips layers ``[0, split)``:
    they pass their input through, and the last of them returns ``trunk_states`` (the input of
    layer ``split`` recorded by :func:`layer_inputs_captured` for the same rows and columns).
    The layers' own ``forward`` is restored on exit; their parameters are never touched."""
    if not 0 < split < len(layers):
        raise ValueError(f"trunk split {split} is outside the {len(layers)} layers")

    def passthrough(*args, **kwargs):
        return _layer_input(args, kwargs)

    def replay(*args, **kwargs):
        hidden = _layer_input(args, kwargs)
        if hidden.shape[:2] != trunk_states.shape[:2]:
            raise ValueError(
                f"recorded trunk states of shape {tuple(trunk_states.shape)} do not match the batch {tuple(hidden.shape)}"
            )
        return trunk_states

    skipped = list(layers[:split])
    saved = [layer.__dict__.get("forward") for layer in skipped]
    for index, layer in enumerate(skipped):
        layer.forward = replay if index == split - 1 else passthrough
    try:
        yield
    finally:
        for layer, forward in zip(skipped, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


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
    Differentiable (call under ``torch.no_grad`` for rollouts). Not masked. When the model's
    logits are its frozen linear head applied to the last hidden states (most causal LMs),
    they are never materialised whole (:mod:`coati_hf.ppo.head_logprobs`); otherwise the
    model's own forward gives them, ``chunk_size`` rows at a time."""
    response_width = sequences.shape[1] - prompt_length
    kwargs = dict(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
    )
    labels = sequences[:, prompt_length:]
    separable = separable_lm_head(model, _unwrap_peft(model))
    if separable is not None:  # the logits are never kept whole (see coati_hf.ppo.head_logprobs)
        backbone, head, transform = separable
        hidden = backbone(**kwargs).last_hidden_state[:, -(response_width + 1) : -1]
        logprobs, entropy = HeadLogprobs.apply(hidden, head.weight, head.bias, labels, float(temperature), transform)
        return (logprobs, entropy) if return_entropy else logprobs
    if _accepts_kwarg(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_width + 1
    logits = model(**kwargs).logits
    logits = logits[:, -(response_width + 1) : -1]
    logprobs = logprobs_from_logits(logits, labels, temperature, chunk_size)
    if return_entropy:
        with torch.no_grad():  # for logging only: keeping its graph would hold a (B, R, V) softmax
            entropy = entropy_from_logits(logits.detach(), temperature, chunk_size)
        return logprobs, entropy
    return logprobs


def _hidden_states_and_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trunk_states=None):
    """The last hidden states of a sequence-classification model's backbone at every position,
    and its ``score`` head (applied by the caller at the positions it needs). ``trunk_states``:
    the recorded input of the model's :func:`trunk_split` layer; the frozen layers below it are
    then not run."""
    backbone, head = _backbone_and_head(model)
    replayed = None
    if trunk_states is not None:
        split = trunk_split(model)
        if split is None:
            raise ValueError("trunk_states were given for a critic without a frozen trunk (see trunk_split)")
        replayed = trunk_replayed(decoder_layers(model), split, trunk_states)
    with replayed or nullcontext():
        hidden = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
    return hidden, head



def forward_values(
    critic,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    value_at: str = "state",
    trunk_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Critic values ``(B, R)`` in float32: the ``score`` head applied to the backbone's last
    hidden state at position ``prompt_length + t - 1`` (``value_at="state"``) or
    ``prompt_length + t`` (``"action"``). Differentiable. Not masked. ``trunk_states``: the
    hidden states entering the critic's first trainable layer, recorded by the reward pass (the
    frozen layers below are then skipped; see the module docstring)."""
    if value_at not in ("state", "action"):
        raise ValueError(f"value_at must be 'state' or 'action', got {value_at!r}")
    hidden, head = _hidden_states_and_head(critic, sequences, attention_mask, trunk_states)
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


def _inputs_requiring_grad(module, args, kwargs):
    """Forward pre-hook: the layer's hidden-states input requires gradients (when grads are on)."""
    if not torch.is_grad_enabled():
        return None
    if args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad:
        return (args[0].detach().requires_grad_(), *args[1:]), kwargs
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor) and not hidden.requires_grad:
        return args, {**kwargs, "hidden_states": hidden.detach().requires_grad_()}
    return None


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
        self._trunk_grad_hook = None  # see activation_checkpointing_enable

    @property
    def config(self):
        return self.policy.config

    def activation_checkpointing_enable(self, **kwargs):
        """Checkpoint the actor's and the critic's activations: a backbone keeps the same
        per-layer tensors for backward (~0.7 GiB for SmolLM2-135M at 8 x 91 tokens).

        Under LoRA the frozen embeddings' output is made to require gradients, so that a
        reentrant checkpoint of the first layer passes gradients on. A critic with a frozen
        trunk gets that at its first adapted layer instead: from the embeddings, its backward
        pass would run (and recompute) every frozen layer below for nothing."""
        for model in (self.policy, self.value_model):
            if not hasattr(model, "activation_checkpointing_enable"):
                continue
            model.activation_checkpointing_enable(**kwargs)
            split = trunk_split(model) if model is self.value_model else None
            if split is None:
                if hasattr(model, "enable_input_require_grads"):
                    model.enable_input_require_grads()
                continue
            if hasattr(model, "disable_input_require_grads"):
                model.disable_input_require_grads()
            if self._trunk_grad_hook is not None:
                self._trunk_grad_hook.remove()
            self._trunk_grad_hook = decoder_layers(model)[split].register_forward_pre_hook(
                _inputs_requiring_grad, with_kwargs=True
            )

    def activation_checkpointing_disable(self):
        for model in (self.policy, self.value_model):
            if hasattr(model, "activation_checkpointing_disable"):
                model.activation_checkpointing_disable()
        if self._trunk_grad_hook is not None:
            self._trunk_grad_hook.remove()
            self._trunk_grad_hook = None

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_length: int,
        temperature: float = 1.0,
        value_at: str = "state",
        ptx_input_ids: torch.Tensor | None = None,
        ptx_attention_mask: torch.Tensor | None = None,
        critic_trunk_states: torch.Tensor | None = None,
    ):
        # Same numbers, a third less MLP activation memory. A checkpointed model keeps only layer inputs
        # anyway, and its recompute in backward must run the very forward the first pass ran.
        models = (self.policy, self.value_model)
        with lean_gated_mlps(*(m for m in models if not getattr(m, "is_activation_checkpointing", False))):
            logprobs, entropy = forward_logprobs(
                self.policy, sequences, attention_mask, prompt_length, temperature, return_entropy=True
            )
            values = forward_values(
                self.value_model, sequences, attention_mask, prompt_length, value_at, critic_trunk_states
            )
            ptx_loss = None
            if ptx_input_ids is not None:
                labels = ptx_input_ids.masked_fill(ptx_attention_mask == 0, -100)
                ptx_loss = self.policy(input_ids=ptx_input_ids, attention_mask=ptx_attention_mask, labels=labels).loss
        return logprobs, entropy, values, ptx_loss

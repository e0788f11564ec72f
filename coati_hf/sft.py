"""Stage 1: supervised fine-tuning, a thin subclass of TRL's ``SFTTrainer``.

It takes everything ``trl.SFTTrainer`` takes, with the same meaning (same arguments in the same
order, same dataset formats, TRL's own preparation of them), and adds:

- ``model`` may also be ``"embedded:SmolLM2-135M-Instruct"``; ``args`` may be ``None``, a plain
  ``TrainingArguments`` or TRL's ``SFTConfig`` (converted, as TRL converts them);
  ``train_dataset``/``eval_dataset`` may also be a path, a list of rows, or a dataset in one of
  Coati's formats (Alpaca, ColossalChat conversations, ...): those rows are converted to TRL's
  conversational format (:func:`coati_hf.data.to_trl_dataset`) before TRL prepares them, so
  assistant-only loss, packing, formatting functions and chat-template kwargs work on them.
  Rows TRL reads already are left as they are, and a ``formatting_func`` sees the user's rows.
- Loss: TRL's (completion only for prompt/completion rows, every token of ``messages`` rows).
  Coati's per-turn loss on conversations (every assistant turn learned, user and system turns
  masked) is ``assistant_only_loss=True``, and it works with any chat template: where TRL cannot
  mark the assistant turns of a template (no ``{% generation %}`` markers and none it knows),
  each turn's span is found by rendering the conversation up to it with and without that turn
  (:func:`tokenize_conversation`).
- A pad token distinct from EOS where the vocabulary has one; conversational data with a
  tokenizer without a chat template is one clear error (:func:`coati_hf.data.require_chat_template`).
- Examples whose completion is cut away entirely by ``max_length`` are dropped with a
  logged count (TRL drops them silently).
- bf16 only where the hardware supports it; model-card tags name coati_hf and the stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import trl

from .colossalai import ColossalAIMixin
from .hub.trainer_mixin import AtomicCheckpointMixin, HubExportMixin
from .data import is_conversational, require_chat_template, to_trl_dataset
from .trainer_common import (
    CoatiArgumentsMixin,
    DataArgumentsMixin,
    as_coati_config,
    bind_trl_arguments,
    coati_tags,
    prepare_pad_token,
    processing_class_like_trl,
    report_dropped_rows,
    resolve_model_name,
)

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(CoatiArgumentsMixin, DataArgumentsMixin, trl.SFTConfig):
    """``trl.SFTConfig`` with coati_hf's defaults (precision that fits the hardware, ColossalAI switch)
    and ``strings_as_chat``."""


def tokenize_conversation(tokenizer, messages: list[dict], prompt: list[dict] | None = None, **template_kwargs) -> dict[str, list[int]]:
    """Token ids of a chat-templated conversation with an ``assistant_masks`` that is 1 on the tokens
    of every assistant turn (its content and end-of-turn marker), 0 elsewhere.

    Works with any chat template: each assistant turn spans from the end of the conversation
    rendered up to it with the generation prompt, to the end of the conversation rendered up to
    and including it. With ``prompt`` (the leading messages of ``messages`` that form the
    prompt), a ``completion_mask`` is 1 from the first token after the prompt.
    ``template_kwargs`` (``tools``, a row's ``chat_template_kwargs``) go to the template.
    """
    from trl.data_utils import common_prefix_length

    def render(turns, add_generation_prompt=False):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids = render(messages)
    assistant_masks = [0] * len(input_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(messages[:index], add_generation_prompt=True)) if index else 0
        end = len(render(messages[: index + 1]))
        for position in range(start, min(end, len(input_ids))):
            assistant_masks[position] = 1
    out = {"input_ids": input_ids, "assistant_masks": assistant_masks}
    if prompt is not None:
        prompt_len = common_prefix_length(render(prompt, add_generation_prompt=True), input_ids)
        out["completion_mask"] = [0] * prompt_len + [1] * (len(input_ids) - prompt_len)
    return out


class SFTTrainer(ColossalAIMixin, HubExportMixin, AtomicCheckpointMixin, trl.SFTTrainer):
    """``trl.SFTTrainer`` that also reads Coati's data formats (see the module docstring)."""

    _tag_names = ["trl", "sft", *coati_tags("sft")]
    _name = "SFT"

    def __init__(self, *args, colossalai_plugin=None, **kwargs):
        call = bind_trl_arguments(trl.SFTTrainer.__init__, self, args, kwargs)
        model = call["model"] = resolve_model_name(call["model"])
        config = call["args"] = as_coati_config(call["args"], SFTConfig, model, "SFT")
        formatting_func = call["formatting_func"]

        def convert(dataset):
            return to_trl_dataset(
                dataset, "sft", strings_as_chat=config.strings_as_chat, text_column=config.dataset_text_field,
                convert=formatting_func is None,
            )

        call["train_dataset"] = convert(call["train_dataset"])[0]
        if isinstance(call["eval_dataset"], dict):
            call["eval_dataset"] = {name: convert(dataset)[0] for name, dataset in call["eval_dataset"].items()}
        else:
            call["eval_dataset"] = convert(call["eval_dataset"])[0]

        call["processing_class"] = processing_class_like_trl(model, call["processing_class"], config, _auto_processor())
        if config.pad_token is None:
            prepare_pad_token(call["processing_class"], None if isinstance(model, str) else model, role="policy")

        # TRL marks assistant turns only in templates it knows; for the others coati_hf tokenizes them itself.
        self._coati_assistant_masks = _needs_own_assistant_masks(config, call["processing_class"], call["train_dataset"])
        if self._coati_assistant_masks:
            config.assistant_only_loss = False  # TRL would refuse the template; the masks come with the tokens
        try:
            super().__init__(**call, colossalai_plugin=colossalai_plugin)
        finally:
            if self._coati_assistant_masks:
                config.assistant_only_loss = True

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if formatting_func is None:
            dataset, _ = to_trl_dataset(dataset, "sft", strings_as_chat=args.strings_as_chat, text_column=args.dataset_text_field)
            first = next(iter(dataset), None)
            if first is not None and "input_ids" not in first:
                require_chat_template(processing_class, dataset_name, first)
                if self._coati_assistant_masks and is_conversational(first):
                    dataset = _with_assistant_masks(dataset, processing_class, dataset_name)
        before = len(dataset) if hasattr(dataset, "__len__") else None
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if not packing:
            why = f"have a prompt of max_length={args.max_length} tokens or more, leaving no completion token to learn from"
            report_dropped_rows(dataset_name, before, prepared, "examples", why)
        return prepared


def _auto_processor():
    from transformers import AutoProcessor

    return AutoProcessor


def _needs_own_assistant_masks(config, processing_class, train_dataset) -> bool:
    """True when assistant-only loss is asked for on conversational data whose chat template TRL
    cannot mark (no ``{% generation %}`` markers and not one of TRL's known templates)."""
    if not config.assistant_only_loss or config.chat_template_path is not None or train_dataset is None:
        return False
    first = next(iter(train_dataset), None)
    if first is None or "input_ids" in first or not is_conversational(first):
        return False
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = getattr(processing_class, "chat_template", None)
    if not template or has_generation_markers(template):
        return False
    try:
        get_training_chat_template(processing_class)
    except ValueError:
        return True
    return False


def _with_assistant_masks(dataset, tokenizer, dataset_name: str):
    """Conversational rows -> ``input_ids`` + ``assistant_masks`` (+ ``completion_mask``), which TRL
    turns into labels as it does for the masks it computes itself."""
    import datasets

    def tokenize(row):
        tools = row.get("tools")
        if isinstance(tools, str):  # TRL accepts tools as a JSON string too
            tools = json.loads(tools)
        kwargs = {"tools": tools, **(row.get("chat_template_kwargs") or {})}
        if "messages" in row:
            return tokenize_conversation(tokenizer, row["messages"], **kwargs)
        return tokenize_conversation(tokenizer, row["prompt"] + row["completion"], prompt=row["prompt"], **kwargs)

    columns = list(dataset.column_names or next(iter(dataset)))
    kwargs = {"desc": f"Tokenizing {dataset_name} conversations with assistant masks"} if isinstance(dataset, datasets.Dataset) else {}
    return dataset.map(tokenize, remove_columns=columns, **kwargs)

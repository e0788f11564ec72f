"""Prompts and pretraining text for PPO: datasets in, token ids out, batches by update index.

- :func:`prepare_prompt_dataset`: a pre-tokenized dataset (``input_ids``, TRL 1.12's examples),
  or any source :func:`coati_hf.data.load_prompt_dataset` reads → a dataset of ``input_ids``.
  TRL's rule: a string prompt is text, tokenized as it is; a list of messages gets the
  tokenizer's chat template with the generation prompt (``strings_as_chat=True`` puts string
  prompts into a user turn first). Conversational prompts and a tokenizer without a chat
  template are one clear error (:func:`coati_hf.data.require_chat_template`).
  A prompt longer than ``max_prompt_length``, or one that leaves no room for
  ``response_length`` new tokens in the model's context, is an error naming the dataset and
  row, or, with ``truncate_prompts=True``, keeps its last tokens and is counted in the log.
- :class:`PromptBatcher`: the prompt indices of update ``k`` on rank ``r`` — a pure function of
  ``(seed, k)``, so a resumed run draws exactly the prompts the uninterrupted run would have.
- :func:`prepare_pretrain_blocks`: pretraining text → fixed-size blocks of tokens for the PTX loss.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

DEFAULT_PTX_BLOCK = 128


def prepare_prompt_dataset(dataset, tokenizer, args, name: str, max_context: int | None = None):
    from ..data import load_prompt_dataset, require_chat_template

    if not (hasattr(dataset, "column_names") and "input_ids" in dataset.column_names):
        dataset = load_prompt_dataset(dataset, strings_as_chat=getattr(args, "strings_as_chat", False))
        if len(dataset):
            require_chat_template(tokenizer, name, dataset[0])
        dataset = dataset.map(
            lambda row: {"input_ids": _prompt_ids(tokenizer, row["prompt"])},
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {name} prompts",
        )
    elif len(dataset.column_names) > 1:
        dataset = dataset.select_columns(["input_ids"])
    if len(dataset) == 0:
        raise ValueError(f"The {name} dataset has no prompts")

    limits = []
    if args.max_prompt_length is not None:
        limits.append((args.max_prompt_length, f"max_prompt_length={args.max_prompt_length}"))
    if max_context is not None:
        room = max_context - args.response_length
        if room < 1:
            raise ValueError(f"response_length={args.response_length} does not fit the model's context of {max_context} tokens")
        limits.append((room, f"the model's context of {max_context} tokens minus response_length={args.response_length}"))
    if not limits:
        _check_not_empty(dataset, name)
        return dataset
    limit, reason = min(limits)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    too_long = [row for row, length in enumerate(lengths) if length > limit]
    if too_long and not args.truncate_prompts:
        first = too_long[0]
        raise ValueError(
            f"{name} dataset, row {first + 1}, field 'prompt': {lengths[first]} tokens, longer than {reason} "
            f"({len(too_long)} prompt(s) in all). Shorten them, raise the limit, or set truncate_prompts=True."
        )
    if too_long:
        logger.warning("%s dataset: kept the last %d tokens of %d over-long prompt(s) (%s).", name, limit, len(too_long), reason)
        dataset = dataset.map(lambda row: {"input_ids": row["input_ids"][-limit:]}, desc=f"Truncating {name} prompts")
    _check_not_empty(dataset, name)
    return dataset


def _check_not_empty(dataset, name: str) -> None:
    for row, ids in enumerate(dataset["input_ids"]):
        if len(ids) == 0:
            raise ValueError(f"{name} dataset, row {row + 1}, field 'prompt': empty prompt")


def _prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PromptBatcher:
    """Indices of the prompts of each update, per rank, reproducible from the update index.

    Epoch ``e`` is a permutation drawn from ``seed + e``; it is cut into
    ``len // (local_batch_size * world_size)`` global batches (the remainder is dropped, as
    TRL's ``drop_last=True``); rank ``r`` takes its slice of each.
    """

    def __init__(self, num_prompts: int, local_batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_prompts = num_prompts
        self.local_batch_size = local_batch_size
        self.global_batch_size = local_batch_size * world_size
        self.seed, self.rank = seed, rank
        self.batches_per_epoch = num_prompts // self.global_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The train dataset has {num_prompts} prompts, fewer than one batch of {self.global_batch_size} "
                "(per_device_train_batch_size × gradient_accumulation_steps × processes)"
            )
        self._epoch, self._order = None, None

    def batch(self, index: int) -> torch.Tensor:
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order = torch.randperm(self.num_prompts, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._epoch = epoch
        start = position * self.global_batch_size + self.rank * self.local_batch_size
        return self._order[start : start + self.local_batch_size]


def prepare_pretrain_blocks(source, tokenizer, args) -> list[dict]:
    """Pretraining text as blocks of ``block`` tokens (documents joined by EOS).

    ``block`` is ``max_prompt_length + response_length`` when a prompt limit is set (the length
    PPO trains on), else 128.
    """
    from ..data import load_pretrain_dataset

    block = args.max_prompt_length + args.response_length if args.max_prompt_length else DEFAULT_PTX_BLOCK
    dataset = load_pretrain_dataset(source)
    stream: list[int] = []
    for text in dataset["text"]:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    blocks = [{"input_ids": stream[start : start + block]} for start in range(0, len(stream) - block + 1, block)]
    if len(blocks) < args.ptx_batch_size:
        raise ValueError(
            f"The pretrain dataset gives {len(blocks)} block(s) of {block} tokens, fewer than ptx_batch_size={args.ptx_batch_size}"
        )
    return blocks

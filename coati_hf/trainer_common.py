"""Pieces every coati_hf trainer shares: config defaults, tokenizer checks, model-card tags."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .hub.arguments import HubExportArguments
from .runtime import RunDefaultsMixin

logger = logging.getLogger(__name__)

COATI_TAG = "coati_hf"


def hardware_supports_bf16() -> bool:
    """True where bf16 mixed precision trains: a CUDA device with bf16 support.

    CPUs are left out on purpose: bf16 autocast on a CPU is slow and TRL's bf16 default is what
    stops CPU users before training starts, so coati_hf trains in fp32 there unless asked.
    """
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class CoatiArgumentsMixin(RunDefaultsMixin, HubExportArguments):
    """Fields and defaults added to every coati_hf config (put it first in the bases).

    - ``colossalai_strategy``: run the trainer on ColossalAI's booster with this strategy
      (see :class:`coati_hf.colossalai.ColossalAIPlugin`); None means plain Accelerate,
      unless the ``COATI_HF_STRATEGY`` environment variable names one.
    - ``bf16`` left unset means "bf16 where the hardware supports it, else fp32" instead of
      TRL's unconditional bf16.
    - The export fields of :class:`coati_hf.hub.arguments.HubExportArguments`
      (``save_adapter_only``, ``card_base_model``, ``card_datasets``, ``card_license``).
    - The machine's defaults of :class:`coati_hf.runtime.RunDefaultsMixin` (``use_cpu`` and no
      pinned memory without an accelerator; activation checkpointing on, by its new name).
    """

    colossalai_strategy: str | None = field(
        default=None,
        metadata={
            "help": "Train with ColossalAI's booster using this strategy: ddp, zero1, zero2, zero2_cpu, gemini, "
            "gemini_auto or 3d. None uses plain Accelerate (or the COATI_HF_STRATEGY environment variable)."
        },
    )

    def __post_init__(self):
        if isinstance(self.colossalai_strategy, str):
            from .colossalai.plugin import normalize_strategy

            try:
                self.colossalai_strategy = normalize_strategy(self.colossalai_strategy)
            except ValueError as err:
                raise ValueError(f"colossalai_strategy: {err}") from None
        if getattr(self, "bf16", None) is None:
            self.bf16 = (not getattr(self, "fp16", False)) and hardware_supports_bf16()
        super().__post_init__()


def coati_tags(stage: str) -> list[str]:
    """Model-card tags for a stage ("sft", "reward-model", "ppo"), TRL's ``_tag_names`` convention."""
    return [COATI_TAG, f"coati-{stage}", "rlhf"]


def prepare_pad_token(tokenizer, model, *, role: str, allow_eos_padding: bool = True) -> None:
    """Make sure ``tokenizer`` pads, and ``model.config`` agrees on the pad id.

    A tokenizer without a pad token gets one (an unused special token, see
    :func:`coati_hf.models.ensure_pad_token`) with a warning that names it. Where the only
    choice is EOS and ``allow_eos_padding`` is False (reward models and critics read the
    score at the last non-pad token, which is then ambiguous), a ValueError says how to fix it.
    """
    from .models import ensure_pad_token

    had_pad = tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    ensure_pad_token(tokenizer, model)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and not allow_eos_padding:
        raise ValueError(
            f"The {role}'s tokenizer pads with its EOS token ({tokenizer.eos_token!r}) and has no other token to pad "
            "with, so the last non-pad token of a sequence that ends in EOS is ambiguous. Add a pad token first: "
            "tokenizer.add_special_tokens({'pad_token': '<|pad|>'}); model.resize_token_embeddings(len(tokenizer))."
        )
    if not had_pad:
        logger.warning(
            "The %s's tokenizer had no pad token distinct from EOS; using %r (id %d).",
            role,
            tokenizer.pad_token,
            tokenizer.pad_token_id,
        )


def resolve_model_and_tokenizer(model, processing_class, loader):
    """``model`` as a live model: a Hub name, folder or embedded name is loaded with ``loader``
    (which returns ``(model, tokenizer)``); the tokenizer is the one given, else the loaded one."""
    if isinstance(model, str):
        model, loaded_tokenizer = loader(model)
        processing_class = processing_class if processing_class is not None else loaded_tokenizer
    if processing_class is None:
        raise ValueError("processing_class (the tokenizer) is required when model is an instantiated model")
    return model, processing_class


def convert_datasets(convert, train_dataset, eval_dataset):
    """Apply ``convert`` to the train dataset and to the eval dataset (or each of a dict of them)."""
    if isinstance(eval_dataset, dict):
        return convert(train_dataset), {name: convert(dataset) for name, dataset in eval_dataset.items()}
    return convert(train_dataset), convert(eval_dataset)


def report_dropped_rows(dataset_name: str, before, prepared, what: str, why: str) -> None:
    """Log how many rows dataset preparation dropped and why; an error if it dropped them all.

    TRL's trainers filter over-long rows silently; coati_hf never loses data without saying so.
    """
    if before is None or not hasattr(prepared, "__len__") or len(prepared) >= before:
        return
    if len(prepared) == 0:
        raise ValueError(f"{dataset_name} dataset: all {before} {what} {why}; nothing is left to train on.")
    logger.warning("%s dataset: dropped %d of %d %s that %s.", dataset_name, before - len(prepared), before, what, why)

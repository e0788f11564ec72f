"""Pieces every coati_hf trainer shares: config defaults, TRL's arguments, tokenizer checks, model-card tags.

The SFT and reward trainers are TRL's trainers plus Coati's additions. What they take is what
TRL's take, with the same meaning; the helpers here do the few things coati_hf does before TRL's
own ``__init__`` runs:

* :func:`bind_trl_arguments`: the call's arguments by TRL's own signature (positional calls
  written for TRL keep working);
* :func:`as_coati_config`: ``args`` as the coati_hf config, converted from ``None``, a plain
  ``TrainingArguments`` or TRL's own config as TRL converts them;
* :func:`resolve_model_name`: the embedded model's name to its folder (TRL then loads it, with
  ``model_init_kwargs`` and ``trust_remote_code`` as TRL does);
* :func:`processing_class_like_trl`: the tokenizer TRL would load when none is given, loaded
  early so that coati_hf can pick its pad token (:func:`prepare_pad_token`).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, fields

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


@dataclass
class DataArgumentsMixin:
    """Data fields of the coati_hf configs whose trainers read datasets through :mod:`coati_hf.data`.

    - ``strings_as_chat``: TRL's rule is that a string prompt/completion is plain text (no chat
      template) and only message lists are conversational; True puts string prompts and replies
      into a conversation (a user turn, an assistant turn) so the chat template applies to them.
    """

    strings_as_chat: bool = field(
        default=False,
        metadata={
            "help": "Put string prompts/completions (TRL's standard format, used as plain text) into chat turns so the "
            "chat template applies to them. Message lists always get the template."
        },
    )


def coati_tags(stage: str) -> list[str]:
    """Model-card tags for a stage ("sft", "reward-model", "ppo"), TRL's ``_tag_names`` convention."""
    return [COATI_TAG, f"coati-{stage}", "rlhf"]


def prepare_pad_token(tokenizer, model, *, role: str, allow_eos_padding: bool | str = True) -> None:
    """Make sure ``tokenizer`` pads, and ``model.config`` agrees on the pad id.

    A tokenizer without a pad token gets one (an unused special token, see
    :func:`coati_hf.models.ensure_pad_token`) with a warning that names it. ``model`` may be
    ``None`` (not loaded yet: TRL copies the pad id into its config). Where the only choice is
    EOS, ``allow_eos_padding`` decides: ``True`` pads with EOS, ``"warn"`` pads with EOS and
    explains the consequence for a score read at the last non-pad token (reward models: TRL
    trains on such tokenizers, so coati_hf does too), ``False`` raises a ValueError that says
    how to add a pad token (where reading at EOS is required).
    """
    from transformers import ProcessorMixin

    from .models import ensure_pad_token

    if isinstance(tokenizer, ProcessorMixin):  # a processor pads with its tokenizer
        tokenizer = tokenizer.tokenizer
    had_pad = tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    ensure_pad_token(tokenizer, model)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and allow_eos_padding is not True:
        why = (
            f"The {role}'s tokenizer pads with its EOS token ({tokenizer.eos_token!r}) and has no other token to pad "
            "with, so the last non-pad token of a sequence that ends in EOS is ambiguous"
        )
        fix = "tokenizer.add_special_tokens({'pad_token': '<|pad|>'}); model.resize_token_embeddings(len(tokenizer))."
        if allow_eos_padding is False:
            raise ValueError(f"{why}. Add a pad token first: {fix}")
        logger.warning(
            "%s: the score is read at the token before the final EOS, not at the EOS where PPO reads it. "
            "To score at EOS, add a pad token first: %s",
            why,
            fix,
        )
    elif not had_pad:
        logger.warning(
            "The %s's tokenizer had no pad token distinct from EOS; using %r (id %d).",
            role,
            tokenizer.pad_token,
            tokenizer.pad_token_id,
        )


def bind_trl_arguments(trl_init, trainer, args: tuple, kwargs: dict) -> dict:
    """The arguments of a trainer call by the names of TRL's ``__init__`` (``trl_init``), defaults filled in.

    Positional calls written for TRL's parameter order mean the same here, and an unknown
    keyword is TRL's own ``TypeError``.
    """
    bound = inspect.signature(trl_init).bind(trainer, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    return arguments


def as_coati_config(args, config_cls, model, suffix: str):
    """``args`` as a ``config_cls`` (a coati_hf config), as TRL converts what it is given.

    ``None`` becomes ``config_cls("<model name>-<suffix>")`` (TRL's default output folder); a
    plain ``TrainingArguments`` or TRL's own config becomes ``config_cls`` with the same values
    (TRL converts ``TrainingArguments`` the same way); a coati_hf config is used as it is.
    """
    if isinstance(args, config_cls):
        return args
    if args is None:
        from trl.trainer.utils import get_config_model_id

        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return config_cls(f"{str(name).rstrip('/').split('/')[-1]}-{suffix}")
    from transformers import TrainingArguments

    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be a {config_cls.__name__} or a transformers.TrainingArguments, got {type(args).__name__}")
    values = args.to_dict()
    values.update({key: getattr(args, key) for key in values if key.endswith("_token")})  # to_dict masks these
    known = {f.name for f in fields(config_cls) if f.init}
    return config_cls(**{key: value for key, value in values.items() if key in known})


def resolve_model_name(model):
    """A model given by name: the embedded model's name becomes its converted folder; other names
    and model objects are returned as they are (TRL loads names itself)."""
    if isinstance(model, str):
        from .models import resolve_model_path

        return resolve_model_path(model)
    return model


def processing_class_like_trl(model, processing_class, args, auto_class):
    """``processing_class``, or the one TRL would load for ``model`` when it is None.

    TRL loads it from the model's name (``model`` itself, or ``config._name_or_path`` of a model
    object) with ``auto_class`` (``AutoProcessor`` for SFT, ``AutoTokenizer`` for reward
    models), the revision of ``model_init_kwargs`` and ``trust_remote_code``. coati_hf loads it
    before TRL does only to choose its pad token.
    """
    if processing_class is not None:
        return processing_class
    from trl.trainer.utils import get_config_model_id

    name = model if isinstance(model, str) else get_config_model_id(model.config)
    revision = (args.model_init_kwargs or {}).get("revision") if isinstance(model, str) else None
    return auto_class.from_pretrained(name, revision=revision, trust_remote_code=args.trust_remote_code)


def report_dropped_rows(dataset_name: str, before, prepared, what: str, why: str) -> None:
    """Log how many rows dataset preparation dropped and why; an error if it dropped them all.

    TRL's trainers filter over-long rows silently; coati_hf never loses data without saying so.
    """
    if before is None or not hasattr(prepared, "__len__") or len(prepared) >= before:
        return
    if len(prepared) == 0:
        raise ValueError(f"{dataset_name} dataset: all {before} {what} {why}; nothing is left to train on.")
    logger.warning("%s dataset: dropped %d of %d %s that %s.", dataset_name, before - len(prepared), before, what, why)

"""Stage 2: reward-model training, a thin subclass of TRL's ``RewardTrainer``.

The reward model is an ``AutoModelForSequenceClassification`` with ``num_labels=1``; its
score for a sequence is read at the last non-pad token (transformers locates it from
``config.pad_token_id``, so left and right padding give the same score).

Coati's two pairwise ranking losses, for scores r_c (chosen) and r_r (rejected) and an
optional per-pair margin m:

    log_sig:  L = -log σ(r_c - r_r - m)
    log_exp:  L =  log(1 + exp(r_r - r_c + m))

They are the same function of r_c - r_r (log(1 + e^-x) = -log σ(x)); ColossalChat ships
both and so do we, each computed in its own numerically stable form. TRL's reward centring
adds ``center_rewards_coefficient · mean((r_c + r_r)²)``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import trl

from .colossalai import ColossalAIMixin
from .hub.trainer_mixin import AtomicCheckpointMixin, HubExportMixin
from .data import require_chat_template, to_trl_dataset
from .metrics import load_metric
from .models import init_value_head
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

REWARD_LOSSES = ("log_sig", "log_exp")


def pairwise_ranking_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    loss_fn: str = "log_sig",
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Mean pairwise loss over a batch; see the module docstring for the formulas."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    if loss_fn == "log_sig":
        per_pair = -F.logsigmoid(diff)
    elif loss_fn == "log_exp":
        per_pair = F.softplus(-diff)  # log(1 + exp(r_r - r_c)), overflow-free
    else:
        raise ValueError(f"loss_fn must be one of {REWARD_LOSSES}, got {loss_fn!r}")
    return per_pair.mean()


@dataclass
class RewardConfig(CoatiArgumentsMixin, DataArgumentsMixin, trl.RewardConfig):
    """``trl.RewardConfig`` plus Coati's choice of ranking loss.

    Precision defaults to bf16 only where the hardware supports it (fp32 on a CPU).
    """

    loss_fn: str = field(
        default="log_sig",
        metadata={"help": "Pairwise ranking loss: 'log_sig' (-log σ(r_c - r_r)) or 'log_exp' (log(1 + exp(r_r - r_c)))."},
    )

    def __post_init__(self):
        if self.loss_fn not in REWARD_LOSSES:
            raise ValueError(f"loss_fn must be one of {REWARD_LOSSES}, got {self.loss_fn!r}")
        super().__post_init__()


class RewardTrainer(ColossalAIMixin, HubExportMixin, AtomicCheckpointMixin, trl.RewardTrainer):
    """``trl.RewardTrainer`` that also reads Coati's preference formats and uses Coati's losses.

    It takes everything ``trl.RewardTrainer`` takes, with the same meaning, and adds:

    - ``model`` may also be ``"embedded:SmolLM2-135M-Instruct"``; a new value head (a checkpoint
      without one) is initialised as Coati does (N(0, 1/(hidden+1))). ``args`` may be ``None``,
      a ``TrainingArguments`` or TRL's ``RewardConfig`` (converted).
    - ``train_dataset`` / ``eval_dataset`` may also be a path, a list of rows, or a dataset in one
      of Coati's preference formats (converted to TRL's conversational format before TRL prepares
      it, :func:`coati_hf.data.to_trl_dataset`); TRL's formats are left as they are.
    - A pad token distinct from EOS where the vocabulary has one. A tokenizer that can only pad
      with EOS (Llama 3, Pythia) trains as with TRL, with a warning that the score is then read
      one token before the final EOS.
    - Pairs longer than ``max_length`` are dropped with a logged count (TRL drops them silently);
      pairs whose chosen and rejected tokens are identical are dropped with a count too.
    - Sequences end at their last EOS (see :func:`end_at_last_eos`): the score is learnt where
      PPO reads it, at the stop token.
    - Accuracy, margin and reward statistics come from the shipped ``reward_accuracy`` evaluate
      module, computed over every pair seen since the last log (the whole set at evaluation).
    """

    _tag_names = ["trl", "reward-trainer", *coati_tags("reward-model")]
    _name = "Reward"

    def __init__(self, *args, colossalai_plugin=None, **kwargs):
        from transformers import AutoTokenizer

        call = bind_trl_arguments(trl.RewardTrainer.__init__, self, args, kwargs)
        model = call["model"] = resolve_model_name(call["model"])
        config = call["args"] = as_coati_config(call["args"], RewardConfig, model, "Reward")
        new_head = isinstance(model, str) and not _has_score_head(model, config)
        call["processing_class"] = processing_class_like_trl(model, call["processing_class"], config, AutoTokenizer)
        if config.pad_token is None:
            model_object = None if isinstance(model, str) else model
            prepare_pad_token(call["processing_class"], model_object, role="reward model", allow_eos_padding="warn")

        def convert(dataset):
            return to_trl_dataset(dataset, "preference", strings_as_chat=config.strings_as_chat)[0]

        call["train_dataset"] = convert(call["train_dataset"])
        if isinstance(call["eval_dataset"], dict):
            call["eval_dataset"] = {name: convert(dataset) for name, dataset in call["eval_dataset"].items()}
        else:
            call["eval_dataset"] = convert(call["eval_dataset"])

        self._reward_metric = load_metric("reward_accuracy")
        self._pair_scores = {"train": defaultdict(list), "eval": defaultdict(list)}
        try:
            super().__init__(**call, colossalai_plugin=colossalai_plugin)
        except ValueError as err:
            if "num_labels=1" not in str(err):
                raise
            raise ValueError(
                f"{err} (coati_hf: coati_hf.models.load_sequence_classifier(path) loads any causal-LM or reward "
                "checkpoint with num_labels=1 and Coati's value-head initialisation.)"
            ) from None
        if new_head:
            init_value_head(self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = to_trl_dataset(dataset, "preference", strings_as_chat=args.strings_as_chat)[0]
        first = next(iter(dataset), None)
        tokenized_here = first is not None and not {"chosen_ids", "chosen_input_ids"} & set(first)
        if tokenized_here:
            require_chat_template(processing_class, dataset_name, first)
        before = len(dataset) if hasattr(dataset, "__len__") else None
        prepared = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        why = f"have a chosen or rejected sequence longer than max_length={args.max_length} tokens"
        report_dropped_rows(dataset_name, before, prepared, "preference pairs", why)
        eos_id = processing_class.eos_token_id
        if tokenized_here and eos_id is not None:
            kwargs = {"desc": f"Ending {dataset_name} sequences at their EOS"} if hasattr(prepared, "__len__") else {}
            prepared = prepared.map(
                lambda row: {key: end_at_last_eos(row[key], eos_id) for key in ("chosen_ids", "rejected_ids")}, **kwargs
            )
        if hasattr(prepared, "__len__"):
            before = len(prepared)
            prepared = prepared.filter(lambda row: row["chosen_ids"] != row["rejected_ids"], desc="Dropping identical pairs")
            report_dropped_rows(dataset_name, before, prepared, "preference pairs", "have identical chosen and rejected tokens")
        return prepared

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = pairwise_ranking_loss(rewards_chosen, rewards_rejected, self.args.loss_fn, margin)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        with torch.no_grad():
            chosen = self.accelerator.gather_for_metrics(rewards_chosen.detach().float())
            rejected = self.accelerator.gather_for_metrics(rewards_rejected.detach().float())
            self._pair_scores[mode]["chosen"].extend(chosen.cpu().tolist())
            self._pair_scores[mode]["rejected"].extend(rejected.cpu().tolist())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        scores = self._pair_scores[mode]
        if scores["chosen"]:
            metrics = self._reward_metric.compute(predictions=scores["chosen"], references=scores["rejected"])
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{key}": value for key, value in metrics.items()})
            scores.clear()
        # TRL's own per-batch statistics are superseded by the metric module's: skip its log().
        self._metrics[mode].clear()
        super(trl.RewardTrainer, self).log(logs, start_time)


def end_at_last_eos(token_ids: list[int], eos_id: int) -> list[int]:
    """Drop what a chat template puts after the final EOS (ChatML's trailing newline).

    The score is read at the last token. PPO generates up to and including the stop token and
    reads the score there, so the reward model must learn its score at EOS too, not one token
    later on the template's "\\n".
    """
    for position in range(len(token_ids) - 1, -1, -1):
        if token_ids[position] == eos_id:
            return token_ids[: position + 1]
    return token_ids


def _has_score_head(model_name: str, config) -> bool:
    """Whether the checkpoint ``model_name`` already is a sequence classifier (has its ``score`` head)."""
    from transformers import AutoConfig

    init_kwargs = config.model_init_kwargs or {}
    model_config = AutoConfig.from_pretrained(
        model_name, revision=init_kwargs.get("revision"), trust_remote_code=init_kwargs.get("trust_remote_code", config.trust_remote_code)
    )
    return any(name.endswith("ForSequenceClassification") for name in model_config.architectures or ())

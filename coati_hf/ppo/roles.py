"""Who plays which part in PPO: actor, reference policy, critic and reward.

:func:`build_roles` turns the models a user passes to :class:`~coati_hf.ppo.PPOTrainer` into
the four roles, with the least memory that keeps each role correct:

    ref_model=None                   a frozen copy of the actor, or, with peft_config, the actor
                                     itself with its adapter disabled (no copy)
    value_model=None                 a copy of the reward model (Coati: the critic starts from the
                                     reward model); with peft_config, the reward model itself plus
                                     its own LoRA adapter and head, the reward being read with that
                                     adapter disabled (two roles, one backbone); from the actor's
                                     backbone when the reward is a Python callable or the reward
                                     model reads another vocabulary (the critic reads the actor's ids)
    reward_processing_class=None     the policy's tokenizer when the reward model shares its token
                                     ids, else the tokenizer saved beside the reward model, else an
                                     error asking for it

Every model loses its dropout (PPO's ratios must compare like with like), and the frozen
roles stop requiring gradients.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

from torch import nn

from ..hub.export import merged_copy
from ..models.loading import init_value_head
from ..trainer_common import prepare_pad_token

logger = logging.getLogger(__name__)


@dataclass
class Roles:
    policy: nn.Module
    ref_policy: nn.Module | None  # None: the peft policy with its adapter disabled
    critic: nn.Module
    reward_model: object  # a sequence-classification model or a callable
    reward_tokenizer: object | None  # None: the policy's tokenizer
    reward_is_function: bool
    reward_shares_critic: bool  # the critic is the reward model plus an adapter
    is_peft: bool


def build_roles(model, ref_model, reward_model, value_model, tokenizer, reward_tokenizer=None, peft_config=None) -> Roles:
    """The four PPO roles from the trainer's arguments (see the module docstring)."""
    if reward_model is None:
        raise ValueError("reward_model is required: a sequence-classification model or a callable")
    reward_is_function = callable(reward_model) and not isinstance(reward_model, nn.Module)
    if not reward_is_function:
        _check_one_label(reward_model, "reward_model")
        reward_tokenizer = _reward_tokenizer(reward_model, tokenizer, reward_tokenizer)
    if value_model is not None:
        _check_one_label(value_model, "value_model")

    if peft_config is not None:
        from peft import PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            raise ValueError(
                "You passed a `PeftModel` together with a `peft_config`; merge and unload its adapter first, "
                "or pass the base model."
            )
        model = get_peft_model(model, copy.deepcopy(peft_config))
    is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
    if ref_model is None and not is_peft:
        ref_model = _frozen_copy(model)

    reward_shares_critic = False
    if value_model is None:
        if reward_is_function or _ids_differ(reward_tokenizer, tokenizer):
            value_model = _critic_from_policy(model)
        elif peft_config is not None:
            value_model = _critic_adapter_on(reward_model, peft_config)
            reward_shares_critic = True
        else:
            value_model = copy.deepcopy(reward_model)
    _check_embeds_policy_ids(value_model, model, "value_model")

    for module in (model, ref_model, value_model, None if reward_is_function else reward_model):
        if module is not None:
            _disable_dropout(module)
    if ref_model is not None:
        ref_model.requires_grad_(False).eval()
    if not reward_is_function and not reward_shares_critic:
        reward_model.requires_grad_(False).eval()
    return Roles(model, ref_model, value_model, reward_model, reward_tokenizer, reward_is_function, reward_shares_critic, is_peft)


def _check_one_label(model, name: str) -> None:
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"{name} must be a sequence-classification model with num_labels=1 (one score per sequence); it has "
            f"num_labels={num_labels}. Load it with AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)."
        )


def _reward_tokenizer(reward_model, policy_tokenizer, reward_tokenizer):
    """The reward model's tokenizer: the one given, else the policy's when the vocabularies agree.

    A reward model loaded from a folder that holds a tokenizer whose token ids differ from the
    policy's (even with an equal vocabulary size) gets that tokenizer. When the reward model's
    embedding table cannot hold the policy's token ids and no tokenizer is known, a clear error
    is raised.
    """
    if reward_tokenizer is not None:
        prepare_pad_token(reward_tokenizer, reward_model, role="reward model", allow_eos_padding=False)
        return reward_tokenizer
    reward_vocab = reward_model.get_input_embeddings().num_embeddings
    policy_vocab = max(policy_tokenizer.get_vocab().values()) + 1
    source = getattr(reward_model, "name_or_path", "") or ""
    tokenizer = _folder_tokenizer(source)
    if tokenizer is not None and _ids_differ(tokenizer, policy_tokenizer):
        prepare_pad_token(tokenizer, reward_model, role="reward model", allow_eos_padding=False)
        logger.info("The reward model has its own tokenizer (%s): completions are re-tokenized for it.", source)
        return tokenizer
    if policy_vocab - len(policy_tokenizer.get_added_vocab()) <= reward_vocab:
        return None  # same vocabulary (the policy tokenizer may add a pad token the models never embed)
    raise ValueError(
        f"The reward model's vocabulary ({reward_vocab} tokens) does not match the policy tokenizer's "
        f"({policy_vocab}); pass its tokenizer as reward_processing_class=..."
    )


def _folder_tokenizer(source: str):
    """The tokenizer saved in the model folder ``source``, or None (not a folder, no tokenizer)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not (os.path.isdir(source) and any(os.path.isfile(os.path.join(source, name)) for name in names)):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        logger.warning("Could not load the tokenizer in the reward model's folder %s", source)
        return None


def _ids_differ(tokenizer, policy_tokenizer) -> bool:
    """Whether some token of ``tokenizer`` has another id (or none) in the policy's tokenizer."""
    if tokenizer is None or tokenizer is policy_tokenizer:
        return False
    policy_ids = policy_tokenizer.get_vocab()
    return any(policy_ids.get(token) != index for token, index in tokenizer.get_vocab().items())


def _check_embeds_policy_ids(critic, policy, name: str) -> None:
    critic_rows = critic.get_input_embeddings().num_embeddings
    policy_rows = policy.get_input_embeddings().num_embeddings
    if critic_rows < policy_rows:
        raise ValueError(
            f"{name} has {critic_rows} token embeddings, fewer than the policy's {policy_rows}: the critic reads the "
            "policy's token ids, so it needs the policy's vocabulary (leave value_model=None to start it from the "
            "policy's backbone)."
        )


def _frozen_copy(model):
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def _disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _critic_from_policy(policy):
    """A ``num_labels=1`` sequence classifier on a copy of the policy's backbone, new value head."""
    from transformers import AutoModelForSequenceClassification

    base = merged_copy(policy)  # a peft policy: a plain copy with its adapter merged (LoRA layers renamed the weights)
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(config).to(dtype=base.dtype)
    missing, _ = critic.load_state_dict(base.state_dict(), strict=False)
    if any(not key.startswith("score") for key in missing):
        raise RuntimeError(f"could not copy the policy backbone into the critic; missing {missing}")
    init_value_head(critic)
    return critic


def _critic_adapter_on(reward_model, peft_config):
    """The critic as the reward model plus its own LoRA adapter and a trainable copy of the head."""
    from peft import get_peft_model

    critic_config = copy.deepcopy(peft_config)
    critic_config.task_type = "SEQ_CLS"
    return get_peft_model(reward_model, critic_config)

"""Who plays which part in PPO: actor, reference policy, critic and reward.

:func:`build_roles` turns the models a user passes to :class:`~coati_hf.ppo.PPOTrainer` into
the four roles, with the least memory that keeps each role correct:

    ref_model=None                   a frozen copy of the actor, or, with peft_config, the actor
                                     itself with its adapter disabled (no copy)
    value_model=None                 a copy of the reward model (Coati: the critic starts from the
                                     reward model); with peft_config, the reward model itself plus
                                     its own LoRA adapter (on the top critic_adapter_fraction of its
                                     layers) and head, the reward being read with that adapter
                                     disabled (two roles, one backbone); from the actor's
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
import math
import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from ..hub.export import merged_copy
from ..models.loading import init_value_head
from ..trainer_common import prepare_pad_token
from .forward import scores_every_position

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


def build_roles(
    model, ref_model, reward_model, value_model, tokenizer, reward_tokenizer=None, peft_config=None, critic_adapter_fraction=1.0
) -> Roles:
    """The four PPO roles from the trainer's arguments (see the module docstring).
    ``critic_adapter_fraction``: see :func:`critic_adapter_config`."""
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
        if reward_is_function or tokenizer_difference(reward_tokenizer, tokenizer) or not scores_every_position(reward_model):
            value_model = _critic_from_policy(model)
        elif peft_config is not None:
            value_model = _critic_adapter_on(reward_model, peft_config, critic_adapter_fraction)
            reward_shares_critic = True
        else:
            value_model = copy.deepcopy(reward_model)
    if not scores_every_position(value_model):
        raise ValueError(
            f"value_model ({type(value_model).__name__}) has no per-position `score` head: its head pools the whole "
            "input, so it cannot give a value per token. Use a causal LM's AutoModelForSequenceClassification "
            "(num_labels=1), or leave value_model=None."
        )
    _check_embeds_policy_ids(value_model, model, "value_model")

    for module in (model, ref_model, value_model, None if reward_is_function else reward_model):
        if module is not None:
            disable_dropout(module)
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
    """The tokenizer the reward model reads with (None: it reads the policy's token ids).

    - Given (``reward_processing_class``): used as it is.
    - Not given: the tokenizer saved with the reward model (its folder, or its Hub id) is
      compared with the policy's by content (every token's id, EOS and BOS). If they differ,
      feeding the policy's ids would score other text than the policy wrote: an error says what
      to pass. Sizes are no evidence: two tokenizers of one size can number tokens differently.
    - No tokenizer found (a model built in memory): its embedding table must hold the policy's
      ids (else an error); that it reads them as the policy does cannot be checked, so a
      warning says how to make sure.
    """
    if reward_tokenizer is not None:
        prepare_pad_token(reward_tokenizer, reward_model, role="reward model")
        return reward_tokenizer
    source = getattr(reward_model, "name_or_path", "") or ""
    saved = _saved_tokenizer(source)
    if saved is not None:
        difference = tokenizer_difference(saved, policy_tokenizer)
        if difference is not None:
            raise ValueError(
                f"The reward model {source!r} comes with its own tokenizer, which differs from the policy's "
                f"({difference}), so it cannot read the policy's token ids. Pass its tokenizer and completions are "
                f"re-tokenized for it: reward_processing_class=AutoTokenizer.from_pretrained({source!r})"
            )
        return None
    reward_vocab = reward_model.get_input_embeddings().num_embeddings
    policy_vocab = max(policy_tokenizer.get_vocab().values()) + 1
    if policy_vocab - len(policy_tokenizer.get_added_vocab()) > reward_vocab:
        raise ValueError(
            f"The reward model's vocabulary ({reward_vocab} tokens) does not match the policy tokenizer's "
            f"({policy_vocab}); pass its tokenizer as reward_processing_class=..."
        )
    logger.warning(
        "No tokenizer is saved with the reward model%s, so coati_hf cannot check that it numbers tokens as the "
        "policy's tokenizer does; it is fed the policy's token ids. If it was trained with another tokenizer, pass "
        "reward_processing_class=<that tokenizer>.",
        f" ({source})" if source else "",
    )
    return None


def _saved_tokenizer(source: str):
    """The tokenizer saved with a model (its folder, or its Hub id), or None when there is none."""
    if not source:
        return None
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if os.path.isdir(source) and not any(os.path.isfile(os.path.join(source, name)) for name in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 -- any failure means "no tokenizer to compare with"
        logger.info("No tokenizer could be loaded for the reward model %s: %s", source, err)
        return None


def tokenizer_difference(tokenizer, policy_tokenizer) -> str | None:
    """How ``tokenizer`` reads token ids differently from ``policy_tokenizer`` (a short
    description of the first difference), or None when every token of ``tokenizer`` has the same
    id in the policy's tokenizer and both agree on EOS and BOS. The policy's tokenizer may hold
    extra tokens (an added pad token, say): ids it never shares are never fed."""
    if tokenizer is None or tokenizer is policy_tokenizer:
        return None
    policy_ids = policy_tokenizer.get_vocab()
    for token, index in tokenizer.get_vocab().items():
        if policy_ids.get(token) != index:
            return f"token {token!r} is id {index} there and {policy_ids.get(token)} in the policy's tokenizer"
    for name in ("eos_token", "bos_token"):
        mine, theirs = getattr(tokenizer, name, None), getattr(policy_tokenizer, name, None)
        if mine is not None and theirs is not None and mine != theirs:
            return f"its {name} is {mine!r}, the policy's is {theirs!r}"
    return None


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


def disable_dropout(model) -> None:
    """Turn every form of dropout in ``model`` off for training.

    PPO compares log-probs and values of the same tokens across forward passes (rollout vs
    update, and within the single-pass update, KL and advantages come from a train-mode
    forward), so any randomness in a forward is an error in the ratios. Dropout hides in three
    places, and all three are set to 0:

    - ``nn.Dropout`` modules (and their 1d/2d/3d/alpha variants): ``p = 0``;
    - float probabilities a module keeps and passes to ``F.dropout`` or the attention kernel
      when ``self.training`` (OPT's ``dropout`` and ``layerdrop``, Llama-family
      ``attention_dropout``, ...): every float attribute whose name contains "drop";
    - the same fields in the model's config (and its sub-configs), which some modules read at
      call time (Falcon's and GPT-Neo's ``self.config.attention_dropout``). Their original
      values are remembered: :func:`dropout_config_restored` puts them back for an export.
    """
    configs = []
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in vars(module).items():
            if type(value) is float and value and "drop" in name.lower():
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and not any(config is seen for seen in configs):
            configs.append(config)
    for config in configs:
        _zero_config_dropout(config)


# id(config) -> (weak reference to it, {field: original value}); configs are not hashable
_CONFIG_DROPOUT: dict[int, tuple[weakref.ref, dict[str, float]]] = {}


def _zero_config_dropout(config) -> None:
    from transformers import PretrainedConfig

    originals = {}
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_dropout(value)
        elif type(value) is float and value and "drop" in name.lower():
            originals[name] = value
            setattr(config, name, 0.0)
    if originals:
        _, known = _CONFIG_DROPOUT.get(id(config), (None, {}))
        _CONFIG_DROPOUT[id(config)] = (weakref.ref(config, lambda _, key=id(config): _CONFIG_DROPOUT.pop(key, None)), {**originals, **known})


@contextmanager
def dropout_config_restored(*models):
    """Within the block, the configs of ``models`` carry the dropout values they had before
    :func:`disable_dropout` (so an export's ``config.json`` is the user's, not PPO's)."""
    restored = []
    for model in models:
        for module in model.modules() if isinstance(model, nn.Module) else ():
            config = getattr(module, "config", None)
            for sub in _configs_within(config):
                ref, originals = _CONFIG_DROPOUT.get(id(sub), (None, None))
                if ref is not None and ref() is sub and not any(sub is done for done, _ in restored):
                    restored.append((sub, {name: getattr(sub, name) for name in originals}))
                    for name, value in originals.items():
                        setattr(sub, name, value)
    try:
        yield
    finally:
        for config, values in restored:
            for name, value in values.items():
                setattr(config, name, value)


def _configs_within(config):
    from transformers import PretrainedConfig

    if not isinstance(config, PretrainedConfig):
        return
    yield config
    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            yield from _configs_within(value)


def _critic_from_policy(policy):
    """A ``num_labels=1`` sequence classifier on a copy of the policy's backbone, new value head."""
    from transformers import AutoModelForSequenceClassification

    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    model_type = getattr(policy.config, "model_type", None)
    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"value_model=None builds the critic from the policy's backbone, but transformers has no sequence-classification "
            f"class for model_type {model_type!r}: pass value_model=<a num_labels=1 AutoModelForSequenceClassification of "
            "another family that reads the policy's token ids>, or a reward model to start the critic from."
        )
    base = merged_copy(policy)  # a peft policy: a plain copy with its adapter merged (LoRA layers renamed the weights)
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(config).to(dtype=base.dtype)
    missing, _ = critic.load_state_dict(base.state_dict(), strict=False)
    if any(not key.startswith("score") for key in missing):
        raise RuntimeError(f"could not copy the policy backbone into the critic; missing {missing}")
    init_value_head(critic)
    return critic


def _critic_adapter_on(reward_model, peft_config, fraction: float = 1.0):
    """The critic as the reward model plus its own LoRA adapter and a trainable copy of the head."""
    from peft import get_peft_model

    return get_peft_model(reward_model, critic_adapter_config(reward_model, peft_config, fraction))


def critic_adapter_config(reward_model, peft_config, fraction: float = 1.0):
    """The critic's adapter config: the policy's ``peft_config`` for a sequence classifier,
    restricted to the top ``ceil(fraction * num_hidden_layers)`` layers of the reward backbone.

    Below those layers the critic *is* the frozen reward model: nothing there requires
    gradients, so the critic's backward pass and its saved activations end at the first adapted
    layer, and the hidden states entering it are the ones the reward pass computed (see
    :func:`coati_hf.ppo.forward.trunk_split`). A ``peft_config`` that already names its
    ``layers_to_transform``, or targets modules by a pattern string (peft then refuses layer
    indices), is kept as it is."""
    critic_config = copy.deepcopy(peft_config)
    critic_config.task_type = "SEQ_CLS"
    num_layers = getattr(getattr(reward_model, "config", None), "num_hidden_layers", None)
    if fraction >= 1.0 or not num_layers or getattr(critic_config, "layers_to_transform", None) is not None:
        return critic_config
    if isinstance(getattr(critic_config, "target_modules", None), str):
        logger.info(
            "The critic's adapter covers every layer: peft_config.target_modules is a pattern (%r), which peft does not "
            "combine with layer indices; list the module names to let critic_adapter_fraction take effect.",
            critic_config.target_modules,
        )
        return critic_config
    adapted = max(1, math.ceil(fraction * num_layers))
    critic_config.layers_to_transform = list(range(num_layers - adapted, num_layers))
    return critic_config

"""One SFT → reward model → PPO chain on tiny random Llamas, built once per test session.

LoRA at every stage, an eval split for SFT and RM, the shipped bilingual samples as data.
test_hub_stages.py (the export's structure) and test_hub_card_claims.py (what the cards say)
both read its folders; :func:`chain` caches it so the two modules share one run.
"""

from __future__ import annotations

import copy
from pathlib import Path

BASE_ID = "coati-hf-tests/tiny-llama"  # the Hub id the tiny base claims, through card_base_model
FOLDERS = {"sft": "sft", "reward-model": "rm", "ppo": "ppo", "ppo-critic": "ppo/critic"}
RM_EVAL_NAME = "coati_hf's bundled preferences.jsonl, rows 0-7"
SFT_TRAIN_ROWS, RM_TRAIN_ROWS, PPO_PROMPTS = 12, 12, 16
_CACHE: dict = {}


def lora(task_type):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type=task_type)


def common(root, name, **overrides):
    settings = dict(output_dir=str(root / name), report_to="none", logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    settings.update(overrides)
    return settings


def chain(tmp_path_factory, smol_tokenizer) -> tuple[Path, dict]:
    """``(root, {stage: trainer})``; the folders are ``root / FOLDERS[stage]``."""
    if "chain" not in _CACHE:
        _CACHE["chain"] = _build(tmp_path_factory.mktemp("chain"), smol_tokenizer)
    return _CACHE["chain"]


def _build(root: Path, smol_tokenizer):
    from coati_hf import PPOConfig, PPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
    from coati_hf.data import load_sample
    from coati_hf.models import load_causal_lm, load_sequence_classifier, make_tiny_llama

    sft_data = load_sample("sft")
    policy, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    sft = SFTTrainer(
        model=policy,
        args=SFTConfig(**common(root, "sft", max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3, max_length=96,
                                eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=8, gradient_checkpointing=False,
                                card_base_model=BASE_ID, card_license="mit", card_datasets=["coati-hf-tests/sft-sample"])),
        train_dataset=sft_data.select(range(8, 8 + SFT_TRAIN_ROWS)),
        eval_dataset=sft_data.select(range(8)),
        processing_class=tokenizer,
        peft_config=lora("CAUSAL_LM"),
    )  # fmt: skip
    sft.train()
    sft.save_model(str(root / "sft"))

    pairs = load_sample("preferences")
    reward_model, reward_tokenizer = load_sequence_classifier(root / "sft")
    rm = RewardTrainer(
        model=reward_model,
        args=RewardConfig(**common(root, "rm", max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3, max_length=256,
                                   eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=8, gradient_checkpointing=False)),
        train_dataset=pairs.select(range(8, 8 + RM_TRAIN_ROWS)),
        eval_dataset=pairs.select(range(8)),
        processing_class=reward_tokenizer,
        peft_config=lora("SEQ_CLS"),
    )  # fmt: skip
    rm.train()
    rm.create_model_card(dataset_name="coati-hf-tests/preference-sample", eval_dataset_name=RM_EVAL_NAME)
    rm.save_model(str(root / "rm"))

    actor, actor_tokenizer = load_causal_lm(root / "sft")
    reward, _ = load_sequence_classifier(root / "rm")
    ppo = PPOTrainer(
        args=PPOConfig(**common(root, "ppo", per_device_train_batch_size=4, total_episodes=8, response_length=6, num_ppo_epochs=2,
                                learning_rate=1e-3, num_sample_generations=0, activation_checkpointing=False,
                                card_datasets=["coati-hf-tests/prompt-sample"])),
        processing_class=actor_tokenizer, model=actor, ref_model=None, reward_model=reward,
        train_dataset=load_sample("prompts").select(range(PPO_PROMPTS)), value_model=None, peft_config=lora("CAUSAL_LM"),
    )  # fmt: skip
    ppo.train()
    ppo.save_model(str(root / "ppo"))
    return root, {"sft": sft, "reward-model": rm, "ppo": ppo}

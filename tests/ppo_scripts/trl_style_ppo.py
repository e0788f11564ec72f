"""A PPO training script written the way users of TRL 1.12's experimental PPO wrote theirs.

It touches the same public surface as those scripts, so the only coati_hf-specific line is the
import: ``HfArgumentParser`` over ``(ScriptArguments, PPOConfig, ModelConfig)`` from TRL, a
left-padding tokenizer that gets a brand-new ``[PAD]`` token (the models are *not* resized),
critic and reward model both loaded from ``--reward_model_path`` with ``num_labels=1``, the
policy from ``--sft_model_path``, a reference policy that is a second copy of it (none with
``--use_peft``), prompts pre-tokenized into an ``input_ids``-only dataset, then ``train()``,
``save_model(output_dir)``, ``push_to_hub(dataset_name=...)`` when asked and
``generate_completions()``.

For the test that runs it, the completions table is written to
``<output_dir>/completions.jsonl`` (one JSON object per row).

Example::

    python tests/ppo_scripts/trl_style_ppo.py --dataset_name data_dir --dataset_train_split train \
        --model_name_or_path policy_dir --sft_model_path policy_dir --reward_model_path rm_dir \
        --output_dir out --total_episodes 8 --per_device_train_batch_size 4 --response_length 6 \
        --report_to none
"""

from __future__ import annotations

import os
import shutil

import torch
from accelerate import PartialState
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser
from trl import ModelConfig, ScriptArguments, get_peft_config

from coati_hf import PPOConfig, PPOTrainer

HELD_OUT_PROMPTS = 100  # the last rows of the split are the evaluation prompts


def load_models(config: PPOConfig, model_config: ModelConfig, use_reference_copy: bool):
    dtype = model_config.dtype
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    common = {"dtype": dtype, "revision": model_config.model_revision}
    if model_config.attn_implementation is not None:
        common["attn_implementation"] = model_config.attn_implementation

    def scorer():
        return AutoModelForSequenceClassification.from_pretrained(config.reward_model_path, num_labels=1, **common)

    def causal_lm():
        return AutoModelForCausalLM.from_pretrained(config.sft_model_path, **common)

    policy = causal_lm()
    reference = causal_lm() if use_reference_copy else None
    return policy, reference, scorer(), scorer()


def tokenize_prompts(rows, tokenizer, num_proc):
    def encode(batch):
        return {"input_ids": tokenizer(batch["prompt"], padding=False)["input_ids"]}

    return rows.map(encode, batched=True, remove_columns=rows.column_names, num_proc=num_proc)


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, PPOConfig, ModelConfig))
    script_args, config, model_config = parser.parse_args_into_dataclasses()
    shutil.rmtree(config.output_dir, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(model_config.model_name_or_path, padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # a new id; the embedding tables stay as they are

    peft_config = get_peft_config(model_config)
    policy, reference, value_model, reward_model = load_models(config, model_config, peft_config is None)

    split = load_dataset(
        script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
    )
    cut = len(split) - HELD_OUT_PROMPTS
    with PartialState().local_main_process_first():
        train_rows = tokenize_prompts(split.select(range(cut)), tokenizer, config.dataset_num_proc)
        eval_rows = tokenize_prompts(split.select(range(cut, len(split))), tokenizer, config.dataset_num_proc)

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    if config.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)

    completions = trainer.generate_completions()
    if completions is not None and PartialState().is_main_process:
        path = os.path.join(config.output_dir, "completions.jsonl")
        completions.to_json(path, orient="records", lines=True, force_ascii=False)


if __name__ == "__main__":
    main()

"""Stage 2 script: a reward model with :class:`coati_hf.RewardTrainer`.

The model is loaded as a sequence classifier with one label; a checkpoint without a value head
(the SFT export) gets a new one, initialised as Coati does. With ``--use_peft`` the adapter's task
is ``SEQ_CLS`` (TRL's script leaves that to ``--lora_task_type``; a reward model needs it, so the
default ``CAUSAL_LM`` is replaced here)::

    python -m coati_hf.scripts.reward \\
        --model_name_or_path outputs/sft --dataset_name sample:preferences \\
        --output_dir outputs/reward_model --loss_fn log_exp --max_steps 20

    coati-hf reward --config recipes/smollm2_cpu/reward.yaml --num_processes 2
"""

from __future__ import annotations

import sys


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from coati_hf.reward import RewardConfig
    from coati_hf.scripts.common import ScriptParser

    return ScriptParser((ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def check(script_args, training_args, model_args, dataset_args) -> None:
    """Bad input, found before any model or data is loaded (raises ScriptError)."""
    from coati_hf.scripts import common

    common.check_model_source("model_name_or_path", model_args.model_name_or_path)
    if script_args.dataset_name:
        common.resolve_data_source(script_args.dataset_name)
    common.check_eval_strategy(training_args, script_args, dataset_args)
    common.check_quantization(model_args)
    common.check_strategy(training_args)


def main(script_args, training_args, model_args, dataset_args) -> None:
    from trl import get_peft_config

    from coati_hf.data import load_preference_dataset
    from coati_hf.reward import RewardTrainer
    from coati_hf.scripts import common

    common.check_process_group(training_args)
    init_kwargs = common.model_init_kwargs(model_args, training_args)
    training_args.model_init_kwargs = None  # used here: the trainer gets a model object
    model, tokenizer = common.load_named_model("model_name_or_path", "reward", model_args.model_name_or_path, init_kwargs)
    train_dataset, eval_dataset = common.load_datasets(script_args, training_args, dataset_args, load_preference_dataset)

    if model_args.use_peft and model_args.lora_task_type == "CAUSAL_LM":
        model_args.lora_task_type = "SEQ_CLS"  # the score head is trained and saved with the adapter
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    common.announce("reward", trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    common.finish(trainer, training_args, script_args.dataset_name and common.describe_data_source(script_args.dataset_name))


def cli(argv=None) -> int:
    from coati_hf.scripts.common import run_script

    return run_script("reward", make_parser, check, main, argv)


if __name__ == "__main__":
    sys.exit(cli())

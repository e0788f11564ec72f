"""Stage 1 script: supervised fine-tuning with :class:`coati_hf.SFTTrainer`.

Full fine-tune of the embedded SmolLM2 on the shipped conversations, on a CPU::

    python -m coati_hf.scripts.sft \\
        --model_name_or_path embedded:SmolLM2-135M-Instruct --dataset_name sample:sft \\
        --output_dir outputs/sft --max_steps 20 --per_device_train_batch_size 4

LoRA on two processes, ColossalAI ZeRO-2, settings from a recipe (the command line wins)::

    coati-hf sft --config recipes/smollm2_cpu/sft.yaml --colossalai_strategy zero2 --num_processes 2

The export in ``output_dir`` is the Hub-ready folder of :mod:`coati_hf.hub` (weights, tokenizer,
card, plots), pushed when ``--push_to_hub``; ``trainer_state.json`` lies beside it.
"""

from __future__ import annotations

import sys


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from coati_hf.scripts.common import ScriptParser
    from coati_hf.sft import SFTConfig

    return ScriptParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


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

    from coati_hf.data import load_sft_dataset
    from coati_hf.scripts import common
    from coati_hf.sft import SFTTrainer

    common.check_process_group(training_args)
    init_kwargs = common.model_init_kwargs(model_args, training_args)
    training_args.model_init_kwargs = None  # used here: the trainer gets a model object
    model, tokenizer = common.load_named_model("model_name_or_path", "causal_lm", model_args.model_name_or_path, init_kwargs)
    train_dataset, eval_dataset = common.load_datasets(script_args, training_args, dataset_args, load_sft_dataset)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    common.announce("sft", trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    common.finish(trainer, training_args, script_args.dataset_name and common.describe_data_source(script_args.dataset_name))


def cli(argv=None) -> int:
    from coati_hf.scripts.common import run_script

    return run_script("sft", make_parser, check, main, argv)


if __name__ == "__main__":
    sys.exit(cli())

"""Stage 3 script: PPO (with Coati's PTX mix) with :class:`coati_hf.PPOTrainer`.

The policy starts from the SFT export (``--sft_model_path``) and is rewarded by the reward-model
export (``--reward_model_path``) or by a Python function (``--reward_function module:function``,
``module.function`` or ``path/to/file.py:function``; it is called as
``function(prompts, completions) -> list[float]``). ``--pretrain_dataset`` is the text of the PTX
loss, weighted by ``--ptx_coef``. The reference policy and the critic are built by the trainer
(``ref_model=None``, ``value_model=None``: the critic starts from the reward model, Coati's
choice). ``--dataset_name`` holds the prompts::

    python -m coati_hf.scripts.ppo \\
        --sft_model_path outputs/sft --reward_model_path outputs/reward_model \\
        --dataset_name sample:prompts --pretrain_dataset sample:pretrain --ptx_coef 0.1 \\
        --output_dir outputs/ppo --total_episodes 32 --response_length 32 --stop_token eos

    coati-hf ppo --config recipes/smollm2_cpu/ppo.yaml --num_processes 2

The export in ``output_dir`` holds the actor (merged, with ``adapter/`` under LoRA) and the critic
in ``critic/``, each with its card.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field

from trl import ScriptArguments


@dataclass
class PPOScriptArguments(ScriptArguments):
    """TRL's script arguments plus what PPO reads besides its config."""

    pretrain_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Text for the PTX language-modelling loss (weighted by ptx_coef): sample:pretrain, a local file "
            "or a datasets Hub name."
        },
    )
    reward_function: str | None = field(
        default=None,
        metadata={
            "help": "A rule-based reward instead of --reward_model_path: 'module:function', 'module.function' or "
            "'path/to/file.py:function', called as function(prompts, completions) -> list of floats."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models whose code lives in their Hub repository."}
    )
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for from_pretrained of the policy and reward model (a dict, or JSON on the "
            "command line); they override ModelConfig's dtype, attn_implementation and revision."
        },
    )

    def __post_init__(self):
        if isinstance(self.model_init_kwargs, str):
            try:
                self.model_init_kwargs = json.loads(self.model_init_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"model_init_kwargs must be a JSON object: {err}") from None


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig

    from coati_hf.ppo.config import PPOConfig
    from coati_hf.scripts.common import ScriptParser

    return ScriptParser((PPOScriptArguments, PPOConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def load_reward_function(spec: str):
    """The callable named by ``spec`` (see the module docstring); a ScriptError if there is none."""
    from coati_hf.scripts.common import ScriptError, one_line

    if ":" in spec:
        module_name, function_name = spec.rsplit(":", 1)
    elif "." in spec:
        module_name, function_name = spec.rsplit(".", 1)
    else:
        raise ScriptError(f"--reward_function {spec}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ScriptError(f"--reward_function {spec}: no such file {module_name}")
            module_spec = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # modules beside the run, as TRL's scripts allow
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ScriptError(f"--reward_function {spec}: cannot import {module_name} ({one_line(err)})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ScriptError(f"--reward_function {spec}: {module_name} has no function {function_name!r}")
    return function


def check(script_args, training_args, model_args, dataset_args) -> None:
    """Bad input, found before any model or data is loaded (raises ScriptError)."""
    from coati_hf.scripts import common

    if model_args.model_name_or_path:
        raise common.ScriptError(
            "ppo trains the policy given by --sft_model_path (and its reward by --reward_model_path or "
            "--reward_function); drop --model_name_or_path"
        )
    common.check_model_source("sft_model_path", training_args.sft_model_path)
    if script_args.reward_function:
        load_reward_function(script_args.reward_function)
    else:
        common.check_model_source("reward_model_path", training_args.reward_model_path)
    if script_args.dataset_name:
        common.resolve_data_source(script_args.dataset_name)
    if training_args.ptx_coef > 0 and not script_args.pretrain_dataset:
        raise common.ScriptError(
            f"--ptx_coef {training_args.ptx_coef} needs --pretrain_dataset (text for the PTX loss; "
            "sample:pretrain ships with coati_hf), or --ptx_coef 0"
        )
    if script_args.pretrain_dataset:
        common.resolve_data_source(script_args.pretrain_dataset, option="pretrain_dataset")
    common.check_quantization(model_args)
    common.check_strategy(training_args)


def main(script_args, training_args, model_args, dataset_args) -> None:
    from trl import get_peft_config

    from coati_hf.data import load_prompt_dataset
    from coati_hf.ppo.trainer import PPOTrainer
    from coati_hf.scripts import common

    common.check_process_group(training_args)
    # PPOConfig has no model_init_kwargs/trust_remote_code: they come from the script arguments
    init_kwargs = common.model_init_kwargs(model_args, script_args, trust_remote_code=script_args.trust_remote_code)
    policy, tokenizer = common.load_named_model("sft_model_path", "causal_lm", training_args.sft_model_path, init_kwargs)
    if script_args.reward_function:
        reward_model = load_reward_function(script_args.reward_function)
    else:
        reward_model, _ = common.load_named_model("reward_model_path", "reward", training_args.reward_model_path, init_kwargs)
    train_dataset, eval_dataset = common.load_datasets(
        script_args, training_args, dataset_args, load_prompt_dataset, eval_needed=False
    )
    pretrain_dataset = None  # a path or Hub name: the trainer reads it (coati_hf.data.load_pretrain_dataset)
    if script_args.pretrain_dataset:
        pretrain_dataset = common.resolve_data_source(script_args.pretrain_dataset, option="pretrain_dataset")

    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=train_dataset,
        value_model=None,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        pretrain_dataset=pretrain_dataset,
    )
    common.announce("ppo", trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    common.finish(trainer, training_args, script_args.dataset_name and common.describe_data_source(script_args.dataset_name))


def cli(argv=None) -> int:
    from coati_hf.scripts.common import run_script

    return run_script("ppo", make_parser, check, main, argv)


if __name__ == "__main__":
    sys.exit(cli())

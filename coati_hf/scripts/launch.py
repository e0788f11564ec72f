"""``coati-hf sft|reward|ppo``: a training script launched through ``accelerate launch``, as ``trl sft`` does.

    coati-hf sft --config recipe.yaml [--option value ...] [launcher options]

What it does, in order:

1. Parses the arguments with the stage's parser (:func:`coati_hf.scripts.common.parse_arguments`)
   and runs its ``check``, here, before anything is launched: bad input is one line and exit
   status 2, never N processes failing at once.
2. Splits off the launcher options: any option of ``accelerate launch`` (``--num_processes``,
   ``--mixed_precision``, ``--main_process_port``, ``--config_file``, ...), given on the command
   line or as a key of the YAML config (``num_processes: 8`` in a recipe), the command line
   winning; and ``--accelerate_config NAME|FILE`` (TRL's option: a file, or the name of an
   accelerate config shipped in ``recipes/accelerate/``: ``single_process``, ``multi_gpu``,
   ``deepspeed_zero2``, ``deepspeed_zero3``).
3. Completes them so the launch is quiet and right on any machine. Without an accelerate config
   file (given, or accelerate's default one), ``--num_processes N`` with N > 1 adds
   ``--multi_gpu`` (accelerate's name for "N local processes in one group": on a machine without
   GPUs the config's ``use_cpu`` makes that group gloo, see :mod:`coati_hf.runtime`); no
   ``--num_processes`` (and no distributed flag) means accelerate's default, one process per GPU
   (one process without GPUs), said explicitly; and ``--num_machines 1
   --mixed_precision no --dynamo_backend no`` are filled in (precision is the config's
   ``bf16``/``fp16``, which transformers applies over the launcher's).
4. Runs ``accelerate launch [launcher options] -m coati_hf.scripts.<stage> [script arguments]`` here;
   the script arguments are the user's, minus the launcher options of the command line.
   Its exit status is the command's; a failed launch adds one line saying which.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

from .common import ScriptError, one_line, parse_arguments, recipes_dir, user_errors

DISTRIBUTED_FLAGS = ("--multi_gpu", "--cpu", "--tpu", "--use_deepspeed", "--use_fsdp", "--use_megatron_lm", "--use_xpu")
QUIET_DEFAULTS = (("--num_machines", "1"), ("--mixed_precision", "no"), ("--dynamo_backend", "no"))


def shipped_accelerate_configs() -> Path:
    """Folder of the accelerate configs shipped with coati_hf (``recipes/accelerate``)."""
    return recipes_dir() / "accelerate"


def _option_value(tokens: list[str], option: str) -> str | None:
    value = None
    for index, token in enumerate(tokens):
        if token == option and index + 1 < len(tokens):
            value = tokens[index + 1]
        elif token.startswith(option + "="):
            value = token.split("=", 1)[1]
    return value


def _without_option(tokens: list[str], option: str) -> list[str]:
    out, skip = [], False
    for index, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        if token == option:
            skip = index + 1 < len(tokens)
            continue
        if token.startswith(option + "="):
            continue
        out.append(token)
    return out


def resolve_accelerate_config(tokens: list[str]) -> list[str]:
    """``--accelerate_config NAME|FILE`` → ``--config_file PATH`` (a ScriptError for neither)."""
    name = _option_value(tokens, "--accelerate_config")
    if name is None:
        return tokens
    path = Path(os.path.expanduser(name))
    if not path.is_file():
        shipped = shipped_accelerate_configs()
        path = shipped / f"{name}.yaml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
            raise ScriptError(f"--accelerate_config {name}: no such file, nor a shipped config ({names})")
    return ["--config_file", str(path), *_without_option(tokens, "--accelerate_config")]


def merge_launcher_options(from_config: list[str], from_command_line: list[str]) -> list[str]:
    """Launcher options of the YAML config, each overridden by the same option on the command line."""
    given = {token.split("=", 1)[0] for token in from_command_line if token.startswith("-")}
    kept, skip = [], False
    for index, token in enumerate(from_config):
        if skip:
            skip = False
            continue
        if token.startswith("-") and token.split("=", 1)[0] in given:
            skip = "=" not in token and index + 1 < len(from_config) and not from_config[index + 1].startswith("-")
            continue
        kept.append(token)
    return kept + list(from_command_line)


def _accelerate_default_config_exists() -> bool:
    from accelerate.commands.config import default_config_file

    return os.path.isfile(default_config_file)


def default_num_processes() -> int:
    """What ``accelerate launch`` takes without a config: one process per accelerator device, or
    one process on a machine without any."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "device_count"):
        count = accelerator.device_count() if accelerator.is_available() else 0
    else:
        count = torch.cuda.device_count()
    return max(int(count), 1)


def complete_launcher_options(tokens: list[str]) -> list[str]:
    """Step 3 of the module docstring."""
    tokens = list(tokens)
    has_config_file = _option_value(tokens, "--config_file") is not None or _accelerate_default_config_exists()
    if has_config_file:
        return tokens
    num_processes = _option_value(tokens, "--num_processes")
    distributed = any(token.split("=", 1)[0] in DISTRIBUTED_FLAGS for token in tokens)
    if num_processes is None and not distributed:
        num_processes = str(default_num_processes())
        tokens += ["--num_processes", num_processes]
    if num_processes is not None and int(num_processes) > 1 and not distributed:
        tokens.append("--multi_gpu")
    for option, value in QUIET_DEFAULTS:
        if _option_value(tokens, option) is None:
            tokens += [option, value]
    return tokens


def _subtract(tokens: list[str], removed: list[str]) -> list[str]:
    """``tokens`` without the ordered subsequence ``removed``."""
    out, pending = [], iter(removed)
    current = next(pending, None)
    for token in tokens:
        if current is not None and token == current:
            current = next(pending, None)
        else:
            out.append(token)
    return out


def launch(stage: str, argv: list[str]) -> int:
    """Run ``coati-hf <stage> ARGS`` (see the module docstring); returns the exit status."""
    module = import_module(f"coati_hf.scripts.{stage}")
    prog = f"coati-hf {stage}"
    try:
        parsed, from_config, from_command_line = parse_arguments(module.make_parser(prog=prog), argv)
        module.check(*parsed)
        launcher = complete_launcher_options(resolve_accelerate_config(merge_launcher_options(from_config, from_command_line)))
    except user_errors() as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    script_arguments = _subtract(list(argv), from_command_line)
    status = run_accelerate_launch([*launcher, "--module", f"coati_hf.scripts.{stage}", *script_arguments])
    if status != 0:
        print(f"{prog}: the training processes failed (exit status {status}); their messages are above.", file=sys.stderr)
    return status


def run_accelerate_launch(arguments: list[str]) -> int:
    """``accelerate launch ARGUMENTS`` in this process; the exit status of the launched processes
    (the launcher's own traceback for a failed child is not printed: the child's messages are)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        launch_command(launch_command_parser().parse_args(arguments))
    except subprocess.CalledProcessError as err:  # one process
        return err.returncode or 1
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except Exception as err:  # torch.distributed's ChildFailedError: several processes
        failures = getattr(err, "failures", None)
        if not failures:
            raise
        return next(iter(failures.values())).exitcode or 1
    return 0

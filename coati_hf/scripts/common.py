"""What the three training scripts share: parsing, one-line errors, data, models, the rank check.

Each script (:mod:`coati_hf.scripts.sft`, :mod:`.reward`, :mod:`.ppo`) has TRL's
``trl/scripts`` shape: ``make_parser()`` (a TRL parser over ``ScriptArguments``, the stage's
config, ``ModelConfig`` and ``DatasetMixtureConfig``), ``check(...)`` (bad input, before anything
heavy) and ``main(...)`` (load, train, save). :func:`run_script` ties them together for
``python -m coati_hf.scripts.<stage>``, ``scripts/<stage>.py`` and every launcher.

Rules:

- ``--config FILE``: a YAML mapping of option names to values (TRL's format; an ``env:`` mapping
  sets environment variables). The command line wins over the file. A FILE that does not exist
  is looked up among the recipes shipped with coati_hf (``smollm2_cpu/sft.yaml``).
- Options of ``accelerate launch`` (``num_processes``, ``mixed_precision``, ``config_file``, ...)
  and ``accelerate_config`` are for the launcher. In the YAML file they are kept for
  ``coati-hf <stage>``, which passes them to ``accelerate launch``; a script already running
  ignores them (with a note when the run has another number of processes than the file asks).
  On a script's own command line they are an error that says how to launch instead.
- Anything else unknown is an error naming the closest known option.
- Errors a user can fix (a missing file, an unknown option, a bad value, a strategy this machine
  cannot run, a malformed dataset row) print one line ``<prog>: error: ...`` (on the first rank
  only) and exit with status 2. ``COATI_HF_TRACEBACK=1`` shows the traceback instead.
- ``dataset_name`` (and PPO's ``pretrain_dataset``): ``sample:<name>`` (a sample shipped with
  coati_hf: sft, preferences, prompts, pretrain), a local file or folder (any format
  :mod:`coati_hf.data` reads), or a ``datasets`` Hub name. Something that looks like a path
  (a data-file suffix, or starting with ``/``, ``./``, ``../``, ``~``) must exist.
- The model is loaded here from ``ModelConfig`` with TRL's ``model_init_kwargs`` convention:
  ``revision``, ``attn_implementation``, ``dtype`` from ``ModelConfig``, ``trust_remote_code``
  from the config, bitsandbytes 4/8-bit where asked (a CUDA GPU only); the config's own
  ``model_init_kwargs`` win over those.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from trl import TrlParser

logger = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".pq", ".txt", ".arrow")
TRACEBACK_ENV = "COATI_HF_TRACEBACK"
#: Options of coati-hf's launcher besides accelerate launch's own (TRL's name for a config file or shipped name).
LAUNCHER_EXTRAS = ("--accelerate_config",)


class ScriptError(Exception):
    """Bad input a user can fix; printed as one line."""


LAUNCHER_EPILOG = (
    "Launcher options (with `coati-hf <stage>`, on the command line or as keys of the --config file): any option of "
    "`accelerate launch`, e.g. --num_processes N, --main_process_port PORT, --config_file FILE, and --accelerate_config "
    "NAME|FILE (shipped: single_process, multi_gpu, deepspeed_zero2, deepspeed_zero3). COATI_HF_STRATEGY=zero2 selects a "
    "ColossalAI strategy as --colossalai_strategy does."
)


class ScriptParser(TrlParser):
    """``TrlParser`` whose errors raise :class:`ScriptError` instead of printing the whole usage;
    its help ends with the launcher options."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("epilog", LAUNCHER_EPILOG)
        super().__init__(dataclass_types, **kwargs)

    def error(self, message: str):  # argparse calls this for a bad value or a missing argument
        raise ScriptError(message)


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------


def launcher_options() -> dict[str, bool]:
    """Every option string ``accelerate launch`` accepts (plus :data:`LAUNCHER_EXTRAS`), mapped
    to whether it takes a value (``--num_processes 2``) or is a switch (``--multi_gpu``)."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    options = {option: action.nargs != 0 for action in parser._actions for option in action.option_strings}
    return {**options, **dict.fromkeys(LAUNCHER_EXTRAS, True)}


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def _read_config_file(path: str) -> dict:
    """The YAML mapping in the file ``path``; invalid YAML or anything but a mapping is a ScriptError."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ScriptError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(config, dict):
        raise ScriptError(f"config file {path} must hold a mapping of option names to values")
    return config


def recipes_dir() -> Path:
    """The recipes shipped with coati_hf: ``coati_hf/recipes`` installed, ``recipes/`` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "accelerate").is_dir():
            return candidate
    raise ScriptError(f"coati_hf's recipes are missing (looked in {package / 'recipes'} and {package.parent / 'recipes'})")


def find_config_file(name: str) -> str:
    """``name`` if it is a file, else the shipped recipe of that name (``smollm2_cpu/sft.yaml`` or
    ``recipes/smollm2_cpu/sft.yaml``), else a ScriptError."""
    if os.path.isfile(os.path.expanduser(name)):
        return os.path.expanduser(name)
    relative = Path(name)
    if relative.parts[:1] == ("recipes",):
        relative = Path(*relative.parts[1:])
    try:
        shipped = recipes_dir() / relative if relative.parts and not relative.is_absolute() else None
    except ScriptError:  # no recipes shipped: the name is simply not found
        shipped = None
    if shipped is not None and shipped.is_file():
        return str(shipped)
    raise ScriptError(f"config file {name} not found")


def _with_config_file_found(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with ``--config NAME`` pointing at the file :func:`find_config_file` finds."""
    for index, token in enumerate(argv):
        if token == "--config":
            if index + 1 >= len(argv):
                raise ScriptError("--config needs a file name")
            path = find_config_file(argv[index + 1])
            return argv[: index + 1] + [path] + argv[index + 2 :], path
        if token.startswith("--config="):
            path = find_config_file(token.split("=", 1)[1])
            return argv[:index] + ["--config", path] + argv[index + 1 :], path
    return argv, None


def _unknown_option_error(token: str, parser: ScriptParser, where: str) -> ScriptError:
    known = {option for action in parser._actions for option in action.option_strings}
    guess = difflib.get_close_matches(_flag_name(token), sorted(known | set(launcher_options())), n=1)
    hint = f"; did you mean {guess[0]}?" if guess else f"; `{parser.prog} --help` lists the options"
    return ScriptError(f"unknown option {_flag_name(token)}{where}{hint}")


def split_launcher_tokens(tokens: Sequence[str], parser: ScriptParser, where: str) -> list[str]:
    """``tokens`` the dataclasses did not take: return the launcher options among them (with
    their values); anything else is a ScriptError. A switch written in YAML (``multi_gpu: true``
    arrives as ``--multi_gpu True``) becomes the bare switch, or nothing when false."""
    options = launcher_options()
    launcher: list[str] = []
    tokens = list(tokens)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("-"):
            raise ScriptError(f"unexpected argument {token!r}{where}")
        name = _flag_name(token)
        if name not in options:
            raise _unknown_option_error(token, parser, where)
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if not options[name]:  # a switch
            if following in ("True", "False"):
                index += 1
                if following == "False":
                    token = None
            if token is not None:
                launcher.append(token)
        elif "=" in token or following is None or following.startswith("-"):
            launcher.append(token)
        else:
            launcher += [token, following]
            index += 1
        index += 1
    return launcher


def parse_arguments(parser: ScriptParser, argv: Sequence[str] | None = None) -> tuple[tuple, list[str], list[str]]:
    """``(dataclasses, launcher options from the config file, launcher options from the command line)``.

    ``--config FILE`` supplies defaults, the command line wins (TRL's ``parse_args_and_config``);
    a value a config's ``__post_init__`` refuses is a ScriptError.
    """
    argv, config_path = _with_config_file_found(list(sys.argv[1:] if argv is None else argv))
    if config_path is not None:
        _read_config_file(config_path)  # fail with one line before TRL opens it
    try:
        *parsed, from_config, from_command_line = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as err:  # a config's __post_init__ refusing a value
        raise ScriptError(str(err).strip().splitlines()[0]) from None
    launcher_from_config = split_launcher_tokens(from_config, parser, f" in config file {config_path}")
    launcher_from_command_line = split_launcher_tokens(from_command_line, parser, "")
    return tuple(parsed), launcher_from_config, launcher_from_command_line


def run_script(stage: str, make_parser: Callable, check: Callable, main: Callable, argv: Sequence[str] | None = None) -> int:
    """Parse, check and run one script; bad input is one line on stderr and exit status 2."""
    from coati_hf.quiet import silence_peft_checkpointing_notice

    silence_peft_checkpointing_notice()
    prog = f"coati-hf {stage}"
    try:
        parsed, launcher_from_config, launcher_from_command_line = parse_arguments(make_parser(prog=prog), argv)
        if launcher_from_command_line:
            options = " ".join(launcher_from_command_line)
            raise ScriptError(
                f"{options} is an option of the launcher, not of the script: run `coati-hf {stage} ... {options}`, "
                f"which launches the processes (or give it to `accelerate launch` before the script)"
            )
        check(*parsed)
        note_launcher_settings(launcher_from_config)
        main(*parsed)
    except user_errors() as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input (shown as one line), as opposed to bugs (tracebacks)."""
    from coati_hf.colossalai.plugin import StrategyNotSupportedError
    from coati_hf.data import DataFormatError

    return (ScriptError, DataFormatError, StrategyNotSupportedError)


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def note_launcher_settings(launcher_from_config: list[str]) -> None:
    """A config file's ``num_processes`` that differs from this run's is worth one note."""
    if "--num_processes" not in launcher_from_config:
        return
    wanted = launcher_from_config[launcher_from_config.index("--num_processes") + 1]
    running = os.environ.get("WORLD_SIZE", "1")
    if str(wanted) != running and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"[coati_hf] note: the config file asks for num_processes: {wanted}, this run has {running}; "
            "`coati-hf <stage> --config FILE` launches that many.",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# checks shared by the stages
# ---------------------------------------------------------------------------------------------


def looks_like_local_path(name: str) -> bool:
    """True for names that can only mean a local file or folder (see the module docstring)."""
    return name.lower().endswith(DATA_SUFFIXES) or name.startswith(("/", "./", "../", "~"))


def check_model_source(option: str, name: str | None) -> None:
    """A model named by a path must exist (a Hub id or the embedded name is left to the loader)."""
    if name is None:
        raise ScriptError(f"--{option} is required (a Hub id, a local folder or embedded:SmolLM2-135M-Instruct)")
    from coati_hf.models import is_embedded_name

    if is_embedded_name(name):
        return
    if looks_like_local_path(name) and not os.path.exists(os.path.expanduser(name)):
        raise ScriptError(f"--{option} {name}: no such folder")


def check_strategy(training_args) -> None:
    """The ColossalAI strategy asked for (field or COATI_HF_STRATEGY) must run on this machine."""
    from coati_hf.colossalai.plugin import check_strategy_supported, resolve_strategy

    try:
        strategy = resolve_strategy(training_args)
        if strategy is not None:
            check_strategy_supported(strategy)
    except (ValueError, ImportError) as err:
        raise ScriptError(one_line(err)) from None


def check_quantization(model_args) -> None:
    """bitsandbytes 4/8-bit loading needs a CUDA GPU and a LoRA adapter to train."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    import torch

    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if not torch.cuda.is_available():
        raise ScriptError(
            f"{flag} loads the model with bitsandbytes, which needs a CUDA GPU, and this machine has none; drop it "
            "(on a CPU, --dtype bfloat16 halves the memory instead)"
        )
    if not model_args.use_peft:
        raise ScriptError(f"{flag} freezes the quantized weights: add --use_peft to train a LoRA adapter on them")


def check_eval_strategy(training_args, script_args, dataset_args) -> None:
    """Evaluation needs an eval set: a Hub dataset's test split or ``test_split_size``."""
    strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if strategy == "no" or dataset_args.test_split_size:
        return
    source = script_args.dataset_name or ""
    if source.startswith(SAMPLE_PREFIX) or os.path.exists(os.path.expanduser(source)) or dataset_args.datasets:
        raise ScriptError(
            f"eval_strategy={strategy} needs an eval set: set test_split_size (e.g. 0.1) to hold out part of "
            f"{source or 'the datasets'}, or eval_strategy=no"
        )


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def resolve_data_source(name: str, option: str = "dataset_name") -> str:
    """``sample:<name>`` → the shipped file; an existing path → itself; a Hub name → itself.

    Raises ScriptError for an unknown sample or a path that does not exist.
    """
    from coati_hf.data import SAMPLE_FILES, sample_path

    if name.startswith(SAMPLE_PREFIX):
        sample = name[len(SAMPLE_PREFIX) :]
        if sample not in SAMPLE_FILES:
            raise ScriptError(f"--{option} {name}: no such sample; shipped samples: {', '.join(SAMPLE_PREFIX + s for s in SAMPLE_FILES)}")
        return str(sample_path(sample))
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return path
    if looks_like_local_path(name):
        raise ScriptError(f"--{option} {name}: no such file or folder")
    return name  # a datasets Hub name


def describe_data_source(name: str) -> str:
    """How a model card names a dataset: a Hub id as it is, a local file by its name only."""
    if name.startswith(SAMPLE_PREFIX):
        return f"coati_hf's bundled sample {name[len(SAMPLE_PREFIX):]} (coati_hf/data/samples)"
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return f"local file {Path(path).name}"
    return name


def loader_options(loader: Callable, training_args) -> dict:
    """The config's data options that ``loader`` takes (``strings_as_chat``; ``text_column`` from
    ``dataset_text_field``), so a split made here reads rows as the trainer would."""
    import inspect

    wanted = {"strings_as_chat": "strings_as_chat", "text_column": "dataset_text_field"}
    parameters = inspect.signature(loader).parameters
    return {name: getattr(training_args, field) for name, field in wanted.items() if name in parameters and hasattr(training_args, field)}


def load_datasets(script_args, training_args, dataset_args, loader: Callable, *, eval_needed: bool | None = None):
    """``(train, eval)`` for a stage: ``loader`` is the stage's :mod:`coati_hf.data` loader
    (``load_sft_dataset``, ``load_preference_dataset``, ``load_prompt_dataset``).

    - ``datasets:`` (TRL's mixture) is loaded with TRL's ``get_dataset``.
    - A local ``dataset_name`` (a file, folder or ``sample:``) is handed to the trainer as a path,
      which reads it by the config's rules; with ``test_split_size`` it is read here with
      ``loader`` (and the same rules, :func:`loader_options`) and split.
    - A Hub ``dataset_name`` is loaded with ``datasets.load_dataset`` (``dataset_config``,
      ``dataset_streaming``); ``dataset_test_split`` is the eval set, else ``test_split_size``.
    """
    import datasets

    if eval_needed is None:
        eval_needed = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"
    test_size = dataset_args.test_split_size
    if dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning("Both `datasets` and `dataset_name` are given: `datasets` is used, `dataset_name` ignored.")
        from trl import get_dataset

        splits = get_dataset(dataset_args)
        return splits["train"], splits["test"] if "test" in splits else None
    if not script_args.dataset_name:
        raise ScriptError("--dataset_name is required (sample:<name>, a local file, or a Hub dataset), or `datasets:` in the config")
    source = resolve_data_source(script_args.dataset_name)
    if source != script_args.dataset_name or os.path.exists(source):
        if not test_size:
            return source, None
        parts = loader(source, **loader_options(loader, training_args)).train_test_split(test_size=test_size, seed=training_args.seed)
        return parts["train"], parts["test"]
    try:
        hub = datasets.load_dataset(source, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    except Exception as err:  # offline, unknown repo, no access: all one line for the user
        raise ScriptError(f"--dataset_name {source}: not a local file, and datasets could not load it ({one_line(err)})") from None
    if script_args.dataset_train_split not in hub:
        raise ScriptError(f"--dataset_name {source} has no split {script_args.dataset_train_split!r}; it has {sorted(hub)}")
    train, evaluation = hub[script_args.dataset_train_split], None
    if script_args.dataset_test_split in hub:
        evaluation = hub[script_args.dataset_test_split] if eval_needed else None
    elif test_size:
        parts = train.train_test_split(test_size=test_size, seed=training_args.seed)
        train, evaluation = parts["train"], parts["test"]
    elif eval_needed:
        raise ScriptError(f"--dataset_name {source} has no split {script_args.dataset_test_split!r} to evaluate on; set test_split_size")
    return train, evaluation


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def model_init_kwargs(model_args, training_args, trust_remote_code: bool | None = None) -> dict:
    """TRL's ``model_init_kwargs`` for a run: ``ModelConfig``'s revision, attention implementation
    and dtype, ``trust_remote_code``, bitsandbytes settings; the config's own
    ``model_init_kwargs`` (a dict, or JSON on the command line) override them."""
    from trl import get_quantization_config

    if trust_remote_code is None:
        trust_remote_code = bool(getattr(training_args, "trust_remote_code", False))
    kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "trust_remote_code": trust_remote_code,
    }
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    return kwargs


def load_model(kind: str, name: str, init_kwargs: dict):
    """``(model, tokenizer)``: ``kind`` "causal_lm" (a policy) or "reward" (``num_labels=1``,
    a new value head initialised as Coati does), through :mod:`coati_hf.models`."""
    from coati_hf.models import load_causal_lm, load_sequence_classifier, load_tokenizer

    kwargs = dict(init_kwargs)
    dtype = kwargs.pop("dtype", None)
    tokenizer = load_tokenizer(name, **{key: kwargs[key] for key in ("revision", "trust_remote_code") if kwargs.get(key) is not None})
    loader = load_causal_lm if kind == "causal_lm" else load_sequence_classifier
    return loader(name, dtype=dtype, tokenizer=tokenizer, **{key: value for key, value in kwargs.items() if value is not None})


def load_named_model(option: str, kind: str, name: str, init_kwargs: dict):
    """:func:`load_model`, where a name that is neither a local folder nor a loadable Hub id is a
    ScriptError naming ``--option``."""
    try:
        return load_model(kind, name, init_kwargs)
    except OSError as err:
        if os.path.exists(os.path.expanduser(name)):
            raise
        raise ScriptError(f"--{option} {name}: not a local folder, and no model of that name could be loaded ({one_line(err)})") from None


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def check_process_group(training_args) -> None:
    """Refuse a process that was launched as one of several but formed no group with the others
    (it would train alone and write the same folder as they do)."""
    from accelerate import PartialState

    _ = training_args.device  # transformers sets up the process group on first use
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and PartialState().num_processes != launched:
        raise ScriptError(
            f"this process was launched as one of {launched} (WORLD_SIZE) but joined no process group and would train "
            "alone; on a machine without GPUs set use_cpu: true (coati_hf's configs do this themselves)"
        )


def announce(stage: str, trainer) -> None:
    """One line per process: which of how many, how they are connected, on what, and the backend
    (plain Accelerate or the ColossalAI strategy the trainer actually runs)."""
    accelerator = trainer.accelerator
    plugin = getattr(trainer, "colossalai_plugin", None)
    backend = f"ColossalAI {plugin.strategy}" if plugin is not None else "Accelerate"
    print(
        f"[coati_hf] {stage}: process {accelerator.process_index} of {accelerator.num_processes} "
        f"({accelerator.distributed_type.value}, {accelerator.device}, {backend})",
        flush=True,
    )


def finish(trainer, training_args, dataset_description: str | None) -> None:
    """``save_model`` (the Hub-ready export with its card; pushed, in one commit, when
    ``push_to_hub``), then the trainer state (``trainer_state.json``) beside it: in the folder,
    not in the export's manifest, so never pushed."""
    if dataset_description:
        trainer.create_model_card(dataset_name=dataset_description)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    trainer.accelerator.print(f"[coati_hf] saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.accelerator.print(f"[coati_hf] pushed to the Hub as {training_args.hub_model_id or Path(training_args.output_dir).name}")

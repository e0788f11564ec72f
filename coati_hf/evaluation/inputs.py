"""What an evaluation reads, checked before anything is generated: the prompts (any file
``coati-hf generate`` reads, ``sample:NAME``, rows ``START:STOP``), the judge (imported as PPO's
``--reward_function``), the reward model (a sequence classifier with one score), the policies
(named once each, the baseline first) and the KL reference.

Every problem is an :class:`EvaluationError`: one line that says what is wrong.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..chat.errors import ChatError

DEFAULT_MAX_NEW_TOKENS = 48
SAMPLE_PREFIX = "sample:"


class EvaluationError(ChatError):
    """Bad input to an evaluation (a one-line message the command prints as is)."""


@dataclass
class PromptSet:
    """The prompts (message lists) and where they came from."""

    prompts: list[list[dict]]
    source: str
    rows: str | None
    indices: list[int]  # each prompt's row in the source
    total: int  # rows in the source
    description: str

    def info(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "count": len(self.prompts),
            "rows_in_source": self.total,
            "description": self.description,
        }


def parse_rows(text: str) -> slice:
    """``"96:112"``, ``"96:"`` or ``":16"`` (0-based, end excluded, as in Python) as a slice."""
    start, colon, stop = str(text).partition(":")
    try:
        if not colon:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise EvaluationError(f"--rows {text}: expected START:STOP, e.g. 96:112 (0-based, STOP excluded)") from None


def load_eval_prompts(source: Any, rows: str | slice | None = None, format: str = "auto") -> PromptSet:
    """The prompts of ``source`` (a file ``coati-hf generate`` reads, ``sample:NAME``, or a list
    of message lists / strings), rows ``rows`` of them. A string prompt becomes one user turn."""
    from ..chat.batch import load_prompts

    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(SAMPLE_PREFIX):
            from ..data import SAMPLE_FILES, sample_path

            name = text[len(SAMPLE_PREFIX) :]
            if name not in SAMPLE_FILES:
                raise EvaluationError(f"--prompts {text}: no such sample; shipped: {', '.join(SAMPLE_PREFIX + s for s in SAMPLE_FILES)}")
            path, description = sample_path(name), f"coati_hf's {text}"
        else:
            path, description = text, f"file {Path(text).name}"
        try:
            prompts = load_prompts(path, format=format)
        except ChatError as error:
            raise EvaluationError(str(error).replace(str(path), text)) from None
    else:
        text, description = "in memory", "given in memory"
        prompts = list(source)
    prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    total = len(prompts)
    indices = list(range(total))
    rows_text = None
    if rows is not None:
        selection = rows if isinstance(rows, slice) else parse_rows(rows)
        if selection.step not in (None, 1):
            raise EvaluationError("--rows takes START:STOP without a step")
        indices = indices[selection]
        rows_text = f"{'' if selection.start is None else selection.start}:{'' if selection.stop is None else selection.stop}"
        description += f", rows {rows_text} of {total}"
    if not indices:
        where = f" in rows {rows_text} of its {total}" if rows_text else ""
        raise EvaluationError(f"--prompts {text}: no prompts{where}")
    return PromptSet([prompts[i] for i in indices], text, rows_text, indices, total, description)


def load_judge(spec: str | Callable) -> tuple[Callable, str]:
    """``(function, name)``: a callable as is, or ``module:function`` / ``module.function`` /
    ``path/to/file.py:function`` imported the way PPO's ``--reward_function`` is."""
    if callable(spec):
        return spec, f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', type(spec).__name__)}"
    from ..scripts.common import ScriptError, one_line
    from ..scripts.ppo import load_reward_function

    try:
        return load_reward_function(spec), spec
    except ScriptError as error:
        raise EvaluationError(one_line(error).replace("--reward_function", "--judge", 1)) from None
    except Exception as error:  # the module itself fails when run
        raise EvaluationError(f"--judge {spec}: importing it failed: {type(error).__name__}: {one_line(error)}") from None


def _config_of(folder: Path) -> dict | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {folder / 'config.json'}: {error}") from None


def _checked_folder(spec, option: str) -> tuple[Path, dict | None]:
    from ..chat.loading import resolve_model_reference

    try:
        folder = Path(resolve_model_reference(spec))
    except ChatError as error:
        raise EvaluationError(f"{option} {spec}: {error}") from None
    if not folder.is_dir():
        return folder, None
    config = _config_of(folder)
    if config is None and not (folder / "adapter_config.json").is_file():
        raise EvaluationError(f"{option} {spec}: not a model folder (no config.json, no adapter_config.json)")
    return folder, config


def check_reward_model_source(spec) -> None:
    """A reward model is a sequence classifier with one score (``num_labels=1``): say so before
    loading anything else."""
    _, config = _checked_folder(spec, "--reward-model")
    if config is None:
        return
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise EvaluationError(
            f"--reward-model {spec}: {architectures[0]} is not a reward model; it must be a sequence classifier "
            "with one score (AutoModelForSequenceClassification, num_labels=1), e.g. the reward stage's export"
        )
    # transformers writes id2label unless it is its default of two labels
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 2)
    if labels != 1:
        raise EvaluationError(f"--reward-model {spec}: its classifier has {labels} labels; a reward model gives one score (num_labels=1)")


def check_policy_source(spec, option: str = "MODEL") -> None:
    """A policy folder holds a causal LM (or an adapter), not a reward model."""
    _, config = _checked_folder(spec, option)
    architectures = (config or {}).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        raise EvaluationError(f"{option} {spec}: {architectures[0]} is a reward model or critic, not a policy that writes answers")


def chat_text(tokenizer, prompt: list[dict]) -> str:
    return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)


@dataclass
class _Entry:
    name: str
    spec: Any
    key: str
    source: str


def _key(spec) -> str:
    from ..chat.loading import LoadedModel

    if isinstance(spec, (str, os.PathLike)):
        path = Path(os.fspath(spec)).expanduser()
        return f"folder:{path.resolve()}" if path.is_dir() else f"name:{os.fspath(spec)}"
    if isinstance(spec, LoadedModel):
        return f"object:{id(spec.model)}"
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return f"object:{id(spec[0])}"
    raise TypeError(f"a model is a folder, a name, a LoadedModel or a (model, tokenizer) pair, not {type(spec).__name__}")


def _describe(spec) -> str:
    """How the results name where a model came from: what the user gave, or the loaded
    model's own ``_name_or_path``."""
    from ..chat.loading import LoadedModel

    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    if isinstance(spec, LoadedModel) and spec.source:
        return spec.source
    model = spec.model if isinstance(spec, LoadedModel) else spec[0]
    return f"in memory ({getattr(getattr(model, 'config', None), '_name_or_path', '') or type(model).__name__})"


def _default_name(spec) -> str:
    """A folder's own name (``outputs/ppo`` -> ``ppo``), else the name as given."""
    source = _describe(spec)
    if source.startswith("in memory"):
        return source
    return Path(os.path.normpath(source)).name if Path(source).expanduser().is_dir() else source


def policy_entries(models, baseline, reference) -> tuple[list[_Entry], _Entry | None, _Entry | None]:
    """The policies to answer (baseline first, each once), the baseline's and the reference's entry."""
    named = list(models.items()) if isinstance(models, Mapping) else [(None, spec) for spec in models]
    if not named:
        raise EvaluationError("no models to evaluate")
    by_name = {name: spec for name, spec in named if name is not None}
    baseline = by_name.get(baseline, baseline) if isinstance(baseline, str) else baseline
    reference = by_name.get(reference, reference) if isinstance(reference, str) else reference
    entries: dict[str, _Entry] = {}
    for name, spec in ([(None, baseline)] if baseline is not None else []) + named:
        key = _key(spec)
        if key not in entries:
            entries[key] = _Entry(name or _default_name(spec), spec, key, _describe(spec))
        elif name is not None:
            entries[key].name = name
    reference_entry = None
    if reference is not None:
        key = _key(reference)
        reference_entry = entries.get(key) or _Entry(_default_name(reference), reference, key, _describe(reference))
    listed = list(entries.values())
    if reference_entry is not None and reference_entry.key not in entries:
        listed_with_reference = listed + [reference_entry]
    else:
        listed_with_reference = listed
    for rename in (lambda entry, index: entry.source, lambda entry, index: f"{entry.name}#{index}"):
        names = [entry.name for entry in listed_with_reference]  # two folders of one name: what the user typed
        for index, entry in enumerate(listed_with_reference):
            if names.count(entry.name) > 1:
                entry.name = rename(entry, index)
    return listed, (entries[_key(baseline)] if baseline is not None else None), reference_entry


def load_policy(spec, device: str, dtype: str):
    from ..chat.loading import LoadedModel, load_chat_model

    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, (tuple, list)):
        return LoadedModel(model=spec[0], tokenizer=spec[1], source=_describe(spec))
    return load_chat_model(spec, device=device, dtype=dtype, report=None)


def load_reward_model_for_eval(spec, device: str):
    from ..chat.loading import LoadedModel, load_reward_model

    if isinstance(spec, (str, os.PathLike)):
        check_reward_model_source(spec)
        loaded, name = load_reward_model(spec, device=device), os.fspath(spec)
    elif isinstance(spec, LoadedModel):
        loaded, name = spec, _describe(spec)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        loaded, name = LoadedModel(model=spec[0], tokenizer=spec[1], source="in memory"), _describe(spec)
    else:
        raise TypeError(f"reward_model is a folder, a LoadedModel or a (model, tokenizer) pair, not {type(spec).__name__}")
    labels = getattr(getattr(loaded.model, "config", None), "num_labels", None)
    if labels != 1:
        raise EvaluationError(f"--reward-model {name}: its classifier has {labels} labels; a reward model gives one score (num_labels=1)")
    return loaded, name


def judge_scores(judge, name: str, texts: list[str], completions: list[str]) -> list[float]:
    try:
        values = judge(texts, completions)
    except Exception as error:  # the user's function: say which and why, in one line
        text = str(error).strip()
        raise EvaluationError(f"--judge {name} failed: {type(error).__name__}: {text.splitlines()[0] if text else ''}") from None
    try:
        values = [float("nan") if value is None else float(value) for value in values]
    except (TypeError, ValueError):
        raise EvaluationError(f"--judge {name} must return one number per completion") from None
    if len(values) != len(completions):
        raise EvaluationError(f"--judge {name} returned {len(values)} scores for {len(completions)} completions")
    return values


def say(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[coati-hf eval] {message}", file=sys.stderr, flush=True)



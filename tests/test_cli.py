"""The `coati-hf` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_embedded_path_prints_a_loadable_folder(embedded_dir):
    out = subprocess.run([sys.executable, "-m", "coati_hf.cli", "embedded-path"], capture_output=True, text=True, check=True)
    printed = Path(out.stdout.strip().splitlines()[-1])
    assert printed == Path(embedded_dir)
    assert (printed / "config.json").is_file() and (printed / "model.safetensors").is_file()


def test_unknown_command_fails_with_usage():
    out = subprocess.run([sys.executable, "-m", "coati_hf.cli", "train-everything"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "demo" in out.stderr

"""coati_hf.hub.atomic: a folder is replaced in one step, or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers.trainer_utils import get_last_checkpoint

from coati_hf.hub import atomic
from coati_hf.hub.atomic import atomic_directory, is_staging_name, recover_interrupted_swap, replace_directory


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_new_content_replaces_the_old_entirely(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staged:
        _write(staged, {"weights": "v1", "adapter/a": "old adapter"})
    with atomic_directory(target) as staged:
        assert staged.parent == target.parent and is_staging_name(staged.name)
        assert _tree(target) == {"weights": b"v1", "adapter/a": b"old adapter"}  # untouched while staging
        _write(staged, {"weights": "v2"})
    assert _tree(target) == {"weights": b"v2"}  # no stale adapter/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left


def test_an_exception_inside_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staged:
        _write(staged, {"weights": "v1"})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(target) as staged:
            _write(staged, {"weights": "half"})
            raise RuntimeError("disk full")
    assert _tree(target) == {"weights": b"v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_chosen_entries_of_the_old_folder_are_carried_over_as_hard_links(tmp_path):
    target = tmp_path / "out"
    _write(target, {"checkpoint-3/optimizer.pt": "state", "model.safetensors": "old", "runs/log": "tb"})
    inode = (target / "checkpoint-3" / "optimizer.pt").stat().st_ino
    with atomic_directory(target, carry_over=lambda name: name.startswith("checkpoint-") or name == "runs") as staged:
        _write(staged, {"model.safetensors": "new"})
    assert _tree(target) == {"checkpoint-3/optimizer.pt": b"state", "model.safetensors": b"new", "runs/log": b"tb"}
    assert (target / "checkpoint-3" / "optimizer.pt").stat().st_ino == inode  # linked, not copied


def test_without_an_atomic_exchange_the_two_rename_fallback_gives_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    for version in ("v1", "v2"):
        with atomic_directory(target) as staged:
            _write(staged, {"weights": version})
    assert _tree(target) == {"weights": b"v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_swap_interrupted_between_the_two_renames_is_undone_by_the_next_write(tmp_path):
    target = tmp_path / "model"
    _write(target, {"weights": "v1"})
    os.rename(target, atomic.staging_path(target, atomic._REPLACED_TAG))  # killed right after the first rename
    assert not target.exists()
    assert recover_interrupted_swap(target)
    assert _tree(target) == {"weights": b"v1"}


def test_replace_directory_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    staged = tmp_path / ".model.staging-1"
    staged.mkdir()
    with pytest.raises(NotADirectoryError):
        replace_directory(staged, tmp_path / "model")


def test_a_writer_killed_mid_file_leaves_the_previous_folder_and_an_ignorable_leftover(tmp_path):
    """A real SIGKILL (no clean-up code runs) while a file of the new folder is half written."""
    target = tmp_path / "checkpoint-2"
    _write(target, {"weights": "complete v1"})
    script = textwrap.dedent(
        f"""
        import os, signal
        from coati_hf.hub.atomic import atomic_directory
        with atomic_directory({str(target)!r}) as staged:
            with open(staged / "weights", "w") as handle:
                handle.write("half of v2")
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert _tree(target) == {"weights": b"complete v1"}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint-2"]
    assert len(leftovers) == 1 and is_staging_name(leftovers[0])
    assert get_last_checkpoint(str(tmp_path)) == str(target)  # the leftover is never taken for a checkpoint

    with atomic_directory(target) as staged:  # the next write clears the leftover
        _write(staged, {"weights": "complete v2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert _tree(target) == {"weights": b"complete v2"}

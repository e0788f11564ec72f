"""Replace a directory in one step, so a reader (or a crash) never sees half of it.

Rules every coati_hf export and checkpoint follows:

- The new content is written into a hidden *staging* folder beside the target
  (``.{name}.staging-…`` in the same parent, hence the same filesystem), never into the target.
- When it is complete its files are flushed to disk (``fsync``) and the staging folder is
  swapped with the target in a single ``renameat2(RENAME_EXCHANGE)`` call (Linux ≥ 3.15). The
  target path therefore always names either the previous complete folder or the new one; the
  old content ends up at the staging path and is deleted afterwards.
- Where the kernel or filesystem cannot exchange (macOS, some network filesystems), the old
  target is first renamed to ``.{name}.replaced-…`` and the new one renamed into place. A crash
  between those two renames leaves the target missing and the previous folder under the
  ``replaced`` name; the next :func:`atomic_directory` call on that target (or
  :func:`recover_interrupted_swap`) puts it back.
- An exception raised while the staging folder is filled removes it and leaves the target
  untouched. A process killed outright leaves its staging folder behind; the hidden name is
  never mistaken for a model or a ``checkpoint-N`` folder, and the next write to the same
  target removes it. Only one process may write a given target at a time.
- Entries of the old target that belong to someone else (a trainer's ``checkpoint-*`` folders
  beside an export in its ``output_dir``) can be kept: ``carry_over(name)`` chooses them, and
  they are hard-linked (copied where links are impossible) into the staging folder *before* the
  swap, so they are present on both sides of it.

Checkpoints: a ``checkpoint-N`` folder that exists is complete, because it only ever appears
by the final rename. transformers' ``get_last_checkpoint`` (``resume_from_checkpoint=True``)
only looks at names matching ``checkpoint-<digits>``, which the hidden staging names never do.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

_STAGING_TAG = ".staging-"
_REPLACED_TAG = ".replaced-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def staging_path(target: str | os.PathLike, tag: str = _STAGING_TAG) -> Path:
    """A fresh hidden sibling of ``target`` (``.{name}{tag}{pid}-{random}``)."""
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}{tag}{os.getpid()}-{secrets.token_hex(4)}"


def is_staging_name(name: str) -> bool:
    """True for the hidden names this module creates (never a model or checkpoint name)."""
    return name.startswith(".") and (_STAGING_TAG in name or _REPLACED_TAG in name)


def _leftovers(target: Path, tag: str) -> list[Path]:
    prefix = f".{target.name}{tag}"
    if not target.parent.is_dir():
        return []
    return sorted(path for path in target.parent.iterdir() if path.name.startswith(prefix))


def recover_interrupted_swap(target: str | os.PathLike) -> bool:
    """Put back a previous folder left under a ``.replaced-`` name by an interrupted
    two-rename swap (only possible where the kernel cannot exchange). True if it did."""
    target = Path(os.path.abspath(target))
    replaced = _leftovers(target, _REPLACED_TAG)
    if target.exists() or not replaced:
        return False
    newest = max(replaced, key=lambda path: path.stat().st_mtime)
    os.rename(newest, target)
    logger.warning("Restored %s from %s, left by an interrupted write", target, newest.name)
    return True


def remove_leftovers(target: str | os.PathLike) -> None:
    """Delete staging and replaced folders that earlier, killed writers left beside ``target``."""
    target = Path(os.path.abspath(target))
    recover_interrupted_swap(target)
    for path in _leftovers(target, _STAGING_TAG) + _leftovers(target, _REPLACED_TAG):
        logger.info("Removing %s, left by an interrupted write", path)
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the platform or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _link_tree(source: Path, destination: Path) -> None:
    """Recreate ``source`` at ``destination`` with hard links (copies where links fail)."""
    if source.is_dir() and not source.is_symlink():
        destination.mkdir()
        for child in source.iterdir():
            _link_tree(child, destination / child.name)
        return
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def replace_directory(
    staged: str | os.PathLike,
    target: str | os.PathLike,
    *,
    carry_over: Callable[[str], bool] | None = None,
    durable: bool = True,
) -> Path:
    """Make the complete folder ``staged`` appear at ``target`` in one step (see the module rules).

    ``staged`` must be on the same filesystem as ``target`` (a sibling, or inside a sibling).
    ``carry_over(name)`` picks top-level entries of the old ``target`` to keep; entries the new
    folder already has are never overwritten by old ones. Returns ``target``.
    """
    staged = Path(os.path.abspath(staged))
    target = Path(os.path.abspath(target))
    if target.exists() and (target.is_symlink() or not target.is_dir()):
        raise NotADirectoryError(f"{target} exists and is not a folder; refusing to replace it")
    if carry_over is not None and target.is_dir():
        for entry in sorted(target.iterdir()):
            if carry_over(entry.name) and not (staged / entry.name).exists() and not is_staging_name(entry.name):
                _link_tree(entry, staged / entry.name)
    if durable:
        _fsync_tree(staged)
    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)  # the old content now lives here
    else:
        replaced = staging_path(target, _REPLACED_TAG)
        os.rename(target, replaced)
        os.rename(staged, target)
        shutil.rmtree(replaced, ignore_errors=True)
    if durable:
        _fsync_dir(target.parent)
    return target


@contextmanager
def atomic_directory(
    target: str | os.PathLike,
    *,
    carry_over: Callable[[str], bool] | None = None,
    durable: bool = True,
) -> Iterator[Path]:
    """Yield an empty staging folder; on a normal exit it replaces ``target`` in one step.

    Any exception (or ``KeyboardInterrupt``) inside the block deletes the staging folder and
    leaves ``target`` exactly as it was. Example::

        with atomic_directory("out/model") as folder:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staged = staging_path(target)
    staged.mkdir()
    try:
        yield staged
        replace_directory(staged, target, carry_over=carry_over, durable=durable)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@contextmanager
def staging_area(target: str | os.PathLike, *, name: str | None = None) -> Iterator[Path]:
    """An empty hidden folder beside ``target``, removed on exit whatever happens.

    For writers that must produce the new content at a path *named like* the target (the
    transformers Trainer writes ``<run_dir>/checkpoint-N``): write to ``area / target.name``,
    then :func:`replace_directory` it onto ``target`` inside the block. ``name`` fixes the folder
    name (ranks of one job that all write into it must agree on it); by default it is unique.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    area = target.parent / name if name is not None else staging_path(target)
    if area.exists():
        shutil.rmtree(area)
    area.mkdir()
    try:
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)

"""The public loaders: any supported source and format in, a TRL-format ``Dataset`` out.

Each loader reads the rows (:mod:`.readers`), names the format (``format="auto"`` uses
:func:`~coati_hf.data.formats.detect_format` on the columns and first row), converts
every row (:mod:`.formats`) and builds an in-memory ``datasets.Dataset`` holding only
the output columns.

Malformed rows: ``on_error="raise"`` (default) raises the first
:class:`~coati_hf.data.errors.DataFormatError`; ``on_error="skip"`` drops every bad row
and logs one warning on the ``coati_hf.data`` logger with the count and the first
reasons. A source with no usable row at all is an error in both modes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import DataFormatError, RowProblem, type_name
from .formats import FORMATS, converter, detect_format
from .readers import SourceRows, read_rows

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger("coati_hf.data")

ON_ERROR = ("raise", "skip")
MAX_REASONS_LOGGED = 5


def load_sft_dataset(source: Any, format: str = "auto", split: str = "train", *, on_error: str = "raise") -> "Dataset":
    """SFT data: ``{"prompt": [msgs], "completion": [assistant msgs]}`` for single-turn
    formats (self_instruct, alpaca, hh, coati_preference, trl prompt/completion), or
    ``{"messages": [msgs]}`` for conversations (coati_conversation, trl messages).
    A system message, where present, comes first in ``prompt``/``messages``. Rows with
    only a ``text`` column stay ``{"text": str}`` (TRL's language-modelling format)."""
    return _load(source, format, split, on_error, "sft")


def load_preference_dataset(source: Any, format: str = "auto", split: str = "train", *, on_error: str = "raise") -> "Dataset":
    """Preference pairs: ``{"prompt": [msgs ending with user], "chosen": [assistant msgs],
    "rejected": [assistant msgs]}`` from hh, coati_preference or trl data."""
    return _load(source, format, split, on_error, "preference")


def load_prompt_dataset(source: Any, format: str = "auto", split: str = "train", *, on_error: str = "raise") -> "Dataset":
    """PPO prompts: ``{"prompt": [msgs ending with user]}`` from the prompt side of any
    format but text (a conversation loses its final assistant turns)."""
    return _load(source, format, split, on_error, "prompt")


def load_pretrain_dataset(source: Any, split: str = "train", *, on_error: str = "raise") -> "Dataset":
    """Pretraining text for the PTX loss: ``{"text": str}`` from a ``.txt`` file (one row
    per block of lines between blank lines) or rows with a ``text`` column."""
    return _load(source, "text", split, on_error, "text")


def _load(source: Any, fmt: str, split: str, on_error: str, target: str) -> "Dataset":
    import datasets

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of: {', '.join(FORMATS)}")
    rows = read_rows(source, split=split, on_error=on_error)
    unreadable = len(rows.problems)  # rows lost while reading (invalid JSON lines...)
    if not rows.records and not rows.problems:
        raise DataFormatError("no rows found", source=rows.name)
    if target == "text" and "text" not in rows.columns:
        raise DataFormatError(
            f"no 'text' column (columns found: {sorted(rows.columns)}); load_pretrain_dataset expects "
            "a .txt file or rows with a 'text' column",
            source=rows.name,
        )
    try:
        if fmt == "auto":
            example = next((r.data for r in rows.records if isinstance(r.data, dict)), None)
            fmt = detect_format(rows.columns, example)
        convert = converter(fmt, target, rows.columns)
    except DataFormatError as err:
        raise DataFormatError(err.reason, source=rows.name) from None

    out = []
    for rec in rows.records:
        try:
            if not isinstance(rec.data, dict):
                raise RowProblem(None, f"expected an object with named fields, got {type_name(rec.data)}")
            out.append(convert(rec.data))
        except RowProblem as problem:
            rows.report(
                DataFormatError(problem.reason, source=rows.name, row=rec.row, line=rec.line, field=problem.field),
                on_error,
            )
    _log_skipped(rows, total=len(rows.records) + unreadable)
    if not out:
        first = f"; first problem: {rows.problems[0]}" if rows.problems else ""
        raise DataFormatError(f"no usable rows (all {len(rows.problems)} malformed){first}", source=rows.name)
    return datasets.Dataset.from_list(out)


def _log_skipped(rows: SourceRows, total: int) -> None:
    if not rows.problems:
        return
    shown = "\n  ".join(str(p) for p in rows.problems[:MAX_REASONS_LOGGED])
    more = len(rows.problems) - MAX_REASONS_LOGGED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    logger.warning(
        "%s: skipped %d of %d rows with on_error='skip':\n  %s%s", rows.name, len(rows.problems), total, shown, tail
    )

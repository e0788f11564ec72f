"""Reading rows from wherever a user keeps them.

Sources accepted by :func:`read_rows`:

* a local file, chosen by suffix: ``.json`` (a JSON list of objects; a file that is
  really JSON Lines is read as such), ``.jsonl``, ``.csv`` (header row; a cell that holds a
  JSON list of objects, such as a ``messages`` column, is decoded), ``.parquet``/``.pq``,
  ``.txt`` (plain text split into blocks at blank lines, each block a ``{"text"}`` row);
* a ``datasets.Dataset`` or ``IterableDataset``, a ``datasets.DatasetDict`` (``split``
  picks one), or a list of dicts, named ``<in-memory dataset>`` in messages;
* any other string (a ``datasets`` Hub name, or a local folder) is passed to
  ``datasets.load_dataset(name, split=split)`` (for more options call ``load_dataset``
  yourself and pass the result).

A file is one split: ``split`` only matters for ``DatasetDict`` and Hub sources.

Rows are returned as Python dicts with their 1-based row number (and line number where
the file has lines), so that the converters' errors can say where a problem is. Problems
found while reading (an invalid JSON line, a CSV row with too many cells) are raised at
once with ``on_error="raise"`` and collected otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataFormatError

IN_MEMORY = "<in-memory dataset>"
FILE_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".txt": "txt"}


@dataclass
class Record:
    """One row as read: ``data`` is normally a dict; ``row``/``line`` are 1-based."""

    data: Any
    row: int
    line: int | None = None


@dataclass
class SourceRows:
    """Everything read from one source."""

    name: str
    records: list[Record] = field(default_factory=list)
    problems: list[DataFormatError] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    def report(self, error: DataFormatError, on_error: str) -> None:
        if on_error == "raise":
            raise error
        self.problems.append(error)

    def finish(self) -> "SourceRows":
        # Union of the keys of all rows, in order of first appearance: optional columns
        # missing from the first rows still count for detection.
        seen: dict[str, None] = {}
        for rec in self.records:
            if isinstance(rec.data, dict):
                seen.update(dict.fromkeys(rec.data))
        self.columns = list(seen)
        return self


def read_rows(source: Any, *, split: str = "train", on_error: str = "raise") -> SourceRows:
    """Read all rows of ``source`` (see the module docstring)."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DataFormatError(f"split {split!r} not found; available: {sorted(source)}", source=IN_MEMORY)
        source = source[split]
    if isinstance(source, datasets.Dataset):
        return _from_iterable(source, IN_MEMORY)
    if isinstance(source, (list, datasets.IterableDataset)):
        return _from_iterable(source, IN_MEMORY)
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        if not Path(source).is_dir():
            return _read_file(Path(source), str(source), on_error)
        source = str(source)  # a local folder: datasets' own folder loaders handle it
    if isinstance(source, str):
        dataset = datasets.load_dataset(source, split=split)
        if isinstance(dataset, datasets.DatasetDict):  # split=None
            return read_rows(dataset, split="train")
        return _from_iterable(dataset, source)
    raise TypeError(
        f"cannot read data from {type(source).__name__}; pass a file path, a datasets.Dataset, "
        "a list of dicts or a datasets Hub name"
    )


def _looks_like_path(text: str) -> bool:
    return os.path.exists(text) or Path(text).suffix.lower() in FILE_SUFFIXES


def _from_iterable(rows: Any, name: str) -> SourceRows:
    out = SourceRows(name)
    out.records = [Record(row, i) for i, row in enumerate(rows, 1)]
    return out.finish()


def _read_file(path: Path, name: str, on_error: str) -> SourceRows:
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataFormatError(
            f"unsupported file type {path.suffix!r}; expected one of: {', '.join(sorted(FILE_SUFFIXES))}",
            source=name,
        )
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such data file")
    out = SourceRows(name)
    {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "txt": _read_txt}[kind](
        path, out, on_error
    )
    return out.finish()


def _not_utf8(name: str, line_no: int, line: bytes, column: int) -> DataFormatError:
    """The error for byte ``column`` (0-based) of ``line`` that does not decode as UTF-8."""
    return DataFormatError(
        f"not valid UTF-8 (byte 0x{line[column:column + 1].hex()} at column {column + 1}); save the file as UTF-8",
        source=name,
        line=line_no,
    )


def _decoded_lines(path: Path, out: SourceRows, on_error: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line of a text file, each decoded as UTF-8 on its own.

    A line that is not valid UTF-8 is a located error, or with ``on_error="skip"`` a reported
    problem and left out. A byte-order mark at the start is dropped. Line ends are kept.
    """
    lines = []
    for line_no, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            lines.append((line_no, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            out.report(_not_utf8(out.name, line_no, raw, err.start), on_error)
    return lines


def _read_json(path: Path, out: SourceRows, on_error: str) -> None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):  # JSON Lines with a .json name: line by line
            _parse_jsonl(_decoded_lines(path, out, on_error), out, on_error)
            return
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line_no = data.count(b"\n", 0, err.start) + 1
        # One JSON document: no line can be left out, so this is an error in both modes.
        raise _not_utf8(out.name, line_no, data[line_start:], err.start - line_start) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values: JSON Lines with a .json name
            _parse_jsonl(list(enumerate(text.splitlines(), 1)), out, on_error)
            return
        raise DataFormatError(f"invalid JSON: {err.msg} (column {err.colno})", source=out.name, line=err.lineno) from None
    if not isinstance(data, list):
        raise DataFormatError(
            f"expected a JSON list of objects (or one object per line), got a JSON {type(data).__name__}",
            source=out.name,
        )
    out.records = [Record(row, i) for i, row in enumerate(data, 1)]


def _read_jsonl(path: Path, out: SourceRows, on_error: str) -> None:
    _parse_jsonl(_decoded_lines(path, out, on_error), out, on_error)


def _parse_jsonl(lines: list[tuple[int, str]], out: SourceRows, on_error: str) -> None:
    row = 0
    for line_no, line in lines:
        if not line.strip():
            continue
        row += 1
        try:
            out.records.append(Record(json.loads(line), row, line_no))
        except json.JSONDecodeError as err:
            out.report(
                DataFormatError(f"invalid JSON: {err.msg} (column {err.colno})", source=out.name, line=line_no), on_error
            )


def _decode_cell(cell: Any) -> Any:
    """CSV cells are strings; one holding a JSON list of objects (messages) is decoded."""
    if isinstance(cell, str) and cell.lstrip().startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError:
            return cell
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            return value
    return cell


def _read_csv(path: Path, out: SourceRows, on_error: str) -> None:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    lines = _decoded_lines(path, out, on_error)
    numbers = [line_no for line_no, _ in lines]  # file line of each decoded line (undecodable ones are left out)
    reader = csv.DictReader(text for _, text in lines)
    row, first = 0, 1  # index in ``lines`` where the next row starts (0 is the header)
    for raw in reader:
        row += 1
        line = numbers[first] if first < len(numbers) else None
        first = reader.line_num  # csv counts the lines it has consumed, a quoted cell may span several
        if None in raw:
            reason = f"{len(raw[None])} more cell(s) than the header has columns"
            out.report(DataFormatError(reason, source=out.name, row=row, line=line), on_error)
            continue
        out.records.append(Record({k: _decode_cell(v) for k, v in raw.items()}, row, line))


def _read_parquet(path: Path, out: SourceRows, on_error: str) -> None:
    import pyarrow.parquet as pq

    out.records = [Record(row, i) for i, row in enumerate(pq.read_table(path).to_pylist(), 1)]


def _read_txt(path: Path, out: SourceRows, on_error: str) -> None:
    """Blocks of non-empty lines separated by blank lines; each block is one row."""
    block: list[str] = []
    start = 0
    for line_no, line in _decoded_lines(path, out, on_error) + [(-1, "")]:
        if line.strip():
            if not block:
                start = line_no
            block.append(line.rstrip())
        elif block:
            out.records.append(Record({"text": "\n".join(block).strip()}, len(out.records) + 1, start))
            block = []

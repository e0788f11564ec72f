"""Errors raised by the data layer.

Every problem with a row is reported as a :class:`DataFormatError` whose message says
*where* (file or ``<in-memory dataset>``, 1-based row number, line where it differs,
field) and *what*, for example::

    data.jsonl, row 7, field 'chosen': empty completion
    data.jsonl, line 12: invalid JSON: Expecting value (column 1)
    data.csv, row 3 (line 4), field 'messages': roles out of order at message 2: ...

The converters in :mod:`coati_hf.data.formats` only know about one row, so they raise
the internal :class:`RowProblem` (field + reason); the loaders add the location.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """A malformed row, or a file/dataset whose format cannot be used.

    Attributes: ``reason`` (what is wrong), and where known ``source`` (file path as
    given, a Hub name or ``"<in-memory dataset>"``), ``row`` (1-based), ``line``
    (1-based line in the file, reported when it differs from ``row``) and ``field``.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        row: int | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.reason = reason
        self.source = source
        self.row = row
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.row is not None:
            where = f"row {self.row}"
            if self.line is not None and self.line != self.row:
                where += f" (line {self.line})"
            parts.append(where)
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return f"{', '.join(parts)}: {self.reason}" if parts else self.reason


class ChatTemplateError(ValueError):
    """Conversational data and a tokenizer without a chat template (see :func:`coati_hf.data.require_chat_template`)."""


class RowProblem(Exception):
    """Internal: one row is malformed. ``field`` is the top-level column at fault
    (``None`` when the row as a whole is wrong); the loader turns this into a located
    :class:`DataFormatError`."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def type_name(value: object) -> str:
    """A short JSON-ish type name for error messages."""
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )

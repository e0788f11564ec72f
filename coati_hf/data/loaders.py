"""The public loaders: any supported source and format in, a TRL-format ``Dataset`` out.

Each loader reads the rows (:mod:`.readers`), names the format (``format="auto"`` uses
:func:`~coati_hf.data.formats.detect_format` on the columns and first row: TRL's formats first,
Coati's only for rows TRL cannot read), converts every row (:mod:`.formats`) and builds an
in-memory ``datasets.Dataset`` holding only the output columns (and the columns TRL reads
besides, :data:`~coati_hf.data.formats.PASSTHROUGH`).

Strings stay strings (TRL's standard format, tokenized as written); message lists stay
conversational. ``strings_as_chat=True`` puts string prompts and replies into a conversation,
so that the chat template applies to them too.

Malformed rows: ``on_error="raise"`` (default) raises the first
:class:`~coati_hf.data.errors.DataFormatError`; ``on_error="skip"`` drops every bad row
and logs one warning on the ``coati_hf.data`` logger with the count and the first
reasons. A source with no usable row at all is an error in both modes.

:func:`to_trl_dataset` is the trainers' entry point: it leaves a dataset TRL reads untouched
(transforms, streaming and extra columns included) and converts the others lazily.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import DataFormatError, RowProblem, type_name
from .formats import FORMATS, converter, detect_format, looks_like_hh, trl_reads
from .readers import IN_MEMORY, SourceRows, read_rows

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger("coati_hf.data")

ON_ERROR = ("raise", "skip")
MAX_REASONS_LOGGED = 5


def load_sft_dataset(
    source: Any,
    format: str = "auto",
    split: str = "train",
    *,
    on_error: str = "raise",
    strings_as_chat: bool = False,
    text_column: str = "text",
) -> "Dataset":
    """SFT data in one of TRL's SFT formats.

    TRL rows keep their format: ``{prompt, completion}`` (strings or messages), ``{messages}``,
    ``{text_column}`` text; ShareGPT ``conversations`` become ``{messages}`` as TRL renames them;
    preference rows give ``{prompt, completion}`` from their chosen side. Coati's formats give
    ``{prompt: [msgs], completion: [assistant msgs]}`` for single turns (alpaca, hh,
    self_instruct, coati_preference) or ``{messages: [msgs]}`` for conversations
    (coati_conversation), a system message first where there is one."""
    return _load(source, format, split, on_error, "sft", strings_as_chat, text_column)


def load_preference_dataset(
    source: Any, format: str = "auto", split: str = "train", *, on_error: str = "raise", strings_as_chat: bool = False
) -> "Dataset":
    """Preference pairs: TRL's ``{prompt, chosen, rejected}`` or implicit-prompt ``{chosen,
    rejected}`` as given (strings or messages); Coati's formats (coati_preference, hh) give
    ``{prompt: [msgs ending with user], chosen: [assistant msgs], rejected: [assistant msgs]}``.

    A pair whose chosen and rejected are identical teaches nothing (its loss is log 2 whatever
    the model does): such pairs are dropped, with one warning that counts them."""
    return _load(source, format, split, on_error, "preference", strings_as_chat)


def load_prompt_dataset(
    source: Any, format: str = "auto", split: str = "train", *, on_error: str = "raise", strings_as_chat: bool = False
) -> "Dataset":
    """PPO prompts: ``{prompt: str}`` for a string prompt (used as text, no chat template) or
    ``{prompt: [msgs ending with user]}`` for messages and Coati's formats (a conversation
    loses its final assistant turns; a preference pair keeps its prompt)."""
    return _load(source, format, split, on_error, "prompt", strings_as_chat)


def load_pretrain_dataset(source: Any, split: str = "train", *, on_error: str = "raise") -> "Dataset":
    """Pretraining text for the PTX loss: ``{"text": str}`` from a ``.txt`` file (one row
    per block of lines between blank lines) or rows with a ``text`` column."""
    return _load(source, "text", split, on_error, "text")


def to_trl_dataset(dataset: Any, target: str, *, strings_as_chat: bool = False, text_column: str = "text", convert: bool = True):
    """What a trainer hands to TRL's own preparation for ``target`` (``"sft"`` or ``"preference"``).

    Returns ``(dataset, format)``, ``format`` being the format the rows were read as (``"trl"``
    when they were left as they are, ``None`` for no dataset):

    * ``None`` stays ``None``.
    * A ``Dataset``/``IterableDataset`` that TRL reads as it is (:func:`~coati_hf.data.formats.trl_reads`)
      is returned untouched, and so is a ``Dataset`` with a transform (TRL decides about those).
      One in a Coati format is converted row by row with ``map`` (lazily for an ``IterableDataset``);
      a malformed row raises a :class:`DataFormatError` naming its row and field.
    * Anything else (a path, a list of dicts, a ``DatasetDict``, a Hub name) goes through the loader.

    ``convert=False`` (a formatting function will read the user's rows) only reads a source that
    is not a dataset yet into a ``Dataset`` of its rows as they are.
    """
    import datasets

    if dataset is None:
        return None, None
    is_dataset = isinstance(dataset, (datasets.Dataset, datasets.IterableDataset))
    if not convert:
        return (dataset if is_dataset else datasets.Dataset.from_list([r.data for r in read_rows(dataset).records])), "trl"
    if isinstance(dataset, datasets.Dataset) and dataset.format.get("type") == "custom":
        return dataset, "trl"
    if not is_dataset:
        return _load(dataset, "auto", "train", "raise", target, strings_as_chat, text_column, with_format=True)
    first = next(iter(dataset), None)
    if first is None:
        return dataset, "trl"
    columns = list(dataset.column_names or first)  # a streamed dataset may not know its columns before reading
    if trl_reads(columns, first, target, text_column) and not (strings_as_chat and _has_strings(first)):
        return dataset, "trl"
    fmt = detect_format(columns, first, text_column)
    convert_one = converter(fmt, target, columns, strings_as_chat=strings_as_chat, text_column=text_column)

    def convert_row(row, index):
        try:
            return convert_one(row)
        except RowProblem as problem:
            raise DataFormatError(problem.reason, source=IN_MEMORY, row=index + 1, field=problem.field) from None

    kwargs = {"desc": f"Converting {fmt} rows to TRL's format"} if isinstance(dataset, datasets.Dataset) else {}
    return dataset.map(convert_row, with_indices=True, remove_columns=columns, **kwargs), fmt


def _has_strings(row: dict) -> bool:
    return any(isinstance(row.get(key), str) for key in ("prompt", "completion", "chosen", "rejected"))


def _load(
    source: Any,
    fmt: str,
    split: str,
    on_error: str,
    target: str,
    strings_as_chat: bool = False,
    text_column: str = "text",
    with_format: bool = False,
):
    """Read, detect, convert (see the module docstring); ``with_format`` also returns the format's name."""
    import datasets

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of: {', '.join(FORMATS)}")
    rows = read_rows(source, split=split, on_error=on_error)
    unreadable = len(rows.problems)  # rows lost while reading (invalid JSON lines, bytes that are not UTF-8...)
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
            fmt = detect_format(rows.columns, example, text_column)
            if fmt == "trl" and example is not None and looks_like_hh(example):
                logger.info(
                    "%s: HH-style dialogue strings are read as TRL's standard format (plain text); "
                    "pass format='hh' to read them as chat turns.",
                    rows.name,
                )
        convert = converter(fmt, target, rows.columns, strings_as_chat=strings_as_chat, text_column=text_column)
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
    if target == "preference":
        out = _drop_identical_pairs(out, rows.name)
    dataset = datasets.Dataset.from_list(out)
    return (dataset, fmt) if with_format else dataset


def _drop_identical_pairs(pairs: list[dict], name: str) -> list[dict]:
    kept = [pair for pair in pairs if pair["chosen"] != pair["rejected"]]
    if len(kept) < len(pairs):
        logger.warning(
            "%s: dropped %d of %d preference pairs whose chosen and rejected are identical "
            "(nothing to learn from them: their loss stays at log 2).",
            name,
            len(pairs) - len(kept),
            len(pairs),
        )
    if not kept:
        raise DataFormatError(f"all {len(pairs)} preference pairs have identical chosen and rejected", source=name)
    return kept


def _log_skipped(rows: SourceRows, total: int) -> None:
    if not rows.problems:
        return
    shown = "\n  ".join(str(p) for p in rows.problems[:MAX_REASONS_LOGGED])
    more = len(rows.problems) - MAX_REASONS_LOGGED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    logger.warning(
        "%s: skipped %d of %d rows with on_error='skip':\n  %s%s", rows.name, len(rows.problems), total, shown, tail
    )

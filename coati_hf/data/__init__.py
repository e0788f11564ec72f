"""Data layer: Coati's dataset formats in, TRL's conversational formats out.

Loaders (``source``: a .json/.jsonl/.csv/.parquet/.txt file, a ``datasets.Dataset`` or
``DatasetDict``, a list of dicts, or a ``datasets`` Hub name; ``format``: ``"auto"`` or
one of :data:`FORMATS`; ``on_error``: ``"raise"`` or ``"skip"``)::

    load_sft_dataset(source, format="auto", split="train")
        -> {"prompt", "completion"}  or  {"messages"}  or  {"text"}
    load_preference_dataset(source, format="auto", split="train")
        -> {"prompt", "chosen", "rejected"}  or  {"chosen", "rejected"} (implicit prompt)
    load_prompt_dataset(source, format="auto", split="train")
        -> {"prompt"}
    load_pretrain_dataset(source, split="train")
        -> {"text": str}

TRL's formats come first and keep TRL's meaning: a string is plain text (no chat template), a
list of ``{"role", "content"}`` messages is conversational. Coati's formats (Alpaca,
ColossalChat conversations and pairs, HH with ``format="hh"``) become conversational;
``strings_as_chat=True`` makes strings conversational too. Formats are described in
:mod:`coati_hf.data.formats`; malformed rows raise :class:`DataFormatError` naming the source,
row and field. :func:`require_chat_template` is the check every trainer makes before templating
conversational rows. ``sample_path``/``load_sample`` give the project's bilingual sample sets
(``"sft"``, ``"preferences"``, ``"prompts"``, ``"pretrain"``).
"""

from .chat import is_conversational, require_chat_template
from .errors import ChatTemplateError, DataFormatError
from .formats import FORMATS, detect_format
from .loaders import load_preference_dataset, load_pretrain_dataset, load_prompt_dataset, load_sft_dataset, to_trl_dataset
from .sample_sets import SAMPLE_FILES, load_sample, sample_path

__all__ = [
    "ChatTemplateError",
    "DataFormatError",
    "FORMATS",
    "SAMPLE_FILES",
    "detect_format",
    "is_conversational",
    "load_preference_dataset",
    "load_pretrain_dataset",
    "load_prompt_dataset",
    "load_sample",
    "load_sft_dataset",
    "require_chat_template",
    "sample_path",
    "to_trl_dataset",
]

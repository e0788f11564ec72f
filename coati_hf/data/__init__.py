"""Data layer: Coati's dataset formats in, TRL's conversational formats out.

Loaders (``source``: a .json/.jsonl/.csv/.parquet/.txt file, a ``datasets.Dataset`` or
``DatasetDict``, a list of dicts, or a ``datasets`` Hub name; ``format``: ``"auto"`` or
one of :data:`FORMATS`; ``on_error``: ``"raise"`` or ``"skip"``)::

    load_sft_dataset(source, format="auto", split="train")
        -> {"prompt": [msgs], "completion": [msgs]}  or  {"messages": [msgs]}  (or {"text"})
    load_preference_dataset(source, format="auto", split="train")
        -> {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}
    load_prompt_dataset(source, format="auto", split="train")
        -> {"prompt": [msgs]}
    load_pretrain_dataset(source, split="train")
        -> {"text": str}

Messages are ``{"role": "system"|"user"|"assistant", "content": str}``. Formats are
described in :mod:`coati_hf.data.formats`; malformed rows raise :class:`DataFormatError`
naming the source, row and field. ``sample_path``/``load_sample`` give the project's
bilingual sample sets (``"sft"``, ``"preferences"``, ``"prompts"``, ``"pretrain"``).
"""

from .errors import DataFormatError
from .formats import FORMATS, detect_format
from .loaders import load_preference_dataset, load_pretrain_dataset, load_prompt_dataset, load_sft_dataset
from .sample_sets import SAMPLE_FILES, load_sample, sample_path

__all__ = [
    "DataFormatError",
    "FORMATS",
    "SAMPLE_FILES",
    "detect_format",
    "load_preference_dataset",
    "load_pretrain_dataset",
    "load_prompt_dataset",
    "load_sample",
    "load_sft_dataset",
    "sample_path",
]

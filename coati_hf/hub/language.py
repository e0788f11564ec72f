"""The card's ``language:``: the languages of the training data, detected from its text.

Detection is by script and, for English, by its commonest words, which is what a dataset of chat
turns needs and no more: a text with Han characters is Chinese (Japanese when it also has kana),
with Hangul Korean, and Latin-script text counts as English when common English function words
make up a good part of it. A language is listed when at least :data:`MIN_SHARE` of the sampled
texts (and at least one) are in it. A caller who knows better says so (``card_language``).

The text is the dataset's own strings (``messages``, ``prompt``, ``chosen`` ...). A dataset that
holds only token ids (PPO's prepared prompts) is decoded with the tokenizer, and the lines every
decoded row shares are dropped first: they are the chat template's own words (SmolLM2's English
system prompt would otherwise make every prompt English).
"""

from __future__ import annotations

import re
from collections import Counter

SAMPLE_ROWS = 256
MIN_SHARE = 0.02
ENGLISH_SHARE = 0.15  # of a text's Latin-script words that must be English function words
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_ENGLISH_WORDS = frozenset(
    "a an the and or but if of to in on at for with by from as is are was were be been am do does did not no "
    "i you he she it we they me my your his her its our their this that these those what which who how why when where "
    "can could will would should shall may might must have has had there here about into than then so very just "
    "please thank thanks yes".split()
)  # fmt: skip


def text_languages(text: str) -> set[str]:
    """Languages of one text (ISO 639-1 codes)."""
    found = set()
    if _HAN.search(text):
        found.add("ja" if _KANA.search(text) else "zh")
    elif _KANA.search(text):
        found.add("ja")
    if _HANGUL.search(text):
        found.add("ko")
    words = [word.lower() for word in _LATIN_WORD.findall(text)]
    english = sum(word in _ENGLISH_WORDS for word in words)
    if english and english >= ENGLISH_SHARE * len(words):
        found.add("en")
    return found


def detect_languages(texts) -> list[str]:
    """Sorted languages that at least :data:`MIN_SHARE` of ``texts`` are written in."""
    texts = [text for text in texts if text and text.strip()]
    counts = Counter(language for text in texts for language in text_languages(text))
    needed = max(1.0, MIN_SHARE * len(texts))
    return sorted(language for language, count in counts.items() if count >= needed)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() if key not in ("role", "from") for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value if not isinstance(item, (int, float)) for text in _strings(item)]
    return []


def _without_shared_lines(texts: list[str]) -> list[str]:
    """Each text without the lines that every text has (the chat template's fixed words)."""
    if len(texts) < 2:
        return texts
    shared = set.intersection(*(set(text.splitlines()) for text in texts))
    return ["\n".join(line for line in text.splitlines() if line not in shared) for text in texts]


def dataset_texts(dataset, tokenizer=None, limit: int = SAMPLE_ROWS) -> list[str]:
    """Up to ``limit`` texts, one per row, evenly spread over ``dataset``."""
    if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return []
    rows = len(dataset)
    picks = sorted({i * rows // min(rows, limit) for i in range(min(rows, limit))})
    texts, ids = [], []
    for index in picks:
        row = dataset[int(index)]
        if not isinstance(row, dict):
            continue
        strings = [text for key, value in row.items() if not key.endswith("ids") for text in _strings(value)]
        if strings:
            texts.append("\n".join(strings))
        else:
            ids.extend(value for key, value in row.items() if key.endswith("input_ids") or key == "prompt_ids")
    if not texts and ids and tokenizer is not None:
        texts = _without_shared_lines([tokenizer.decode(list(value), skip_special_tokens=True) for value in ids])
    return texts


def dataset_languages(dataset, tokenizer=None) -> list[str]:
    """Languages of a (possibly tokenized) dataset's text; empty when it has none to read."""
    return detect_languages(dataset_texts(dataset, tokenizer))

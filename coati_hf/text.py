"""Turning token ids into text a person can read: never a broken character.

A model's vocabulary holds pieces of UTF-8 bytes, not characters: a Chinese character is
three bytes and is often spread over two or three tokens. When generation stops at a token
limit between those tokens, the decoder is left with the first bytes of a character and
shows them as U+FFFD (``人工智能是一种新的技�``). The rule here:

- **The text ends at its last whole character.** Trailing U+FFFD marks, which is what a
  decoder writes for bytes that do not (yet) make a character, are removed. With
  ``skip_special_tokens=False`` the special tokens that end a row (EOS, padding) are kept
  after that last whole character.
- Otherwise the text is exactly what ``tokenizer.decode`` gives.
- The cost of the rule: a completion whose model wrote the character U+FFFD itself as its
  very last character loses it too (a reader would see it as a broken character anyway).

Use :func:`decode_whole_characters` wherever a completion is shown or stored (chat,
``coati-hf generate``, sample tables); :func:`batch_decode_whole_characters` for several.
"""

from __future__ import annotations

from typing import Iterable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"


def _as_id_list(ids) -> list[int]:
    """A flat list of ints from a list, tuple, 1-D tensor or 1-D array; a batch is an error."""
    if hasattr(ids, "tolist"):  # torch.Tensor, numpy.ndarray
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], (list, tuple)):
        raise ValueError(
            "decode_whole_characters takes one sequence of token ids; for a batch use batch_decode_whole_characters"
        )
    return [int(token) for token in ids]


def end_at_whole_character(text: str) -> str:
    """``text`` without the U+FFFD marks an unfinished character leaves at its end."""
    return text.rstrip(REPLACEMENT_CHARACTER)


def decode_whole_characters(tokenizer, ids, skip_special_tokens: bool = True, **decode_kwargs) -> str:
    """Decode ``ids`` (one sequence) like ``tokenizer.decode``, ending at the last whole character.

    ``ids``: a list of ints, a 1-D tensor or array. ``decode_kwargs`` go to ``tokenizer.decode``
    (``clean_up_tokenization_spaces``...). See the module docstring for the rule.
    """
    ids = _as_id_list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **decode_kwargs)
    if skip_special_tokens:
        return end_at_whole_character(text)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    body_end = len(ids)
    while body_end > 0 and ids[body_end - 1] in special:
        body_end -= 1
    if body_end == len(ids):
        return end_at_whole_character(text)
    body = tokenizer.decode(ids[:body_end], skip_special_tokens=False, **decode_kwargs)
    if not body.endswith(REPLACEMENT_CHARACTER):
        return text
    tail = tokenizer.decode(ids[body_end:], skip_special_tokens=False, **decode_kwargs)
    return end_at_whole_character(body) + tail


def batch_decode_whole_characters(
    tokenizer, rows: Iterable[Sequence[int]], skip_special_tokens: bool = True, **decode_kwargs
) -> list[str]:
    """:func:`decode_whole_characters` for each row of ``rows`` (a list of lists or a 2-D tensor).

    Padding is not removed here: pass rows already cut to their length, or pad with a special
    token and keep ``skip_special_tokens=True``.
    """
    return [decode_whole_characters(tokenizer, row, skip_special_tokens, **decode_kwargs) for row in rows]

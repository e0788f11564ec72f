"""coati_hf.text: decoded completions end at their last whole character, never with U+FFFD."""

from __future__ import annotations

import pytest
import torch

from coati_hf.text import REPLACEMENT_CHARACTER, batch_decode_whole_characters, decode_whole_characters

CHINESE = "人工智能是一种新的技术，它正在改变世界。"


@pytest.fixture(scope="module")
def chinese_ids(smol_tokenizer):
    ids = smol_tokenizer(CHINESE, add_special_tokens=False)["input_ids"]
    cut_mid_character = [n for n in range(1, len(ids)) if smol_tokenizer.decode(ids[:n]).endswith(REPLACEMENT_CHARACTER)]
    assert cut_mid_character, "the SmolLM2 tokenizer splits some of these characters over several tokens"
    return ids, cut_mid_character


def test_a_chinese_answer_cut_mid_character_has_no_replacement_character(smol_tokenizer, chinese_ids):
    ids, cut_mid_character = chinese_ids
    for n in range(1, len(ids) + 1):
        text = decode_whole_characters(smol_tokenizer, ids[:n])
        assert REPLACEMENT_CHARACTER not in text, (n, text)
        assert CHINESE.startswith(text), (n, text)  # only the unfinished character is missing
    # the example of the issue: "人工智能是一种新的技" then half of "术"
    n = next(n for n in cut_mid_character if smol_tokenizer.decode(ids[:n]).startswith("人工智能是一种新的技"))
    assert smol_tokenizer.decode(ids[:n]) == "人工智能是一种新的技" + REPLACEMENT_CHARACTER
    assert decode_whole_characters(smol_tokenizer, ids[:n]) == "人工智能是一种新的技"


def test_whole_text_is_exactly_what_decode_gives(smol_tokenizer, chinese_ids):
    ids, _ = chinese_ids
    assert decode_whole_characters(smol_tokenizer, ids) == smol_tokenizer.decode(ids) == CHINESE
    english = smol_tokenizer("Hello there, friend!", add_special_tokens=False)["input_ids"]
    assert decode_whole_characters(smol_tokenizer, torch.tensor(english)) == "Hello there, friend!"


def test_special_tokens_after_the_cut_are_kept_when_asked(smol_tokenizer, chinese_ids):
    ids, cut_mid_character = chinese_ids
    n = cut_mid_character[-1]
    pad = smol_tokenizer.pad_token_id
    row = ids[:n] + [pad, pad]
    assert decode_whole_characters(smol_tokenizer, row) == smol_tokenizer.decode(ids[:n]).rstrip(REPLACEMENT_CHARACTER)
    kept = decode_whole_characters(smol_tokenizer, row, skip_special_tokens=False)
    assert kept == smol_tokenizer.decode(ids[:n]).rstrip(REPLACEMENT_CHARACTER) + smol_tokenizer.pad_token * 2
    assert REPLACEMENT_CHARACTER not in kept


def test_batch_decoding_and_a_batch_passed_as_one_row(smol_tokenizer, chinese_ids):
    ids, cut_mid_character = chinese_ids
    rows = [ids[:n] for n in cut_mid_character]
    texts = batch_decode_whole_characters(smol_tokenizer, rows)
    assert len(texts) == len(rows) and all(REPLACEMENT_CHARACTER not in text for text in texts)
    with pytest.raises(ValueError, match="batch_decode_whole_characters"):
        decode_whole_characters(smol_tokenizer, [ids[:3], ids[:4]])


def test_streamed_pieces_join_to_the_reply_and_never_split_a_character(smol_tokenizer, chinese_ids):
    """The chat streamer gets one token at a time, as generate gives them, and stops mid-character."""
    from coati_hf.chat.generation import WholeCharacterStreamer

    ids, cut_mid_character = chinese_ids
    cut = cut_mid_character[-1]
    pieces = []

    class Sink:
        def write(self, text):
            pieces.append(text)

        def flush(self):
            pass

    streamer = WholeCharacterStreamer(smol_tokenizer, stream=Sink(), skip_prompt=True)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
    for token in ids[:cut]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    shown = "".join(pieces)
    assert shown == decode_whole_characters(smol_tokenizer, ids[:cut]) + "\n"
    assert all(REPLACEMENT_CHARACTER not in piece for piece in pieces)
    assert len([piece for piece in pieces if piece]) > 3  # streamed in pieces, not all at the end

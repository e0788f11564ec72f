"""One reply to a conversation: settings, the chat-template prompt, streaming that never splits
a character.

Decoding rules:

- ``temperature == 0`` is greedy decoding; ``temperature > 0`` samples from
  ``softmax(logits / temperature)`` restricted to the ``top_p`` nucleus.
- Generation stops at ``max_new_tokens`` or at any end token: the tokenizer's EOS, the model's
  generation-config EOS ids, and ChatML's ``<|im_end|>`` where the vocabulary has it.
- The reply is decoded with :func:`coati_hf.text.decode_whole_characters`: special tokens
  dropped, ending at the last whole character.
- Streamed text is the same text in pieces: a piece is handed out once it can no longer change
  (a whole word, a whole CJK character, a line), so the pieces joined equal the reply.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

from ..text import decode_whole_characters

CHATML_END = "<|im_end|>"


@dataclass
class GenerationSettings:
    """How to decode: ``max_new_tokens`` >= 1, ``temperature`` >= 0 (0: greedy), 0 < ``top_p`` <= 1."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self, model, tokenizer) -> dict:
        """Keyword arguments for ``model.generate`` that say exactly these settings."""
        kwargs = {
            "max_new_tokens": int(self.max_new_tokens),
            "eos_token_id": end_token_ids(model, tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p), top_k=None)
        return kwargs


def end_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply (module rules), without duplicates, in a stable order."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id]
    candidates += list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
    candidates.append(tokenizer.get_vocab().get(CHATML_END))
    for token in candidates:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    return ids


def prompt_ids(tokenizer, messages: list[dict]):
    """``(1, L)`` ids of ``messages`` through the chat template, ready for the assistant's turn."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return encoded["input_ids"]


class _WholeCharacterPieces:
    """The streaming logic shared by the two streamers below (transformers' ``put``/``end``
    protocol): keep the reply's ids, decode them whole-character, hand out the settled part."""

    def _init_pieces(self):
        self.token_cache: list[int] = []
        self.print_len = 0

    def put(self, value):
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("a streamer follows one sequence; generate a batch without one")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(int(token) for token in value.tolist())
        text = decode_whole_characters(self.tokenizer, self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            settled = len(text)
        elif text and self._is_chinese_char(ord(text[-1])):
            settled = len(text)
        else:
            settled = text.rfind(" ") + 1  # the last word may still grow
        if settled > self.print_len:
            piece, self.print_len = text[self.print_len : settled], settled
            self.on_finalized_text(piece)

    def end(self):
        text = decode_whole_characters(self.tokenizer, self.token_cache, **self.decode_kwargs)
        piece = text[self.print_len :]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(piece, stream_end=True)


def _streamer_classes():
    from transformers import TextIteratorStreamer, TextStreamer

    class WholeCharacterStreamer(_WholeCharacterPieces, TextStreamer):
        """``TextStreamer`` that writes each settled piece to ``stream`` (stdout by default) as it
        comes, a newline at the end, and never a broken character."""

        def __init__(self, tokenizer, stream=None, skip_prompt: bool = True, **decode_kwargs):
            decode_kwargs.setdefault("skip_special_tokens", True)
            super().__init__(tokenizer, skip_prompt=skip_prompt, **decode_kwargs)
            self._init_pieces()
            self.stream = stream

        def on_finalized_text(self, text: str, stream_end: bool = False):
            import sys

            stream = self.stream if self.stream is not None else sys.stdout
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    class WholeCharacterIteratorStreamer(_WholeCharacterPieces, TextIteratorStreamer):
        """``TextIteratorStreamer`` (iterate over the pieces from another thread) with the same
        whole-character pieces."""

        def __init__(self, tokenizer, skip_prompt: bool = True, timeout: float | None = None, **decode_kwargs):
            decode_kwargs.setdefault("skip_special_tokens", True)
            super().__init__(tokenizer, skip_prompt=skip_prompt, timeout=timeout, **decode_kwargs)
            self._init_pieces()

    return WholeCharacterStreamer, WholeCharacterIteratorStreamer


def __getattr__(name: str):
    if name in ("WholeCharacterStreamer", "WholeCharacterIteratorStreamer"):
        classes = dict(zip(("WholeCharacterStreamer", "WholeCharacterIteratorStreamer"), _streamer_classes()))
        globals().update(classes)
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate_reply(
    model,
    tokenizer,
    messages: list[dict],
    settings: GenerationSettings | None = None,
    streamer=None,
    stop: threading.Event | None = None,
) -> str:
    """The assistant's next message after ``messages`` (a list of ``{"role", "content"}``).

    ``streamer``: anything with transformers' ``put``/``end`` (e.g. ``WholeCharacterStreamer``)
    to see the reply as it is written. ``stop``: an event that, once set, ends the reply after
    the token being written.
    """
    import torch

    settings = settings or GenerationSettings()
    ids = prompt_ids(tokenizer, messages).to(_device_of(model))
    extra = {}
    if stop is not None:
        from transformers import StoppingCriteriaList

        extra["stopping_criteria"] = StoppingCriteriaList([_EventStop(stop)])
    with torch.inference_mode():
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            **settings.generate_kwargs(model, tokenizer),
            **extra,
        )
    return decode_whole_characters(tokenizer, output[0, ids.shape[1] :])


class _EventStop:
    """A stopping criterion (transformers' protocol): every row is done once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_reply(model, tokenizer, messages: list[dict], settings: GenerationSettings | None = None) -> Iterator[str]:
    """Yield the assistant's next message in pieces as they are written (joined: the message).

    Generation runs in a worker thread; an error there is raised here, after the pieces so far.
    Closing the generator early (a web client's stop button) stops the generation too.
    """
    streamer = __getattr__("WholeCharacterIteratorStreamer")(tokenizer)
    failure: list[BaseException] = []
    stop = threading.Event()

    def work():
        try:
            generate_reply(model, tokenizer, messages, settings, streamer=streamer, stop=stop)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            failure.append(error)
            streamer.end()  # unblock the consumer

    worker = threading.Thread(target=work, name="coati-hf-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


def _device_of(model):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")

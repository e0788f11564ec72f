"""A conversation with a model, and the terminal loop around it.

Conversation rules:

- The model sees the whole conversation each turn: the system message (if any), then every
  user message and reply so far, through the tokenizer's chat template.
- A turn is kept only when its reply is complete: an interrupted reply (Ctrl-C) leaves the
  conversation as it was before the user's message.
- When the conversation no longer fits the model's context (``max_position_embeddings`` minus
  ``max_new_tokens``), the oldest exchanges are dropped, never the system message nor the
  newest user message; a newest message that alone does not fit is an error.

Terminal commands: ``/reset`` forgets the conversation (keeps the system message), ``/exit``
(or ``/quit``, end of input, Ctrl-C at the prompt) leaves, ``/help`` lists them.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from .errors import ChatError
from .generation import GenerationSettings, generate_reply, prompt_ids

PROMPT = ">>> "
COMMANDS = {"/reset": "forget the conversation", "/exit": "leave (also /quit, Ctrl-D)", "/help": "this list"}


class ChatSession:
    """The messages of one conversation and the model that answers them."""

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None, system: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.system = system
        self.turns: list[dict] = []
        self.dropped = 0  # messages dropped so far to fit the context

    @property
    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + list(self.turns)

    def reset(self) -> None:
        self.turns = []
        self.dropped = 0

    def _context_limit(self) -> int | None:
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return None if limit is None else int(limit) - int(self.settings.max_new_tokens)

    def _fitted(self, turns: list[dict]) -> list[dict]:
        """``turns`` without their oldest exchanges, as few as needed to fit the context."""
        limit = self._context_limit()
        if limit is None:
            return turns
        system = self.messages[: len(self.messages) - len(self.turns)]
        while True:
            length = prompt_ids(self.tokenizer, system + turns).shape[1]
            if length <= limit:
                return turns
            if len(turns) <= 1:
                raise ChatError(
                    f"the message is too long: the prompt is {length} tokens and this model reads at most {limit} "
                    "(its context less --max-new-tokens)"
                )
            cut = 2 if len(turns) > 2 and turns[1]["role"] == "assistant" else 1
            turns = turns[cut:]
            self.dropped += cut

    def ask(self, text: str, streamer=None) -> str:
        """The model's reply to ``text`` given the conversation so far; the exchange is then kept."""
        turns = self._fitted(self.turns + [{"role": "user", "content": text}])
        system = self.messages[: len(self.messages) - len(self.turns)]
        reply = generate_reply(self.model, self.tokenizer, system + turns, self.settings, streamer=streamer)
        self.turns = turns + [{"role": "assistant", "content": reply}]
        return reply


def run_terminal_chat(
    session: ChatSession,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    err: TextIO | None = None,
    banner: str | None = None,
) -> int:
    """Talk with ``session`` until ``/exit`` or end of input; replies stream to ``out``
    (stdout), notes go to ``err`` (stderr). Returns the exit status (0)."""
    from .generation import __getattr__ as streamers

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if read is input:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:  # pragma: no cover - not on every platform
            pass
    if banner:
        print(banner, file=err, flush=True)
    print("Commands: " + ", ".join(COMMANDS) + ". Ctrl-C stops a reply.", file=err, flush=True)
    streamer_class = streamers("WholeCharacterStreamer")
    while True:
        try:
            line = read(PROMPT)
        except (EOFError, KeyboardInterrupt):
            print(file=out, flush=True)
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                session.reset()
                print("(conversation cleared)", file=err, flush=True)
            elif command == "/help":
                for name, what in COMMANDS.items():
                    print(f"  {name:8s} {what}", file=err, flush=True)
            else:
                print(f"unknown command {command}; commands: {', '.join(COMMANDS)}", file=err, flush=True)
            continue
        dropped = session.dropped
        try:
            session.ask(text, streamer=streamer_class(session.tokenizer, stream=out))
        except KeyboardInterrupt:
            print("\n(reply stopped; this exchange is not kept)", file=err, flush=True)
        except ChatError as error:
            print(f"error: {error}", file=err, flush=True)
        if session.dropped > dropped:
            print(f"(the oldest {session.dropped - dropped} message(s) no longer fit the context and were dropped)", file=err, flush=True)

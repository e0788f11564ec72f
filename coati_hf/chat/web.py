"""A web chat with the model: Gradio's ``ChatInterface``, the Hub's own Spaces convention.

Rules:

- The API endpoint is ``/chat`` (``gradio_client.Client(url).predict("Hi", api_name="/chat")``
  returns the whole reply); the page streams the reply as it is written.
- Each request carries its own history (Gradio keeps it in the browser), so any number of
  people may talk at once; their requests are answered one at a time (one model, one queue).
- The page needs nothing from the internet: system fonts, no analytics, no share link.
- Gradio is an optional extra (``pip install "coati_hf[chat]"``); without it, the command says
  how to install it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from .errors import ChatError
from .generation import GenerationSettings, stream_reply

INSTALL_HINT = 'the web chat needs Gradio: pip install "coati_hf[chat]" (or pip install gradio)'
API_NAME = "chat"


def require_gradio():
    """The ``gradio`` module, or a :class:`ChatError` that says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ChatError(INSTALL_HINT) from None
    return gradio


def _text_of(content: Any) -> str:
    """The text of a Gradio message's content (a string, a text part, or a list of parts);
    files and components have none."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(part) for part in content)
    return ""


def history_to_messages(history: list, system: str | None = None) -> list[dict]:
    """Gradio's chat history (openai-style dicts) as chat-template messages, text only."""
    messages = [{"role": "system", "content": system}] if system else []
    for entry in history or []:
        role = entry.get("role") if isinstance(entry, dict) else None
        if role in ("user", "assistant"):
            text = _text_of(entry.get("content"))
            if text:
                messages.append({"role": role, "content": text})
    return messages


def build_chat_app(model, tokenizer, settings: GenerationSettings | None = None, system: str | None = None, title: str | None = None):
    """The ``gradio.ChatInterface`` (not launched) that answers with ``model``."""
    gr = require_gradio()
    settings = settings or GenerationSettings()

    def chat(message: str, history: list) -> Iterator[str]:
        messages = history_to_messages(history, system) + [{"role": "user", "content": _text_of(message)}]
        reply = ""
        for piece in stream_reply(model, tokenizer, messages, settings):
            reply += piece
            yield reply
        yield reply  # an empty reply still answers

    return gr.ChatInterface(
        chat,
        api_name=API_NAME,
        title=title or "coati_hf chat",
        description="Replies stream as they are written. The conversation stays in this page.",
        concurrency_limit=1,
        flagging_mode="never",
    )


def offline_theme():
    """Gradio's default theme with system fonts, so the page asks no font server for anything."""
    gr = require_gradio()
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def serve(
    model,
    tokenizer,
    settings: GenerationSettings | None = None,
    system: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    title: str | None = None,
    block: bool = True,
):
    """Launch the web chat on ``host:port`` (module rules); blocks until interrupted unless
    ``block=False`` (then returns the app; close it with ``app.close()``)."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    app = build_chat_app(model, tokenizer, settings, system, title)
    try:
        app.queue(default_concurrency_limit=1).launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            ssr_mode=False,
            prevent_thread_lock=not block,
            theme=offline_theme(),
            footer_links=["api"],
            quiet=False,
        )
    except OSError as error:
        raise ChatError(f"cannot serve on {host}:{port}: {str(error).splitlines()[0]}; pick another --port") from None
    return app

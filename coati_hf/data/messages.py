"""Chat messages: normalising roles and keys, checking turn order, parsing HH dialogues.

The output of the data layer always uses TRL's conversational message shape::

    {"role": "system" | "user" | "assistant", "content": str}

Inputs may spell the role key ``role`` or ``from`` and the text key ``content`` or
``value`` (ColossalChat and ShareGPT style), and the role itself ``user``/``human`` or
``assistant``/``gpt``/``bot``/``model`` (any case). Message text is stripped of leading
and trailing whitespace; empty text is an error.

Turn order ("alternates sensibly"): an optional ``system`` message first, then turns
strictly alternating ``user``/``assistant`` (a completion list starts with
``assistant`` instead). Which role must come last depends on the use: a prompt ends
with ``user``, an SFT conversation or a completion with ``assistant``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .errors import RowProblem, type_name

Message = dict[str, str]

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
ROLE_KEYS = ("role", "from")
CONTENT_KEYS = ("content", "value")

# What an empty text is called in error messages, by role.
_EMPTY_NAME = {"user": "prompt", "assistant": "completion", "system": "system message"}


def message(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def text_field(
    row: dict[str, Any], key: str, *, what: str, clean: Callable[[str], str] | None = None
) -> str:
    """``row[key]`` as a non-empty stripped string, else :class:`RowProblem`.

    ``what`` names the text in the "empty ..." reason (``prompt``, ``completion``...);
    ``clean`` is applied before the emptiness check (e.g. stripping terminators).
    """
    value = row.get(key)
    if value is None:
        raise RowProblem(key, "field is missing")
    if not isinstance(value, str):
        raise RowProblem(key, f"expected a string, got {type_name(value)}")
    if clean is not None:
        value = clean(value)
    value = value.strip()
    if not value:
        raise RowProblem(key, f"empty {what}")
    return value


def _first_present(msg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    # A key may be present with a None value when rows of differing shapes were
    # stored together (Arrow structs, Parquet): take the first key that has a value.
    for key in keys:
        if msg.get(key) is not None:
            return msg[key]
    return None


def to_message(value: Any, field: str, index: int) -> Message:
    """Normalise one message (``index`` is 1-based, for error messages)."""
    where = f"message {index}"
    if not isinstance(value, dict):
        raise RowProblem(field, f"{where}: expected an object with role and content, got {type_name(value)}")
    raw_role = _first_present(value, ROLE_KEYS)
    if raw_role is None:
        raise RowProblem(field, f"{where}: missing 'role' (or 'from')")
    if not isinstance(raw_role, str) or raw_role.strip().lower() not in ROLE_ALIASES:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise RowProblem(field, f"{where}: unknown role {raw_role!r} (expected one of: {known})")
    role = ROLE_ALIASES[raw_role.strip().lower()]
    content = _first_present(value, CONTENT_KEYS)
    if content is None:
        raise RowProblem(field, f"{where}: missing 'content' (or 'value')")
    if not isinstance(content, str):
        raise RowProblem(field, f"{where}: content must be a string, got {type_name(content)}")
    content = content.strip()
    if not content:
        raise RowProblem(field, f"empty {_EMPTY_NAME[role]} ({where})")
    return message(role, content)


def to_messages(value: Any, field: str) -> list[Message]:
    """Normalise a list of messages; the order is checked separately (:func:`check_turns`)."""
    if value is None:
        raise RowProblem(field, "field is missing")
    if not isinstance(value, list):
        raise RowProblem(field, f"expected a list of messages, got {type_name(value)}")
    return [to_message(item, field, i) for i, item in enumerate(value, 1)]


def check_turns(messages: list[Message], field: str, *, first: str = "user", last: str | None = None) -> None:
    """Check the turn order described in the module docstring.

    ``first`` is the role of the first non-system turn (``user`` for conversations and
    prompts, ``assistant`` for completion lists, which take no system message);
    ``last`` the role the list must end with (``None``: any).
    """
    if not messages:
        raise RowProblem(field, "empty conversation: no messages")
    expected = first
    for i, msg in enumerate(messages, 1):
        role = msg["role"]
        if role == "system":
            if i == 1 and first == "user":
                continue
            raise RowProblem(field, f"roles out of order at message {i}: 'system' is only allowed as the first message")
        if role != expected:
            after = f" after {messages[i - 2]['role']!r}" if i > 1 else ""
            raise RowProblem(field, f"roles out of order at message {i}: expected {expected!r}{after}, got {role!r}")
        expected = "assistant" if role == "user" else "user"
    if last is not None and messages[-1]["role"] != last:
        raise RowProblem(
            field, f"must end with a{'n' if last == 'assistant' else ''} {last} turn, but the last message is from {messages[-1]['role']!r}"
        )


def completion_messages(value: Any, field: str) -> list[Message]:
    """A completion side (``chosen``/``rejected``/``completion``) as assistant messages.

    Accepts a plain string, one message object, or a list of messages that starts and
    ends with an assistant turn.
    """
    if value is None:
        raise RowProblem(field, "field is missing")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RowProblem(field, "empty completion")
        return [message("assistant", text)]
    if isinstance(value, dict):
        value = [value]
    msgs = to_messages(value, field)
    if not msgs:
        raise RowProblem(field, "empty completion")
    check_turns(msgs, field, first="assistant", last="assistant")
    return msgs


# --- Anthropic HH / rm-static dialogues -------------------------------------------------

HUMAN, ASSISTANT = "Human:", "Assistant:"
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")


def _normalise_hh(text: str) -> str:
    # HH texts start with "\n\nHuman:"; some copies lost the leading blank line.
    stripped = text.lstrip()
    if stripped.startswith((HUMAN, ASSISTANT)):
        return "\n\n" + stripped
    return text


def parse_hh_dialogue(text: str, field: str) -> list[Message]:
    """Turn ``"\\n\\nHuman: q\\n\\nAssistant: a\\n\\nHuman: q2\\n\\nAssistant:"`` into messages.

    The trailing empty ``Assistant:`` (the generation cue) is dropped. Text without any
    marker is taken as one user message. Returns messages in input order; the caller
    checks the turn order.
    """
    text = _normalise_hh(text)
    matches = list(_HH_MARKER.finditer(text))
    if not matches:
        content = text.strip()
        if not content:
            raise RowProblem(field, "empty prompt")
        return [message("user", content)]
    if text[: matches[0].start()].strip():
        raise RowProblem(field, "text before the first 'Human:' turn")
    turns = []
    for n, match in enumerate(matches):
        end = matches[n + 1].start() if n + 1 < len(matches) else len(text)
        role = "user" if match.group(1) == "Human" else "assistant"
        turns.append((role, text[match.end() : end].strip()))
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()
    for i, (role, content) in enumerate(turns, 1):
        if not content:
            raise RowProblem(field, f"empty {_EMPTY_NAME[role]} (turn {i})")
    return [message(role, content) for role, content in turns]


def split_hh_pair(chosen: str, rejected: str | None, field: str = "chosen") -> tuple[str, str, str | None]:
    """Split Anthropic HH's whole dialogues into (prompt text, chosen reply, rejected reply).

    The prompt is the part shared by ``chosen`` and ``rejected`` up to and including the
    last ``"\\n\\nAssistant:"`` in that shared part. Without ``rejected``, the last
    ``"\\n\\nAssistant:"`` of ``chosen`` is used.
    """
    chosen = _normalise_hh(chosen)
    marker = "\n\n" + ASSISTANT
    if rejected is None:
        shared = chosen
    else:
        rejected = _normalise_hh(rejected)
        n = 0
        limit = min(len(chosen), len(rejected))
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        shared = chosen[:n]
    cut = shared.rfind(marker)
    if cut < 0:
        with_rejected = " shared with 'rejected'" if rejected is not None else ""
        raise RowProblem(field, f"no '\\n\\nAssistant:' turn{with_rejected} to split the prompt from the reply")
    cut += len(marker)
    return chosen[:cut], chosen[cut:], (rejected[cut:] if rejected is not None else None)

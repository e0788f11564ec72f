"""The dataset formats Coati users have, their detection, and their conversion to TRL.

Formats (``format=`` names), with the columns that identify them:

``self_instruct``
    ``{"prompt": str, "completion": str}``. Texts may end in ``<|endoftext|>``
    terminators, which are removed.
``alpaca``
    InstructionWild / Alpaca: ``{"instruction": str, "input": str, "output": str, "id": ...}``.
    Prompt = instruction, plus ``"\\n\\n" + input`` when the input is non-empty
    (``"<noinput>"`` counts as empty). ``output`` may be absent for prompt-only data
    (Coati's prompt sets are ``{"instruction", "id"}``).
``hh``
    Anthropic HH style preferences. rm-static: ``{"prompt", "response", "chosen",
    "rejected"}`` where ``prompt`` holds ``"\\n\\nHuman: ...\\n\\nAssistant:"`` turns and
    ``chosen``/``rejected`` the replies (``response`` repeats ``chosen`` and is ignored).
    Original HH: only ``{"chosen", "rejected"}``, each the whole dialogue; the shared
    prefix up to the last ``"Assistant:"`` is the prompt.
``coati_conversation``
    ColossalChat SFT data ``{"messages": [{"from": "user"|"assistant"|"human"|"gpt"|"system",
    "content": str}]}``; ``role``/``value`` key spellings and a ShareGPT-style
    ``conversations`` column are accepted too.
``coati_preference``
    ColossalChat preference data ``{"context": [messages], "chosen": [messages],
    "rejected": [messages]}``; chosen/rejected may also be a single message or a string.
``trl``
    Rows already in a TRL standard format: ``prompt``/``completion``,
    ``prompt``/``chosen``/``rejected``, implicit-prompt ``chosen``/``rejected``
    conversations, prompt-only ``prompt``, or ``messages`` with role/content. Strings
    are converted to conversational messages.
``text``
    ``{"text": str}`` (also what a ``.txt`` file reads as): plain text for the PTX mix.

Single-turn string formats also take an optional ``system`` column.

Outputs (TRL's conversational formats; roles ``system``/``user``/``assistant``):

* SFT: ``{"prompt": [msgs ending with user], "completion": [assistant msgs]}``, or
  ``{"messages": [msgs ending with assistant]}`` for conversation formats.
* preference: ``{"prompt": [msgs], "chosen": [assistant msgs], "rejected": [assistant msgs]}``.
* prompt (PPO): ``{"prompt": [msgs ending with user]}``.
* text (pretraining, and TRL's language-modelling SFT format): ``{"text": str}``.

Each converter takes one row (a dict) and returns one output dict, or raises
:class:`~coati_hf.data.errors.RowProblem`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable

from .errors import DataFormatError, RowProblem, type_name
from .messages import (
    Message,
    check_turns,
    completion_messages,
    message,
    parse_hh_dialogue,
    split_hh_pair,
    text_field,
    to_messages,
)

Converter = Callable[[dict[str, Any]], dict[str, Any]]

#: format name -> the columns that identify it (for error messages and docs).
FORMATS: dict[str, str] = {
    "self_instruct": "{prompt, completion} (strings)",
    "alpaca": "{instruction, input, output, id}",
    "hh": "{prompt, response, chosen, rejected} (rm-static) or {chosen, rejected} (whole HH dialogues)",
    "coati_conversation": "{messages: [{from, content}]}",
    "coati_preference": "{context, chosen, rejected} (message lists)",
    "trl": "{prompt, completion} / {prompt, chosen, rejected} / {chosen, rejected} / {prompt} / {messages: [{role, content}]}",
    "text": "{text}",
}

TARGETS = ("sft", "preference", "prompt", "text")

EOT = "<|endoftext|>"


# --- detection --------------------------------------------------------------------------


def detect_format(columns: Iterable[str], example: Mapping[str, Any] | None = None) -> str:
    """Name the format of a dataset from its column names.

    ``example`` (optional, e.g. the first row) settles the cases that column names alone
    cannot: string vs. message-list ``prompt``/``completion`` (``self_instruct`` vs.
    ``trl``), ``role``/``content`` vs. ``from`` messages, string vs. list
    ``chosen``/``rejected`` without a prompt (``hh`` vs. ``trl``), and a
    ``prompt``/``chosen``/``rejected`` row whose prompt is an HH dialogue.

    Raises :class:`DataFormatError` listing the columns found and the formats expected.
    """
    cols = set(columns)
    ex = example or {}

    def is_list(key: str) -> bool:
        return isinstance(ex.get(key), list)

    if {"context", "chosen", "rejected"} <= cols:
        return "coati_preference"
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:
            if "response" in cols:
                return "hh"
            prompt = ex.get("prompt")
            if isinstance(prompt, str) and prompt.lstrip().startswith("Human:"):
                return "hh"
            return "trl"
        return "trl" if is_list("chosen") else "hh"
    for key in ("messages", "conversations"):
        if key in cols:
            first = ex.get(key)[0] if is_list(key) and ex.get(key) else None
            if isinstance(first, Mapping) and first.get("role") is not None and first.get("content") is not None:
                return "trl"
            return "coati_conversation"
    if {"prompt", "completion"} <= cols:
        return "trl" if is_list("prompt") or is_list("completion") else "self_instruct"
    if "instruction" in cols:
        return "alpaca"
    if "prompt" in cols:
        return "trl"
    if "text" in cols:
        return "text"
    expected = "; ".join(f"{name} {cols_}" for name, cols_ in FORMATS.items())
    raise DataFormatError(
        f"cannot detect the data format from columns {sorted(cols)}; expected one of: {expected}"
    )


# --- shared row helpers -----------------------------------------------------------------


def _strip_eot(text: str) -> str:
    text = text.rstrip()
    while text.endswith(EOT):
        text = text[: -len(EOT)].rstrip()
    return text


def _system(row: dict[str, Any]) -> list[Message]:
    value = row.get("system")
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if not isinstance(value, str):
        raise RowProblem("system", f"expected a string, got {type_name(value)}")
    return [message("system", value.strip())]


def _prompt_messages(row: dict[str, Any], key: str = "prompt") -> list[Message]:
    """A ``prompt`` that is a string (plus optional ``system`` column) or a message list."""
    value = row.get(key)
    if isinstance(value, list):
        msgs = to_messages(value, key)
    else:
        msgs = _system(row) + [message("user", text_field(row, key, what="prompt"))]
    check_turns(msgs, key, first="user", last="user")
    return msgs


def _conversation(row: dict[str, Any], key: str) -> list[Message]:
    msgs = to_messages(row.get(key), key)
    check_turns(msgs, key, first="user")
    return msgs


def _conversation_sft(key: str) -> Converter:
    def convert(row):
        msgs = _conversation(row, key)
        check_turns(msgs, key, last="assistant")
        return {"messages": msgs}

    return convert


def _conversation_prompt(key: str) -> Converter:
    def convert(row):
        msgs = _conversation(row, key)
        while msgs and msgs[-1]["role"] == "assistant":  # the reply is not part of the prompt
            msgs = msgs[:-1]
        check_turns(msgs, key, last="user")
        return {"prompt": msgs}

    return convert


def _pair(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# --- per-format row converters ------------------------------------------------------------


def _self_instruct_prompt(row):
    text = text_field(row, "prompt", what="prompt", clean=_strip_eot)
    return {"prompt": _system(row) + [message("user", text)]}


def _self_instruct_sft(row):
    prompt = _self_instruct_prompt(row)["prompt"]
    completion = text_field(row, "completion", what="completion", clean=_strip_eot)
    return {"prompt": prompt, "completion": [message("assistant", completion)]}


def _alpaca_prompt(row):
    text = text_field(row, "instruction", what="prompt (instruction)")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RowProblem("input", f"expected a string, got {type_name(extra)}")
    extra = (extra or "").strip()
    if extra and extra != "<noinput>":
        text = f"{text}\n\n{extra}"
    return {"prompt": _system(row) + [message("user", text)]}


def _alpaca_sft(row):
    prompt = _alpaca_prompt(row)["prompt"]
    return {"prompt": prompt, "completion": [message("assistant", text_field(row, "output", what="completion"))]}


def _hh_parts(row) -> tuple[list[Message], str, str | None]:
    """(prompt messages, chosen reply, rejected reply or None) of an HH row."""
    if row.get("prompt") is not None:
        prompt = parse_hh_dialogue(text_field(row, "prompt", what="prompt"), "prompt")
        check_turns(prompt, "prompt", last="user")
        chosen = text_field(row, "chosen", what="completion")
        rejected = text_field(row, "rejected", what="completion") if "rejected" in row else None
        return prompt, chosen, rejected
    chosen_full = text_field(row, "chosen", what="completion")
    rejected_full = text_field(row, "rejected", what="completion") if row.get("rejected") is not None else None
    if "rejected" in row and rejected_full is None:
        raise RowProblem("rejected", "field is missing")
    prefix, chosen, rejected = split_hh_pair(chosen_full, rejected_full)
    prompt = parse_hh_dialogue(prefix, "chosen")
    check_turns(prompt, "chosen", last="user")
    chosen = chosen.strip()
    if not chosen:
        raise RowProblem("chosen", "empty completion")
    if rejected is not None:
        rejected = rejected.strip()
        if not rejected:
            raise RowProblem("rejected", "empty completion")
    return prompt, chosen, rejected


def _hh_preference(row):
    prompt, chosen, rejected = _hh_parts(row)
    if rejected is None:
        raise RowProblem("rejected", "field is missing")
    return _pair(prompt, [message("assistant", chosen)], [message("assistant", rejected)])


def _hh_sft(row):
    prompt, chosen, _ = _hh_parts(row)
    return {"prompt": prompt, "completion": [message("assistant", chosen)]}


def _hh_prompt(row):
    if row.get("prompt") is not None:  # rm-static: the replies are not needed
        prompt = parse_hh_dialogue(text_field(row, "prompt", what="prompt"), "prompt")
        check_turns(prompt, "prompt", last="user")
        return {"prompt": prompt}
    return {"prompt": _hh_parts(row)[0]}


def _context(row):
    msgs = to_messages(row.get("context"), "context")
    check_turns(msgs, "context", first="user", last="user")
    return msgs


def _coati_preference(row):
    return _pair(_context(row), completion_messages(row.get("chosen"), "chosen"), completion_messages(row.get("rejected"), "rejected"))


def _coati_preference_sft(row):
    return {"prompt": _context(row), "completion": completion_messages(row.get("chosen"), "chosen")}


def _coati_preference_prompt(row):
    return {"prompt": _context(row)}


def _trl_explicit_preference(row):
    return _pair(_prompt_messages(row), completion_messages(row.get("chosen"), "chosen"), completion_messages(row.get("rejected"), "rejected"))


def _trl_implicit_preference(row):
    """``chosen``/``rejected`` are whole conversations; the shared leading turns up to the
    last shared user turn are the prompt."""
    chosen = to_messages(row.get("chosen"), "chosen")
    rejected = to_messages(row.get("rejected"), "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1
    if not shared:
        raise RowProblem("chosen", "no shared user turn with 'rejected' to use as the prompt")
    prompt = chosen[:shared]
    check_turns(prompt, "chosen", last="user")
    rest_c, rest_r = chosen[shared:], rejected[shared:]
    for key, rest in (("chosen", rest_c), ("rejected", rest_r)):
        if not rest:
            raise RowProblem(key, "empty completion")
        check_turns(rest, key, first="assistant", last="assistant")
    return _pair(prompt, rest_c, rest_r)


def _trl_sft_prompt_completion(row):
    return {"prompt": _prompt_messages(row), "completion": completion_messages(row.get("completion"), "completion")}


def _sft_from_preference(pref: Converter) -> Converter:
    """SFT on the chosen side of a preference converter."""

    def convert(row):
        pair = pref(row)
        return {"prompt": pair["prompt"], "completion": pair["chosen"]}

    return convert


def _prompt_from_preference(pref: Converter) -> Converter:
    """The prompt side of a preference converter."""

    def convert(row):
        return {"prompt": pref(row)["prompt"]}

    return convert


def _trl_prompt_only(row):
    return {"prompt": _prompt_messages(row)}


def _text(row):
    return {"text": text_field(row, "text", what="text")}


def _trl_converters(columns: set[str]) -> dict[str, Converter]:
    for key in ("messages", "conversations"):
        if key in columns:
            return {"sft": _conversation_sft(key), "prompt": _conversation_prompt(key)}
    if {"chosen", "rejected"} <= columns:
        pref = _trl_explicit_preference if "prompt" in columns else _trl_implicit_preference
        return {"preference": pref, "sft": _sft_from_preference(pref), "prompt": _prompt_from_preference(pref)}
    if {"prompt", "completion"} <= columns:
        return {"sft": _trl_sft_prompt_completion, "prompt": _trl_prompt_only}
    return {"prompt": _trl_prompt_only}


def _table(fmt: str, columns: set[str]) -> dict[str, Converter]:
    if fmt == "self_instruct":
        return {"sft": _self_instruct_sft, "prompt": _self_instruct_prompt}
    if fmt == "alpaca":
        return {"sft": _alpaca_sft, "prompt": _alpaca_prompt}
    if fmt == "hh":
        return {"preference": _hh_preference, "sft": _hh_sft, "prompt": _hh_prompt}
    if fmt == "coati_conversation":
        key = "messages" if "messages" in columns or "conversations" not in columns else "conversations"
        return {"sft": _conversation_sft(key), "prompt": _conversation_prompt(key)}
    if fmt == "coati_preference":
        return {"preference": _coati_preference, "sft": _coati_preference_sft, "prompt": _coati_preference_prompt}
    if fmt == "trl":
        return _trl_converters(columns)
    if fmt == "text":  # also TRL's language-modelling SFT format
        return {"text": _text, "sft": _text}
    raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of: {', '.join(FORMATS)}")


_WHAT = {
    "sft": "SFT examples (prompt/completion or messages)",
    "preference": "preference pairs (chosen/rejected)",
    "prompt": "prompts",
    "text": "plain text (load_pretrain_dataset expects a .txt file or rows with a 'text' column)",
}


def converter(fmt: str, target: str, columns: Iterable[str]) -> Converter:
    """The row converter from format ``fmt`` to output ``target`` (one of :data:`TARGETS`).

    Raises :class:`DataFormatError` when the format cannot supply that target (e.g.
    preference pairs from SFT data).
    """
    table = _table(fmt, set(columns))
    if target not in table:
        raise DataFormatError(f"format {fmt!r} (columns {sorted(set(columns))}) has no {_WHAT[target]}")
    return table[target]

"""The dataset formats coati_hf reads, which one a row is, and its conversion to TRL's formats.

Precedence: **TRL's formats first.** A row that TRL's own trainers can read is read as TRL reads
it (same columns, same meaning, values kept verbatim); Coati's formats are recognised only for
rows that cannot be a TRL format, and an explicit ``format=`` opts into Coati's reading of a row
that fits both (``format="hh"`` for Anthropic HH dialogues, ``format="self_instruct"`` for
``{prompt, completion}`` strings).

The string-vs-messages rule (TRL's): a string ``prompt``/``completion``/``chosen``/``rejected``
is *standard* format, plain text that is tokenized as it is; a list of ``{"role", ...}``
messages is *conversational* and gets the tokenizer's chat template. Coati's formats become
conversational. ``strings_as_chat=True`` puts plain strings into a conversation instead (a
string prompt becomes a user message, preceded by the ``system`` column where there is one; a
string completion/chosen/rejected becomes an assistant message).

Formats (``format=`` names), with the columns that identify them:

``trl``
    TRL's formats, conversational or standard: language modelling ``{text}`` (see ``text``) and
    ``{messages: [{role, content, ...}]}``; ShareGPT ``{conversations: [{from, value}]}`` (TRL
    renames the keys, roles are kept); ``{prompt, completion}``; preference
    ``{prompt, chosen, rejected}`` and implicit-prompt ``{chosen, rejected}``; prompt-only
    ``{prompt}``. Extra columns TRL reads (``tools``, ``chat_template_kwargs``, ``margin``,
    ``images``) are kept. Messages are passed on untouched (tool calls, ``tool`` turns and
    multimodal content included); only their shape is checked.
``text``
    ``{text: str}`` (what a ``.txt`` file reads as): TRL's language-modelling format for SFT, and
    the pretraining text of the PTX mix.
``alpaca``
    InstructionWild / Alpaca ``{instruction, input, output, id}``. Prompt = instruction, plus
    ``"\\n\\n" + input`` when the input is non-empty (``"<noinput>"`` counts as empty).
    ``output`` may be absent for prompt-only data (Coati's prompt sets are ``{instruction, id}``).
``coati_conversation``
    ColossalChat SFT data ``{messages: [{from, content}]}`` (roles user/assistant/human/gpt/
    system, any case; ``role``/``value`` spellings too), or a ``conversations`` column that is not
    TRL's ``{from, value}`` shape.
``coati_preference``
    ColossalChat preference data ``{context: [messages], chosen, rejected}`` (chosen/rejected a
    message list, one message or a string), and ``{chosen, rejected}`` message lists in
    ColossalChat's ``from`` spelling (the shared leading turns are the prompt).
``hh`` (explicit only: these rows also fit TRL's standard preference formats)
    Anthropic HH. rm-static ``{prompt, response, chosen, rejected}`` where ``prompt`` holds
    ``"\\n\\nHuman: ...\\n\\nAssistant:"`` turns; or original HH ``{chosen, rejected}``, each the
    whole dialogue, the shared prefix up to the last ``"Assistant:"`` being the prompt.
``self_instruct`` (explicit only: the rows also fit TRL's ``{prompt, completion}``)
    ``{prompt: str, completion: str}`` read as a chat turn; ``<|endoftext|>`` terminators are removed.

Coati formats take an optional ``system`` column on single-turn rows. Their outputs use TRL's
conversational shape (``{"role": "system"|"user"|"assistant", "content": str}``):

* SFT: ``{prompt: [msgs ending with user], completion: [assistant msgs]}``, or
  ``{messages: [msgs ending with assistant]}`` for conversations;
* preference: ``{prompt: [msgs], chosen: [assistant msgs], rejected: [assistant msgs]}``;
* prompt (PPO): ``{prompt: [msgs ending with user]}``;
* text: ``{text: str}``.

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
    "trl": "{text} / {messages: [{role, content}]} / {conversations: [{from, value}]} / {prompt, completion} / "
    "{prompt, chosen, rejected} / {chosen, rejected} / {prompt}",
    "text": "{text}",
    "alpaca": "{instruction, input, output, id}",
    "coati_conversation": "{messages: [{from, content}]}",
    "coati_preference": "{context, chosen, rejected} (message lists)",
    "hh": "{prompt, response, chosen, rejected} (rm-static) or {chosen, rejected} (whole HH dialogues); format='hh' only",
    "self_instruct": "{prompt, completion} (strings) read as chat; format='self_instruct' only",
}

TARGETS = ("sft", "preference", "prompt", "text")

#: Columns TRL's trainers read besides the data itself; kept on every converted row that has them.
PASSTHROUGH = ("tools", "chat_template_kwargs", "margin", "images", "image")

EOT = "<|endoftext|>"


# --- which format a row is ----------------------------------------------------------------


def is_messages(value: Any) -> bool:
    """A list of TRL-style messages: its first item is a dict with a ``role`` (TRL's own test)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and value[0].get("role") is not None


def is_from_value(value: Any) -> bool:
    """TRL's ShareGPT shape: messages keyed ``from``/``value``."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and "from" in value[0] and "value" in value[0]


def _text_or_messages(value: Any) -> bool:
    return isinstance(value, str) or is_messages(value)


def detect_format(columns: Iterable[str], example: Mapping[str, Any] | None = None, text_column: str = "text") -> str:
    """Name the format of a dataset from its column names and an example row (its first).

    TRL's formats take precedence (see the module docstring): the answer is ``"trl"`` (or
    ``"text"`` for a ``text_column`` column) for every row TRL reads, and a Coati format only for
    rows TRL cannot read. ``hh`` and ``self_instruct`` are never detected; they are chosen with
    ``format=``.

    Raises :class:`DataFormatError` listing the columns found and the formats expected.
    """
    cols = set(columns)
    ex = example or {}
    if {"chosen", "rejected"} <= cols:
        if "context" in cols or not _text_or_messages(ex.get("chosen")):
            return "coati_preference"
        return "trl"
    if "messages" in cols:
        return "trl" if is_messages(ex.get("messages")) else "coati_conversation"
    if "conversations" in cols:
        return "trl" if is_from_value(ex.get("conversations")) else "coati_conversation"
    if "prompt" in cols:
        return "trl"
    if "instruction" in cols:
        return "alpaca"
    if text_column in cols:
        return "text"
    expected = "; ".join(f"{name} {cols_}" for name, cols_ in FORMATS.items())
    raise DataFormatError(f"cannot detect the data format from columns {sorted(cols)}; expected one of: {expected}")


def trl_reads(columns: Iterable[str], example: Mapping[str, Any], target: str, text_column: str = "text") -> bool:
    """True when TRL's own trainer for ``target`` reads these rows as they are.

    ``sft`` (SFTTrainer): pre-tokenized ``input_ids``, ``text_column`` text, ``messages`` with
    roles, ShareGPT ``conversations``, or ``prompt``/``completion``. ``preference``
    (RewardTrainer): pre-tokenized ``chosen_ids``/``rejected_ids`` (or the older
    ``chosen_input_ids``/``rejected_input_ids``), or ``chosen``/``rejected`` (with or without
    ``prompt``) as text or messages. ``prompt``: ``input_ids`` or ``prompt``.
    """
    cols = set(columns)
    if target == "sft":
        if "input_ids" in cols or isinstance(example.get(text_column), str):
            return True
        if is_messages(example.get("messages")) or is_from_value(example.get("conversations")):
            return True
        return {"prompt", "completion"} <= cols and _text_or_messages(example.get("prompt"))
    if target == "preference":
        if {"chosen_ids", "rejected_ids"} <= cols or {"chosen_input_ids", "rejected_input_ids"} <= cols:
            return True
        return {"chosen", "rejected"} <= cols and "context" not in cols and _text_or_messages(example.get("chosen"))
    if target == "prompt":
        return "input_ids" in cols or _text_or_messages(example.get("prompt"))
    return False


# --- TRL rows: checked, kept verbatim --------------------------------------------------------


def _trl_side(row: dict[str, Any], key: str, what: str) -> str | list:
    """A TRL text-or-messages field, unchanged; only its type and non-emptiness are checked."""
    value = row.get(key)
    if value is None:
        raise RowProblem(key, "field is missing")
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(key, f"empty {what}")
        return value
    if not isinstance(value, list):
        raise RowProblem(key, f"expected a string or a list of messages, got {type_name(value)}")
    if not value:
        raise RowProblem(key, "empty conversation: no messages")
    for i, msg in enumerate(value, 1):
        if not isinstance(msg, Mapping):
            raise RowProblem(key, f"message {i}: expected an object with role and content, got {type_name(msg)}")
        if not isinstance(msg.get("role"), str):
            raise RowProblem(key, f"message {i}: missing 'role' (TRL's messages are {{'role', 'content'}})")
    return value


def _system(row: dict[str, Any]) -> list[Message]:
    value = row.get("system")
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if not isinstance(value, str):
        raise RowProblem("system", f"expected a string, got {type_name(value)}")
    return [message("system", value.strip())]


def _as_chat(row: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """``strings_as_chat``: string prompts become user turns, string replies assistant turns."""
    out = dict(out)
    if isinstance(out.get("prompt"), str):
        out["prompt"] = _system(row) + [message("user", out["prompt"].strip())]
    for key in ("completion", "chosen", "rejected"):
        if isinstance(out.get(key), str):
            out[key] = [message("assistant", out[key].strip())]
    return out


def _extract_prompt(chosen, rejected) -> dict[str, Any]:
    """TRL's reading of an implicit-prompt pair: the shared beginning is the prompt."""
    from trl.data_utils import extract_prompt

    return extract_prompt({"chosen": chosen, "rejected": rejected})


def _trl_pair(row: dict[str, Any]) -> dict[str, Any]:
    out = {"chosen": _trl_side(row, "chosen", "completion"), "rejected": _trl_side(row, "rejected", "completion")}
    if "prompt" in row and row["prompt"] is not None:
        out = {"prompt": _trl_side(row, "prompt", "prompt"), **out}
    return out


def _trl_chatml(row: dict[str, Any]) -> list:
    """``conversations`` in TRL's ShareGPT shape, renamed as TRL renames it (roles kept)."""
    from trl.data_utils import maybe_convert_to_chatml

    value = row.get("conversations")
    if not isinstance(value, list) or not value:
        raise RowProblem("conversations", f"expected a list of messages, got {type_name(value)}")
    for i, msg in enumerate(value, 1):
        if not (isinstance(msg, Mapping) and isinstance(msg.get("from"), str) and "value" in msg):
            raise RowProblem("conversations", f"message {i}: expected an object with 'from' and 'value'")
    return maybe_convert_to_chatml({"conversations": value})["messages"]


def looks_like_hh(example: Mapping[str, Any]) -> bool:
    """Strings holding Anthropic HH dialogue markers (read as TRL's raw text unless format='hh')."""
    return any(isinstance(example.get(k), str) and "Human:" in example[k] and "Assistant:" in example[k] for k in ("prompt", "chosen"))


def _without_final_replies(messages: list) -> list:
    end = len(messages)
    while end and messages[end - 1].get("role") == "assistant":
        end -= 1
    return messages[:end]


def _trl_table(columns: set[str], strings_as_chat: bool) -> dict[str, Converter]:
    chat = _as_chat if strings_as_chat else (lambda row, out: out)

    if {"chosen", "rejected"} <= columns:

        def preference(row):
            pair = _trl_pair(row)
            if "prompt" not in pair and strings_as_chat and isinstance(pair["chosen"], str):
                pair = _extract_prompt(pair["chosen"], pair["rejected"])
            return chat(row, pair)

        def explicit(row):
            pair = _trl_pair(row)
            return pair if "prompt" in pair else _extract_prompt(pair["chosen"], pair["rejected"])

        def sft(row):
            pair = explicit(row)
            return chat(row, {"prompt": pair["prompt"], "completion": pair["chosen"]})

        return {"preference": preference, "sft": sft, "prompt": lambda row: chat(row, {"prompt": explicit(row)["prompt"]})}
    if "messages" in columns or "conversations" in columns:
        key = "messages" if "messages" in columns else "conversations"

        def messages(row):
            return _trl_side(row, "messages", "conversation") if key == "messages" else _trl_chatml(row)

        def prompt(row):
            kept = _without_final_replies(messages(row))
            if not kept:
                raise RowProblem(key, "no turn before the assistant's reply to use as the prompt")
            return {"prompt": kept}

        return {"sft": lambda row: {"messages": messages(row)}, "prompt": prompt}
    prompt_only = lambda row: chat(row, {"prompt": _trl_side(row, "prompt", "prompt")})  # noqa: E731
    if "completion" in columns:
        sft = lambda row: chat(row, {"prompt": _trl_side(row, "prompt", "prompt"), "completion": _trl_side(row, "completion", "completion")})  # noqa: E731
        return {"sft": sft, "prompt": prompt_only}
    return {"prompt": prompt_only}


# --- Coati rows: normalised into conversations -----------------------------------------------


def _strip_eot(text: str) -> str:
    text = text.rstrip()
    while text.endswith(EOT):
        text = text[: -len(EOT)].rstrip()
    return text


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
        msgs = _without_final_replies(_conversation(row, key))  # the reply is not part of the prompt
        check_turns(msgs, key, last="user")
        return {"prompt": msgs}

    return convert


def _pair(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


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


def _coati_pair(row):
    """ColossalChat pairs: ``context`` + replies, or whole conversations sharing their first turns."""
    if "context" in row:
        msgs = to_messages(row.get("context"), "context")
        check_turns(msgs, "context", first="user", last="user")
        return _pair(msgs, completion_messages(row.get("chosen"), "chosen"), completion_messages(row.get("rejected"), "rejected"))
    chosen, rejected = to_messages(row.get("chosen"), "chosen"), to_messages(row.get("rejected"), "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1
    if not shared:
        raise RowProblem("chosen", "no shared user turn with 'rejected' to use as the prompt")
    check_turns(chosen[:shared], "chosen", last="user")
    for key, rest in (("chosen", chosen[shared:]), ("rejected", rejected[shared:])):
        if not rest:
            raise RowProblem(key, "empty completion")
        check_turns(rest, key, first="assistant", last="assistant")
    return _pair(chosen[:shared], chosen[shared:], rejected[shared:])


def _text(row):
    """Pretraining text (the PTX mix): stripped, must not be empty."""
    return {"text": text_field(row, "text", what="text")}


def _sft_text(text_key: str) -> Converter:
    """TRL's language-modelling rows: the text as written (TRL adds the EOS)."""

    def convert(row):
        value = row.get(text_key)
        if not isinstance(value, str):
            raise RowProblem(text_key, "field is missing" if value is None else f"expected a string, got {type_name(value)}")
        if not value.strip():
            raise RowProblem(text_key, "empty text")
        return {text_key: value}

    return convert


def _table(fmt: str, columns: set[str], strings_as_chat: bool, text_column: str) -> dict[str, Converter]:
    if fmt == "trl":
        return _trl_table(columns, strings_as_chat)
    if fmt == "text":
        return {"text": _text, "sft": _sft_text(text_column)}
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
        def sft(row):
            pair = _coati_pair(row)
            return {"prompt": pair["prompt"], "completion": pair["chosen"]}

        return {"preference": _coati_pair, "sft": sft, "prompt": lambda row: {"prompt": _coati_pair(row)["prompt"]}}
    raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of: {', '.join(FORMATS)}")


_WHAT = {
    "sft": "SFT examples (prompt/completion, messages or text)",
    "preference": "preference pairs (chosen/rejected)",
    "prompt": "prompts",
    "text": "plain text (load_pretrain_dataset expects a .txt file or rows with a 'text' column)",
}


def converter(fmt: str, target: str, columns: Iterable[str], *, strings_as_chat: bool = False, text_column: str = "text") -> Converter:
    """The row converter from format ``fmt`` to output ``target`` (one of :data:`TARGETS`).

    The converter also carries the :data:`PASSTHROUGH` columns of a row over to its output.
    Raises :class:`DataFormatError` when the format cannot supply that target (e.g.
    preference pairs from SFT data).
    """
    table = _table(fmt, set(columns), strings_as_chat, text_column)
    if target not in table:
        raise DataFormatError(f"format {fmt!r} (columns {sorted(set(columns))}) has no {_WHAT[target]}")
    convert = table[target]

    def with_passthrough(row):
        out = convert(row)
        out.update({key: row[key] for key in PASSTHROUGH if row.get(key) is not None})
        return out

    return with_passthrough

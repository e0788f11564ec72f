"""Tests for coati_hf.data: readers, format conversion, errors, skip mode, detection, samples."""

from __future__ import annotations

import csv
import json
import logging
import re

import datasets
import pytest

from coati_hf.data import (
    SAMPLE_FILES,
    DataFormatError,
    detect_format,
    load_preference_dataset,
    load_pretrain_dataset,
    load_prompt_dataset,
    load_sample,
    load_sft_dataset,
    sample_path,
)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in row.items()})
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataFormatError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- good input: each format -------------------------------------------------------------


def test_self_instruct_strips_terminators(tmp_path):
    path = write_jsonl(
        tmp_path / "si.jsonl",
        [
            {"prompt": "Name a colour.<|endoftext|>", "completion": " Blue.<|endoftext|><|endoftext|>\n"},
            {"prompt": "说一个数字。", "completion": "七。<|endoftext|>"},
        ],
    )
    ds = load_sft_dataset(path, format="self_instruct")
    assert ds.column_names == ["prompt", "completion"]
    assert ds[0] == {"prompt": [U("Name a colour.")], "completion": [A("Blue.")]}
    assert ds[1] == {"prompt": [U("说一个数字。")], "completion": [A("七。")]}
    assert load_prompt_dataset(path, format="self_instruct")[0] == {"prompt": [U("Name a colour.")]}


def test_string_prompt_completion_is_trl_standard_text_kept_verbatim(tmp_path):
    # TRL's standard format: plain text, tokenized as written (the completion's leading space matters).
    path = write_jsonl(tmp_path / "std.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    assert load_sft_dataset(path).to_list() == [{"prompt": "The sky is", "completion": " blue."}]
    assert load_prompt_dataset(path).to_list() == [{"prompt": "The sky is"}]
    # Opting in puts the strings into chat turns (the system column becomes the system message).
    rows = [{"prompt": "Name a colour.", "completion": "Blue.", "system": "Be brief."}]
    assert load_sft_dataset(rows, strings_as_chat=True)[0] == {"prompt": [S("Be brief."), U("Name a colour.")], "completion": [A("Blue.")]}
    assert load_prompt_dataset(rows, strings_as_chat=True)[0] == {"prompt": [S("Be brief."), U("Name a colour.")]}


def test_alpaca_joins_instruction_and_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "id": 0},
                {"instruction": "Give a tip for sleeping well.", "input": "", "output": "Keep a schedule.", "id": 1},
                {"instruction": "Say hi.", "input": "<noinput>", "output": "Hi!", "id": 2},
            ]
        ),
        encoding="utf-8",
    )
    ds = load_sft_dataset(path)
    assert ds[0] == {"prompt": [U("Translate to French.\n\nGood morning")], "completion": [A("Bonjour")]}
    assert ds[1] == {"prompt": [U("Give a tip for sleeping well.")], "completion": [A("Keep a schedule.")]}
    assert ds[2]["prompt"] == [U("Say hi.")]
    assert "id" not in ds.column_names


def test_alpaca_prompts_without_output():
    # Coati's prompt sets are InstructionWild rows without an output.
    ds = load_prompt_dataset([{"instruction": "Describe a cat.", "id": 3}, {"instruction": "Sum", "input": "2+2"}])
    assert ds["prompt"] == [[U("Describe a cat.")], [U("Sum\n\n2+2")]]


def test_hh_rm_static_rows():
    row = {
        "prompt": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?\n\nAssistant:",
        "response": " 4.",
        "chosen": " 4.",
        "rejected": " Figure it out.",
    }
    ds = load_preference_dataset([row], format="hh")
    assert ds[0] == {
        "prompt": [U("Hi there"), A("Hello! How can I help?"), U("What is 2+2?")],
        "chosen": [A("4.")],
        "rejected": [A("Figure it out.")],
    }
    assert load_sft_dataset([row], format="hh")[0] == {"prompt": ds[0]["prompt"], "completion": [A("4.")]}
    assert load_prompt_dataset([row], format="hh")[0] == {"prompt": ds[0]["prompt"]}
    # Without format="hh" the row is TRL's standard explicit-prompt format: the texts as written.
    assert load_preference_dataset([row])[0] == {"prompt": row["prompt"], "chosen": " 4.", "rejected": " Figure it out."}


def test_hh_original_splits_shared_prefix():
    chosen = "\n\nHuman: Is the sea salty?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: Rivers carry dissolved minerals into it."
    rejected = "\n\nHuman: Is the sea salty?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: No idea."
    ds = load_preference_dataset([{"chosen": chosen, "rejected": rejected}], format="hh")
    assert ds[0] == {
        "prompt": [U("Is the sea salty?"), A("Yes."), U("Why?")],
        "chosen": [A("Rivers carry dissolved minerals into it.")],
        "rejected": [A("No idea.")],
    }


def test_hh_original_replies_sharing_first_letters():
    # The shared prefix runs into the replies ("S"); the split must still be at "Assistant:".
    ds = load_preference_dataset([{"chosen": "Human: Hello\n\nAssistant: Sure thing", "rejected": "Human: Hello\n\nAssistant: Stop"}], format="hh")
    assert ds[0]["prompt"] == [U("Hello")]
    assert ds[0]["chosen"] == [A("Sure thing")] and ds[0]["rejected"] == [A("Stop")]


def test_coati_conversation_key_and_role_variants(tmp_path):
    rows = [
        {"messages": [{"from": "system", "content": "Be brief."}, {"from": "human", "content": "Hi"}, {"from": "gpt", "content": "Hello!"}]},
        {"messages": [{"role": "User", "value": "你好"}, {"role": "assistant", "value": " 你好！"}, {"from": "user", "content": "再见"}, {"from": "assistant", "content": "再见！"}]},
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    ds = load_sft_dataset(path)
    assert ds.column_names == ["messages"]
    assert ds[0] == {"messages": [S("Be brief."), U("Hi"), A("Hello!")]}
    assert ds[1] == {"messages": [U("你好"), A("你好！"), U("再见"), A("再见！")]}
    # As prompts: the final assistant reply is dropped, the system message kept.
    prompts = load_prompt_dataset(path)
    assert prompts["prompt"] == [[S("Be brief."), U("Hi")], [U("你好"), A("你好！"), U("再见")]]


def test_coati_preference_rows():
    row = {
        "context": [{"from": "user", "content": "Tell me a fact."}],
        "chosen": [{"from": "assistant", "content": "Honey never spoils."}],
        "rejected": [{"from": "assistant", "content": "Whatever."}],
    }
    ds = load_preference_dataset([row])
    assert ds[0] == {"prompt": [U("Tell me a fact.")], "chosen": [A("Honey never spoils.")], "rejected": [A("Whatever.")]}
    assert load_sft_dataset([row])[0] == {"prompt": [U("Tell me a fact.")], "completion": [A("Honey never spoils.")]}


def test_trl_rows_pass_through_verbatim():
    assert load_sft_dataset([{"prompt": [S("sys"), U("q")], "completion": [A("a")]}])[0] == {
        "prompt": [S("sys"), U("q")],
        "completion": [A("a")],
    }
    assert load_sft_dataset([{"messages": [U("q"), A("a")]}])[0] == {"messages": [U("q"), A("a")]}
    assert load_preference_dataset([{"prompt": "q", "chosen": " good", "rejected": " bad"}])[0] == {
        "prompt": "q",
        "chosen": " good",
        "rejected": " bad",
    }
    assert load_prompt_dataset([{"prompt": "Write a haiku."}])[0] == {"prompt": "Write a haiku."}
    assert load_prompt_dataset([{"prompt": [U("Write a haiku.")]}])[0] == {"prompt": [U("Write a haiku.")]}
    # ShareGPT rows are read as TRL reads them: keys renamed, roles kept.
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert load_sft_dataset([sharegpt])[0] == {"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}


def test_trl_implicit_prompt_preferences_keep_trl_meaning():
    # Conversational and standard implicit-prompt pairs stay as they are (TRL tokenizes them whole) ...
    row = {"chosen": [U("q"), A("a1"), U("q2"), A("good")], "rejected": [U("q"), A("a1"), U("q2"), A("bad")]}
    assert load_preference_dataset([row])[0] == row
    text_row = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert load_preference_dataset([text_row])[0] == text_row
    # ... including Anthropic HH dialogues, which are TRL's standard format too (format="hh" reads them as chat).
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    assert load_preference_dataset([hh])[0] == hh
    # Where a prompt is needed, it is TRL's: the shared beginning.
    assert load_prompt_dataset([row])[0] == {"prompt": [U("q"), A("a1"), U("q2")]}
    assert load_sft_dataset([text_row])[0] == {"prompt": "The sky is", "completion": " blue."}


def test_tool_calls_and_tools_column_pass_through():
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}}
    tools = json.dumps([{"type": "function", "function": {"name": "multiply", "parameters": {}}}])
    messages = [U("What is 2*3?"), {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "name": "multiply", "content": "6"}, A("6")]
    ds = load_sft_dataset([{"messages": messages, "tools": tools, "chat_template_kwargs": {"enable_thinking": False}}])
    assert ds[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "multiply"
    assert ds[0]["messages"][2]["role"] == "tool"
    assert ds[0]["tools"] == tools and ds[0]["chat_template_kwargs"] == {"enable_thinking": False}
    pair = {"prompt": [U("What is 2*3?")], "chosen": [{"role": "assistant", "tool_calls": [call]}], "rejected": [A("7")], "tools": tools}
    assert load_preference_dataset([pair])[0]["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 3}


def test_identical_pairs_are_dropped_with_a_count(caplog):
    rows = [{"prompt": "q", "chosen": " same", "rejected": " same"}] * 2 + [{"prompt": "q", "chosen": " good", "rejected": " bad"}]
    with caplog.at_level(logging.WARNING, logger="coati_hf.data"):
        ds = load_preference_dataset(rows)
    assert ds.to_list() == [rows[2]]
    assert "dropped 2 of 3 preference pairs whose chosen and rejected are identical" in caplog.text
    assert "all 2 preference pairs have identical" in error_of(load_preference_dataset, rows[:2])


def test_pretrain_txt_split_into_blocks(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First paragraph,\nstill first.\n\n\n  \nSecond 第二段。\n\nThird.\n", encoding="utf-8")
    ds = load_pretrain_dataset(path)
    assert ds["text"] == ["First paragraph,\nstill first.", "Second 第二段。", "Third."]
    assert load_pretrain_dataset([{"text": " Some text. "}])["text"] == ["Some text."]
    # TRL's language-modelling SFT format passes through too.
    assert load_sft_dataset(path)["text"] == ds["text"]


# --- file types and sources ----------------------------------------------------------------

PAIRS = [
    {"context": [{"from": "user", "content": "q1"}], "chosen": [{"from": "assistant", "content": "good1"}], "rejected": [{"from": "assistant", "content": "bad1"}]},
    {"context": [{"from": "user", "content": "问题二"}], "chosen": [{"from": "assistant", "content": "好"}], "rejected": [{"from": "assistant", "content": "不知道"}]},
]
PAIRS_OUT = [
    {"prompt": [U("q1")], "chosen": [A("good1")], "rejected": [A("bad1")]},
    {"prompt": [U("问题二")], "chosen": [A("好")], "rejected": [A("不知道")]},
]


@pytest.mark.parametrize("kind", ["json", "jsonl", "json_lines_named_json", "csv", "parquet", "dataset", "dataset_dict"])
def test_every_source_kind_reads_the_same(tmp_path, kind):
    if kind == "json":
        source = tmp_path / "p.json"
        source.write_text(json.dumps(PAIRS, ensure_ascii=False), encoding="utf-8")
    elif kind == "jsonl":
        source = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    elif kind == "json_lines_named_json":
        source = write_jsonl(tmp_path / "p.json", PAIRS)
    elif kind == "csv":
        source = write_csv(tmp_path / "p.csv", PAIRS)
    elif kind == "parquet":
        source = tmp_path / "p.parquet"
        datasets.Dataset.from_list(PAIRS).to_parquet(str(source))
    elif kind == "dataset":
        source = datasets.Dataset.from_list(PAIRS)
    else:
        source = datasets.DatasetDict({"test": datasets.Dataset.from_list(PAIRS)})
    ds = load_preference_dataset(source, split="test")
    assert ds.to_list() == PAIRS_OUT


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("\ufeffprompt,completion\nq,a\n", encoding="utf-8")
    assert load_sft_dataset(path).to_list() == [{"prompt": "q", "completion": "a"}]


def test_csv_string_columns(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"instruction": "Add", "input": "1+1", "output": "2"}, {"instruction": "Hi", "input": "", "output": "Hello"}])
    assert load_sft_dataset(path).to_list() == [
        {"prompt": [U("Add\n\n1+1")], "completion": [A("2")]},
        {"prompt": [U("Hi")], "completion": [A("Hello")]},
    ]


def test_hub_name_passes_through_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_sft_dataset("someone/some-data", split="validation")
    assert calls == [("someone/some-data", "validation")]
    assert ds[0] == {"prompt": "p", "completion": "c"}


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not call the Hub"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_sft_dataset(str(tmp_path / "nope.jsonl"))


# --- malformed input ---------------------------------------------------------------------------


def test_empty_chosen_names_file_row_and_field(tmp_path):
    bad = dict(PAIRS[0], chosen=[{"from": "assistant", "content": "   "}])
    path = write_jsonl(tmp_path / "data.jsonl", [PAIRS[0], bad, PAIRS[1]])
    with pytest.raises(DataFormatError) as info:
        load_preference_dataset(path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "data.jsonl, row 2, field 'chosen': empty completion" in msg
    assert (info.value.row, info.value.field, info.value.source) == (2, "chosen", str(path))
    assert isinstance(info.value, ValueError)


def test_empty_string_rejected_in_hh_rows():
    row = {"prompt": "\n\nHuman: q\n\nAssistant:", "response": "a", "chosen": "a", "rejected": "  "}
    assert error_of(load_preference_dataset, [row]) == "<in-memory dataset>, row 1, field 'rejected': empty completion"


def test_invalid_json_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", PAIRS, extra_lines=['{"context": [broken'])
    msg = error_of(load_preference_dataset, path)
    assert re.search(r"data\.jsonl, line 3: invalid JSON", msg), msg


def test_missing_field_wrong_type_and_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "ok", "output": "fine"}, {"instruction": "no output"}])
    assert "a.jsonl, row 2, field 'output': field is missing" in error_of(load_sft_dataset, path)

    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "completion": 42}])
    assert "b.jsonl, row 1, field 'completion': expected a string or a list of messages, got integer" in error_of(load_sft_dataset, path)

    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "  ", "completion": "a"}])
    assert "c.jsonl, row 1, field 'prompt': empty prompt" in error_of(load_sft_dataset, path)

    path = write_jsonl(tmp_path / "d.jsonl", [PAIRS[0], ["not", "an", "object"]])
    assert "d.jsonl, row 2: expected an object" in error_of(load_preference_dataset, path)


def test_roles_out_of_order():
    rows = [{"messages": [{"from": "user", "content": "a"}, {"from": "user", "content": "b"}, {"from": "assistant", "content": "c"}]}]
    msg = error_of(load_sft_dataset, rows)
    assert msg.startswith("<in-memory dataset>, row 1, field 'messages': roles out of order at message 2")
    assert "expected 'assistant'" in msg

    rows = [{"messages": [{"from": "user", "content": "a"}, {"from": "system", "content": "late"}]}]
    assert "'system' is only allowed as the first message" in error_of(load_sft_dataset, rows)

    rows = [{"messages": [{"from": "user", "content": "a"}, {"from": "assistant", "content": "b"}, {"from": "user", "content": "c"}]}]
    assert "must end with an assistant turn" in error_of(load_sft_dataset, rows)

    rows = [dict(PAIRS[0], context=[{"from": "user", "content": "q"}, {"from": "assistant", "content": "a"}])]
    assert "field 'context': must end with a user turn" in error_of(load_preference_dataset, rows)

    rows = [{"messages": [{"from": "narrator", "content": "x"}]}]
    assert "unknown role 'narrator'" in error_of(load_sft_dataset, rows)


def test_csv_error_reports_row_and_line(tmp_path):
    path = write_csv(tmp_path / "x.csv", [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": ""}])
    assert "x.csv, row 2 (line 3), field 'completion': empty completion" in error_of(load_sft_dataset, path)


def test_format_that_cannot_supply_the_target():
    msg = error_of(load_preference_dataset, [{"instruction": "i", "output": "o"}])
    assert "format 'alpaca'" in msg and "no preference pairs" in msg
    assert "load_pretrain_dataset expects" in error_of(load_pretrain_dataset, [{"prompt": "p"}])


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_error"):
        load_sft_dataset([{"prompt": "p", "completion": "c"}], on_error="ignore")
    with pytest.raises(ValueError, match="unknown format 'sharegpt'"):
        load_sft_dataset([{"prompt": "p", "completion": "c"}], format="sharegpt")
    with pytest.raises(ValueError, match="unknown sample"):
        sample_path("nonexistent")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert error_of(load_sft_dataset, path) == f"{path}: no rows found"


# --- skip mode -------------------------------------------------------------------------------------


def test_skip_mode_drops_bad_rows_and_logs_count(tmp_path, caplog):
    bad_chosen = dict(PAIRS[0], chosen=[{"from": "assistant", "content": ""}])
    bad_context = dict(PAIRS[1], context="not a list")
    path = write_jsonl(tmp_path / "mixed.jsonl", [PAIRS[0], bad_chosen, PAIRS[1], bad_context], extra_lines=["{oops"])
    with caplog.at_level(logging.WARNING, logger="coati_hf.data"):
        ds = load_preference_dataset(path, on_error="skip")
    assert ds.to_list() == PAIRS_OUT
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 of 5 rows" in warnings[0]
    assert "row 2, field 'chosen': empty completion" in warnings[0]
    assert "row 4, field 'context': expected a list of messages, got string" in warnings[0]
    assert "line 5: invalid JSON" in warnings[0]


def test_skip_mode_without_problems_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="coati_hf.data"):
        assert len(load_preference_dataset(PAIRS, on_error="skip")) == 2
    assert not caplog.records


def test_skip_mode_with_no_usable_row_raises():
    msg = error_of(load_sft_dataset, [{"prompt": "", "completion": "a"}, {"prompt": "q", "completion": ""}], on_error="skip")
    assert "no usable rows (all 2 malformed)" in msg and "row 1, field 'prompt'" in msg


# --- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns, example, expected",
    [
        (["prompt", "completion"], {"prompt": "p", "completion": "c"}, "trl"),
        (["prompt", "completion"], {"prompt": [U("p")], "completion": [A("c")]}, "trl"),
        (["instruction", "input", "output", "id"], None, "alpaca"),
        (["instruction", "id"], None, "alpaca"),
        (["prompt", "response", "chosen", "rejected"], {"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": "a"}, "trl"),
        (["chosen", "rejected"], {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"}, "trl"),
        (["chosen", "rejected"], {"chosen": [{"from": "user", "content": "a"}], "rejected": []}, "coati_preference"),
        (["chosen", "rejected"], {"chosen": [U("a"), A("b")], "rejected": [U("a"), A("c")]}, "trl"),
        (["prompt", "chosen", "rejected"], {"prompt": "q", "chosen": "a", "rejected": "b"}, "trl"),
        (["prompt", "chosen", "rejected"], {"prompt": "Human: q\n\nAssistant:", "chosen": "a", "rejected": "b"}, "trl"),
        (["conversations"], {"conversations": [{"from": "human", "value": "x"}]}, "trl"),
        (["conversations"], {"conversations": [{"from": "human", "content": "x"}]}, "coati_conversation"),
        (["messages"], {"messages": [{"from": "user", "content": "x"}]}, "coati_conversation"),
        (["messages"], {"messages": [U("x")]}, "trl"),
        (["context", "chosen", "rejected"], None, "coati_preference"),
        (["prompt"], None, "trl"),
        (["text"], None, "text"),
    ],
)
def test_detect_format(columns, example, expected):
    assert detect_format(columns, example) == expected


def test_detect_format_unknown_lists_columns_and_formats():
    with pytest.raises(DataFormatError) as info:
        detect_format(["question", "answer"])
    msg = str(info.value)
    assert "['answer', 'question']" in msg
    for name in ("self_instruct", "alpaca", "hh", "coati_conversation", "coati_preference", "trl", "text"):
        assert name in msg
    # Through a loader the source is named too.
    assert error_of(load_sft_dataset, [{"question": "q", "answer": "a"}]).startswith("<in-memory dataset>: cannot detect")


def test_detection_sees_columns_missing_from_the_first_row(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "i"}, {"instruction": "j", "input": "k", "output": "o"}]), encoding="utf-8")
    assert "row 1, field 'output': field is missing" in error_of(load_sft_dataset, path)


# --- shipped samples -------------------------------------------------------------------------------

CJK = re.compile(r"[\u4e00-\u9fff]")
ENGLISH = re.compile(r"\b(the|is|and|what|how)\b", re.IGNORECASE)


def _all_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_all_text(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_all_text(v) for v in value)
    return ""


@pytest.mark.parametrize("name, minimum", [("sft", 100), ("preferences", 100), ("prompts", 100), ("pretrain", 4)])
def test_samples_load_meet_minimums_and_are_bilingual(name, minimum):
    path = sample_path(name)
    assert path.is_file() and path.name == SAMPLE_FILES[name]
    ds = load_sample(name)
    assert len(ds) >= minimum
    rows = ds.to_list()
    n_chinese = sum(bool(CJK.search(_all_text(r))) for r in rows)
    n_english = sum(bool(ENGLISH.search(_all_text(r))) and not CJK.search(_all_text(r)) for r in rows)
    assert n_chinese >= len(rows) // 4 and n_english >= len(rows) // 4


def test_sft_sample_is_coati_conversation_with_multi_turn_and_system():
    assert detect_format(*_columns_and_first(sample_path("sft"))) == "coati_conversation"
    rows = load_sample("sft")["messages"]
    assert sum(len([m for m in msgs if m["role"] == "assistant"]) > 1 for msgs in rows) >= 10
    assert any(msgs[0]["role"] == "system" for msgs in rows)


def test_pretrain_sample_is_a_few_kb():
    assert 2_000 <= sample_path("pretrain").stat().st_size <= 20_000


def _columns_and_first(path):
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    return list(first), first


def test_preference_sample_has_consistent_lexical_cues():
    assert detect_format(*_columns_and_first(sample_path("preferences"))) == "coati_preference"
    ds = load_sample("preferences")
    cues = ("whatever", "i don't care", "不知道", "随便")
    chosen = [c[0]["content"] for c in ds["chosen"]]
    rejected = [r[0]["content"] for r in ds["rejected"]]
    assert all(any(cue in r.lower() for cue in cues) for r in rejected)
    assert not any(any(cue in c.lower() for cue in cues) for c in chosen)
    assert all(len(c) > len(r) for c, r in zip(chosen, rejected))
    assert len(set(rejected)) >= 20  # varied templates, not one repeated string
    assert len(set(chosen)) == len(chosen)


# --- bytes that are not UTF-8 -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "txt"])
def test_invalid_utf8_names_file_and_line_and_skip_mode_skips_it(tmp_path, suffix, caplog):
    lines = {
        "jsonl": [b'{"prompt": "q1", "completion": " a1"}', b'{"prompt": "caf\xe9", "completion": " a2"}', b'{"prompt": "q3", "completion": " a3"}'],
        "csv": [b"prompt,completion", b"q1, a1", b"caf\xe9, a2", b"q3, a3"],
        "txt": [b"First block.", b"", b"caf\xe9 latin-1", b"", b"Third block."],
    }[suffix]
    bad_line = next(i for i, line in enumerate(lines, 1) if b"\xe9" in line)
    path = tmp_path / f"latin1.{suffix}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    load = load_pretrain_dataset if suffix == "txt" else load_sft_dataset
    msg = error_of(load, path)
    assert msg.startswith(f"{path}, line {bad_line}: not valid UTF-8 (byte 0xe9"), msg
    with caplog.at_level(logging.WARNING, logger="coati_hf.data"):
        ds = load(path, on_error="skip")
    assert len(ds) == 2 and "caf" not in json.dumps(ds.to_list())
    assert f"line {bad_line}: not valid UTF-8" in caplog.text


def test_invalid_utf8_in_a_json_document_names_the_line(tmp_path):
    path = tmp_path / "doc.json"
    path.write_bytes(b'[\n {"prompt": "q", "completion": " a"},\n {"prompt": "caf\xe9", "completion": " b"}\n]\n')
    assert error_of(load_sft_dataset, path, on_error="skip").startswith(f"{path}, line 3: not valid UTF-8 (byte 0xe9 at column 17)")


# --- datasets handed to the trainers --------------------------------------------------------------


def test_to_trl_dataset_leaves_trl_datasets_untouched_and_converts_coati_ones():
    from coati_hf.data import to_trl_dataset

    trl_rows = datasets.Dataset.from_list([{"prompt": "The sky is", "completion": " blue.", "tools": None}])
    assert to_trl_dataset(trl_rows, "sft") == (trl_rows, "trl")  # the very same object
    transformed = trl_rows.with_transform(lambda batch: batch)
    assert to_trl_dataset(transformed, "sft")[0] is transformed  # TRL's own check sees the transform
    tokenized = datasets.Dataset.from_list([{"chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3]}])
    assert to_trl_dataset(tokenized, "preference")[0] is tokenized

    coati = datasets.Dataset.from_list(PAIRS).to_iterable_dataset()
    converted, fmt = to_trl_dataset(coati, "preference")
    assert fmt == "coati_preference" and isinstance(converted, datasets.IterableDataset)
    assert list(converted) == PAIRS_OUT

    bad = datasets.Dataset.from_list([PAIRS[0], dict(PAIRS[1], chosen=[{"from": "assistant", "content": " "}])])
    with pytest.raises(DataFormatError, match=r"<in-memory dataset>, row 2, field 'chosen': empty completion"):
        to_trl_dataset(bad, "preference")


def test_require_chat_template_is_one_clear_error(smol_tokenizer):
    import copy

    from coati_hf.data import ChatTemplateError, require_chat_template

    tokenizer = copy.deepcopy(smol_tokenizer)
    require_chat_template(tokenizer, "train", {"messages": [U("q"), A("a")]})  # has one: fine
    tokenizer.chat_template = None
    require_chat_template(tokenizer, "train", {"prompt": "The sky is", "completion": " blue."})  # plain text needs none
    with pytest.raises(ChatTemplateError, match=r"^eval dataset: the rows are conversational .* has no chat template"):
        require_chat_template(tokenizer, "eval", {"prompt": [U("q")], "completion": [A("a")]})
    with pytest.raises(ValueError, match="chat_template_path"):
        require_chat_template(tokenizer, "prompts")


def test_prompt_sample_is_conversational_so_it_reads_as_chat():
    # A string prompt would be plain text (TRL's standard format); the shipped prompts are messages.
    first = json.loads(sample_path("prompts").read_text(encoding="utf-8").splitlines()[0])
    assert first["prompt"][0]["role"] == "user" and len(first["prompt"]) == 1
    assert all(row[-1]["role"] == "user" for row in load_sample("prompts")["prompt"])


def test_to_trl_dataset_reads_a_stream_that_does_not_know_its_columns():
    from coati_hf.data import to_trl_dataset

    def rows():
        yield {"chosen": "The sky is blue.", "rejected": "The sky is green."}

    stream = datasets.IterableDataset.from_generator(rows)
    assert stream.column_names is None
    assert to_trl_dataset(stream, "preference") == (stream, "trl")
    coati = datasets.IterableDataset.from_generator(lambda: iter(PAIRS))
    assert list(to_trl_dataset(coati, "preference")[0]) == PAIRS_OUT

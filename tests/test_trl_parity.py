"""coati_hf's SFT and reward trainers accept what TRL's accept, with the same meaning.

One test per class of TRL usage (issue 9), on tiny local models; the whole of TRL's own test
files is run against these classes by ``tools/trl_parity/run.py``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainingArguments

from coati_hf import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from coati_hf.data import ChatTemplateError

QWEN_TEMPLATE = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def _common(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3,
                    report_to="none", save_strategy="no", gradient_checkpointing=False, seed=0, dataset_num_proc=None)
    settings.update(overrides)
    return settings


def _sft_config(tmp_path, **overrides):
    return SFTConfig(**_common(tmp_path, **{"max_length": 128, **overrides}))


def _rm_config(tmp_path, **overrides):
    return RewardConfig(**_common(tmp_path, **{"max_length": 128, **overrides}))


@pytest.fixture
def tiny_folders(tmp_path, smol_tokenizer):
    """A tiny causal LM and a tiny reward model saved with their tokenizer, as a Hub repo would be."""
    from coati_hf.models import make_tiny_llama

    folders = {}
    for kind in ("causal_lm", "sequence_classification"):
        model, tokenizer = make_tiny_llama(kind, tokenizer=copy.deepcopy(smol_tokenizer))
        folders[kind] = tmp_path / kind
        model.save_pretrained(folders[kind])
        tokenizer.save_pretrained(folders[kind])
    return folders


# --- 1. TRL's implicit-prompt preference format -------------------------------------------------


def test_reward_trainer_reads_implicit_prompt_pairs_as_trl_does(tmp_path, tiny_reward_model):
    model, tokenizer = tiny_reward_model
    standard = Dataset.from_list([{"chosen": "The sky is blue.", "rejected": "The sky is green."}] * 2)
    trainer = RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=standard, processing_class=tokenizer)
    # TRL's meaning: the whole text, as written, plus EOS; no chat template.
    assert trainer.train_dataset[0]["chosen_ids"] == tokenizer("The sky is blue." + tokenizer.eos_token)["input_ids"]

    hh = Dataset.from_list([{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}] * 2)
    trainer = RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=hh, processing_class=tokenizer)
    assert tokenizer.decode(trainer.train_dataset[0]["rejected_ids"]) == "\n\nHuman: Hi\n\nAssistant: Go." + tokenizer.eos_token

    conversational = Dataset.from_list([{"chosen": [U("Sky?"), A("Blue.")], "rejected": [U("Sky?"), A("Green.")]}] * 2)
    trainer = RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=conversational, processing_class=tokenizer)
    expected = tokenizer.apply_chat_template([U("Sky?"), A("Blue.")], tokenize=False)
    assert tokenizer.decode(trainer.train_dataset[0]["chosen_ids"]) == expected.rstrip("\n")  # ends at EOS
    trainer.train()


def test_string_prompts_are_text_and_messages_get_the_template_in_sft(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    standard = Dataset.from_list([{"prompt": "The sky is", "completion": " blue."}] * 2)
    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=standard, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["input_ids"]) == "The sky is blue." + tokenizer.eos_token
    assert tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]) == " blue." + tokenizer.eos_token

    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path, strings_as_chat=True), train_dataset=standard, processing_class=tokenizer)
    templated = tokenizer.apply_chat_template([U("The sky is"), A("blue.")], tokenize=False)
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]) == templated


# --- 2. a model object without processing_class; 7. loader arguments ---------------------------


def test_model_object_without_processing_class_loads_its_tokenizer(tmp_path, tiny_folders, smol_tokenizer):
    policy = AutoModelForCausalLM.from_pretrained(tiny_folders["causal_lm"])
    trainer = SFTTrainer(model=policy, args=_sft_config(tmp_path), train_dataset=[{"text": "Some text."}] * 2)
    assert trainer.processing_class.get_vocab() == smol_tokenizer.get_vocab()

    reward = AutoModelForSequenceClassification.from_pretrained(tiny_folders["sequence_classification"])
    trainer = RewardTrainer(model=reward, args=_rm_config(tmp_path), train_dataset=[{"chosen": "a b", "rejected": "a c"}] * 2)
    assert trainer.processing_class.get_vocab() == smol_tokenizer.get_vocab()


def test_model_init_kwargs_reach_the_loader_and_a_new_head_is_initialised_as_coati_does(tmp_path, tiny_folders):
    trainer = SFTTrainer(model=str(tiny_folders["causal_lm"]), args=_sft_config(tmp_path, model_init_kwargs={"dtype": "float16"}),
                         train_dataset=[{"text": "Some text."}] * 2)
    assert trainer.model.dtype == torch.float16

    trainer = RewardTrainer(model=str(tiny_folders["causal_lm"]), args=_rm_config(tmp_path), train_dataset=[{"chosen": "a b", "rejected": "a c"}] * 2)
    hidden = trainer.model.config.hidden_size
    assert trainer.model.config.num_labels == 1
    assert trainer.model.score.weight.std().item() == pytest.approx(1.0 / (hidden + 1), rel=0.3)


def _remote_code_checkpoint(folder: Path, tokenizer) -> None:
    """A tiny checkpoint that loads only with trust_remote_code (as TRL's tiny-RemoteForCausalLM)."""
    import importlib.util
    import sys

    code = folder / "code"
    code.mkdir(parents=True)
    (code / "configuration_remote.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass RemoteConfig(LlamaConfig):\n    model_type = 'remote'\n"
    )
    (code / "modeling_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteForCausalLM(LlamaForCausalLM):\n    config_class = RemoteConfig\n"
    )
    (code / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("remote_pkg", code / "__init__.py", submodule_search_locations=[str(code)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["remote_pkg"] = package
    from remote_pkg.configuration_remote import RemoteConfig
    from remote_pkg.modeling_remote import RemoteForCausalLM

    RemoteConfig.register_for_auto_class()
    RemoteForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    config = RemoteConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    RemoteForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    del sys.modules["remote_pkg"]


def test_trust_remote_code_reaches_the_loader(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    _remote_code_checkpoint(tmp_path / "remote", copy.deepcopy(smol_tokenizer))
    folder = str(tmp_path / "remote" / "model")
    with pytest.raises(ValueError, match="custom code"):
        SFTTrainer(model=folder, args=_sft_config(tmp_path), train_dataset=[{"text": "Some text."}] * 2)
    trainer = SFTTrainer(model=folder, args=_sft_config(tmp_path, trust_remote_code=True), train_dataset=[{"text": "Some text."}] * 2)
    assert type(trainer.model).__name__ == "RemoteForCausalLM"


# --- 4. tool calls and a tools column -------------------------------------------------------------

TOOLS = json.dumps([{"type": "function", "function": {"name": "multiply", "description": "a*b",
                                                       "parameters": {"type": "object", "properties": {}}}}])
CALL = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}}


def test_tool_call_messages_and_tools_column_train(tmp_path, tiny_causal_lm, tiny_reward_model):
    model, tokenizer = tiny_causal_lm
    tokenizer.chat_template = QWEN_TEMPLATE
    conversation = [U("What is 2*3?"), {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "name": "multiply", "content": "6"}, A("It is 6.")]
    data = Dataset.from_list([{"messages": conversation, "tools": TOOLS}] * 2)
    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path, max_length=512), train_dataset=data, processing_class=tokenizer)
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert '"name": "multiply"' in text and "<tools>" in text and "<tool_response>\n6" in text
    trainer.train()

    reward_model, reward_tokenizer = tiny_reward_model
    reward_tokenizer.chat_template = QWEN_TEMPLATE
    pairs = Dataset.from_list([{"prompt": [U("What is 2*3?")], "chosen": [{"role": "assistant", "tool_calls": [CALL]}],
                                "rejected": [A("7")], "tools": TOOLS}] * 2)
    trainer = RewardTrainer(model=reward_model, args=_rm_config(tmp_path, max_length=512), train_dataset=pairs, processing_class=reward_tokenizer)
    assert "<tool_call>" in reward_tokenizer.decode(trainer.train_dataset[0]["chosen_ids"])


# --- 5. assistant_only_loss=True on conversational data, any chat template --------------------------


def test_assistant_only_loss_masks_every_non_assistant_turn(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm  # SmolLM2's template: no {% generation %} markers, unknown to TRL
    conversation = [U("Hi"), A("Hello!"), U("Bye"), A("Goodbye!")]
    coati_rows = [{"messages": [{"from": m["role"], "content": m["content"]} for m in conversation]}] * 2
    for data in (Dataset.from_list([{"messages": conversation}] * 2), Dataset.from_list(coati_rows), Dataset.from_list(coati_rows).to_iterable_dataset()):
        trainer = SFTTrainer(model=copy.deepcopy(model), args=_sft_config(tmp_path, assistant_only_loss=True), train_dataset=data, processing_class=tokenizer)
        row = next(iter(trainer.train_dataset))
        learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert learned.replace("\n", "") == "Hello!<|im_end|>Goodbye!<|im_end|>"
        assert trainer.args.assistant_only_loss is True
    trainer.train()

    single = Dataset.from_list([{"prompt": [U("Hi")], "completion": [A("Hello!")]}] * 2)
    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path, assistant_only_loss=True), train_dataset=single, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    assert tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]).strip() == "Hello!<|im_end|>"


# --- 6. formatting_func sees the user's rows ----------------------------------------------------------


def test_formatting_func_is_applied_to_the_users_rows(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    alpaca = [{"instruction": "Add 1 and 1.", "output": "2"}] * 2  # a Coati format, formatted by the user

    def formatting_func(row):
        return f"### Question: {row['instruction']}\n### Answer: {row['output']}"

    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=alpaca, processing_class=tokenizer, formatting_func=formatting_func)
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]) == formatting_func(alpaca[0]) + tokenizer.eos_token


# --- 7. per-row chat_template_kwargs ---------------------------------------------------------------


def test_per_row_chat_template_kwargs_reach_the_template(tmp_path, tiny_causal_lm, tiny_reward_model):
    template = "{% for m in messages %}{{ (m['role'] | upper if shout else m['role']) + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
    model, tokenizer = tiny_causal_lm
    tokenizer.chat_template = template
    rows = [{"messages": [U("hi"), A("hello")], "chat_template_kwargs": {"shout": bool(i)}} for i in range(2)]
    trainer = SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).startswith("user: hi")
    assert tokenizer.decode(trainer.train_dataset[1]["input_ids"]).startswith("USER: hi")

    reward_model, reward_tokenizer = tiny_reward_model
    reward_tokenizer.chat_template = template
    pairs = [{"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("go")], "chat_template_kwargs": {"shout": bool(i)}} for i in range(2)]
    trainer = RewardTrainer(model=reward_model, args=_rm_config(tmp_path), train_dataset=Dataset.from_list(pairs), processing_class=reward_tokenizer)
    assert reward_tokenizer.decode(trainer.train_dataset[1]["rejected_ids"]).startswith("USER: hi")


# --- 8. args as TrainingArguments or TRL's own configs -----------------------------------------------


@pytest.mark.parametrize("kind", ["training_arguments", "trl_config"])
def test_args_from_training_arguments_or_trl_configs_are_converted(tmp_path, tiny_causal_lm, tiny_reward_model, kind):
    settings = dict(output_dir=str(tmp_path / "out"), learning_rate=3e-4, max_steps=1, report_to="none", use_cpu=True)
    sft_args = TrainingArguments(**settings) if kind == "training_arguments" else trl.SFTConfig(**settings, max_length=77)
    model, tokenizer = tiny_causal_lm
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=[{"text": "Some text."}] * 2, processing_class=tokenizer)
    assert isinstance(trainer.args, SFTConfig) and trainer.args.learning_rate == 3e-4
    assert trainer.args.max_length == (77 if kind == "trl_config" else 1024)

    rm_args = TrainingArguments(**settings) if kind == "training_arguments" else trl.RewardConfig(**settings, center_rewards_coefficient=0.5)
    reward_model, reward_tokenizer = tiny_reward_model
    trainer = RewardTrainer(model=reward_model, args=rm_args, train_dataset=[{"chosen": "a b", "rejected": "a c"}] * 2, processing_class=reward_tokenizer)
    assert isinstance(trainer.args, RewardConfig) and trainer.args.learning_rate == 3e-4
    assert trainer.args.center_rewards_coefficient == (0.5 if kind == "trl_config" else None)
    trainer.train()


def test_positional_arguments_keep_trls_order(tmp_path, tiny_causal_lm):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tokenizer = tiny_causal_lm
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    # TRL's order: model, args, data_collator, train_dataset, eval_dataset, processing_class
    trainer = SFTTrainer(model, _sft_config(tmp_path), collator, Dataset.from_list([{"text": "Some text."}] * 2), None, tokenizer)
    assert trainer.data_collator is collator and trainer.processing_class is tokenizer


# --- 9. datasets with transforms; pre-tokenized preference columns ------------------------------------


def test_dataset_with_transform_gets_trls_own_answer(tmp_path, tiny_causal_lm):
    model, tokenizer = tiny_causal_lm
    data = Dataset.from_list([{"text": "Some text."}] * 2).with_transform(lambda batch: batch)
    with pytest.raises(ValueError, match=r"SFTTrainer cannot prepare a dataset that uses `Dataset.with_transform\(\)`"):
        SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=data, processing_class=tokenizer)


def test_pretokenized_preference_columns_are_accepted(tmp_path, tiny_reward_model):
    model, tokenizer = tiny_reward_model
    ids = tokenizer(["The sky is blue.", "The sky is green."])["input_ids"]
    data = Dataset.from_list([{"chosen_input_ids": ids[0], "rejected_input_ids": ids[1]}] * 2)
    with pytest.warns(FutureWarning, match="chosen_ids"):
        trainer = RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=data, processing_class=tokenizer)
    assert trainer.train_dataset[0]["chosen_ids"] == ids[0]  # the user's tokens, untouched
    trainer.train()


def test_identical_token_pairs_are_dropped_with_a_count(tmp_path, tiny_reward_model, caplog):
    model, tokenizer = tiny_reward_model
    data = Dataset.from_list([{"chosen": "same", "rejected": "same"}, {"chosen": "a b", "rejected": "a c"}])
    with caplog.at_level(logging.WARNING, logger="coati_hf.trainer_common"):
        trainer = RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=data, processing_class=tokenizer)
    assert len(trainer.train_dataset) == 1
    assert "dropped 1 of 2 preference pairs that have identical chosen and rejected tokens" in caplog.text


# --- 10. TRL's error wording, coati_hf's detail after it ------------------------------------------------


def test_num_labels_error_keeps_trls_wording(tmp_path, smol_tokenizer):
    from coati_hf.models import make_tiny_llama

    model, tokenizer = make_tiny_llama("sequence_classification", tokenizer=copy.deepcopy(smol_tokenizer))
    model.config.num_labels = 2
    with pytest.raises(ValueError, match=r"reward models require `num_labels=1`.*coati_hf: coati_hf\.models\.load_sequence_classifier"):
        RewardTrainer(model=model, args=_rm_config(tmp_path), train_dataset=[{"chosen": "a b", "rejected": "a c"}] * 2, processing_class=tokenizer)


# --- a tokenizer without a chat template, given conversational data -----------------------------------


def test_conversational_data_without_a_chat_template_is_one_clear_error(tmp_path, tiny_causal_lm, tiny_reward_model):
    model, tokenizer = tiny_causal_lm
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="train dataset: the rows are conversational"):
        SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=[{"messages": [U("q"), A("a")]}] * 2, processing_class=tokenizer)
    # Plain text needs no template, and TRL's chat_template_path gives one.
    SFTTrainer(model=model, args=_sft_config(tmp_path), train_dataset=[{"text": "Some text."}] * 2, processing_class=tokenizer)
    template = tmp_path / "template.jinja"
    template.write_text(QWEN_TEMPLATE)
    SFTTrainer(model=model, args=_sft_config(tmp_path, chat_template_path=str(template)),
               train_dataset=[{"messages": [U("q"), A("a")]}] * 2, processing_class=tokenizer)

    reward_model, reward_tokenizer = tiny_reward_model
    reward_tokenizer.chat_template = None
    pairs = [{"prompt": [U("q")], "chosen": [A("yes")], "rejected": [A("no")]}] * 2
    with pytest.raises(ChatTemplateError, match="train dataset: the rows are conversational"):
        RewardTrainer(model=reward_model, args=_rm_config(tmp_path), train_dataset=pairs, processing_class=reward_tokenizer)

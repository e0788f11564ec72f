"""coati_hf.hub.export and .origin: one layout, no local paths, atomic replacement, origins."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from coati_hf.hub.export import (
    MANIFEST_NAME,
    ExportError,
    adapter_folder,
    check_export,
    export_directory,
    find_local_paths,
    read_manifest,
    save_for_hub,
)
from coati_hf.hub.origin import EMBEDDED_HUB_ID, describe_datasets, origin_of, relative_reference
from coati_hf.models import make_tiny_llama

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
FULL_FILES = {"config.json", "generation_config.json", "model.safetensors", MANIFEST_NAME} | TOKENIZER_FILES
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in _files(folder)}


@pytest.fixture
def base_dir(tmp_path, smol_tokenizer):
    """A tiny causal LM saved as a local folder without a card (a local base of unknown origin)."""
    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _lora(model, task_type="CAUSAL_LM"):
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task_type))
    with torch.no_grad():  # a trained-looking adapter: B != 0, so merging changes the weights
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return peft_model


def _logits(model, tokenizer, text="Hello there, how are you?"):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer([text], return_tensors="pt")).logits


def test_lora_export_is_merged_weights_plus_adapter_and_names_no_local_path(tmp_path, base_dir, smol_tokenizer):
    peft_model = _lora(AutoModelForCausalLM.from_pretrained(base_dir))
    out = tmp_path / "sft"
    save_for_hub(peft_model, smol_tokenizer, out)

    assert _files(out) == FULL_FILES | {f"adapter/{name}" for name in ADAPTER_FILES}  # no PEFT stock README
    assert read_manifest(out)["layout"] == "full+adapter" and set(read_manifest(out)["files"]) == _files(out)
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out), smol_tokenizer), _logits(peft_model, smol_tokenizer))
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "base"  # relative to the export's parent folder
    assert find_local_paths(out, [str(base_dir), str(tmp_path), str(out)]) == []
    assert isinstance(peft_model, PeftModel) and "lora_A" in str(dict(peft_model.named_parameters()).keys())  # not merged in place

    # the relative reference works from the folder that contains the export
    os.chdir(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"]), "sft", subfolder="adapter")
    torch.testing.assert_close(_logits(reloaded, smol_tokenizer), _logits(peft_model, smol_tokenizer))


@pytest.mark.parametrize("order", ["full_then_lora", "lora_then_full", "full_then_adapter_only", "adapter_only_then_full"])
def test_a_new_export_leaves_exactly_one_model_in_the_folder(tmp_path, base_dir, smol_tokenizer, order):
    full = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = _lora(AutoModelForCausalLM.from_pretrained(base_dir))
    exports = {
        "full": (lambda out: save_for_hub(full, smol_tokenizer, out), FULL_FILES),
        "lora": (lambda out: save_for_hub(lora, smol_tokenizer, out), FULL_FILES | {f"adapter/{n}" for n in ADAPTER_FILES}),
        "adapter_only": (
            lambda out: save_for_hub(lora, smol_tokenizer, out, adapter_only=True),
            ADAPTER_FILES | TOKENIZER_FILES | {MANIFEST_NAME},
        ),
    }
    first, second = order.split("_then_")
    out = tmp_path / "model"
    exports[first][0](out)
    exports[second][0](out)
    assert _files(out) == exports[second][1]
    assert adapter_folder(out) == {"full": None, "lora": out / "adapter", "adapter_only": out}[second]
    expected = lora if second != "full" else full
    if second == "adapter_only":
        os.chdir(tmp_path)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"), "model")
    else:
        loaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(loaded, smol_tokenizer), _logits(expected, smol_tokenizer))


def test_a_crash_while_the_weights_are_written_leaves_the_previous_export_loading_and_equal(tmp_path, base_dir, smol_tokenizer, monkeypatch):
    import safetensors.torch
    import transformers.modeling_utils

    out = tmp_path / "sft"
    save_for_hub(AutoModelForCausalLM.from_pretrained(base_dir), smol_tokenizer, out)
    before = _bytes(out)

    def half_then_crash(tensors, filename, metadata=None):
        safetensors.torch.save_file(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as handle:
            handle.truncate(size // 2)
        raise OSError("killed while writing the weights")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", half_then_crash)
    with pytest.raises(OSError, match="killed while writing"):
        save_for_hub(_lora(AutoModelForCausalLM.from_pretrained(base_dir)), smol_tokenizer, out)

    assert _bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "sft"]  # the half-written staging folder is gone
    check_export(out)
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out), smol_tokenizer),
        _logits(AutoModelForCausalLM.from_pretrained(base_dir), smol_tokenizer),
    )


def test_foreign_entries_of_the_output_dir_survive_and_stale_model_files_do_not(tmp_path, base_dir, smol_tokenizer):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "runs").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "adapter_config.json").write_text('{"left": "by an earlier adapter-only save"}')
    save_for_hub(AutoModelForCausalLM.from_pretrained(base_dir), smol_tokenizer, out)
    assert {"checkpoint-2/trainer_state.json", "notes.txt"} <= _files(out) and (out / "runs").is_dir()
    assert "adapter_config.json" not in _files(out)
    assert set(read_manifest(out)["files"]) == FULL_FILES  # the export owns only its own files


def test_reward_and_value_exports_return_the_raw_score_in_a_pipeline(tmp_path, smol_tokenizer):
    from transformers import pipeline

    model, tokenizer = make_tiny_llama("sequence_classification", seed=3, tokenizer=copy.deepcopy(smol_tokenizer))
    with torch.no_grad():
        model.score.weight.normal_(0, 2.0)  # scores far from 0, where sigmoid(score) != score
    for label in ("reward", "value"):
        save_for_hub(model, tokenizer, tmp_path / label, score_label=label)
        scorer = pipeline("text-classification", model=str(tmp_path / label))
        text = "The capital of France is Paris."
        expected = _logits(model, tokenizer, text).item()
        assert abs(expected) > 0.5
        assert scorer(text)[0] == {"label": label, "score": pytest.approx(expected, abs=1e-4)}
    assert model.config.problem_type is None and model.config.id2label == {0: "LABEL_0"}  # the live model is untouched


def test_an_export_that_names_a_local_path_is_refused_and_the_previous_one_kept(tmp_path):
    out = tmp_path / "model"
    with export_directory(out, stage="sft", layout="full") as staged:
        (staged / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="names local paths.*notes.md"):
        with export_directory(out, stage="sft", layout="full", local_paths=[str(tmp_path / "data" / "train")]) as staged:
            (staged / "notes.md").write_text(f"trained on {tmp_path / 'data' / 'train'}")
    assert _files(out) == {"config.json", MANIFEST_NAME}


def test_check_export_names_what_is_missing(tmp_path):
    with pytest.raises(ExportError, match="not a coati_hf export"):
        check_export(tmp_path)
    with export_directory(tmp_path / "m", stage="sft", layout="full") as staged:
        (staged / "config.json").write_text("{}")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ExportError, match="incomplete: config.json"):
        check_export(tmp_path / "m")


def test_exported_config_keeps_the_bases_real_name_and_use_cache_and_the_tokenizer_its_max_length(tmp_path, smol_tokenizer):
    from coati_hf.models.embedded import _CONVERTED_MARKER

    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    model.config._model_name_or_path = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # what the GGUF conversion leaves
    converted = tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1"
    model.save_pretrained(converted)
    tokenizer.save_pretrained(converted)
    (converted / _CONVERTED_MARKER).write_text("converted")
    assert json.loads((converted / "tokenizer_config.json").read_text()).get("is_local") is True  # transformers wrote it
    live = AutoModelForCausalLM.from_pretrained(converted)
    live.config.use_cache = False  # as gradient checkpointing leaves it after training
    out = tmp_path / "sft"
    save_for_hub(_lora(live), AutoTokenizer.from_pretrained(converted), out)
    config = json.loads((out / "config.json").read_text())
    assert config["_model_name_or_path"] == EMBEDDED_HUB_ID and config["use_cache"] is True
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(tokenizer_config)
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"]
    assert live.config.use_cache is False  # the live model is untouched


# ---------------------------------------------------------------------------------------------
# origins: how an export names the model it came from
# ---------------------------------------------------------------------------------------------


def test_origin_of_the_embedded_model_is_its_hub_id(tmp_path):
    from coati_hf.models.embedded import EMBEDDED_MODEL_NAME, _CONVERTED_MARKER

    converted = tmp_path / "cache" / "SmolLM2"
    converted.mkdir(parents=True)
    (converted / _CONVERTED_MARKER).write_text("converted")
    for source in (EMBEDDED_MODEL_NAME, str(converted)):
        origin = origin_of(source, tmp_path / "runs")
        assert (origin.reference, origin.hub_id, origin.license) == (EMBEDDED_HUB_ID, EMBEDDED_HUB_ID, "apache-2.0")
        assert [step["name"] for step in origin.lineage] == [EMBEDDED_HUB_ID]


def test_origin_of_hub_ids_cache_snapshots_and_unknown_sources(tmp_path):
    assert origin_of("org/model").hub_id == "org/model"
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert origin_of(str(snapshot)).hub_id == "org/name"
    plain = tmp_path / "runs" / "mine"
    plain.mkdir(parents=True)
    unknown = origin_of(str(plain), tmp_path / "exports")
    assert (unknown.hub_id, unknown.lineage, unknown.reference) == (None, [], "../runs/mine")
    assert origin_of("").reference is None and origin_of(None).lineage == []


def test_relative_reference_and_dataset_descriptions(tmp_path):
    from datasets import Dataset

    assert relative_reference(tmp_path / "a" / "sft", tmp_path / "a") == "sft"
    assert relative_reference(tmp_path / "a" / "sft", tmp_path / "b") == "../a/sft"
    in_memory = Dataset.from_list([{"x": 1}] * 3)
    assert describe_datasets(in_memory) == ["3 rows given in memory, no source recorded"]
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    from datasets import load_dataset

    from_file = load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train", cache_dir=str(tmp_path / "cache"))
    described = describe_datasets(from_file)
    assert described == ["local json files (2 rows)"]
    hub_cache = tmp_path / "hf" / "trl-lib___tldr" / "default" / "0.0.0" / "abc" / "tldr-train.arrow"
    hub_cache.parent.mkdir(parents=True)

    class FromHub:  # a Dataset as load_dataset("trl-lib/tldr") leaves it: only its cache file names the repo
        info, cache_files = from_file.info, [{"filename": str(hub_cache)}]

        def __len__(self):
            return 2

    assert describe_datasets(FromHub()) == ["trl-lib/tldr"]

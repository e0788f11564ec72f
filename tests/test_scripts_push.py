"""`--push_to_hub` in a script: the export goes to the Hub (a local stand-in) in one commit."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
from huggingface_hub import ModelCard

from coati_hf.hub.export import read_manifest
from coati_hf.models import save_tiny_llama
from coati_hf.scripts import sft
from hub_standin import HubStandIn


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubStandIn() as stand_in:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stand_in.endpoint)
        yield stand_in


def test_push_to_hub_pushes_the_export_once_with_its_dataset(hub, tmp_path, embedded_dir):
    tiny = save_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "sft"
    status = sft.cli([
        "--model_name_or_path", tiny, "--dataset_name", "sample:sft", "--output_dir", str(out), "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--max_length", "128", "--report_to", "none", "--save_strategy", "no",
        "--activation_checkpointing", "false", "--disable_tqdm", "true", "--card_base_model", "coati-hf-tests/tiny-llama",
        "--push_to_hub", "--hub_model_id", "someone/script-sft",
    ])  # fmt: skip
    assert status == 0
    repo = hub.repos["someone/script-sft"]
    assert len(repo.commits) == 1  # save_model pushes; the script does not push a second time
    remote = hub.files("someone/script-sft")
    exported = read_manifest(out)["files"]
    assert {name: remote[name] for name in exported} == {name: (out / name).read_bytes() for name in exported}
    card = ModelCard.load(out / "README.md").data.to_dict()
    assert card["datasets"] == ["coati_hf's bundled sample sft (coati_hf/data/samples)"]
    assert (out / "trainer_state.json").is_file() and "trainer_state.json" not in remote  # beside the export, not in it

"""Pushing exports: one commit through HfApi, byte-identical files, clear failures, the CLI.

The Hub is a stand-in HTTP server on 127.0.0.1 (tests/hub_standin.py); offline mode, which the
test suite turns on, is lifted for it only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub import ModelCard
from peft import LoraConfig

from coati_hf import PPOConfig, PPOTrainer, SFTConfig, SFTTrainer
from coati_hf.cli import main
from coati_hf.data import load_sample
from coati_hf.hub.export import list_files, read_manifest, save_for_hub
from coati_hf.hub.push import PushError, push_export
from coati_hf.models import make_tiny_llama
from hub_standin import HubStandIn


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(online, monkeypatch):
    with HubStandIn() as stand_in:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stand_in.endpoint)  # what trainers' HfApi() use
        yield stand_in


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in list_files(folder)}


@pytest.fixture(scope="module")
def ppo_export(tmp_path_factory, smol_tokenizer, single_torch_thread):
    """A PPO export (actor + critic/, LoRA, card and plots) and a checkpoint folder beside its files."""
    root = tmp_path_factory.mktemp("ppo_push")
    policy, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    trainer = PPOTrainer(
        args=PPOConfig(output_dir=str(root / "ppo"), per_device_train_batch_size=4, total_episodes=4, response_length=4,
                       num_ppo_epochs=1, report_to="none", logging_steps=1, save_strategy="steps", save_steps=1,
                       num_sample_generations=0, activation_checkpointing=False, disable_tqdm=True,
                       card_base_model="coati-hf-tests/tiny-llama", card_license="mit"),
        processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        train_dataset=load_sample("prompts").select(range(8)), value_model=None,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    assert (root / "ppo" / "checkpoint-1").is_dir()
    return root / "ppo"


@pytest.fixture
def export_copy(ppo_export, tmp_path):
    folder = tmp_path / "ppo"
    shutil.copytree(ppo_export, folder)
    return folder


def test_push_is_one_commit_of_exactly_the_export_byte_for_byte(hub, export_copy):
    info = push_export(export_copy, "someone/tiny-ppo", token="hf_test", private=True, revision="v1")
    repo = hub.repos["someone/tiny-ppo"]
    assert repo.visibility == "private"
    assert [commit["revision"] for commit in repo.commits] == ["v1"]  # one commit, on the asked branch
    assert info.commit_url.startswith(f"{hub.endpoint}/someone/tiny-ppo/commit/")
    remote = hub.files("someone/tiny-ppo", "v1")
    local = list_files(export_copy)
    exported = set(read_manifest(export_copy)["files"])
    assert {"model.safetensors", "adapter/adapter_model.safetensors", "README.md", "training_reward.png",
            "critic/model.safetensors", "critic/README.md", "critic/training_value_loss.png"} <= exported  # fmt: skip
    assert set(remote) == exported | {".gitattributes"}  # nothing else: no checkpoint-1/
    assert all(remote[name] == (export_copy / name).read_bytes() for name in exported)
    assert any(name.startswith("checkpoint-1/") for name in local)  # still here locally
    assert {request["authorization"] for request in hub.requests} == {"Bearer hf_test"}


def test_pushed_cards_name_the_repo_and_the_local_cards_follow(hub, export_copy):
    from huggingface_hub import EvalResult

    from coati_hf.hub import add_evaluation_results

    add_evaluation_results(export_copy, [EvalResult(task_type="text-generation", dataset_type="local", dataset_name="4 held-out prompts",
                                                    metric_type="mean_reward", metric_value=0.25)])  # fmt: skip
    before = (export_copy / "README.md").read_text()
    assert 'model_id = "ppo"' in before
    push_export(export_copy, "someone/tiny-ppo")
    for card_path in ("README.md", "critic/README.md"):
        card = ModelCard.load(export_copy / card_path)
        assert 'model_id = "someone/tiny-ppo"' in card.text and 'model_id = "ppo"' not in card.text
        assert card.data.to_dict()["coati_hf"]["reference"] == "someone/tiny-ppo"
        assert hub.files("someone/tiny-ppo")[card_path] == (export_copy / card_path).read_bytes()
    lineage = ModelCard.load(export_copy / "README.md").data.to_dict()["coati_hf"]["lineage"]
    assert lineage[-1] == {**lineage[-1], "name": "someone/tiny-ppo", "on_hub": True}
    assert ModelCard.load(export_copy / "README.md").data.to_dict()["model-index"][0]["name"] == "someone/tiny-ppo"
    lineage_section = (export_copy / "README.md").read_text().split("## Lineage", 1)[1].split("\n## ", 1)[0]
    assert "[someone/tiny-ppo](https://huggingface.co/someone/tiny-ppo)" in lineage_section and "local folder" not in lineage_section


def test_a_second_push_of_another_layout_removes_the_old_model_files_from_the_repo(hub, tmp_path, smol_tokenizer):
    from peft import get_peft_model

    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    out = tmp_path / "m"
    save_for_hub(lora, tokenizer, out, adapter_only=True)
    push_export(out, "someone/m")
    assert "adapter_config.json" in hub.files("someone/m")
    save_for_hub(model, tokenizer, out)
    push_export(out, "someone/m")
    remote = hub.files("someone/m")
    assert "adapter_config.json" not in remote and "adapter_model.safetensors" not in remote
    assert set(remote) == set(list_files(out)) | {".gitattributes"}
    assert hub.repos["someone/m"].commits[-1]["deleted"] == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("failing", ["commit", "create"])
def test_a_failing_server_gives_a_clear_error_and_leaves_the_folder_intact(online, export_copy, failing):
    before = _digests(export_copy)
    with HubStandIn(fail=(failing,)) as hub:
        with pytest.raises(PushError) as caught:
            push_export(export_copy, "someone/tiny-ppo", endpoint=hub.endpoint, revision="dev")
    message = str(caught.value)
    assert "500" in message and "stand-in failure" in message
    assert "is complete and unchanged" in message and f"coati-hf push {export_copy} someone/tiny-ppo --revision dev" in message
    assert _digests(export_copy) == before


def test_offline_mode_says_so_and_how_to_retry(export_copy, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    before = _digests(export_copy)
    with pytest.raises(PushError, match=r"(?s)offline mode is enabled.*coati-hf push"):
        push_export(export_copy, "someone/tiny-ppo", endpoint="http://127.0.0.1:9")
    assert _digests(export_copy) == before


def test_an_incomplete_export_is_not_pushed(hub, export_copy):
    (export_copy / "critic" / "model.safetensors").unlink()
    with pytest.raises(Exception, match="incomplete: critic/model.safetensors"):
        push_export(export_copy, "someone/tiny-ppo")
    assert hub.requests == []


def test_trainer_push_to_hub_saves_then_pushes_its_export_with_the_card_options(hub, tmp_path, smol_tokenizer):
    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=4, max_length=96,
                       report_to="none", save_strategy="no", gradient_checkpointing=False, hub_model_id="someone/tiny-sft",
                       hub_private_repo=True, card_base_model="coati-hf-tests/tiny-llama"),
        train_dataset=load_sample("sft").select(range(4)), processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    info = trainer.push_to_hub(dataset_name="someone/conversations", tags=["demo"])
    assert "someone/tiny-sft/commit/" in info.commit_url
    remote = hub.files("someone/tiny-sft")
    assert {name: remote[name] for name in list_files(tmp_path / "sft")} == {
        name: (tmp_path / "sft" / name).read_bytes() for name in list_files(tmp_path / "sft")
    }
    data = ModelCard.load(tmp_path / "sft" / "README.md").data.to_dict()
    assert data["datasets"] == ["someone/conversations"] and "demo" in data["tags"]
    assert 'model_id = "someone/tiny-sft"' in (tmp_path / "sft" / "README.md").read_text()  # hub_model_id known at save time
    assert hub.repos["someone/tiny-sft"].visibility == "private" and len(hub.repos["someone/tiny-sft"].commits) == 1


def test_cli_push_pushes_and_reports_failures(online, export_copy, capsys):
    with HubStandIn() as hub:
        assert main(["push", str(export_copy), "someone/cli-ppo", "--endpoint", hub.endpoint, "--private", "--message", "first"]) == 0
        assert hub.repos["someone/cli-ppo"].commits[0]["summary"] == "first"
        assert hub.repos["someone/cli-ppo"].visibility == "private"
    assert capsys.readouterr().out.strip().startswith(f"{hub.endpoint}/someone/cli-ppo/commit/")
    with HubStandIn(fail=("commit",)) as hub:
        assert main(["push", str(export_copy), "someone/cli-ppo", "--endpoint", hub.endpoint]) == 1
    assert "coati-hf push" in capsys.readouterr().err
    assert main(["push", str(export_copy.parent), "someone/x", "--endpoint", "http://127.0.0.1:9"]) == 1
    assert "not a coati_hf export" in capsys.readouterr().err


def _lora_sft(root, name, model, tokenizer):
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(root / name), max_steps=1, per_device_train_batch_size=4, max_length=96, report_to="none",
                       save_strategy="no", gradient_checkpointing=False, card_base_model="coati-hf-tests/tiny-llama"),
        train_dataset=load_sample("sft").select(range(4)), processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return root / name


def test_after_a_push_every_reference_points_at_the_hub(hub, tmp_path, smol_tokenizer, single_torch_thread):
    from coati_hf.models import load_causal_lm

    first = _lora_sft(tmp_path, "sft", *make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer)))
    second = _lora_sft(tmp_path, "sft2", *load_causal_lm(first))  # its adapter's base is the local folder "sft"
    assert json.loads((second / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "sft"
    before = _digests(second)
    with pytest.raises(PushError, match=r"(?s)adapter/adapter_config.json.*'sft'.*coati-hf push .*sft"):
        push_export(second, "someone/sft2")  # the pushed adapter would load from nowhere
    assert _digests(second) == before and "someone/sft2" not in hub.repos

    push_export(first, "someone/sft")
    push_export(second, "someone/sft2")
    remote = hub.files("someone/sft2")
    assert json.loads(remote["adapter/adapter_config.json"])["base_model_name_or_path"] == "someone/sft"
    assert remote["adapter/adapter_config.json"] == (second / "adapter" / "adapter_config.json").read_bytes()
    assert remote["README.md"] == (second / "README.md").read_bytes()
    card = ModelCard.load(second / "README.md")
    assert card.data.to_dict()["base_model"] == "someone/sft"
    assert 'base_id = "someone/sft"' in card.text and 'base_id = "sft"' not in card.text
    assert "local folder" not in card.text
    lineage = card.text.split("## Lineage", 1)[1].split("\n## ", 1)[0]
    assert "[someone/sft](https://huggingface.co/someone/sft)" in lineage and "[someone/sft2](https://huggingface.co/someone/sft2)" in lineage
    visible = "\n".join(line for line in card.text.splitlines() if not line.startswith("<!--"))
    opening = visible.split("\n# ", 1)[1].split("\n\n", 2)[1]
    assert opening.startswith("This model is a fine-tuned version of [someone/sft](https://huggingface.co/someone/sft)")

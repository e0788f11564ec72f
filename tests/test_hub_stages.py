"""Every stage's save_model writes a Hub-ready export: card, snippet, plots, lineage, checkpoints.

One SFT → reward model → PPO chain on tiny random Llamas (tests/hub_chain.py, LoRA at every
stage, an eval set for SFT and RM) is run once; each test reads its folders. What the cards say
is checked in test_hub_card_claims.py. Trainers that need other settings (adapter-only,
checkpoints, a push) run on their own.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from coati_hf import SFTConfig, SFTTrainer
from coati_hf.data import load_sample
from coati_hf.hub.export import MANIFEST_NAME, check_export, find_local_paths
from coati_hf.models import load_causal_lm, make_tiny_llama
from hub_standin import metadata_errors

from hub_chain import BASE_ID, FOLDERS, common as _common, lora as _lora
from hub_chain import chain as _build_chain

STAGE_TAGS = {"sft": "coati-sft", "reward-model": "coati-reward-model", "ppo": "coati-ppo", "ppo-critic": "coati-ppo"}
PLACEHOLDERS = ("None", "[More Information Needed]", "{{", "}}", "TODO", "nan")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, smol_tokenizer, single_torch_thread):
    """SFT → RM → PPO with LoRA (tests/hub_chain.py); the root folder and the three trainers."""
    return _build_chain(tmp_path_factory, smol_tokenizer)


def _card(root: Path, stage: str) -> ModelCard:
    return ModelCard.load(root / FOLDERS[stage] / "README.md")


def _first_python_block(card: ModelCard) -> str:
    return re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)


def _run_snippet(code: str, cwd: Path) -> str:
    out = io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<card snippet>", "exec"), {"__name__": "__snippet__"})
    finally:
        os.chdir(previous)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# cards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(FOLDERS))
def test_card_yaml_holds_the_hub_fields_with_values_from_the_run(chain, stage):
    root, _ = chain
    card = _card(root, stage)
    data = card.data.to_dict()
    assert data["base_model"] == BASE_ID and data["base_model_relation"] == "finetune"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == ("text-generation" if stage in ("sft", "ppo") else "text-classification")
    assert data["license"] == "mit"  # set for SFT, then read from each previous stage's card
    assert {"coati_hf", STAGE_TAGS[stage], "trl", "rlhf"} <= set(data["tags"])
    expected_data = {"sft": "coati-hf-tests/sft-sample", "reward-model": "coati-hf-tests/preference-sample"}.get(stage, "coati-hf-tests/prompt-sample")
    assert data["datasets"] == [expected_data]
    assert data["coati_hf"]["stage"] == stage
    assert data["language"] == ["en", "zh"]  # detected in the shipped bilingual samples
    text = (root / FOLDERS[stage] / "README.md").read_text()
    assert metadata_errors(text) == []
    assert not [word for word in PLACEHOLDERS if re.search(rf"(?<![\w/]){re.escape(word)}(?![\w])", text)], text
    assert find_local_paths(root / FOLDERS[stage], [str(root), os.getcwd(), str(Path.home() / ".cache")]) == []


def test_sft_card_body_has_hyperparameters_results_versions_and_limitations(chain):
    root, trainers = chain
    text = _card(root, "sft").text
    for heading in ("## How to use", "## Lineage", "## Training hyper-parameters", "## Results", "## Training curves", "## Limitations", "## Framework versions"):
        assert heading in text
    assert f"| learning_rate | {trainers['sft'].args.learning_rate} |" in text
    assert "| lora_r | 4 |" in text and "| trl |" in text and "| transformers |" in text
    final_eval = [e for e in trainers["sft"].state.log_history if "eval_loss" in e][-1]["eval_loss"]
    assert f"{final_eval:.4f}" in text  # parse_log_history's evaluation table


def test_ppo_lineage_is_the_policys_chain_with_the_reward_model_as_its_reward_not_its_parent(chain):
    root, _ = chain
    card = _card(root, "ppo")
    lineage = card.data.to_dict()["coati_hf"]["lineage"]
    assert [(step["stage"], step["name"], step["on_hub"]) for step in lineage] == [("base", BASE_ID, True), ("sft", "sft", False), ("ppo", "ppo", False)]
    assert lineage[-1]["reward"] == {"name": "rm", "on_hub": False}
    assert "kl_coef" in lineage[-1]["settings"]
    section = card.text.split("## Lineage")[1].split("\n## ")[0]
    assert "| 3 | ppo |" in section and "| reward-model |" not in section  # rm is no step of the policy's chain
    assert re.search(r"[Rr]eward.*`rm`", section), section
    critic_lineage = _card(root, "ppo-critic").data.to_dict()["coati_hf"]["lineage"]
    assert [step["stage"] for step in critic_lineage] == ["base", "sft", "reward-model", "ppo-critic"]  # the critic starts from rm


def test_adapters_name_their_bases_relatively(chain):
    root, _ = chain
    bases = {folder: json.loads((root / folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
             for folder in ("sft", "rm", "ppo", "ppo/critic")}  # fmt: skip
    assert bases == {"sft": BASE_ID, "rm": "sft", "ppo": "sft", "ppo/critic": "rm"}


@pytest.mark.parametrize("stage", list(FOLDERS))
def test_card_snippet_runs_as_written_against_the_folder(chain, stage):
    root, _ = chain
    card = _card(root, stage)
    printed = _run_snippet(_first_python_block(card), cwd=root)
    if stage == "reward-model":
        assert "'label': 'reward'" in printed
    elif stage == "ppo-critic":
        assert "'label': 'value'" in printed
    else:
        assert printed.endswith("\n")  # the generated answer was printed


@pytest.mark.parametrize("stage", ["reward-model", "ppo-critic"])
def test_a_score_model_loaded_through_its_adapter_keeps_its_label_and_raw_score(chain, stage):
    import ast

    root, _ = chain
    blocks = re.findall(r"```python\n(.*?)```", _card(root, stage).text, re.DOTALL)
    assert len(blocks) == 2  # the merged weights, then the same model through its adapter
    merged, through_adapter = (ast.literal_eval(_run_snippet(code, cwd=root).strip().splitlines()[-1]) for code in blocks)
    label = "reward" if stage == "reward-model" else "value"
    assert merged["label"] == through_adapter["label"] == label
    assert through_adapter["score"] == pytest.approx(merged["score"], abs=1e-4)  # regression: no sigmoid on either


def test_plots_are_valid_pngs_next_to_the_card(chain):
    from PIL import Image

    root, _ = chain
    expected = {
        "sft": {"training_loss.png"},
        "rm": {"training_loss.png", "training_accuracy.png", "training_margin.png"},
        "ppo": {"training_reward.png", "training_kl.png", "training_entropy.png", "training_ppo_loss.png"},
        "ppo/critic": {"training_value_loss.png"},
    }
    for folder, names in expected.items():
        assert {p.name for p in (root / folder).glob("*.png")} == names
        card_text = (root / folder / "README.md").read_text()
        for name in names:
            with Image.open(root / folder / name) as image:
                assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
                image.verify()
            assert f"]({name})" in card_text


def test_reward_model_folder_gives_the_raw_score_in_a_text_classification_pipeline(chain):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    root, _ = chain
    scorer = pipeline("text-classification", model=str(root / "rm"))
    model = AutoModelForSequenceClassification.from_pretrained(root / "rm")
    tokenizer = AutoTokenizer.from_pretrained(root / "rm")
    for text in ("I am glad to help you with that.", "no"):
        with torch.no_grad():
            raw = model(**tokenizer([text], return_tensors="pt")).logits.item()
        result = scorer(text)[0]
        assert result["label"] == "reward" and result["score"] == pytest.approx(raw, abs=1e-5)
        assert not 0 < raw < 1 or result["score"] != pytest.approx(1 / (1 + math.exp(-raw)), abs=1e-6)


def test_every_export_is_complete_and_owned_by_its_manifest(chain):
    root, _ = chain
    for folder in ("sft", "rm", "ppo"):
        manifest = check_export(root / folder)
        on_disk = {p.relative_to(root / folder).as_posix() for p in (root / folder).rglob("*") if p.is_file()}
        assert set(manifest["files"]) == on_disk and manifest["layout"] == "full+adapter"
    assert not (root / "ppo" / "critic" / MANIFEST_NAME).exists()  # the critic is part of the PPO export


def test_a_ppo_export_that_fails_at_the_critic_never_leaves_a_new_actor_beside_the_old_critic(chain, tmp_path, monkeypatch):
    import safetensors.torch
    import transformers.modeling_utils

    _, trainers = chain
    out = tmp_path / "ppo"
    trainers["ppo"].save_model(str(out))
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with torch.no_grad():  # the actor moves on: a new export would have different actor weights
        for parameter in trainers["ppo"].model.policy.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01)
    written = []

    def crash_on_the_critic(tensors, filename, metadata=None):
        if f"{os.sep}critic{os.sep}" in filename:
            raise OSError("killed while writing the critic")
        written.append(filename)
        safetensors.torch.save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", crash_on_the_critic)
    try:
        with pytest.raises(OSError, match="killed while writing the critic"):
            trainers["ppo"].save_model(str(out))
    finally:
        with torch.no_grad():
            for parameter in trainers["ppo"].model.policy.parameters():
                if parameter.requires_grad:
                    parameter.sub_(0.01)
    assert written  # the new actor had been written (in the staging folder) before the crash
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppo"]


# ---------------------------------------------------------------------------------------------
# the config's adapter-only switch
# ---------------------------------------------------------------------------------------------


def test_save_adapter_only_writes_a_peft_repo_whose_snippet_runs(tmp_path, smol_tokenizer):
    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    policy, tokenizer = load_causal_lm(tmp_path / "base")
    trainer = SFTTrainer(
        model=policy,
        args=SFTConfig(**_common(tmp_path, "sft", max_steps=1, per_device_train_batch_size=4, max_length=96, gradient_checkpointing=False,
                                 save_adapter_only=True, card_base_model=BASE_ID)),
        train_dataset=load_sample("sft").select(range(4)), processing_class=tokenizer, peft_config=_lora("CAUSAL_LM"),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    out = tmp_path / "sft"
    assert check_export(out)["layout"] == "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists() and not (out / "adapter").exists()
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert (data["library_name"], data["base_model_relation"], data["base_model"]) == ("peft", "adapter", BASE_ID)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    _run_snippet(_first_python_block(ModelCard.load(out / "README.md")), cwd=tmp_path)


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def _sft_with_checkpoints(tmp_path, tokenizer, eval_rows=0, **overrides):
    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(tokenizer))
    settings = dict(max_steps=3, per_device_train_batch_size=4, max_length=96, save_strategy="steps", save_steps=1, gradient_checkpointing=False)
    settings.update(overrides)
    data = load_sample("sft")
    return SFTTrainer(model=model, args=SFTConfig(**_common(tmp_path, "run", **settings)), train_dataset=data.select(range(12, 24)),
                      eval_dataset=data.select(range(eval_rows)) if eval_rows else None, processing_class=tokenizer)  # fmt: skip


def test_a_checkpoint_interrupted_while_written_is_never_resumed_from(tmp_path, smol_tokenizer, monkeypatch):
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    original = Trainer._save_rng_state

    def crash_at_step_3(self, output_dir):
        if self.state.global_step == 3:
            original(self, output_dir)
            raise OSError("killed while writing checkpoint-3")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_at_step_3)
    with pytest.raises(OSError, match="killed while writing checkpoint-3"):
        _sft_with_checkpoints(tmp_path, smol_tokenizer).train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # no partial checkpoint-3, no staging
    assert get_last_checkpoint(str(run)) == str(run / "checkpoint-2")
    assert (run / "checkpoint-2" / "trainer_state.json").is_file() and (run / "checkpoint-2" / "optimizer.pt").is_file()

    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    resumed = _sft_with_checkpoints(tmp_path, smol_tokenizer)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_best_checkpoint_and_rotation_see_the_published_folders(tmp_path, smol_tokenizer):
    trainer = _sft_with_checkpoints(
        tmp_path, smol_tokenizer, eval_rows=4, max_steps=4, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=8,
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="eval_loss",
    )  # fmt: skip
    trainer.train()
    run = tmp_path / "run"
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == run and best.is_dir()
    assert {p.name for p in run.iterdir()} == {best.name, "checkpoint-4"}  # rotated where they are
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(best)


def test_create_model_card_writes_nothing_and_save_model_keeps_checkpoints(tmp_path, smol_tokenizer):
    trainer = _sft_with_checkpoints(tmp_path, smol_tokenizer, max_steps=2, save_steps=2)
    trainer.train()
    run = tmp_path / "run"
    assert not (run / "README.md").exists()  # TRL would have written its stock card here at each checkpoint
    trainer.create_model_card(dataset_name="org/data")
    assert not (run / "README.md").exists()
    trainer.save_model()
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()
    assert ModelCard.load(run / "README.md").data.to_dict()["datasets"] == ["org/data"]
    shutil.rmtree(run / "checkpoint-2")
    check_export(run)


def test_a_trainer_adding_its_own_files_inside_atomic_checkpoint_publishes_them_together(tmp_path, smol_tokenizer, monkeypatch):
    """The documented pattern for trainers with extra checkpoint files: written inside
    ``atomic_checkpoint``, a crash while writing them leaves no checkpoint-2 at all."""
    written = []

    class SFTWithExtraState(SFTTrainer):
        def _save_checkpoint(self, model, trial):
            with self.atomic_checkpoint(trial) as checkpoint:
                super()._save_checkpoint(model, trial)  # nested: the same staged folder
                assert checkpoint.name == f"checkpoint-{self.state.global_step}" and (checkpoint / "trainer_state.json").is_file()
                (checkpoint / "extra_state.json").write_text(json.dumps({"step": self.state.global_step}))
                written.append(self.state.global_step)
                if self.state.global_step == 2:
                    raise OSError("killed after writing extra_state.json of checkpoint-2")

    model, tokenizer = make_tiny_llama("causal_lm", seed=0, tokenizer=copy.deepcopy(smol_tokenizer))
    args = SFTConfig(**_common(tmp_path, "run", max_steps=2, per_device_train_batch_size=4, max_length=96, save_strategy="steps",
                               save_steps=1, gradient_checkpointing=False))  # fmt: skip
    trainer = SFTWithExtraState(model=model, args=args, train_dataset=load_sample("sft").select(range(8)), processing_class=tokenizer)
    with pytest.raises(OSError, match="killed after writing extra_state.json"):
        trainer.train()
    run = tmp_path / "run"
    assert written == [1, 2]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]
    assert json.loads((run / "checkpoint-1" / "extra_state.json").read_text()) == {"step": 1}

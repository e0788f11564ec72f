"""What each card claims is true: held-out results only in model-index, training statistics
labelled as such, counts as they are, the card's opening, languages, citations, the exported
config and tokenizer files, and held-out results added after the export.

The cards are read back from disk with ``huggingface_hub.ModelCard.load``; the Hub's metadata
check is imitated offline (``hub_standin.metadata_errors``), and model-index is parsed with
``model_index_to_eval_results`` as the Hub's leaderboards do.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from coati_hf.hub.export import check_export
from coati_hf.hub.results import LOCAL_DATASET_TYPE, add_evaluation_results
from hub_chain import BASE_ID, FOLDERS, PPO_PROMPTS, RM_EVAL_NAME, RM_TRAIN_ROWS, SFT_TRAIN_ROWS
from hub_chain import chain as _build_chain
from hub_standin import metadata_errors


@pytest.fixture(scope="module")
def chain(tmp_path_factory, smol_tokenizer, single_torch_thread):
    return _build_chain(tmp_path_factory, smol_tokenizer)


def _card(root, stage) -> ModelCard:
    return ModelCard.load(root / FOLDERS[stage] / "README.md")


def _section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section (up to the next ``## ``)."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _derived(text: str, name: str) -> str:
    """A section the card derives from its YAML (between its ``<!-- coati_hf:NAME -->`` markers)."""
    return text.split(f"<!-- coati_hf:{name} -->\n", 1)[1].split(f"\n<!-- /coati_hf:{name} -->", 1)[0]


def _results(card) -> list[EvalResult]:
    data = card.data.to_dict()
    return model_index_to_eval_results(data["model-index"])[1] if "model-index" in data else []


def _last(history, key):
    return [entry[key] for entry in history if key in entry][-1]


# ---------------------------------------------------------------------------------------------
# model-index: held-out results only
# ---------------------------------------------------------------------------------------------


def test_sft_model_index_holds_the_held_out_loss_and_token_accuracy_only(chain):
    root, trainers = chain
    history = trainers["sft"].state.log_history
    results = _results(_card(root, "sft"))
    assert {r.metric_type for r in results} == {"loss", "accuracy"}
    values = {r.metric_type: r.metric_value for r in results}
    assert values["loss"] == pytest.approx(_last(history, "eval_loss"), abs=1e-6)
    assert values["accuracy"] == pytest.approx(_last(history, "eval_mean_token_accuracy"), abs=1e-6)
    for result in results:
        assert "held-out" in result.metric_name and "train" not in result.metric_name
        assert result.dataset_name.endswith(": 8 held-out conversations") and result.dataset_type == LOCAL_DATASET_TYPE


def test_reward_model_index_holds_the_held_out_accuracy_and_names_the_rows_and_their_count(chain):
    root, trainers = chain
    history = trainers["reward-model"].state.log_history
    results = _results(_card(root, "reward-model"))
    values = {r.metric_type: r.metric_value for r in results}
    assert set(values) == {"accuracy", "margin"}  # no training-batch accuracy
    assert values["accuracy"] == pytest.approx(_last(history, "eval_accuracy"), abs=1e-6)
    assert values["margin"] == pytest.approx(_last(history, "eval_margin"), abs=1e-6)
    for result in results:
        assert result.dataset_name == f"{RM_EVAL_NAME}: 8 held-out pairs"
        assert result.dataset_type == LOCAL_DATASET_TYPE  # not a slug of the description posing as a dataset id
    results_section = _section(_card(root, "reward-model").text, "Results")
    assert f"{RM_EVAL_NAME}: 8 held-out pairs" in results_section and f"{values['accuracy']:.4g}" in results_section


def test_without_held_out_results_the_ppo_card_has_no_model_index_and_says_what_to_run(chain):
    root, _ = chain
    for stage in ("ppo", "ppo-critic"):
        assert "model-index" not in _card(root, stage).data.to_dict()
    results_section = _section(_card(root, "ppo").text, "Results")
    assert "coati-hf eval" in results_section and "win rate" in results_section
    assert not re.search(r"\n\s*\n\s*\n", results_section.strip())  # no empty placeholder left


# ---------------------------------------------------------------------------------------------
# training statistics, labelled as training
# ---------------------------------------------------------------------------------------------


def test_training_statistics_are_in_the_body_labelled_as_training(chain):
    root, trainers = chain
    sft_text = _card(root, "sft").text
    training = sft_text.split("### Training statistics", 1)[1].split("\n## ", 1)[0]
    assert "not held-out" in training
    last_loss = [e for e in trainers["sft"].state.log_history if "loss" in e][-1]
    assert f"{last_loss['loss']:.4g}" in training and f"step {last_loss['step']}" in training

    ppo_text = _card(root, "ppo").text
    training = ppo_text.split("### Training statistics", 1)[1].split("\n## ", 1)[0]
    scores = [e["objective/scores"] for e in trainers["ppo"].state.log_history if "objective/scores" in e]
    assert f"first update: {scores[0]:.4g}" in training and f"last update: {scores[-1]:.4g}" in training
    assert "different" in training  # two batches of prompts: not a before/after measurement


def test_ppo_entropy_is_reported_per_token_and_the_sequence_sum_is_labelled_as_one(chain):
    root, trainers = chain
    text = _card(root, "ppo").text
    history = trainers["ppo"].state.log_history
    per_token = _last(history, "policy/entropy_avg")
    per_response = _last(history, "objective/entropy")
    header = next(line for line in text.splitlines() if line.startswith("| PPO update |"))
    assert "Entropy (nats per token)" in header and "per response" in header
    last_row = [line for line in text.splitlines() if line.startswith("| 2 |")][-1].split(" | ")
    columns = [cell.strip(" |") for cell in header.split(" | ")]
    assert float(last_row[columns.index("Entropy (nats per token)")]) == pytest.approx(per_token, rel=1e-3)
    assert float(last_row[columns.index("−log π of the response (nats per response)")]) == pytest.approx(per_response, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# counts and settings
# ---------------------------------------------------------------------------------------------


def test_sft_and_reward_cards_count_examples_seen_as_steps_times_the_global_batch(chain):
    root, _ = chain
    for stage, rows in (("sft", SFT_TRAIN_ROWS), ("reward-model", RM_TRAIN_ROWS)):
        text = _card(root, stage).text
        assert "3 optimizer steps of 4 examples (12 examples seen" in text, stage
        assert f"training set of {rows} examples" in text


def test_ppo_card_counts_updates_episodes_and_the_logged_optimizer_steps(chain):
    root, trainers = chain
    logged = sum(e["ppo/optimizer_steps"] for e in trainers["ppo"].state.log_history if "ppo/optimizer_steps" in e)
    assert logged == 4  # 2 updates x 2 epochs x 1 minibatch
    card = _card(root, "ppo")
    text = card.text
    assert f"2 PPO updates of 4 prompts (8 episodes; the prompt set has {PPO_PROMPTS})" in text
    assert "4 optimizer steps" in text
    assert "4 optimizer steps" in card.data.to_dict()["coati_hf"]["lineage"][-1]["settings"]
    hyper = _section(text, "Training hyper-parameters")
    assert "| num_ppo_epochs | 2 |" in hyper and "| total_episodes | 8 |" in hyper
    for inactive in ("num_epochs", "num_train_epochs", "training_steps"):
        assert f"| {inactive} |" not in hyper


@pytest.mark.parametrize("stage", list(FOLDERS))
def test_the_optimizer_is_named_as_a_person_writes_it(chain, stage):
    root, _ = chain
    text = _card(root, stage).text
    assert "OptimizerNames" not in text and "SchedulerType" not in text
    if stage != "ppo-critic":
        assert re.search(r"\| optimizer \| AdamW \(`?adamw_torch(_fused)?`?\), β1=0.9, β2=0.999, ε=1e-08", text)


# ---------------------------------------------------------------------------------------------
# the card's opening, links and citations
# ---------------------------------------------------------------------------------------------


def _opening(card) -> str:
    """The first paragraph after the title, as the Hub shows it (HTML comments are invisible)."""
    visible = "\n".join(line for line in card.text.splitlines() if not line.startswith("<!--"))
    return visible.split("\n# ", 1)[1].split("\n\n", 2)[1]


def test_cards_open_as_trls_do_naming_the_base_and_the_data(chain):
    root, _ = chain
    assert _opening(_card(root, "sft")).startswith(
        f"This model is a fine-tuned version of [{BASE_ID}](https://huggingface.co/{BASE_ID}) on the "
        "[coati-hf-tests/sft-sample](https://huggingface.co/datasets/coati-hf-tests/sft-sample) dataset"
    )
    assert _opening(_card(root, "reward-model")).startswith("This model is a fine-tuned version of `sft`")
    ppo = _opening(_card(root, "ppo"))
    assert ppo.startswith("This model is a fine-tuned version of `sft`") and "`rm`" in ppo and "PPO" in ppo
    assert "(critic/README.md)" in _card(root, "ppo").text
    assert "(../README.md)" in _card(root, "ppo-critic").text


@pytest.mark.parametrize("stage", list(FOLDERS))
def test_every_card_cites_colossalchat_instructgpt_ppo_and_trl_as_bibtex(chain, stage):
    root, _ = chain
    citation = _section(_card(root, stage).text, "Citation")
    assert "```bibtex" in citation
    for key in ("ColossalChat", "ouyang2022training", "schulman2017proximal", "vonwerra2020trl"):
        assert key in citation


def test_lora_layers_are_stated_and_the_critics_card_says_which_it_covers(chain):
    root, _ = chain
    assert "| lora_layers | all 2 layers |" in _card(root, "sft").text
    critic = _card(root, "ppo-critic").text
    assert "layers_to_transform=[1]" in critic and "1 of the reward model's 2 layers" in critic


# ---------------------------------------------------------------------------------------------
# exported config and tokenizer files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["sft", "rm", "ppo", "ppo/critic"])
def test_exported_config_and_tokenizer_keep_what_a_loader_needs(chain, folder):
    root, _ = chain
    config = json.loads((root / folder / "config.json").read_text())
    assert config["use_cache"] is True
    tokenizer = json.loads((root / folder / "tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(tokenizer)
    assert tokenizer["model_max_length"] == config["max_position_embeddings"]


# ---------------------------------------------------------------------------------------------
# held-out results received after the export
# ---------------------------------------------------------------------------------------------


def _ppo_held_out(reward=0.42, win_rate=0.75):
    data = "coati_hf's bundled prompts.jsonl, rows 96-111: 16 held-out prompts"
    return [
        EvalResult(task_type="text-generation", dataset_type=LOCAL_DATASET_TYPE, dataset_name=data, metric_type="mean_reward",
                   metric_name="held-out mean reward (greedy, scored by rm)", metric_value=reward),
        EvalResult(task_type="text-generation", dataset_type=LOCAL_DATASET_TYPE, dataset_name=data, metric_type="win_rate",
                   metric_name="win rate against sft", metric_value=win_rate),
    ]  # fmt: skip


def test_add_evaluation_results_puts_held_out_results_into_yaml_and_body_in_place(chain, tmp_path):
    root, _ = chain
    folder = tmp_path / "ppo"
    shutil.copytree(root / "ppo", folder)
    critic_before = (folder / "critic" / "README.md").read_bytes()
    add_evaluation_results(folder, _ppo_held_out())
    card = ModelCard.load(folder / "README.md")
    assert {(r.metric_type, r.metric_value) for r in _results(card)} == {("mean_reward", 0.42), ("win_rate", 0.75)}
    assert card.data.to_dict()["model-index"][0]["name"] == "ppo"
    assert "coati-hf eval" in _derived((root / "ppo" / "README.md").read_text(), "results")
    results_section = _derived(card.text, "results")
    assert "0.42" in results_section and "win rate against sft" in results_section and "coati-hf eval" not in results_section
    assert "0.42" in _section(card.text, "Results")
    assert metadata_errors((folder / "README.md").read_text()) == []
    check_export(folder)
    assert (folder / "critic" / "README.md").read_bytes() == critic_before

    add_evaluation_results(folder, _ppo_held_out(reward=0.5)[:1])  # a new measurement replaces the old one
    card = ModelCard.load(folder / "README.md")
    assert sorted((r.metric_type, r.metric_value) for r in _results(card)) == [("mean_reward", 0.5), ("win_rate", 0.75)]
    assert "0.42" not in _derived(card.text, "results") and "0.5" in _derived(card.text, "results")


def test_add_evaluation_results_refuses_what_is_not_an_eval_result_and_leaves_the_card(chain, tmp_path):
    root, _ = chain
    folder = tmp_path / "ppo"
    shutil.copytree(root / "ppo", folder)
    before = (folder / "README.md").read_bytes()
    with pytest.raises(TypeError, match="EvalResult"):
        add_evaluation_results(folder, [{"mean_reward": 0.4}])
    assert (folder / "README.md").read_bytes() == before


def test_eval_results_given_to_create_model_card_go_into_the_next_export(chain, tmp_path):
    root, trainers = chain
    ppo = trainers["ppo"]
    ppo.create_model_card(eval_results=_ppo_held_out())
    try:
        ppo.save_model(str(tmp_path / "ppo"))
    finally:
        ppo._coati_card_options.pop("eval_results", None)
    assert {r.metric_type for r in _results(ModelCard.load(tmp_path / "ppo" / "README.md"))} == {"mean_reward", "win_rate"}

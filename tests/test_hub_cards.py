"""The facts a card states, checked one by one without training: plots, languages, counts,
optimizer names, held-out dataset entries."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from coati_hf.hub.facts import describe_optimizer, examples_seen, ppo_optimizer_steps
from coati_hf.hub.language import dataset_languages, detect_languages
from coati_hf.hub.plots import stage_figures
from coati_hf.hub.results import LOCAL_DATASET_TYPE, held_out_result

PPO_LOG = [
    {"objective/scores": 0.1, "objective/entropy": 14.2, "policy/entropy_avg": 3.1, "objective/kl": 0.0, "ppo/optimizer_steps": 2, "step": 1},
    {"objective/scores": 0.3, "objective/entropy": 12.9, "policy/entropy_avg": 2.9, "objective/kl": 0.2, "ppo/optimizer_steps": 2, "step": 2},
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------


def _axes(figure):
    return figure.axes[0]


def test_ppo_plots_count_ppo_updates_on_an_integer_axis_and_draw_two_points_as_markers():
    figures = stage_figures(PPO_LOG, "ppo")
    assert {"reward", "kl", "entropy"} <= set(figures)
    for figure in figures.values():
        axes = _axes(figure)
        assert axes.get_xlabel() == "PPO update"
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        for line in axes.get_lines():
            assert line.get_marker() not in (None, "None", "", " ")
            assert line.get_linestyle() in ("None", "", " ")  # two points: no line implying a trend between them


def test_the_entropy_plot_is_per_token_and_never_shows_the_per_sequence_sum_as_per_token():
    axes = _axes(stage_figures(PPO_LOG, "ppo")["entropy"])
    assert "per token" in axes.get_ylabel()
    plotted = sorted(float(y) for line in axes.get_lines() for y in line.get_ydata())
    assert plotted == [2.9, 3.1]  # policy/entropy_avg, not objective/entropy (a sum over the response)


def test_sft_and_reward_plots_count_optimizer_steps_and_many_points_are_a_line():
    history = [{"loss": 2.0 - 0.01 * step, "step": step} for step in range(1, 41)]
    axes = _axes(stage_figures(history, "sft")["loss"])
    assert axes.get_xlabel() == "optimizer step"
    assert axes.get_lines()[0].get_linestyle() == "-"


# ---------------------------------------------------------------------------------------------
# languages
# ---------------------------------------------------------------------------------------------


def test_detect_languages_from_text():
    assert detect_languages(["What is the capital of France?", "地球上的季节是怎么产生的？"]) == ["en", "zh"]
    assert detect_languages(["零基础怎样入门编程？用 Python 好吗？"]) == ["zh"]
    assert detect_languages(["How do I learn to cook?"]) == ["en"]
    assert detect_languages(["12345", ""]) == []


def test_the_shipped_samples_are_english_and_chinese(smol_tokenizer):
    from coati_hf.data import load_sample

    assert dataset_languages(load_sample("sft")) == ["en", "zh"]
    assert dataset_languages(load_sample("preferences")) == ["en", "zh"]


def test_languages_of_tokenized_prompts_ignore_the_chat_templates_own_words(smol_tokenizer):
    from datasets import Dataset

    tokenizer = copy.deepcopy(smol_tokenizer)

    def tokenized(questions):
        rows = [{"input_ids": tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                            return_dict=True)["input_ids"]} for q in questions]  # fmt: skip
        return Dataset.from_list(rows)

    chinese = ["零基础怎样入门编程？", "地球上的季节是怎么产生的？", "地震发生时应该怎么办？", "通货膨胀对普通人有什么影响？"]
    assert "You are a helpful" in tokenizer.decode(tokenized(chinese)[0]["input_ids"])  # SmolLM2's English system prompt
    assert dataset_languages(tokenized(chinese), tokenizer) == ["zh"]
    assert dataset_languages(tokenized(chinese + ["What is the water cycle?", "How do plants grow?"]), tokenizer) == ["en", "zh"]


# ---------------------------------------------------------------------------------------------
# counts and names
# ---------------------------------------------------------------------------------------------


def _run(tmp_path, steps, rows, **args):
    from coati_hf import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path), report_to="none", **args)
    return SimpleNamespace(args=config, state=SimpleNamespace(global_step=steps, log_history=[]), train_dataset=list(range(rows)))


def test_examples_seen_is_steps_times_the_global_batch(tmp_path):
    assert examples_seen(_run(tmp_path, 8, 112, per_device_train_batch_size=4)) == 32
    assert examples_seen(_run(tmp_path, 3, 112, per_device_train_batch_size=2, gradient_accumulation_steps=4)) == 24
    # 14 rows in batches of 4: an epoch is 4, 4, 4 and a last batch of 2; the 5th step starts the next epoch
    assert examples_seen(_run(tmp_path, 5, 14, per_device_train_batch_size=4)) == 18


def test_ppo_optimizer_steps_are_the_logged_totals_or_updates_times_epochs_times_minibatches():
    assert ppo_optimizer_steps(SimpleNamespace(state=SimpleNamespace(log_history=PPO_LOG, global_step=2))) == 4
    args = SimpleNamespace(num_ppo_epochs=2, num_mini_batches=3)
    assert ppo_optimizer_steps(SimpleNamespace(args=args, state=SimpleNamespace(log_history=[], global_step=2))) == 12


def test_the_optimizer_is_named_as_a_person_writes_it(tmp_path):
    from coati_hf import SFTConfig

    text = describe_optimizer(SFTConfig(output_dir=str(tmp_path), report_to="none", optim="adamw_torch_fused"))
    assert "OptimizerNames" not in text and "adamw_torch_fused" in text
    assert text.startswith("AdamW") and "β1=0.9" in text and "β2=0.999" in text and "ε=1e-08" in text
    sgd = describe_optimizer(SFTConfig(output_dir=str(tmp_path), report_to="none", optim="sgd"))
    assert sgd.startswith("SGD") and "β1" not in sgd


# ---------------------------------------------------------------------------------------------
# held-out dataset entries
# ---------------------------------------------------------------------------------------------


def test_a_held_out_entry_without_a_hub_id_is_described_in_its_name_not_slugged_into_its_type():
    description = "coati_hf's bundled bilingual sample preferences.jsonl (coati_hf/data/samples), rows 96-111"
    result = held_out_result("reward-model", description, 16, "pairs", "accuracy", "held-out reward accuracy", 0.8125)
    assert result.dataset_type == LOCAL_DATASET_TYPE
    assert result.dataset_name == f"{description}: 16 held-out pairs"
    assert (result.metric_value, result.task_type) == (0.8125, "text-classification")
    on_hub = held_out_result("sft", "org/data", 200, "conversations", "loss", "held-out loss", 1.5)
    assert (on_hub.dataset_type, on_hub.dataset_name) == ("org/data", "org/data: 200 held-out conversations")


def test_create_model_card_records_held_out_results_and_refuses_unknown_options():
    from huggingface_hub import EvalResult

    from coati_hf.hub.trainer_mixin import HubExportMixin

    trainer = SimpleNamespace()
    result = EvalResult(task_type="text-generation", dataset_type=LOCAL_DATASET_TYPE, dataset_name="16 held-out prompts",
                        metric_type="win_rate", metric_value=0.6)  # fmt: skip
    HubExportMixin.create_model_card(trainer, eval_results=[result], language="zh")
    assert trainer._coati_card_options == {"eval_results": [result], "language": ["zh"]}
    with pytest.raises(TypeError, match="eval_result"):
        HubExportMixin.create_model_card(trainer, eval_result=[result])  # a typo is not dropped silently
    with pytest.raises(TypeError, match="EvalResult"):
        HubExportMixin.create_model_card(trainer, eval_results=[{"win_rate": 0.6}])

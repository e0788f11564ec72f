"""The whole pipeline on the embedded SmolLM2-135M-Instruct with LoRA: SFT -> RM -> PPO -> export.

This is what `make demo` runs, its recipe unchanged (about 5 minutes on 2 cores): every stage's
folder must reload with plain `from_pretrained`, PPO must log its per-step statistics, the
held-out evaluation must reach the summary, the eval files and the cards, and PPO must come out
ahead of SFT on the held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from coati_hf.demo import run_demo

    return run_demo(output_dir=str(tmp_path_factory.mktemp("demo")))


def test_every_stage_reloads_with_plain_from_pretrained(demo_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    sft = AutoModelForCausalLM.from_pretrained(demo_run["sft"])
    tokenizer = AutoTokenizer.from_pretrained(demo_run["sft"])
    reward = AutoModelForSequenceClassification.from_pretrained(demo_run["reward_model"])
    actor = AutoModelForCausalLM.from_pretrained(demo_run["ppo"])
    critic = AutoModelForSequenceClassification.from_pretrained(Path(demo_run["ppo"]) / "critic")
    assert reward.config.num_labels == 1 and critic.config.num_labels == 1
    assert (Path(demo_run["sft"]) / "adapter" / "adapter_config.json").is_file()
    assert (Path(demo_run["ppo"]) / "adapter" / "adapter_config.json").is_file()

    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(actor(**batch).logits, sft(**batch).logits)  # PPO changed the SFT policy
    scorer = pipeline("text-classification", model=reward, tokenizer=AutoTokenizer.from_pretrained(demo_run["reward_model"]), function_to_apply="none")
    assert isinstance(scorer("Thank you, I am glad to help.")[0]["score"], float)


def test_ppo_logs_its_statistics_every_step(demo_run):
    from coati_hf.demo import PPO_UPDATES

    log = demo_run["ppo_log"]
    assert [entry["step"] for entry in log] == list(range(1, PPO_UPDATES + 1))
    for entry in log:
        for key in ("objective/scores", "objective/kl", "objective/entropy", "loss/value_avg", "val/ratio"):
            assert key in entry and entry[key] == entry[key], key  # present and not NaN
        assert 0.5 < entry["val/ratio"] < 2.0


def test_every_stage_of_the_demo_has_a_hub_card_naming_the_real_base_model(demo_run):
    from huggingface_hub import ModelCard

    from coati_hf.hub.export import check_export

    for stage, folder in (("sft", demo_run["sft"]), ("reward-model", demo_run["reward_model"]), ("ppo", demo_run["ppo"])):
        check_export(folder)
        data = ModelCard.load(Path(folder) / "README.md").data.to_dict()
        assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and data["license"] == "apache-2.0"
        assert f"coati-{stage}" in data["tags"] and "bundled" in data["datasets"][0]
    lineage = ModelCard.load(Path(demo_run["ppo"]) / "README.md").data.to_dict()["coati_hf"]["lineage"]
    assert [step["stage"] for step in lineage] == ["base", "sft", "ppo"]
    assert lineage[-1]["reward"]["name"] == "reward_model"  # PPO's reward, not its parent


def test_the_demo_ends_with_a_held_out_evaluation_a_user_can_act_on(demo_run):
    """Where each model is, the reward model's held-out accuracy, the held-out evaluation of both
    policies (recomputed here for the SFT side with generate's scoring), a verdict that follows
    the win rate's interval, the chat commands; the numbers also in the eval files and cards."""
    import json
    import math

    from huggingface_hub import ModelCard

    from coati_hf.chat import GenerationSettings, generate_and_score, mean_score
    from coati_hf.data import load_sample
    from coati_hf.demo import EVAL_NEW_TOKENS, HELD_OUT_PROMPTS, closing_summary, english_prompt_split

    summary = demo_run["summary"]
    assert 0.0 <= summary["reward_model_accuracy"] <= 1.0 and summary["held_out_pairs"] == 16
    assert summary["held_out_prompts"] == HELD_OUT_PROMPTS
    prompts = load_sample("prompts")
    train_rows, held_out_rows = english_prompt_split(prompts)
    assert not set(train_rows) & set(held_out_rows) and all(prompts[r]["prompt"][-1]["content"].isascii() for r in held_out_rows)
    held_out = [prompts[row]["prompt"] for row in held_out_rows]
    rows = generate_and_score(demo_run["sft"], held_out, demo_run["reward_model"],
                              settings=GenerationSettings(max_new_tokens=EVAL_NEW_TOKENS, temperature=0.0, top_p=1.0), progress=False)
    assert mean_score(rows) == pytest.approx(summary["mean_reward_sft"], abs=1e-4)
    low, high = summary["win_rate_ci95"]
    assert 0.0 <= low <= summary["win_rate"] <= high <= 1.0 and math.isfinite(summary["kl_to_sft"])

    text = closing_summary(demo_run, summary)
    for folder in (demo_run["sft"], demo_run["reward_model"], demo_run["ppo"], demo_run["eval"]):
        assert folder in text
    assert f"coati-hf chat {demo_run['ppo']}" in text and f"{summary['reward_model_accuracy']:.2f}" in text
    assert ("not distinguishable" in text) == (low <= 0.5 <= high)
    assert "\ufffd" not in text

    saved = json.loads((Path(demo_run["eval"]) / "eval_results.json").read_text())
    assert saved["prompts"]["count"] == HELD_OUT_PROMPTS and (Path(demo_run["eval"]) / "eval_results.png").is_file()
    for stage, key in (("ppo", "mean_reward_ppo"), ("sft", "mean_reward_sft")):
        results = ModelCard.load(Path(demo_run[stage]) / "README.md").data.eval_results
        reward = next(r for r in results if r.metric_type == "mean_reward")
        assert reward.metric_value == pytest.approx(summary[key], abs=1e-5) and "held-out" in reward.dataset_name


def test_ppo_comes_out_ahead_of_sft_on_the_held_out_prompts(demo_run):
    """The demo's result, pinned: on 16 English prompts PPO never trained on, the PPO policy's
    greedy answers score higher under the reward model than the SFT policy's. Four seeds of the
    recipe gained +0.11 to +0.24; the bound leaves room for PPO's run-to-run noise on a CPU (the
    same seed gives different runs: multi-threaded sampling), about 0.1. The win rate is not
    pinned: over the same seeds it ranged 0.44-0.78 on 16 prompts."""
    report = demo_run["evaluation"]
    sft, ppo = report.result("sft"), report.result("ppo")
    assert ppo.mean_reward - sft.mean_reward > 0.05
    assert demo_run["summary"]["mean_reward_ppo"] == pytest.approx(ppo.mean_reward)


def test_the_side_by_side_table_shows_the_question_and_whole_one_line_answers():
    from coati_hf.demo import side_by_side

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "什么是人工智能？"}]
    long_answer = "人工智能是一种让计算机像人一样思考和学习的技术。" * 5
    text = side_by_side([{"prompt": prompt, "completion": "Line one.\nLine two.", "reward_model": -0.5}],
                        [{"prompt": prompt, "completion": long_answer, "reward_model": 1.25}])
    lines = text.splitlines()
    assert "  什么是人工智能？" in lines and "Be brief." not in text
    assert "    SFT [-0.50] Line one. Line two." in lines
    ppo_line = next(line for line in lines if line.startswith("    PPO [+1.25] "))
    assert ppo_line.endswith("…") and len(ppo_line) <= len("    PPO [+1.25] ") + 70


def test_the_summary_says_where_the_reward_moved_in_the_rows_own_numbers():
    from coati_hf.demo import EVAL_NEW_TOKENS, what_ppo_changed

    def row(score, ended, length):
        return {"reward_model": score, "ended": ended, "length": length}

    sft = [row(-0.2, False, 64), row(0.8, True, 40), row(0.6, True, 30), row(-0.4, False, 64)]
    ppo = [row(1.0, True, 50), row(0.5, True, 20), row(0.6, True, 30), row(-0.3, False, 64)]
    first, second, plainly = what_ppo_changed(sft, ppo)
    assert f"cut at {EVAL_NEW_TOKENS} tokens before they ended: SFT 2, PPO 1;" in first
    assert "mean length SFT 49.5, PPO 41.0 tokens" in first
    # finished answers: 0.8, 0.6, 1.0, 0.5, 0.6 -> +0.70; unfinished: -0.2, -0.4, -0.3 -> -0.30
    assert "a finished answer +0.70 on average and an unfinished one -0.30" in second
    # prompt 1 was finished by PPO only (+1.200); the other three moved by (-0.3 + 0 + 0.1) / 3
    assert "on the 1 prompt where PPO finished an answer SFT left cut, the reward changed by +1.200" in second
    assert "on the other 3, by -0.067" in second
    # the whole gain (+1.0 summed) came from the finished prompt: said in words
    assert plainly.startswith("  All of the gain is PPO finishing answers that SFT left cut") and "score lower on average" in plainly
    # a gain spread over prompts whose answers ended either way gets no such sentence
    assert len(what_ppo_changed(sft[1:], [row(1.0, True, 40), row(0.9, True, 30), row(-0.3, False, 64)])) == 2

"""coati_hf.evaluation / coati-hf eval: the statistics, the KL, the API, the command, bad input.

The statistics are checked against published values (t table, a Wilson interval) and direct
computations; the KL against log-softmax of each model's own logits on each unpadded sequence.
The models are tiny random-init Llamas with the SmolLM2 tokenizer (untied output layers, so
greedy answers are varied words), saved as export folders for the command.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Explain gravity in a few words, please."}],
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "What is 2 + 2?"}],
]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (15, 2.1314), (30, 2.0423), (100, 1.9840), (5000, 1.9604)])
def test_t_quantile_matches_the_t_table(df, expected):
    from coati_hf.evaluation import t_quantile_975

    assert t_quantile_975(df) == pytest.approx(expected, abs=6e-5)


def test_mean_ci95_is_the_t_interval_over_prompts():
    from coati_hf.evaluation import mean_ci95

    values = [0.3, -1.2, 2.5, 0.9, 1.1]
    mean, (low, high) = mean_ci95(values)
    half = 2.776445 * statistics.stdev(values) / math.sqrt(5)  # t(0.975, 4) from the table
    assert mean == pytest.approx(statistics.fmean(values))
    assert (low, high) == pytest.approx((mean - half, mean + half), abs=1e-6)
    one_mean, one_ci = mean_ci95([4.0])
    assert one_mean == 4.0 and all(math.isnan(v) for v in one_ci)  # no spread from one prompt
    assert math.isnan(mean_ci95([])[0])


def test_win_rate_counts_ties_half_and_gives_the_wilson_interval():
    from coati_hf.evaluation import wilson_ci95, win_rate

    assert wilson_ci95(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)  # the textbook example
    mine = [3.0, 1.0, 2.0, 5.0, 2.0, float("nan")]
    base = [1.0, 1.0, 3.0, 4.0, 0.0, 1.0]
    same = [False, False, False, True, False, False]  # prompt 3: the same answer is a tie whatever the scores
    verdict = win_rate(mine, base, same)
    assert (verdict.wins, verdict.ties, verdict.losses, verdict.n) == (2, 2, 1, 5)  # the NaN pair is left out
    assert verdict.outcomes == [1.0, 0.5, 0.0, 0.5, 1.0]
    assert verdict.rate == pytest.approx(0.6)
    assert verdict.ci95 == pytest.approx(wilson_ci95(3, 5))
    assert win_rate([1.0, 2.0], [1.0 + 1e-9, 1.0], tolerance=1e-6).ties == 1
    assert win_rate([1.0, 2.0], [1.0 + 1e-9, 1.0]).losses == 1


# -- the KL on answers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policies(tiny_chat_model_dir, smol_tokenizer):
    """Two different tiny policies (loaded like any export) and a reward model, in memory."""
    from coati_hf.chat import LoadedModel, load_chat_model
    from coati_hf.models import make_tiny_llama

    a = load_chat_model(tiny_chat_model_dir, report=None)
    b_model, b_tokenizer = make_tiny_llama("causal_lm", seed=1, tokenizer=copy.deepcopy(smol_tokenizer), tie_word_embeddings=False)
    rm_model, rm_tokenizer = make_tiny_llama("sequence_classification", seed=2, tokenizer=copy.deepcopy(smol_tokenizer))
    return a, LoadedModel(b_model.eval(), b_tokenizer, "b"), LoadedModel(rm_model.eval(), rm_tokenizer, "rm")


def direct_answer_logprob(model, tokenizer, prompt, answer) -> float:
    """sum_t log softmax(logits)[a_t] of one unpadded sequence: the reference computation."""
    head = tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + list(answer)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(head) + t - 1, token].item() for t, token in enumerate(answer))


def test_answer_kl_is_the_log_ratio_summed_over_answer_tokens(policies):
    from coati_hf.chat.batch import generate_completions
    from coati_hf.chat.generation import GenerationSettings
    from coati_hf.evaluation import answer_kl

    a, b, _ = policies
    settings = GenerationSettings(max_new_tokens=7, temperature=0.0, top_p=1.0)
    _, greedy = generate_completions(a.model, a.tokenizer, PROMPTS, settings, progress=False, return_token_ids=True)
    answers = greedy[:3] + [[], a.tokenizer("Blue, red and green.", add_special_tokens=False)["input_ids"] + [a.tokenizer.eos_token_id]]
    prompts = PROMPTS[:3] + PROMPTS[3:5]
    kl = answer_kl(a.model, a.tokenizer, b.model, prompts, answers, batch_size=2)  # batches mix prompt and answer lengths
    expected = [
        direct_answer_logprob(a.model, a.tokenizer, p, ans) - direct_answer_logprob(b.model, a.tokenizer, p, ans)
        for p, ans in zip(prompts, answers)
    ]
    assert kl == pytest.approx(expected, abs=2e-4)
    assert kl[3] == 0.0  # an empty answer
    assert all(value > 0 for value in kl[:3])  # a's own greedy answers are likelier under a than under b
    assert answer_kl(a.model, a.tokenizer, a.model, prompts, answers, batch_size=2) == pytest.approx([0.0] * 5, abs=1e-6)


# -- the Python API --------------------------------------------------------------------------------


def test_evaluate_policies_answers_each_model_once_and_aggregates_its_rows(policies, monkeypatch):
    import coati_hf.chat.batch as batch
    from coati_hf.chat import GenerationSettings, generate_and_score
    from coati_hf.evaluation import evaluate_policies, mean_ci95, win_rate

    a, b, rm = policies
    calls, judged = [], []
    real = batch.generate_completions
    monkeypatch.setattr(batch, "generate_completions", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))

    def judge(prompts, completions):
        judged.append(list(prompts))
        return [len(text) for text in completions]

    report = evaluate_policies({"b": b, "a": a}, PROMPTS, reward_model=rm, judge=judge, baseline="a", max_new_tokens=6, progress=False)
    assert len(calls) == 2  # a is the baseline and a model: answered once
    assert [m.name for m in report.models] == ["a", "b"] and report.baseline == "a" and report.reference == "a"
    first, second = report.result("a"), report.result("b")
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, top_p=1.0)
    for loaded, result in ((a, first), (b, second)):
        expected = generate_and_score(loaded.model, PROMPTS, rm.model, tokenizer=loaded.tokenizer, reward_tokenizer=rm.tokenizer, settings=settings, progress=False)
        assert [r["completion"] for r in result.rows] == [r["completion"] for r in expected]
        assert [r["reward_model"] for r in result.rows] == pytest.approx([r["score"] for r in expected], abs=1e-5)
        assert result.num_prompts == 5 and [r["row"] for r in result.rows] == [0, 1, 2, 3, 4]
        assert (result.mean_reward, result.ci95) == mean_ci95([r["reward_model"] for r in result.rows])
        lengths = [r["length"] for r in result.rows]
        assert result.mean_length == pytest.approx(sum(lengths) / 5) and all(0 <= n <= 6 for n in lengths)
        assert result.num_truncated == sum(not r["ended"] for r in result.rows)
        assert all(r["length"] == 6 for r in result.rows if not r["ended"])
    # the judge saw what PPO's reward function sees: each prompt through the model's chat template
    assert judged[0] == [a.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in PROMPTS]
    assert second.scores["judge"].mean == pytest.approx(statistics.fmean(len(r["completion"]) for r in second.rows))
    # win rate: b's score against a's on the same prompt, ties half
    verdict = win_rate([r["reward_model"] for r in second.rows], [r["reward_model"] for r in first.rows],
                       [x["completion"] == y["completion"] for x, y in zip(second.rows, first.rows)])  # fmt: skip
    assert (second.win_rate, second.win_rate_ci95) == (verdict.rate, verdict.ci95)
    assert [r["vs_baseline"]["reward_model"] for r in second.rows] == verdict.outcomes
    assert first.win_rate is None and first.is_baseline and first.is_reference and first.kl_to_reference is None
    # KL (its arithmetic is checked above): the mean over prompts of b's answers' log-ratio to a
    assert second.kl_to_reference == pytest.approx(statistics.fmean(r["kl"] for r in second.rows))
    assert second.kl_to_reference > 0 and second.kl_ci95[0] < second.kl_to_reference < second.kl_ci95[1]
    entries = report.model_index("b")
    assert {e.metric_name for e in entries} == {"mean reward (RM)", "win rate vs a (RM)", "mean score (judge)", "win rate vs a (judge)", "KL to a (nats per answer)"}
    assert {e.task_type for e in entries} == {"text-generation"} and entries[0].dataset_name == "5 held-out prompts: given in memory"
    assert {e.metric_name for e in report.model_index("a")} == {"mean reward (RM)", "mean score (judge)"}
    from huggingface_hub import ModelCardData

    [index] = ModelCardData(model_name="b", eval_results=entries).to_dict()["model-index"]
    [card_result] = index["results"]  # one task and dataset, five metrics
    assert card_result["task"]["type"] == "text-generation" and len(card_result["metrics"]) == 5


def test_prompts_from_the_shipped_sample_by_rows():
    from coati_hf.data import load_sample
    from coati_hf.evaluation import load_eval_prompts

    held_out = load_eval_prompts("sample:prompts", rows="96:112")
    assert held_out.prompts == list(load_sample("prompts").select(range(96, 112))["prompt"])
    assert held_out.indices == list(range(96, 112)) and held_out.info()["count"] == 16
    assert held_out.description == "coati_hf's sample:prompts, rows 96:112 of 112"
    assert load_eval_prompts(["Hello", PROMPTS[1]]).prompts == [user("Hello"), PROMPTS[1]]  # a string is one user turn


def test_a_model_against_its_own_copy_ties_everywhere_with_zero_kl(policies):
    from coati_hf.evaluation import evaluate_policies

    a, _, rm = policies
    twin = (copy.deepcopy(a.model), a.tokenizer)
    report = evaluate_policies({"a": a, "twin": twin}, PROMPTS[:3], reward_model=rm, baseline="a", max_new_tokens=5, progress=False)
    result = report.result("twin")
    assert (result.win_rate, result.primary.ties) == (0.5, 3)
    assert result.kl_to_reference == pytest.approx(0.0, abs=1e-6)
    assert "- (reference)" in report.table()


# -- the command -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_chat_model_dir, smol_tokenizer):
    """Export folders: a second policy, a reward model, a two-label classifier; a prompt file."""
    from transformers import AutoModelForSequenceClassification

    from coati_hf.models import make_tiny_llama

    root = tmp_path_factory.mktemp("eval_exports")
    folders = {"policy": tiny_chat_model_dir}
    for name, kind, seed, extra in (("ppo", "causal_lm", 1, {"tie_word_embeddings": False}), ("reward_model", "sequence_classification", 2, {})):
        model, tokenizer = make_tiny_llama(kind, seed=seed, tokenizer=copy.deepcopy(smol_tokenizer), **extra)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = str(root / name)
    config = copy.deepcopy(model.config)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(root / "two_labels")
    smol_tokenizer.save_pretrained(root / "two_labels")
    folders["two_labels"] = str(root / "two_labels")
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": p} for p in PROMPTS] + [{"prompt": user("Say goodbye.")}]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    folders["prompts"] = str(prompts)
    (root / "judges.py").write_text("def by_length(prompts, completions):\n    return [len(c) for c in completions]\n")
    folders["judges"] = str(root / "judges.py")
    return folders


def test_eval_command_prints_the_table_and_writes_json_and_png(exports, tmp_path, capsys):
    from coati_hf.cli import main

    out = tmp_path / "results"
    code = main(["eval", exports["ppo"], "--baseline", exports["policy"], "--prompts", exports["prompts"], "--rows", "1:5",
                 "--reward-model", exports["reward_model"], "--judge", exports["judges"] + ":by_length",
                 "--max-new-tokens", "6", "--output-dir", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out
    assert "Held-out evaluation on 4 prompts (file prompts.jsonl, rows 1:5 of 6)" in table
    assert "at most 6 new tokens" in table
    model_lines = [line for line in table.splitlines() if line.startswith(("policy (baseline)", "ppo "))]
    assert len(model_lines) == 2 and "- (reference)" in model_lines[0]

    data = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert data["prompts"]["count"] == 4 and data["prompts"]["rows"] == "1:5" and data["prompts"]["rows_in_source"] == 6
    assert data["reward_model"] == exports["reward_model"] and data["judge"].endswith("judges.py:by_length")
    assert data["settings"]["max_new_tokens"] == 6 and data["baseline"] == "policy" and data["reference"] == "policy"
    baseline, ppo = data["models"]
    assert (baseline["name"], ppo["name"]) == ("policy", "ppo") and baseline["is_baseline"] and not ppo["is_baseline"]
    for model in (baseline, ppo):
        assert model["num_prompts"] == 4 and [r["row"] for r in model["rows"]] == [1, 2, 3, 4]
        assert [r["prompt"] for r in model["rows"]] == PROMPTS[1:5]
        assert model["scores"]["reward_model"]["mean"] == pytest.approx(statistics.fmean(r["reward_model"] for r in model["rows"]))
        assert model["scores"]["judge"]["mean"] == pytest.approx(statistics.fmean(len(r["completion"]) for r in model["rows"]))
        assert model["mean_length"] == pytest.approx(statistics.fmean(r["length"] for r in model["rows"]))
    assert baseline["kl_to_reference"] is None and baseline["scores"]["reward_model"]["win_rate"] is None
    assert ppo["kl_to_reference"] == pytest.approx(statistics.fmean(r["kl"] for r in ppo["rows"]))
    wins = ppo["scores"]["reward_model"]
    assert wins["wins"] + wins["ties"] + wins["losses"] == 4
    assert wins["win_rate"] == pytest.approx(statistics.fmean(r["vs_baseline"]["reward_model"] for r in ppo["rows"]))
    assert (out / "eval_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp, e: [str(tmp / "missing" / "ppo"), "--prompts", e["prompts"], "--reward-model", e["reward_model"]], "no such folder"),
        (lambda tmp, e: [e["ppo"], "--prompts", _write(tmp / "empty.jsonl", ""), "--reward-model", e["reward_model"]], "no rows found"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"], "--reward-model", e["policy"]], "LlamaForCausalLM is not a reward model"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"], "--reward-model", e["two_labels"]], "has 2 labels"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"], "--judge", "no_such_module_for_coati:score"], "--judge no_such_module_for_coati:score: cannot import"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"], "--judge", e["judges"] + ":missing"], "has no function 'missing'"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"], "--reward-model", e["reward_model"], "--rows", "50:60"], "no prompts in rows 50:60 of its 6"),
        (lambda tmp, e: [e["ppo"], "--prompts", e["prompts"]], "nothing scores the answers"),
        (lambda tmp, e: [e["reward_model"], "--prompts", e["prompts"], "--reward-model", e["reward_model"]], "is a reward model or critic, not a policy"),
    ],
    ids=["missing-folder", "empty-prompts", "rm-is-a-policy", "rm-two-labels", "judge-not-importable", "judge-no-function", "rows-empty", "no-scorer", "policy-is-an-rm"],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_status_2(exports, tmp_path, capsys, make_args, message):
    from coati_hf.cli import main

    assert main(["eval", *make_args(tmp_path, exports)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("coati-hf eval: error: "), captured.err
    assert message in lines[0]

"""Held-out evaluation of policies: a stage after SFT and PPO.

    evaluate_policies(models, prompts, reward_model=..., judge=..., baseline=..., reference=...)
        -> EvaluationReport: .table(), .to_json(path), .plot(path), .result(name), .model_index(name)
    model_index_results(result, report)   huggingface_hub EvalResults for a card's model-index
    answer_kl(model, tokenizer, reference, prompts, answer_ids)   nats per answer
    mean_ci95, win_rate, wilson_ci95, t_quantile_975                the statistics

Greedy answers to held-out prompts, scored by a reward model and/or a judge function; per model
the mean score with its 95% t-interval, the win rate against a baseline (ties count half) with
its 95% Wilson interval, the mean answer length in tokens and the KL to a reference policy on the
model's own answers. ``coati-hf eval`` (:mod:`.command`) wraps it. The math is stated in
:mod:`.stats` and :mod:`.core`. Names are imported lazily: ``import coati_hf.evaluation`` loads
no torch.
"""

from __future__ import annotations

from coati_hf._lazy import install_lazy_attributes

_LAZY = {
    "evaluate_policies": ".core",
    "answer_kl": ".core",
    "EvaluationError": ".inputs",
    "PromptSet": ".inputs",
    "load_eval_prompts": ".inputs",
    "load_judge": ".inputs",
    "parse_rows": ".inputs",
    "EvaluationReport": ".report",
    "ModelResult": ".report",
    "ScoreSummary": ".report",
    "model_index_results": ".report",
    "mean_ci95": ".stats",
    "win_rate": ".stats",
    "wilson_ci95": ".stats",
    "t_quantile_975": ".stats",
    "WinRate": ".stats",
}

install_lazy_attributes(globals(), _LAZY)

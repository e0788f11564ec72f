r"""Held-out evaluation of policies: greedy answers, scored, compared with a baseline, and their
KL to a reference policy.

For every model (the baseline first, each model once however often it is named):

1. greedy answers (temperature 0, at most ``max_new_tokens`` new tokens) to the prompts, through
   :func:`coati_hf.chat.generate_and_score` (the model's chat template, left-padded batches,
   cut at the first end token), which also scores them with the reward model the way it was
   trained (chat template of prompt + answer, score at the last token); an answer cut at
   ``max_new_tokens`` is scored as it stands, without an end-of-turn token, the read PPO makes
   of an unfinished response (the table counts the cut answers);
2. a judge, if given, is called once with all answers as PPO calls ``--reward_function``:
   ``judge(prompts, completions) -> scores``, ``prompts`` being the chat-template text each
   model answered (with the generation prompt) and ``completions`` the answers' text;
3. the KL to the reference policy (default: the baseline), per answer ``a = (a_1..a_T)`` to
   prompt ``x`` (:func:`answer_kl`)::

       KL_answer = sum_{t=1..T} [ log pi(a_t | x, a_<t) - log pi_ref(a_t | x, a_<t) ]   (nats)

   over the answer's tokens, the end token included when the model wrote one (the tokens PPO's
   action mask covers), both models reading the same token ids (the policy's chat template
   and tokenizer; the reference must share that vocabulary), logits at temperature 1. It is
   the k1 estimator of ``KL(pi || pi_ref)`` at one answer per prompt; the answer is the greedy
   one, not a sample from ``pi``, so the mean over prompts estimates how much more likely the
   policy makes its own answers than the reference does. It is not the true KL (which averages
   over sampled answers and is >= 0); it is 0 for a model against itself and can be negative.

Statistics over the prompts (t-interval of the mean, win rate with ties counted half and its
Wilson interval) are defined in :mod:`coati_hf.evaluation.stats`.
"""

from __future__ import annotations

import gc
import math
import os
from typing import Any, Callable, Mapping, Sequence

from .inputs import (
    DEFAULT_MAX_NEW_TOKENS,
    EvaluationError,
    PromptSet,
    chat_text,
    check_policy_source,
    judge_scores,
    load_eval_prompts,
    load_judge,
    load_policy,
    load_reward_model_for_eval,
    policy_entries,
    say,
)
from .report import EvaluationReport, ModelResult, ScoreSummary
from .stats import mean_ci95, prompt_outcome, win_rate


def answer_kl(
    model, tokenizer, reference, prompts: Sequence[list[dict]], answer_ids: Sequence[Sequence[int]], batch_size: int = 8
) -> list[float]:
    """Per answer, ``sum_t log pi(a_t|x, a_<t) - log pi_ref(a_t|x, a_<t)`` in nats (module rules):
    ``answer_ids[i]`` teacher-forced after prompt ``i`` (``tokenizer``'s chat template), through
    :func:`coati_hf.ppo.forward.forward_logprobs` of ``model`` and of ``reference``. An empty
    answer has 0."""
    import torch

    from ..ppo.forward import forward_logprobs

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    values: list[float] = []
    for start in range(0, len(prompts), batch_size):
        heads = [tokenizer(chat_text(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        tails = [list(a) for a in answer_ids[start : start + batch_size]]
        width, length = max(len(h) for h in heads), max(len(a) for a in tails)
        if length == 0:
            values += [0.0] * len(heads)
            continue
        ids = torch.tensor([[pad] * (width - len(h)) + h + a + [pad] * (length - len(a)) for h, a in zip(heads, tails)])
        mask = torch.tensor([[0] * (width - len(h)) + [1] * (len(h) + len(a)) + [0] * (length - len(a)) for h, a in zip(heads, tails)])
        answer_mask = mask[:, width:].float()
        sums = []
        for policy in (model, reference):
            device = next(policy.parameters()).device
            with torch.inference_mode():
                logprobs = forward_logprobs(policy, ids.to(device), mask.to(device), width).float().cpu()
            sums.append((logprobs * answer_mask).sum(dim=-1))
        values += (sums[0] - sums[1]).tolist()
    return values


def _kl_problem(policy, reference, prompts, answer_ids) -> str | None:
    """Why the KL of ``policy`` (a LoadedModel) to ``reference`` cannot be measured, or None."""
    from ..ppo.roles import tokenizer_difference

    difference = tokenizer_difference(reference.tokenizer, policy.tokenizer)
    if difference:
        return f"the reference reads token ids differently: {difference}"
    prompt_ids = [policy.tokenizer(chat_text(policy.tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    largest = max(max(ids, default=0) for ids in list(prompt_ids) + list(answer_ids))
    rows = reference.model.get_input_embeddings().num_embeddings
    return f"the reference has {rows} token embeddings and the answers use id {largest}" if largest >= rows else None


def _finite_mean_ci95(values):
    """The mean and t-interval of the finite values (a judge may answer None: NaN)."""
    return mean_ci95([v for v in values if math.isfinite(v)])


def evaluate_policies(
    models: Sequence | Mapping[str, Any],
    prompts: Any,
    reward_model: Any = None,
    judge: str | Callable | None = None,
    baseline: Any = None,
    reference: Any = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    rows: str | slice | None = None,
    prompt_format: str = "auto",
    batch_size: int = 8,
    kl: bool = True,
    tie_tolerance: float = 0.0,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate ``models`` on held-out ``prompts`` (module rules) and return the report.

    ``models``: folders / Hub ids / ``embedded:...`` names, :class:`~coati_hf.chat.LoadedModel` s
    or ``(model, tokenizer)`` pairs, or a mapping name -> one of those. ``prompts``: a prompt
    file, ``sample:prompts``, or a list of message lists (``rows``: ``"96:112"`` selects rows).
    ``reward_model`` (a reward-model folder or loaded one) and/or ``judge`` (a callable or
    ``"module:function"``) score the answers. ``baseline``: the model the win rates are against
    (a name of ``models`` or a model; evaluated too). ``reference``: the policy the KL is
    measured to, default the baseline; ``kl=False`` skips it. Two scores within
    ``tie_tolerance`` of each other are a tie. Bad input raises :class:`EvaluationError`
    before any answer is generated.
    """
    from ..chat.batch import generate_and_score
    from ..chat.generation import GenerationSettings

    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be at least 1, got {batch_size}")
    try:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)
    except ValueError as error:
        raise EvaluationError(str(error).replace("max_new_tokens", "--max-new-tokens")) from None
    if reward_model is None and judge is None:
        raise EvaluationError("nothing scores the answers: give a reward model (--reward-model) and/or a judge (--judge)")
    prompt_set = prompts if isinstance(prompts, PromptSet) else load_eval_prompts(prompts, rows, prompt_format)
    judge_fn, judge_name = load_judge(judge) if judge is not None else (None, None)
    policies, baseline_entry, reference_entry = policy_entries(models, baseline, reference if reference is not None else baseline)
    for entry in policies + ([reference_entry] if reference_entry else []):
        if isinstance(entry.spec, (str, os.PathLike)):
            check_policy_source(entry.spec, "--reference" if entry is reference_entry else "MODEL")
    rm, rm_name = load_reward_model_for_eval(reward_model, device) if reward_model is not None else (None, None)

    wants_kl = kl and reference_entry is not None and any(e.key != reference_entry.key for e in policies)
    reference_loaded = load_policy(reference_entry.spec, device, dtype) if wants_kl else None
    prompt_list, results = prompt_set.prompts, []
    for entry in policies:
        is_reference = wants_kl and entry.key == reference_entry.key
        loaded = reference_loaded if is_reference and reference_loaded is not None else load_policy(entry.spec, device, dtype)
        say(f"{entry.name}: greedy answers to {len(prompt_list)} prompts", progress)
        answered = generate_and_score(
            loaded.model, prompt_list, rm.model if rm else None, tokenizer=loaded.tokenizer,
            reward_tokenizer=rm.tokenizer if rm else None, settings=settings, batch_size=batch_size,
            progress=progress, token_ids=True,
        )  # fmt: skip
        completions = [row["completion"] for row in answered]
        ids = [row["completion_ids"] for row in answered]
        ended = [row["ended"] for row in answered]
        scores = {}
        if rm is not None:
            scores["reward_model"] = [row["score"] for row in answered]
        if judge_fn is not None:
            scores["judge"] = judge_scores(judge_fn, judge_name, [chat_text(loaded.tokenizer, p) for p in prompt_list], completions)
        kl_values, kl_note = None, None
        if reference_loaded is not None and not is_reference:
            kl_note = _kl_problem(loaded, reference_loaded, prompt_list, ids)
            if kl_note is None:
                say(f"{entry.name}: KL to {reference_entry.name} on its answers", progress)
                kl_values = answer_kl(loaded.model, loaded.tokenizer, reference_loaded.model, prompt_list, ids, batch_size)
        table_rows = [
            {
                "index": i,
                "row": prompt_set.indices[i],
                "prompt": prompt_list[i],
                "completion": completions[i],
                "length": len(ids[i]) - int(ended[i]),
                "ended": ended[i],
                **{scorer: values[i] for scorer, values in scores.items()},
                **({"kl": kl_values[i]} if kl_values is not None else {}),
            }
            for i in range(len(prompt_list))
        ]
        kl_mean, kl_ci = mean_ci95(kl_values) if kl_values is not None else (None, None)
        results.append(
            ModelResult(
                name=entry.name, source=entry.source, num_prompts=len(prompt_list),
                mean_length=sum(r["length"] for r in table_rows) / len(table_rows), num_truncated=ended.count(False),
                scores={scorer: ScoreSummary(scorer, *_finite_mean_ci95(v), sum(map(math.isfinite, v))) for scorer, v in scores.items()},
                rows=table_rows, kl_to_reference=kl_mean, kl_ci95=kl_ci, kl_note=kl_note,
                is_baseline=baseline_entry is not None and entry.key == baseline_entry.key, is_reference=is_reference,
            )  # fmt: skip
        )
        if loaded is not reference_loaded:
            del loaded
            gc.collect()
    base = next((r for r in results if r.is_baseline), None)
    for result in results:
        if base is None or result is base:
            continue
        for scorer, summary in result.scores.items():
            mine, theirs = [r[scorer] for r in result.rows], [r[scorer] for r in base.rows]
            same = [a["completion"] == b["completion"] for a, b in zip(result.rows, base.rows)]
            verdict = win_rate(mine, theirs, same, tie_tolerance)
            summary.win_rate, summary.win_rate_ci95 = verdict.rate, verdict.ci95
            summary.wins, summary.ties, summary.losses = verdict.wins, verdict.ties, verdict.losses
            for row, other, is_same in zip(result.rows, base.rows, same):
                finite = math.isfinite(row[scorer]) and math.isfinite(other[scorer])
                outcome = prompt_outcome(row[scorer], other[scorer], is_same, tie_tolerance) if finite else None
                row.setdefault("vs_baseline", {})[scorer] = outcome
    measured_kl = reference_loaded is not None
    return EvaluationReport(
        models=results,
        prompts=prompt_set.info(),
        settings={
            "decoding": "greedy (temperature 0)", "max_new_tokens": int(max_new_tokens), "batch_size": batch_size,
            "tie_tolerance": tie_tolerance, "device": device, "dtype": dtype, "kl": measured_kl,
        },  # fmt: skip
        reward_model=rm_name,
        judge=judge_name,
        baseline=baseline_entry.name if baseline_entry else None,
        reference=reference_entry.name if measured_kl else None,
        reference_source=reference_entry.source if measured_kl else None,
    )

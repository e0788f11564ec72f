"""Completions for a file of prompts, optionally scored by a reward model: SFT vs PPO side by side.

Rows out (``coati-hf generate`` writes one JSON object per line, in the prompts' order)::

    {"prompt": [{"role": ..., "content": ...}, ...], "completion": "the reply", "score": 1.23}

- ``prompt`` is the conversation the model answered, as :func:`coati_hf.data.load_prompt_dataset`
  reads it from any supported format; ``completion`` the reply as text (whole characters,
  special tokens dropped); ``score`` only when a reward model is given.
- Generation: each prompt through the model's chat template, left-padded batches, cut at the
  first end token. The default is greedy (temperature 0), so that two models are compared on
  their answers and not on the dice.
- Scoring reads the reward model the way it was trained (coati_hf's RewardTrainer): the reward
  tokenizer's chat template of prompt + reply, cut after its last EOS token, the score at the
  last token (:func:`coati_hf.ppo.forward_scores`, the read PPO makes). A reply cut at
  ``max_new_tokens`` before its end token is scored as it stands, as PPO scores an unfinished
  response: the prompt's template with the generation prompt, then the reply's text, no
  end-of-turn token (the template would close the turn as if the reply had ended).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

from ..text import decode_whole_characters
from .errors import ChatError
from .generation import GenerationSettings, end_token_ids

_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")
GREEDY = GenerationSettings(max_new_tokens=128, temperature=0.0, top_p=1.0)


def load_prompts(source: Any, format: str = "auto", split: str = "train", limit: int | None = None) -> list[list[dict]]:
    """The prompts (lists of messages) of any source :func:`coati_hf.data.load_prompt_dataset`
    reads, the first ``limit`` of them if given."""
    from ..data import DataFormatError, load_prompt_dataset

    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(_FILE_SUFFIXES) and not os.path.exists(source):
        raise ChatError(f"no such prompt file: {source}")
    try:
        dataset = load_prompt_dataset(source, format=format, split=split)
    except (DataFormatError, ValueError, OSError) as error:
        raise ChatError(f"cannot read the prompts from {source}: {error}".splitlines()[0]) from None
    prompts = list(dataset["prompt"])
    return prompts[:limit] if limit is not None else prompts


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="prompt", disable=not enabled, dynamic_ncols=True)


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    progress: bool = True,
    *,
    return_token_ids: bool = False,
):
    """One reply per prompt (module rules), in order. ``return_token_ids``: return
    ``(replies, token_ids)``, each reply's ids as generated up to and including the first end
    token (absent when the reply reached ``max_new_tokens`` first)."""
    import torch

    settings = settings or GREEDY
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    texts = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    ends = set(end_token_ids(model, tokenizer))
    device = next(model.parameters()).device
    completions: list[str] = []
    token_ids: list[list[int]] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with _progress(len(texts), "generating", progress) as bar:
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
                batch = {key: value.to(device) for key, value in batch.items()}
                with torch.inference_mode():
                    output = model.generate(**batch, **settings.generate_kwargs(model, tokenizer))
                for row in output[:, batch["input_ids"].shape[1] :].tolist():
                    cut = next((i for i, token in enumerate(row) if token in ends), len(row))
                    completions.append(decode_whole_characters(tokenizer, row[:cut]))
                    token_ids.append(row[: cut + 1])
                bar.update(len(batch["input_ids"]))
    finally:
        tokenizer.padding_side = padding_side
    return (completions, token_ids) if return_token_ids else completions


def _reward_ids(tokenizer, prompt: list[dict], completion: str, finished: bool = True) -> list[int]:
    if not finished:  # as PPO reads an unfinished response: no end-of-turn after it
        opening = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(opening["input_ids"]) + list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    messages = list(prompt) + [{"role": "assistant", "content": completion}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: len(ids) - ids[::-1].index(eos)]  # cut after the last EOS
    return ids


def score_completions(
    reward_model,
    tokenizer,
    prompts: Sequence[list[dict]],
    completions: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
    finished: Sequence[bool] | None = None,
) -> list[float]:
    """The reward model's score of each (prompt, completion) pair (module rules). ``finished``:
    per pair, whether the reply ended with an end token (default: all did); an unfinished one is
    scored without an end-of-turn token."""
    import torch

    from ..ppo import forward_scores

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    finished = [True] * len(prompts) if finished is None else list(finished)
    if len(finished) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(finished)} finished flags")
    device = next(reward_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[float] = []
    with _progress(len(prompts), "scoring", progress) as bar:
        for start in range(0, len(prompts), batch_size):
            window = slice(start, start + batch_size)
            rows = [_reward_ids(tokenizer, *pair) for pair in zip(prompts[window], completions[window], finished[window])]
            width = max(len(row) for row in rows)
            ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
            last = mask.sum(dim=-1) - 1
            with torch.inference_mode():
                scores += forward_scores(reward_model, ids, mask, last).float().cpu().tolist()
            bar.update(len(rows))
    return scores


def generate_and_score(
    model,
    prompts: Any,
    reward_model: Any = None,
    *,
    tokenizer=None,
    reward_tokenizer=None,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    quantize: str | None = None,
    progress: bool = True,
    token_ids: bool = False,
) -> list[dict]:
    """Rows ``{"prompt", "completion"[, "score"]}`` for every prompt (module rules).

    ``model``: a folder, Hub id or embedded name (loaded with
    :func:`~coati_hf.chat.loading.load_chat_model`, ``quantize`` applies), or a loaded model
    with ``tokenizer``. ``prompts``: a file or anything ``load_prompt_dataset`` reads, or a list
    of message lists. ``reward_model``: None, a reward-model folder / name, or a loaded
    sequence classifier with ``reward_tokenizer``. ``settings``: greedy, 128 new tokens by default.
    ``token_ids``: each row also gets ``"completion_ids"``, the reply's ids as generated, up to
    and including the first end token (see :func:`generate_completions`), and ``"ended"``,
    whether the reply ended with an end token (False: cut at ``max_new_tokens``).
    """
    from .loading import load_chat_model, load_reward_model

    if isinstance(model, (str, os.PathLike)):
        loaded = load_chat_model(model, quantize=quantize)
        model, tokenizer = loaded.model, loaded.tokenizer
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: generate_and_score(model, prompts, tokenizer=...)")
    if _is_message_lists(prompts):
        prompt_list = [list(p) for p in prompts][:limit] if limit is not None else [list(p) for p in prompts]
    else:
        prompt_list = load_prompts(prompts, limit=limit)
    if isinstance(reward_model, (str, os.PathLike)):
        loaded_rm = load_reward_model(reward_model)
        reward_model, reward_tokenizer = loaded_rm.model, loaded_rm.tokenizer
    elif reward_model is not None and reward_tokenizer is None:
        reward_tokenizer = tokenizer
    completions, ids = generate_completions(model, tokenizer, prompt_list, settings, batch_size, progress, return_token_ids=True)
    rows = [{"prompt": prompt, "completion": completion} for prompt, completion in zip(prompt_list, completions)]
    ends = set(end_token_ids(model, tokenizer))
    finished = [bool(row_ids) and row_ids[-1] in ends for row_ids in ids]
    if token_ids:
        for row, row_ids, ended in zip(rows, ids, finished):
            row["completion_ids"], row["ended"] = row_ids, ended
    if reward_model is not None:
        scores = score_completions(reward_model, reward_tokenizer, prompt_list, completions, batch_size, progress, finished)
        for row, score in zip(rows, scores):
            row["score"] = score
    return rows


def _is_message_lists(prompts: Any) -> bool:
    return isinstance(prompts, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in p) for p in prompts
    )


def mean_score(rows: Iterable[dict]) -> float:
    """The mean of the rows' finite scores (NaN when there is none)."""
    scores = [row["score"] for row in rows if isinstance(row.get("score"), (int, float)) and math.isfinite(row["score"])]
    return sum(scores) / len(scores) if scores else float("nan")


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> str:
    """Write ``rows`` as JSON lines (UTF-8, characters as they are), creating the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path

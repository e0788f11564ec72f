"""The ``coati-hf eval`` command.

    coati-hf eval MODEL [MODEL ...] --prompts FILE [--rows 96:112] --reward-model RM
                  [--judge module:function] [--baseline MODEL] [--reference MODEL]
                  [--max-new-tokens 48] [--output-dir DIR]

Prints the table (models as rows) on stdout; progress goes to stderr. With ``--output-dir`` it
writes ``eval_results.json`` (settings, aggregates and per-prompt rows) and ``eval_results.png``
(mean score with 95% CI error bars). Bad input (a missing folder, an empty prompt file, a
reward model that is not a one-score sequence classifier, a judge that cannot be imported) is
one line on stderr, ``coati-hf eval: error: ...``, and exit status 2, before any answer is
generated.
"""

from __future__ import annotations

import argparse
import os
import sys

RESULTS_JSON = "eval_results.json"
RESULTS_PNG = "eval_results.png"
MODEL_HELP = "policy to evaluate: exported folder, adapter/ folder, Hub id in the local cache, or embedded:SmolLM2-135M-Instruct"


def add_eval_command(commands) -> None:
    """Add ``eval`` to the ``coati-hf`` subcommand parsers."""
    from .inputs import DEFAULT_MAX_NEW_TOKENS

    parser = commands.add_parser(
        "eval",
        help="Held-out evaluation: mean reward with 95%% CI, win rate vs a baseline, answer length, KL to a reference.",
        description="Greedy answers of each MODEL to held-out prompts, scored by a reward model and/or a judge. "
        "Prompts must not have been trained on: the demo's PPO trains on the English prompts of sample:prompts but "
        "the last 16, whose rows its eval/eval_results.json lists.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--prompts", required=True, help="held-out prompts: a file `coati-hf generate` reads, or sample:prompts")
    parser.add_argument("--rows", default=None, help="only rows START:STOP of the prompt file (0-based, STOP excluded), e.g. 96:112")
    parser.add_argument("--format", default="auto", help="the prompt file's format (default: detected)")
    parser.add_argument("--reward-model", default=None, help="reward-model folder (sequence classifier, num_labels=1) that scores the answers")
    parser.add_argument("--judge", default=None,
                        help="a scoring function instead of or besides the reward model: module:function or path/to/file.py:function, "
                             "called as function(prompts, completions) -> scores (as PPO's --reward_function)")
    parser.add_argument("--baseline", default=None, help="the model win rates are measured against (evaluated too; default: no win rate)")
    parser.add_argument("--reference", default=None,
                        help="the policy the KL is measured to (default: the baseline), e.g. a PPO model's SFT parent")
    parser.add_argument("--no-kl", action="store_true", help="do not measure the KL to the reference")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens (greedy decoding)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="the policies' weights (auto: float32 on the CPU, bfloat16/float16 on a GPU)")
    parser.add_argument("--output-dir", default=None, help=f"write {RESULTS_JSON} and {RESULTS_PNG} here")
    parser.set_defaults(handler=run_eval)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def run_eval(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ..chat.errors import ChatError
    from .core import evaluate_policies

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if args.output_dir:
            try:
                os.makedirs(args.output_dir, exist_ok=True)
            except OSError as error:
                raise ChatError(f"--output-dir {args.output_dir}: {error.strerror or error}") from None
        report = evaluate_policies(
            args.models, args.prompts, reward_model=args.reward_model, judge=args.judge, baseline=args.baseline,
            reference=args.reference, max_new_tokens=args.max_new_tokens, rows=args.rows, prompt_format=args.format,
            batch_size=args.batch_size, kl=not args.no_kl, device=args.device, dtype=args.dtype,
        )  # fmt: skip
    except ChatError as error:  # EvaluationError and the loaders' errors: bad input
        print(f"coati-hf eval: error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    finally:
        hf_logging.set_verbosity(verbosity)
    sys.stdout.write(report.table() + "\n")
    sys.stdout.flush()
    if args.output_dir:
        written = [report.to_json(os.path.join(args.output_dir, RESULTS_JSON)), report.plot(os.path.join(args.output_dir, RESULTS_PNG))]
        print(f"[coati-hf eval] wrote {' and '.join(written)}", file=sys.stderr, flush=True)
    return 0

"""The ``coati-hf chat``, ``generate`` and ``serve`` commands.

    coati-hf chat MODEL [--prompt TEXT] [--system S] [--quantize int8|int8-dynamic|8bit|4bit] ...
    coati-hf generate MODEL --prompts FILE --output out.jsonl [--reward-model FOLDER] ...
    coati-hf serve MODEL [--host 127.0.0.1] [--port 7860] ...

MODEL: an exported folder, an ``adapter/`` folder, a Hub id in the local cache, or
``embedded:SmolLM2-135M-Instruct``. Output contract: ``chat --prompt`` writes only the answer
to stdout (notes, memory reports and progress go to stderr); a problem the user can fix is one
line on stderr, ``coati-hf <command>: error: ...``, and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import ChatError

MODEL_HELP = "exported folder, adapter/ folder, Hub id in the local cache, or embedded:SmolLM2-135M-Instruct"


def _model_arguments(parser: argparse.ArgumentParser, temperature: float, max_new_tokens: int) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--base-model", default=None, help="base model of an adapter folder (overrides its adapter_config.json)")
    parser.add_argument("--quantize", choices=("none", "int8", "int8-dynamic", "8bit", "4bit"), default=None,
                        help="int8: int8 Linear weights on the CPU; int8-dynamic: torch.ao dynamic quantization "
                             "(weights and activations, lossy on models with outlier activations); "
                             "8bit/4bit: bitsandbytes on a CUDA GPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="weights' dtype (auto: float32 on the CPU, bfloat16/float16 on a GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=temperature, help="0 is greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same replies)")


def _system_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="system message put before the conversation")


def add_chat_commands(commands) -> None:
    """Add ``chat``, ``generate`` and ``serve`` to the ``coati-hf`` subcommand parsers."""
    chat = commands.add_parser("chat", help="Talk to a model in the terminal (or answer one --prompt).")
    _model_arguments(chat, temperature=0.7, max_new_tokens=256)
    _system_argument(chat)
    chat.add_argument("--prompt", default=None, help="answer this one message, print only the answer, and exit")
    chat.set_defaults(handler=_guarded(run_chat))

    generate = commands.add_parser("generate", help="Batched completions for a prompt file, optionally scored.")
    _model_arguments(generate, temperature=0.0, max_new_tokens=128)
    generate.add_argument("--prompts", required=True, help="prompt file in any format coati_hf.data reads")
    generate.add_argument("--format", default="auto", help="the prompt file's format (default: detected)")
    generate.add_argument("--output", required=True, help="JSON lines out: one {prompt, completion[, score]} per prompt")
    generate.add_argument("--reward-model", default=None, help="reward-model folder that scores each completion")
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    generate.set_defaults(handler=_guarded(run_generate))

    serve = commands.add_parser("serve", help="A web chat (Gradio) with the model; API endpoint /chat.")
    _model_arguments(serve, temperature=0.7, max_new_tokens=256)
    _system_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=7860)
    serve.set_defaults(handler=_guarded(run_serve))


def _guarded(handler):
    """Run ``handler``; a :class:`ChatError` becomes one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a command's output is the answer, not transformers' advice
        try:
            return handler(args)
        except ChatError as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"coati-hf {args.command}: error: {message}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        finally:
            hf_logging.set_verbosity(verbosity)  # main() may run inside another program

    run.__name__ = handler.__name__
    return run


def _settings(args: argparse.Namespace):
    from .generation import GenerationSettings

    try:
        return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    except ValueError as error:
        raise ChatError(str(error).replace("max_new_tokens", "--max-new-tokens").replace("top_p", "--top-p").replace("temperature", "--temperature")) from None


def _load(args: argparse.Namespace):
    from .loading import load_chat_model

    settings = _settings(args)  # bad settings fail before minutes of loading
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    loaded = load_chat_model(args.model, quantize=args.quantize, base_model=args.base_model, device=args.device, dtype=args.dtype)
    return loaded, settings


def run_chat(args: argparse.Namespace) -> int:
    from .generation import generate_reply
    from .session import ChatSession, run_terminal_chat

    loaded, settings = _load(args)
    session = ChatSession(loaded.model, loaded.tokenizer, settings, system=args.system)
    if args.prompt is not None:
        reply = generate_reply(loaded.model, loaded.tokenizer, session.messages + [{"role": "user", "content": args.prompt}], settings)
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()
        return 0
    quantized = f", {loaded.quantize}" if loaded.quantize else ""
    return run_terminal_chat(session, banner=f"Chatting with {args.model}{quantized}.")


def run_generate(args: argparse.Namespace) -> int:
    from .batch import generate_and_score, load_prompts, mean_score, write_jsonl
    from .loading import load_reward_model

    if args.batch_size < 1:
        raise ChatError(f"--batch-size must be at least 1, got {args.batch_size}")
    prompts = load_prompts(args.prompts, format=args.format, limit=args.limit)  # a bad file fails before loading
    loaded, settings = _load(args)
    reward = load_reward_model(args.reward_model) if args.reward_model else None
    rows = generate_and_score(
        loaded.model,
        prompts,
        reward.model if reward else None,
        tokenizer=loaded.tokenizer,
        reward_tokenizer=reward.tokenizer if reward else None,
        settings=settings,
        batch_size=args.batch_size,
    )
    write_jsonl(rows, args.output)
    summary = f"[coati-hf] {len(rows)} completions written to {args.output}"
    if reward:
        summary += f"; mean score {mean_score(rows):.4f}"
    print(summary, file=sys.stderr, flush=True)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .web import require_gradio, serve

    require_gradio()  # say how to install it before loading the model
    loaded, settings = _load(args)
    serve(loaded.model, loaded.tokenizer, settings, system=args.system, host=args.host, port=args.port, title=f"coati_hf chat: {_display_name(args.model)}")
    return 0


def _display_name(model: str) -> str:
    """A model's name for a page others may see: a folder's own name, never its full local path."""
    import os

    return os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model

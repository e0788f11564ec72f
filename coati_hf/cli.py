"""The ``coati-hf`` command.

    coati-hf sft|reward|ppo --config FILE [--option value ...] [--num_processes N]
                                                    a training stage through accelerate launch
                                                    (coati_hf.scripts; --help lists the options)
    coati-hf demo [--output-dir DIR] [--steps N]   run the pipeline on the embedded SmolLM2 and evaluate it
    coati-hf embedded-path                          convert (once) and print the embedded model's folder
    coati-hf push FOLDER REPO_ID [--revision R] [--private] [--token T] [--message M] [--endpoint URL]
                                                    push a saved export to a Hub repo in one commit
    coati-hf chat MODEL [--prompt TEXT]             talk to a model in the terminal (coati_hf.chat)
    coati-hf generate MODEL --prompts F --output O  completions for a prompt file, scored with --reward-model
    coati-hf serve MODEL [--host H] [--port P]      a web chat (Gradio), API endpoint /chat
    coati-hf eval MODEL [MODEL ...] --prompts F --reward-model RM [--baseline B]
                                                    held-out evaluation: mean reward (95% CI), win rate,
                                                    answer length, KL to a reference (coati_hf.evaluation)
"""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, steps=args.steps)
    return 0


def _embedded_path(_args: argparse.Namespace) -> int:
    from .models import embedded_model_dir

    print(embedded_model_dir())
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub.export import ExportError
    from .hub.push import PushError, push_export

    try:
        info = push_export(
            args.folder,
            args.repo_id,
            token=args.token,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.message,
            endpoint=args.endpoint,
        )
    except (PushError, ExportError) as error:
        print(f"coati-hf push: {error}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0


TRAINING_HELP = {
    "sft": "Stage 1: supervised fine-tuning (coati_hf.scripts.sft), launched through accelerate.",
    "reward": "Stage 2: a reward model (coati_hf.scripts.reward), launched through accelerate.",
    "ppo": "Stage 3: PPO with the PTX mix (coati_hf.scripts.ppo), launched through accelerate.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coati-hf", description="ColossalChat's RLHF pipeline for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True)

    for stage, text in TRAINING_HELP.items():  # parsed by the stage's own parser (see main)
        commands.add_parser(stage, help=text, add_help=False)

    demo = commands.add_parser("demo", help="Run the pipeline on the embedded SmolLM2-135M-Instruct (CPU friendly).")
    demo.add_argument("--output-dir", default="outputs/demo", help="Where every stage writes its model.")
    demo.add_argument("--steps", type=int, default=None,
                      help="SFT and reward-model optimizer steps (default: the demo's recipe; fewer is a quick smoke run).")
    demo.set_defaults(handler=_demo)

    path = commands.add_parser("embedded-path", help="Convert the embedded SmolLM2 once and print its folder.")
    path.set_defaults(handler=_embedded_path)

    push = commands.add_parser("push", help="Push a folder written by a coati_hf trainer's save_model to a Hub repo.")
    push.add_argument("folder", help="The export folder (it holds coati_export.json).")
    push.add_argument("repo_id", help="The Hub repo, e.g. your-name/sft-model; created if it does not exist.")
    push.add_argument("--revision", default=None, help="Branch to commit to (created if needed). Default: main.")
    push.add_argument("--private", action="store_true", help="Create the repo private (no effect on an existing repo).")
    push.add_argument("--token", default=None, help="Hub token with write access. Default: HF_TOKEN or the saved login.")
    push.add_argument("--message", default=None, help="Commit message.")
    push.add_argument("--endpoint", default=None, help="Hub endpoint. Default: HF_ENDPOINT or https://huggingface.co.")
    push.set_defaults(handler=_push)

    from .chat.commands import add_chat_commands

    add_chat_commands(commands)

    from .evaluation.command import add_eval_command

    add_eval_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING_HELP:  # every other argument belongs to the stage's parser or the launcher
        from .scripts.launch import launch

        return launch(argv[0], argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

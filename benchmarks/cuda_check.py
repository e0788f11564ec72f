"""Exercise the CUDA-only ColossalAI strategies through the Trainer mixin; print a table.

    python benchmarks/cuda_check.py              # on a CUDA machine (1 GPU is enough)
    torchrun --nproc_per_node 2 benchmarks/cuda_check.py   # several GPUs
    python benchmarks/cuda_check.py --device cpu # dry run of the script itself on CPU
    python benchmarks/cuda_check.py --tokenizer .gpu/smollm2   # where the embedded model is absent

Where there is no CUDA GPU it prints why and exits 0 (the test suite never needs a GPU).

Each row trains a ~20M-parameter Llama (SmolLM2 vocabulary, random init, random tokens; the
vocabulary is the embedded model's tokenizer, or ``--tokenizer DIR``'s, e.g. a folder with
SmolLM2's tokenizer files where the embedded GGUF was never converted)
for a few steps with ``transformers.Trainer`` + ``ColossalAIMixin`` and records: whether it
ran, the loss curve against the fp32 DDP row, peak CUDA memory, step time, and whether the
exported model (``save_model`` -> plain ``from_pretrained``) equals the trained weights.
Rows: ddp fp32 (reference), ddp bf16 (autocast), zero2 bf16, zero2_cpu bf16 (optimizer
states in host memory, HybridAdam), gemini bf16, gemini_auto bf16, and 3d (expected to
fail with transformers 5: colossalai.shardformer does not import). A failing row shows
the first line of its error; the others still run. Record the output in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings

ROWS = [
    ("ddp", "fp32"),
    ("ddp", "bf16"),
    ("zero2", "bf16"),
    ("zero2_cpu", "bf16"),
    ("gemini", "bf16"),
    ("gemini_auto", "bf16"),
    ("3d", "bf16"),
]
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4)


def run_row(strategy, precision, device, steps, workdir, tokenizer, dataset):
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from coati_hf.colossalai import ColossalAIMixin, ColossalAIPlugin, check_strategy_supported
    from coati_hf.models import make_tiny_llama

    class MixinTrainer(ColossalAIMixin, Trainer):
        pass

    row = {"strategy": strategy, "precision": precision}
    try:
        check_strategy_supported(strategy, cuda_available=device == "cuda")
        model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer, **MODEL_SHAPE)
        output_dir = os.path.join(workdir, f"{strategy}-{precision}")
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=4, max_steps=steps, learning_rate=1e-3,
            logging_steps=1, save_strategy="no", report_to=[], seed=0, data_seed=0, disable_tqdm=True,
            bf16=precision == "bf16", use_cpu=device == "cpu", max_grad_norm=1.0,
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = MixinTrainer(
            model=model, args=args, train_dataset=dataset, colossalai_plugin=ColossalAIPlugin(strategy, precision=precision)
        )
        start = time.perf_counter()
        trainer.train()
        row["step_s"] = (time.perf_counter() - start) / steps
        row["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
        if device == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        export = os.path.join(output_dir, "export")
        trained = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective under Gemini
        trainer.save_model(export)
        reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).state_dict()
        row["export_diff"] = max(
            (trained[k].float().cpu() - reloaded[k]).abs().max().item() for k in trained if k in reloaded
        )
        row["export_keys_ok"] = set(trained) == set(reloaded)
        row["status"] = "ok"
    except Exception as err:  # one failing strategy must not hide the others
        row["status"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        row["traceback"] = traceback.format_exc()
    return row


def print_table(rows, reference, device, world_size):
    print(f"cuda_check on {device} x {world_size} rank(s)")
    print()
    print("| strategy | precision | status | first -> last loss | max |loss - ddp fp32| | peak CUDA mem | time/step | export reload |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for row in rows:
        losses = row.get("losses")
        curve = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
        diff = ""
        if losses and reference and len(reference) == len(losses):
            diff = f"{max(abs(a - b) for a, b in zip(losses, reference)):.2e}"
        peak = f"{row['peak_mib']:.0f} MiB" if "peak_mib" in row else ""
        step = f"{row['step_s'] * 1000:.0f} ms" if "step_s" in row else ""
        export = ""
        if "export_diff" in row:
            export = ("keys ok" if row["export_keys_ok"] else "KEYS DIFFER") + f", max diff {row['export_diff']:.1e}"
        print(f"| {row['strategy']} | {row['precision']} | {row['status']} | {curve} | {diff} | {peak} | {step} | {export} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: dry run of this script")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", nargs="+", help="subset, e.g. gemini:bf16 zero2:bf16")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failing rows")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the converted embedded SmolLM2)")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP cuda_check: no CUDA GPU on this machine (torch.cuda.is_available() is False). The CUDA-only "
              "strategies (gemini, gemini_auto, zero2_cpu, bf16 on GPU) need one; on CPU use zero2 or ddp.")  # fmt: skip
        return 0

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("COATI_HF_STRATEGY", None)
    from accelerate import PartialState
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    from coati_hf.models import load_tokenizer
    from coati_hf.models.embedded import embedded_model_dir

    hf_logging.set_verbosity_error()
    state = PartialState(cpu=args.device == "cpu")
    tokenizer = load_tokenizer(args.tokenizer or embedded_model_dir())
    # Learnable sequences (runs of consecutive token ids), so the loss curve goes down.
    ids = [[(start * 7 + k) % 1000 + 100 for k in range(64)] for start in range(64)]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 64] * 64, "labels": ids})

    rows_wanted = ROWS if not args.rows else [tuple(r.split(":")) for r in args.rows]
    results = []
    with tempfile.TemporaryDirectory() as local:
        holder = [local]
        if state.num_processes > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(holder, src=0)
        for strategy, precision in rows_wanted:
            results.append(run_row(strategy, precision, args.device, args.steps, holder[0], tokenizer, dataset))
            if state.is_main_process:
                print(f"# {strategy} {precision}: {results[-1]['status']}", file=sys.stderr, flush=True)
        state.wait_for_everyone()
    if state.is_main_process:
        reference = next((r.get("losses") for r in results if r["strategy"] == "ddp" and r["precision"] == "fp32"), None)
        print_table(results, reference, torch.cuda.get_device_name() if args.device == "cuda" else "cpu", state.num_processes)
        if args.verbose:
            for row in results:
                if "traceback" in row:
                    print(f"\n--- {row['strategy']} {row['precision']}\n{row['traceback']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PPO's optimizer step under each ColossalAI strategy on a GPU: the schedule, an injected overflow, the ranks.

    python benchmarks/ppo_backend_check.py                      # one CUDA GPU: every row (~5 min, plus
                                                                # ~2 min the first time colossalai JIT-builds its kernels)
    python benchmarks/ppo_backend_check.py --rows gemini:bf16 zero2_cpu:fp16
    python benchmarks/ppo_backend_check.py --nproc 2            # each row under torchrun with 2 ranks (2 GPUs)
    python benchmarks/ppo_backend_check.py --dry-run            # CPU: the rows a CPU runs, to test this script
    python benchmarks/ppo_backend_check.py --tokenizer .gpu/smollm2   # where the embedded model is absent

Each row is the PPO run of tests/test_ppo_backends.py on the real backend: a tiny random-init
Llama actor and critic (SmolLM2 vocabulary), 4 updates of one optimizer step, a linear schedule
with 2 warm-up steps (the first update trains at rate 0), and at updates 2 and 3 a backward hook
on the actor's first decoder layer that makes its output gradient +inf on the last rank. Each row
runs in its own subprocess under a time limit (``--timeout``), so a crash or a hang stays in its
row. Columns:

- lr followed: the logged rate follows the warm-up schedule, advancing only after taken steps,
  and at every taken step the optimizer that steps (the inner torch optimizer: HybridAdam under
  zero2_cpu and Gemini) holds that rate in its own param groups;
- skip counted: updates 2 and 3 are skipped and counted (``ppo/skipped_steps``) and leave the
  weights as they were; the other updates are taken (in fp16 an overflow of the loss scaler
  at its initial scale may skip one more, counted too);
- finite, trained: the final weights are finite, and the last update (a taken step at a rate
  above 0) changed them;
- ranks: the world size seen, and whether every rank ends with the same weights;
- loss scale: first -> last (fp16: lowered by the injected overflows).

The table is printed and written, with the JSON of every row, to ``benchmarks/results/``
(``--results-dir``). Without a CUDA GPU (and without ``--dry-run``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = [(s, p) for s in ("accelerate", "ddp", "zero2", "zero2_cpu") for p in ("fp32", "bf16", "fp16")]
ROWS += [(s, p) for s in ("gemini", "gemini_auto") for p in ("bf16", "fp16")]  # Gemini keeps fp32 masters, computes in 16 bits
CPU_ROWS = [(s, p) for s in ("accelerate", "ddp", "zero2") for p in ("fp32", "bf16")]
UPDATES, WARMUP, LR, POISONED = 4, 2, 1e-3, (2, 3)


# ---- one row (in its own process) ------------------------------------------------------------------


def child(strategy: str, precision: str, out: str, tokenizer_dir: str | None, device: str) -> None:
    import copy
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("COATI_HF_STRATEGY", None)
    import torch
    import torch.distributed as dist
    from accelerate import PartialState
    from datasets import Dataset
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from transformers.utils import logging as hf_logging

    from coati_hf.colossalai import ColossalAIPlugin
    from coati_hf.models import load_tokenizer, make_tiny_llama
    from coati_hf.models.embedded import embedded_model_dir
    from coati_hf.ppo.config import PPOConfig
    from coati_hf.ppo.trainer import PPOTrainer

    hf_logging.set_verbosity_error()
    state = PartialState(cpu=device == "cpu")
    tokenizer = load_tokenizer(tokenizer_dir or embedded_model_dir())
    policy, tokenizer = make_tiny_llama(seed=0, tokenizer=copy.deepcopy(tokenizer))
    reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
    per_update = 2 * 2 * state.num_processes
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2, gradient_accumulation_steps=2, num_mini_batches=1,
        num_ppo_epochs=1, total_episodes=per_update * UPDATES, response_length=4, learning_rate=LR, lr_scheduler_type="linear",
        warmup_steps=WARMUP, report_to=[], use_cpu=device == "cpu", seed=0, logging_steps=1, num_sample_generations=0,
        save_strategy="no", bf16=precision == "bf16", fp16=precision == "fp16", disable_tqdm=True,
    )  # fmt: skip
    prompts = Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(per_update * UPDATES)]})
    plugin = None if strategy == "accelerate" else ColossalAIPlugin(strategy)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=prompts, colossalai_plugin=plugin)  # fmt: skip

    def digest() -> float:  # collective under Gemini (the full weights are gathered)
        weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        return float(sum(t.detach().double().sum().item() for t in weights.values() if t.is_floating_point()))

    current, stepped, local = {}, [], []
    last_rank = state.num_processes - 1

    def poison_output(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if current.get("update") in POISONED and state.process_index == last_rank and hidden.requires_grad:
            hidden.register_hook(lambda grad: torch.full_like(grad, float("inf")))

    trainer.model.policy.model.layers[0].register_forward_hook(poison_output)
    handle = register_optimizer_step_pre_hook(
        lambda opt, a, kw: stepped.append((current.get("update"), type(opt).__name__, [float(g["lr"]) for g in opt.param_groups]))
    )
    original_optimize = trainer._optimize

    def optimize(*a, **kw):
        current["update"] = trainer.state.global_step + 1
        stats = original_optimize(*a, **kw)
        local.append({"skipped": len(stats["skipped_steps"]), "taken": len(stats["optimizer_steps"]), "digest": digest(),
                      "loss_scale": _loss_scale(trainer)})  # fmt: skip
        return stats

    trainer._optimize = optimize
    start = time.perf_counter()
    trainer.train()
    handle.remove()
    logs = [h for h in trainer.state.log_history if "ppo/optimizer_steps" in h]
    final = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    finite = all(bool(torch.isfinite(t).all()) for t in final.values() if t.is_floating_point())
    digests = [local[-1]["digest"]] * state.num_processes
    if dist.is_initialized():
        dist.all_gather_object(digests, local[-1]["digest"])
    if not state.is_main_process:
        return
    row = {"strategy": strategy, "precision": precision, "world_size": state.num_processes, "seconds": time.perf_counter() - start,
           "local": local, "stepped": stepped, "finite": finite, "ranks_in_step": len(set(digests)) == 1,
           "logged_lr": [h["lr"] for h in logs], "logged_skipped": [h["ppo/skipped_steps"] for h in logs]}  # fmt: skip
    row.update(verdicts(row, precision))
    Path(out).write_text(json.dumps(row, indent=1))


def _loss_scale(trainer):
    scaler = getattr(trainer.accelerator, "scaler", None) or getattr(trainer.optimizer, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    mixin = getattr(trainer.optimizer, "mixed_precision_mixin", None) or getattr(trainer.optimizer, "mix_precision_mixin", None)
    return float(mixin.loss_scale) if hasattr(mixin, "loss_scale") else None


def verdicts(row: dict, precision: str) -> dict:
    """The table's yes/no columns from one row's records (see the module docstring)."""
    local, taken_before, lr_ok = row["local"], 0, True
    for update, (logged, record) in enumerate(zip(row["logged_lr"], local), start=1):
        step = taken_before
        expected = LR * step / WARMUP if step < WARMUP else LR * max(0.0, (UPDATES - step) / (UPDATES - WARMUP))
        lr_ok &= abs(logged - expected) <= 1e-9
        if record["taken"]:
            rates = [lrs for u, _, lrs in row["stepped"] if u == update]
            lr_ok &= len(rates) == 1 and all(abs(rate - logged) <= 1e-9 for rate in rates[0])
        taken_before += record["taken"]
    skip_ok = row["logged_skipped"] == [r["skipped"] for r in local]
    for update, record in enumerate(local, start=1):
        if update in POISONED:
            skip_ok &= (record["skipped"], record["taken"]) == (1, 0) and record["digest"] == local[update - 2]["digest"]
        else:  # fp16: an overflow at the scaler's initial scale may skip a step too (counted)
            skip_ok &= record["taken"] == 1 or (precision == "fp16" and record["skipped"] == 1)
    trained = local[-1]["taken"] == 1 and local[-1]["digest"] != local[-2]["digest"]
    pattern = " ".join("T" if r["taken"] else "S" for r in local)
    return {"lr_followed": lr_ok, "skip_counted": skip_ok, "trained": trained, "pattern": pattern}


# ---- the driver --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(strategy: str, precision: str, args, workdir: Path) -> dict:
    out = workdir / f"{strategy}-{precision}.json"
    child_args = [str(Path(__file__).resolve()), "--child", f"{strategy}:{precision}", "--out", str(out),
                  "--device", "cpu" if args.dry_run else "cuda"] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])  # fmt: skip
    if args.nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *child_args]  # fmt: skip
    else:
        command = [sys.executable, *child_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", "1" if args.dry_run else "4")
    start = time.perf_counter()
    # its own session, so that a timeout can end it and whatever it started (see _stop)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return {"strategy": strategy, "precision": precision, "status": f"timeout after {args.timeout} s"}
    if proc.returncode != 0 or not out.exists():
        return {"strategy": strategy, "precision": precision, "status": f"failed: {_first_error(stderr)[:160]}",
                "stderr": stderr[-4000:], "wall_s": time.perf_counter() - start}  # fmt: skip
    row = json.loads(out.read_text())
    row.update(status="ok", wall_s=time.perf_counter() - start)
    return row


def _stop(proc: subprocess.Popen) -> None:
    """End a row that ran out of time, workers included: torchrun stops its workers on SIGTERM
    (they run in their own sessions, out of reach of a process-group kill); then SIGKILL."""
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _first_error(stderr: str) -> str:
    """The exception line of a failed row (``[rankN]:`` prefixes and torchrun's own error skipped)."""
    for line in reversed(stderr.splitlines()):
        line = re.sub(r"^\[rank\d+\]:\s*", "", line)
        if re.match(r"^[\w.]+(Error|Exception)\b", line) and "ChildFailedError" not in line:
            return line
    return stderr.strip().splitlines()[-1] if stderr.strip() else "no output"


def table(rows: list[dict]) -> str:
    def yes(value):
        return "" if value is None else ("yes" if value else "**NO**")

    lines = ["| strategy | precision | status | lr followed | skip counted | finite | trained | ranks | loss scale | steps | time |",
             "|---|---|---|---|---|---|---|---|---|---|---:|"]  # fmt: skip
    for row in rows:
        scales = [r["loss_scale"] for r in row.get("local", []) if r["loss_scale"] is not None]
        scale = f"{scales[0]:g} -> {scales[-1]:g}" if scales else ""
        ranks = f"{row['world_size']}, {'in step' if row['ranks_in_step'] else '**APART**'}" if "world_size" in row else ""
        wall = f"{row['wall_s']:.0f} s" if "wall_s" in row else ""
        lines.append(f"| {row['strategy']} | {row['precision']} | {row['status']} | {yes(row.get('lr_followed'))} | "
                     f"{yes(row.get('skip_counted'))} | {yes(row.get('finite'))} | {yes(row.get('trained'))} | {ranks} | "
                     f"{scale} | {row.get('pattern', '')} | {wall} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="+", help="subset, e.g. gemini:bf16 zero2_cpu:fp16 (default: all, or the CPU rows)")
    parser.add_argument("--dry-run", action="store_true", help="run the rows a CPU supports, on the CPU")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per row (torchrun; one GPU each)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per row (the first HybridAdam row JIT-builds kernels)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the converted embedded SmolLM2)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child.split(":"), args.out, args.tokenizer, args.device)
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("SKIP ppo_backend_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "--dry-run runs the CPU rows.")  # fmt: skip
        return 0
    wanted = [tuple(r.split(":")) for r in args.rows] if args.rows else (CPU_ROWS if args.dry_run else ROWS)
    device = "cpu" if args.dry_run else torch.cuda.get_device_name()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for strategy, precision in wanted:
            rows.append(run_row(strategy, precision, args, Path(scratch)))
            print(f"# {strategy} {precision}: {rows[-1]['status']}", file=sys.stderr, flush=True)
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    try:
        colossalai = version("colossalai")
    except PackageNotFoundError:
        colossalai = "absent"
    header = (f"ppo_backend_check on {device} x {args.nproc} rank(s), {time.strftime('%Y-%m-%d %H:%M')}: torch "
              f"{torch.__version__}, transformers {transformers.__version__}, colossalai {colossalai}")  # fmt: skip
    report = f"{header}\n\n{table(rows)}\n"
    print(report)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y-%m-%d-%H%M") + "-ppo_backend_check" + ("-cpu" if args.dry_run else "")
    (args.results_dir / f"{name}.md").write_text(report, encoding="utf-8")
    (args.results_dir / f"{name}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1), encoding="utf-8")
    print(f"written to {args.results_dir / name}.md", file=sys.stderr)
    checks = ("lr_followed", "skip_counted", "finite", "trained", "ranks_in_step")
    return 0 if all(row["status"] == "ok" and all(row.get(k) for k in checks) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

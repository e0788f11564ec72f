"""ddp vs zero1 vs zero2 through ColossalAIAccelerator: memory per rank and step time.

    python benchmarks/bench_colossalai_strategies.py                  # 2 CPU ranks, ~20M params
    python benchmarks/bench_colossalai_strategies.py --nproc 4 --strategies ddp zero2

Each strategy runs in its own ``torchrun`` launch (peak RSS is a per-process high-water
mark, so strategies cannot share a process). A rank trains a random-init Llama with the
SmolLM2 vocabulary (49k x 256 tied embedding + 8 layers of width 256: ~19.6M parameters)
with AdamW for ``--warmup`` + ``--steps`` steps on random tokens, and reports:

- optimizer states: bytes of the inner torch optimizer's per-parameter state tensors
  (AdamW's ``exp_avg`` and ``exp_avg_sq``) on this rank;
- master copy: ZeRO's fp32 shard of the weights that the optimizer steps (the model keeps
  its full working weights); none for DDP;
- gradients: bytes of gradients held after backward (``param.grad``, and ZeRO's gradient
  store: full under zero1, sharded under zero2). DDP's reducer also keeps flat
  communication buckets of the same total size; they are not counted here;
- peak RSS: the rank's resident-set high-water mark during the training steps (Linux
  ``VmHWM``, reset just before the first step; includes the ~0.5 GB of torch,
  transformers and colossalai), and how much it rose above the RSS at that reset, i.e.
  what training itself added: optimizer states, gradients, activations, communication
  buffers;
- step time: median wall time of forward + backward + clip + step over the timed steps
  (each step starts at a barrier).

The table is printed as Markdown (benchmarks/README.md records a run).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1024 * 1024
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4)


# ---- one rank --------------------------------------------------------------------------------


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _gradient_bytes(model, optimizer) -> int:
    from coati_hf.colossalai.accelerator import ColossalAIAccelerator

    held = _tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    if ColossalAIAccelerator._is_zero(optimizer):
        for store in optimizer.pg_to_grad_store.values():
            for group in store._grads_of_params.values():
                for grads in group.values():
                    held += _tensor_bytes(grads)
    return held


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime peak (not reset)


def run_rank(strategy: str, steps: int, warmup: int, batch: int, seq: int, bucket_m: int, out_file: str) -> None:
    import warnings

    import psutil

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    from coati_hf.colossalai import ColossalAIAccelerator, ColossalAIPlugin
    from coati_hf.colossalai.accelerator import inner_optimizer
    from coati_hf.models import make_tiny_llama

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    accelerator = ColossalAIAccelerator(
        colossalai_plugin=ColossalAIPlugin(strategy, max_norm=1.0, reduce_bucket_size_in_m=bucket_m), cpu=True
    )
    model, _ = make_tiny_llama(seed=0, **MODEL_SHAPE)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1234 + accelerator.process_index)
    vocab = model.unwrap().config.vocab_size if hasattr(model, "unwrap") else model.config.vocab_size

    times, grad_bytes = [], 0
    dist.barrier()
    rss_before = psutil.Process().memory_info().rss
    _reset_peak_rss()
    for step in range(warmup + steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=generator)
        dist.barrier()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        if step == 0:
            grad_bytes = _gradient_bytes(model, optimizer)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)

    inner = inner_optimizer(optimizer)
    state = [v for s in inner.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]
    master = _tensor_bytes(p for g in inner.param_groups for p in g["params"]) if strategy != "ddp" else 0
    report = {
        "strategy": strategy,
        "rank": accelerator.process_index,
        "params": n_params,
        "optimizer_state_bytes": _tensor_bytes(state),
        "master_bytes": master,
        "gradient_bytes": grad_bytes,
        "peak_rss_bytes": _peak_rss_bytes(),
        "rss_before_bytes": rss_before,
        "step_seconds": sorted(times)[len(times) // 2],
        "final_loss": loss.item(),
    }
    reports = [None] * accelerator.num_processes
    dist.all_gather_object(reports, report)
    if accelerator.is_main_process:
        with open(out_file, "w") as f:
            json.dump(reports, f)
    accelerator.wait_for_everyone()


# ---- launcher --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(strategy: str, args, workdir: str) -> list[dict]:
    out_file = os.path.join(workdir, f"{strategy}.json")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("COATI_HF_STRATEGY", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        os.path.abspath(__file__), "--worker", "--strategy", strategy, "--out", out_file,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--seq", str(args.seq),
        "--reduce-bucket-m", str(args.reduce_bucket_m),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    with open(out_file) as f:
        return json.load(f)


def table(results: dict[str, list[dict]]) -> str:
    rows = [
        "| strategy | optimizer states / rank | master copy / rank | gradients / rank | peak RSS / rank "
        "| added by training | step time | final loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = results.get("ddp")
    for strategy, reports in results.items():
        def mean(key):
            return sum(r[key] for r in reports) / len(reports)

        states = mean("optimizer_state_bytes")
        ratio = f" ({states / mean_of(base, 'optimizer_state_bytes'):.2f}x)" if base else ""
        rows.append(
            f"| {strategy} | {states / MIB:.1f} MiB{ratio} | {mean('master_bytes') / MIB:.1f} MiB "
            f"| {mean('gradient_bytes') / MIB:.1f} MiB | {mean('peak_rss_bytes') / MIB:.0f} MiB "
            f"| {(mean('peak_rss_bytes') - mean('rss_before_bytes')) / MIB:.0f} MiB "
            f"| {mean('step_seconds') * 1000:.0f} ms | {reports[0]['final_loss']:.4f} |"
        )
    return "\n".join(rows)


def mean_of(reports, key):
    return sum(r[key] for r in reports) / len(reports)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=["ddp", "zero1", "zero2"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--reduce-bucket-m", type=int, default=12, help="ZeRO gradient bucket, millions of elements")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_rank(args.strategy, args.steps, args.warmup, args.batch, args.seq, args.reduce_bucket_m, args.out)

    import platform

    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for strategy in args.strategies:
            start = time.time()
            results[strategy] = launch(strategy, args, workdir)
            print(f"# {strategy}: done in {time.time() - start:.0f}s", file=sys.stderr)
    first = next(iter(results.values()))[0]
    print(
        f"{first['params'] / 1e6:.1f}M-parameter Llama, AdamW fp32, {args.nproc} CPU ranks (gloo, {args.threads} thread each), "
        f"batch {args.batch} x {args.seq} tokens per rank, median of {args.steps} steps after {args.warmup} warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print()
    print(table(results))


if __name__ == "__main__":
    main()

"""What this machine allows for the PPO benchmark's workload, so each PPO figure reads as a
fraction of a limit (see benchmarks/ppo_vs_trl.py for the workload).

    python benchmarks/floor.py            # ~2 minutes on 2 cores

Measured, on the same SmolLM2-135M-Instruct, 8 chat prompts, 32 new tokens, fp32:

- ``generate``: raw ``model.generate`` of the batch with the plain model (sampling at
  temperature 0.7, stop at EOS as PPO does, no LoRA, nothing else running in the process);
  the rollout's generation cannot beat it;
- ``forward`` (no grad) and ``forward+backward`` of one rollout batch (prompt + 32 tokens):
  the plain model (what the reference, reward and value passes cost each) and the LoRA policy
  (what the update costs per model, without activation checkpointing);
- matmul throughput (GFLOP/s) of a square fp32 matmul, and memory bandwidth (GB/s) of a large
  copy: the decode step of a 135M model at batch 8 is bound by reading the weights once per
  token, so ``weights / bandwidth`` is the floor of one decoding step;
- the memory of one copy of the weights, and the resident set of a process that holds it.

Median of ``--repeats`` after one warm-up; the table is Markdown.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def current_rss() -> int:
    """The resident set of this process now (Linux ``VmRSS``), in bytes."""
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="model folder (default: the converted embedded SmolLM2)")
    args = parser.parse_args()

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import ppo_vs_trl as bench
    from coati_hf.models import embedded_model_dir

    model_dir = args.model or str(embedded_model_dir())
    tokenizer, dataset, settings = bench._workload(model_dir, 1)
    rss_before = current_rss()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = tokenizer.pad([{"input_ids": ids} for ids in dataset[:8]["input_ids"]], return_tensors="pt")
    generation = dict(max_new_tokens=32, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    lengths = []

    def generate():
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(**batch, **generation)
        lengths.append(out.shape[1] - batch["input_ids"].shape[1])
        return out

    generate_s = timed(generate, args.repeats)
    rss_with_model = current_rss()  # after use: every weight page has been read
    torch.manual_seed(0)
    with torch.no_grad():
        sequences = model.generate(**batch, **generation)
    mask = (sequences != tokenizer.pad_token_id).long()
    new_tokens = sequences.shape[1] - batch["input_ids"].shape[1]

    def forward_plain():
        with torch.no_grad():
            model(input_ids=sequences, attention_mask=mask)

    forward_s = timed(forward_plain, args.repeats)
    model.train()

    def forward_backward_plain():
        model(input_ids=sequences, attention_mask=mask).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)

    full_fb_s = timed(forward_backward_plain, args.repeats)
    lora_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), bench._lora())

    def forward_backward_lora():
        lora_model(input_ids=sequences, attention_mask=mask).logits.float().mean().backward()
        lora_model.zero_grad(set_to_none=True)

    lora_fb_s = timed(forward_backward_lora, args.repeats)

    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    matmul_s = timed(lambda: a @ b, max(args.repeats, 5))
    gflops = 2 * size**3 / matmul_s / 1e9
    big = torch.empty(64 * 1024 * 1024)  # 256 MiB
    target = torch.empty_like(big)
    copy_s = timed(lambda: target.copy_(big), max(args.repeats, 5))
    bandwidth = 2 * big.numel() * 4 / copy_s / 1e9  # read + write

    step_floor_ms = weight_bytes / (bandwidth * 1e9) * 1e3
    measured_step_ms = generate_s / max(new_tokens, 1) * 1e3
    rows = [
        ("raw generate, plain model (8 x 32 new tokens)", f"{generate_s:.2f} s", f"{8 * new_tokens / generate_s:.0f} tok/s, {measured_step_ms:.0f} ms per step"),
        ("weight-read floor of one decoding step", f"{step_floor_ms:.0f} ms", f"{weight_bytes / 2**20:.0f} MiB of weights / {bandwidth:.1f} GB/s"),
        ("forward, plain model, no grad (one rollout batch)", f"{forward_s:.2f} s", f"{sequences.shape[0]} x {sequences.shape[1]} tokens"),
        ("forward+backward, full model", f"{full_fb_s:.2f} s", "what a full critic's update costs"),
        ("forward+backward, LoRA r=16 q/k/v/o policy", f"{lora_fb_s:.2f} s", "what the actor's update costs (no checkpointing)"),
        ("fp32 matmul 2048^3", f"{gflops:.0f} GFLOP/s", f"{matmul_s * 1e3:.0f} ms"),
        ("memory bandwidth (256 MiB copy)", f"{bandwidth:.1f} GB/s", ""),
        ("one copy of the weights", f"{weight_bytes / 2**30:.2f} GiB", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"),
        ("resident set holding one copy (after generating)", f"{rss_with_model / 2**30:.2f} GiB", f"{rss_before / 2**30:.2f} GiB before loading (torch, transformers)"),
    ]
    print(f"\nFloor of this machine for the PPO benchmark's workload (median of {args.repeats}; torch threads: {torch.get_num_threads()})\n")
    print("| what | measured | notes |\n|---|---:|---|")
    for what, value, notes in rows:
        print(f"| {what} | {value} | {notes} |")


if __name__ == "__main__":
    main()

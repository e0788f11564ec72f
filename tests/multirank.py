"""Run a worker script on 2 CPU ranks (torchrun, gloo) and read what each rank wrote.

A worker is launched as ``torchrun --nproc_per_node 2 WORKER OUT_DIR`` and writes
``OUT_DIR/rank{r}.json``; the tests assert on those findings, one test per finding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Path, out: Path, timeout: int, nproc: int = 2) -> list[dict]:
    """Launch ``worker`` on ``nproc`` CPU ranks (one torch thread each, no ColossalAI strategy
    from the environment) and return each rank's JSON; a failed launch or one that outlives
    ``timeout`` seconds (a rank waiting for another) fails the test with the output's tail."""
    env = {k: v for k, v in os.environ.items() if k != "COATI_HF_STRATEGY"}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker), str(out),
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks of {worker.name} did not finish within {timeout} s: one of them is waiting for the other")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]

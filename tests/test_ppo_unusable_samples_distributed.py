"""A rank without a usable sample, on 2 CPU ranks (gloo, plain Accelerate): every rank skips that
update together and counts it, then they train on in step. The worker
(tests/distributed/ppo_unusable_worker.py) gives rank 1 a NaN score for its only sample of the
first update; before, that rank raised alone and the other waited until the launcher killed the
job (here: the timeout)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).parent / "distributed" / "ppo_unusable_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, embedded_dir):
    out = tmp_path_factory.mktemp("unusable_ranks")
    env = {k: v for k, v in os.environ.items() if k != "COATI_HF_STRATEGY"}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out),
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks did not finish: one of them is waiting for the other")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("path", ["single_pass", "general"])
def test_both_ranks_skip_the_update_together_and_count_it(ranks, path):
    runs = [rank[path] for rank in ranks]
    assert [run["world_size"] for run in runs] == [2, 2]
    assert [run["single_pass"] for run in runs] == [path == "single_pass"] * 2
    for run in runs:
        assert run["skipped_updates"] == [1, 0]  # the logged counts are totals over ranks
        assert run["nan_scores"] == [1, 0]
        assert run["optimizer_steps"][0] == 0 and run["optimizer_steps"][1] >= 1
    assert runs[0]["checksum"] == runs[1]["checksum"]  # the ranks stayed in step

"""A rank without a usable sample, on 2 CPU ranks (gloo, plain Accelerate): every rank skips that
update together and counts it, then they train on in step. The worker
(tests/distributed/ppo_unusable_worker.py) gives rank 1 a NaN score for its only sample of the
first update; before, that rank raised alone and the other waited until the launcher killed the
job (here: the timeout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multirank import run_ranks
pytestmark = pytest.mark.distributed

WORKER = Path(__file__).parent / "distributed" / "ppo_unusable_worker.py"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, embedded_dir):
    return run_ranks(WORKER, tmp_path_factory.mktemp("unusable_ranks"), timeout=300)


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

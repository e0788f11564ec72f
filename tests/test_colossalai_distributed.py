"""The ColossalAI backend under 2 CPU ranks (gloo), driven through transformers' Trainer.

One ``torchrun --nproc_per_node 2`` launch of tests/distributed/colossalai_worker.py runs
every scenario (about a minute on 2 cores); each test below checks one of its findings,
so each can fail on its own. All comparisons are fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from multirank import run_ranks
from coati_hf.colossalai.plugin import colossalai_available

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not colossalai_available(), reason="colossalai is not installed"),
]

WORKER = Path(__file__).parent / "distributed" / "colossalai_worker.py"
REL = 1e-5  # fp32 reduction order differs between DDP's all-reduce and ZeRO's reduce-scatter


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, embedded_dir):
    return run_ranks(WORKER, tmp_path_factory.mktemp("colossalai_ranks"), timeout=420)


def _result(ranks, key, rank=0):
    data = ranks[rank]
    for scenario, trace in data.get("errors", {}).items():
        if key.startswith(scenario) or _SCENARIO_OF.get(key) == scenario:
            pytest.fail(f"scenario {scenario!r} raised on rank {rank}:\n{trace}")
    assert key in data, f"worker did not report {key!r}; errors: {list(data.get('errors', {}))}"
    return data[key]


_SCENARIO_OF = {
    "trainer_losses": "trainer",
    "trainer_grad_norms": "trainer",
    "optimizer_state_bytes": "trainer",
    "accelerator_class": "trainer",
    "trainer_losses_accum2": "trainer",
    "trainer_optimizer_steps_accum2": "trainer",
    "bf16_zero2_losses": "trainer",
    "env_var_strategy": "env_var",
    "resume_full_losses": "resume",
    "resume_resumed_losses": "resume",
    "resume_without_optimizer_losses": "resume",
    "resume_checkpoint_files": "resume",
    "export_max_abs_diff": "export",
    "export_missing_keys": "export",
    "export_files": "export",
    "export_changed_from_init": "export",
    "two_models": "two_models",
    "second_train_losses": "trainer",
    "eval_loss": "trainer",
    "lora_losses": "trainer",
    "state_files": "accelerator_state",
    "state_continued_losses": "accelerator_state",
    "state_reloaded_losses": "accelerator_state",
    "reload_weights": "reload_weights",
    "ppo_logs": "ppo",
    "ppo_optimizer_steps": "ppo",
    "ppo_accelerator_class": "ppo",
    "ppo_weight_update_norm": "ppo",
    "ppo_final_weight_rel_diff": "ppo",
    "ppo_weight_update_rel_diff": "ppo",
    "sft_losses": "trl",
    "reward_losses": "trl",
}


def test_ran_on_two_ranks(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]


def test_plain_accelerate_without_strategy(ranks):
    classes = _result(ranks, "accelerator_class")
    assert classes["accelerate"] == "Accelerator"
    assert {classes[s] for s in ("ddp", "zero1", "zero2")} == {"ColossalAIAccelerator"}


@pytest.mark.parametrize("strategy", ["zero1", "zero2"])
def test_zero_loss_curve_matches_ddp(ranks, strategy):
    losses = _result(ranks, "trainer_losses")
    assert len(losses["ddp"]) == 6
    assert losses[strategy] == pytest.approx(losses["ddp"], rel=REL)
    assert losses["ddp"][-1] < losses["ddp"][0] - 0.5  # it trained
    assert losses["accelerate"] == pytest.approx(losses["ddp"], rel=REL)


def test_zero2_grad_norm_and_clipping_match_ddp(ranks):
    norms = _result(ranks, "trainer_grad_norms")
    # ZeRO sums squared norms in float64; torch's fp32 norm of the 3M-element embedding
    # gradient is itself off by ~2e-5 relative on CPU, so compare at 1e-3.
    assert norms["zero2"] == pytest.approx(norms["ddp"], rel=1e-3)
    assert max(norms["ddp"]) > 1.0  # above max_grad_norm=1.0: the clip was exercised


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2"])
def test_gradient_accumulation_matches_plain_accelerate(ranks, strategy):
    """The Trainer's own loop with accumulation 2: the same losses and the same number of
    optimizer steps as plain Accelerate (one per 2 micro-batches)."""
    accumulated = _result(ranks, "trainer_losses_accum2")
    assert accumulated[strategy] == pytest.approx(accumulated["accelerate"], rel=REL)
    for rank in (0, 1):
        steps = _result(ranks, "trainer_optimizer_steps_accum2", rank)
        assert steps[strategy] == steps["accelerate"] == 6
    # 2 micro-batches of 2 == 1 batch of 4
    assert accumulated["ddp"] == pytest.approx(_result(ranks, "trainer_losses")["ddp"], rel=1e-4)


@pytest.mark.parametrize("rank", [0, 1])
def test_zero2_optimizer_state_is_half_of_ddp(ranks, rank):
    sizes = _result(ranks, "optimizer_state_bytes", rank)
    ratio = sizes["zero2"] / sizes["ddp"]
    assert 0.49 <= ratio <= 0.51, sizes
    assert sizes["zero1"] == sizes["zero2"]  # both shard optimizer states; zero2 also shards gradients


def test_bf16_zero2_trains(ranks):
    losses = _result(ranks, "bf16_zero2_losses")
    assert ranks[0]["bf16_zero2_param_dtype"] == "torch.bfloat16"
    assert losses[-1] < losses[0] - 0.5
    assert losses == pytest.approx(_result(ranks, "trainer_losses")["ddp"], rel=1e-2)


def test_env_var_selects_strategy(ranks):
    assert _result(ranks, "env_var_strategy") == "zero1"


def test_zero2_resume_continues_exactly(ranks):
    assert "optimizer.pt" in _result(ranks, "resume_checkpoint_files")
    full = _result(ranks, "resume_full_losses")
    resumed = _result(ranks, "resume_resumed_losses")
    assert len(resumed) == 3
    assert resumed == pytest.approx(full[3:], rel=1e-6)


def test_resume_check_is_sensitive(ranks):
    # Without the optimizer state the continuation differs: the check above can fail.
    full = _result(ranks, "resume_full_losses")
    control = _result(ranks, "resume_without_optimizer_losses")
    assert control != pytest.approx(full[3:], rel=1e-4)


def test_export_reloads_with_from_pretrained(ranks):
    assert {"config.json", "model.safetensors"} <= set(_result(ranks, "export_files"))
    for rank in (0, 1):
        assert _result(ranks, "export_missing_keys", rank) == []
        assert _result(ranks, "export_max_abs_diff", rank) == 0.0
    assert _result(ranks, "export_changed_from_init") > 1e-4  # the trained weights, not the initial ones


@pytest.mark.parametrize("index", [0, 1], ids=["actor", "critic"])
def test_two_models_with_own_optimizers_match_ddp(ranks, index):
    runs = _result(ranks, "two_models")
    ddp = [step[index] for step in runs["ddp"]]
    zero2 = [step[index] for step in runs["zero2"]]
    assert zero2 == pytest.approx(ddp, rel=REL)


def test_second_train_call_and_evaluate_match_ddp(ranks):
    second = _result(ranks, "second_train_losses")
    assert second["zero2"] == pytest.approx(second["ddp"], rel=REL)
    assert second["ddp"][0] < _result(ranks, "trainer_losses")["ddp"][-1] + 0.1  # continued from the trained model
    evaluated = _result(ranks, "eval_loss")
    assert evaluated["zero2"] == pytest.approx(evaluated["ddp"], rel=REL)


def test_lora_under_zero2_matches_ddp(ranks):
    losses = _result(ranks, "lora_losses")
    assert losses["zero2"] == pytest.approx(losses["ddp"], rel=REL)
    assert losses["ddp"][-1] < losses["ddp"][0]


def test_accelerator_save_and_load_state(ranks):
    files = set(_result(ranks, "state_files"))
    assert {"colossalai_model.bin", "colossalai_optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
    continued = _result(ranks, "state_continued_losses")
    assert len(continued) == 3
    assert _result(ranks, "state_reloaded_losses") == pytest.approx(continued, rel=1e-6)


def test_weights_loaded_after_boosting_survive_the_next_step(ranks):
    runs = _result(ranks, "reload_weights")
    for strategy in ("ddp", "zero2"):
        assert runs[strategy][2] == pytest.approx(runs[strategy][0], rel=1e-6)  # the initial weights are back
    assert runs["zero2"] == pytest.approx(runs["ddp"], rel=REL)  # and ZeRO's master copy follows them


@pytest.mark.parametrize("kind", ["sft_losses", "reward_losses"])
def test_trl_trainers_under_zero2_match_ddp(ranks, kind):
    losses = _result(ranks, kind)
    assert len(losses["ddp"]) == 4
    assert losses["zero2"] == pytest.approx(losses["ddp"], rel=REL)


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_ppo_with_accumulation_matches_plain_accelerate(ranks, strategy):
    """PPO, gradient accumulation 2, 2 PPO epochs, 2 updates: one optimizer step per minibatch
    (2 per update, not one per micro-batch), and the same metrics and weight updates as plain
    Accelerate on the same ranks."""
    if "ppo_unavailable" in ranks[0]:
        pytest.skip(f"coati_hf.ppo is not importable: {ranks[0]['ppo_unavailable']}")
    logs = _result(ranks, "ppo_logs")
    assert _result(ranks, "ppo_accelerator_class")[strategy] == "ColossalAIAccelerator"
    assert _result(ranks, "ppo_accelerator_class")["accelerate"] == "Accelerator"
    for rank in (0, 1):
        steps = _result(ranks, "ppo_optimizer_steps", rank)
        assert steps[strategy] == steps["accelerate"] == 2 * 2  # updates x epochs x minibatches
    assert len(logs["accelerate"]) == 2  # policy loss, value loss, KL, score, k3 per update
    for reference_row, row in zip(logs["accelerate"], logs[strategy], strict=True):
        assert row == pytest.approx(reference_row, rel=1e-4, abs=1e-6)
    assert _result(ranks, "ppo_weight_update_norm") > 1e-3  # the weights did move
    assert _result(ranks, "ppo_final_weight_rel_diff")[strategy] < 1e-4
    # stricter: the two runs' weight updates differ by far less than the updates themselves
    assert _result(ranks, "ppo_weight_update_rel_diff")[strategy] < 1e-3
    # the policy moved away from the reference after the first update (k3 >= 0, and > 0 iff it moved)
    assert logs["accelerate"][1][4] > 0

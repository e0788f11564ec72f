"""PPO's optimizer step on every backend the CPU runs, against plain Accelerate on the same ranks.

Three promises, each checked on plain Accelerate, ColossalAI ddp/zero1/zero2, zero2 with the
HybridAdam swap (a CPU stand-in for HybridAdam), and fp16 loss scaling:

- the learning-rate schedule drives the optimizer that actually steps (with warm-up the first
  update trains at rate 0, then the rate rises), also when ``prepare`` swapped the optimizer;
- a non-finite gradient on one rank is skipped on every rank and counted, the schedule waits for
  the step, a loss scaler lowers its scale, and training goes on;
- the ranks stay in step (identical weights).

The multi-rank findings come from one ``torchrun --nproc_per_node 2`` launch of
tests/distributed/ppo_backends_worker.py (about a minute on 2 cores; its docstring describes each
run); each test below checks one finding. The DeepSpeed refusal and the swap's param-group
sharing are checked in this process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from multirank import run_ranks
from coati_hf.colossalai.plugin import colossalai_available

needs_colossalai = pytest.mark.skipif(not colossalai_available(), reason="colossalai is not installed")

WORKER = Path(__file__).parent / "distributed" / "ppo_backends_worker.py"
FP32_RUNS = ["accelerate", "ddp", "zero1", "zero2", "zero2_swap"]
FP16_RUNS = ["accelerate_fp16", "zero2_fp16"]
LR, WARMUP = 1e-3, 2  # as in the worker


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, embedded_dir):
    return run_ranks(WORKER, tmp_path_factory.mktemp("ppo_backend_ranks"), timeout=480)


def _scenario(ranks, name, rank=0):
    data = ranks[rank]
    error = data.get("errors", {}).get(name)
    if error:
        pytest.fail(f"scenario {name!r} raised on rank {rank}:\n{error}")
    key, _, run = name.partition(":")
    found = data.get(key, {}).get(run) if run else data.get(key)
    assert found is not None, f"worker did not report {name!r}"
    return found


def _run(ranks, name, rank=0):
    return _scenario(ranks, f"ppo:{name}", rank)


def _linear_with_warmup(step: int, total: int) -> float:
    """transformers' linear schedule with WARMUP warm-up steps, at scheduler step ``step``."""
    if step < WARMUP:
        return LR * step / WARMUP
    return LR * max(0.0, (total - step) / (total - WARMUP))


# ---- multi-rank: the schedule --------------------------------------------------------------------


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP32_RUNS + FP16_RUNS)
def test_every_run_saw_two_ranks(ranks, name):
    assert [_run(ranks, name, r)["world_size"] for r in (0, 1)] == [2, 2]


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP32_RUNS + FP16_RUNS)
def test_schedule_drives_the_optimizer_that_steps(ranks, name):
    """The rate held by the optimizer that steps, read from its own param groups when it steps,
    is the scheduler's rate of that update; and the logged rate follows the warm-up schedule,
    which advances only when a step is taken."""
    run = _run(ranks, name)
    updates = len(run["local"])
    taken_before = 0
    for update, (logged, local) in enumerate(zip(run["logged_lr"], run["local"], strict=True), start=1):
        assert logged == pytest.approx(_linear_with_warmup(taken_before, updates))
        stepped = [s for s in run["optimizer_steps"] if s["update"] == update]
        if local["taken"]:
            assert len(stepped) == 1, stepped
            assert stepped[0]["lrs"] == pytest.approx([logged] * len(stepped[0]["lrs"]))
        taken_before += local["taken"]
    if name == "zero2_swap":  # the optimizer that steps is the one prepare() swapped in
        assert {s["type"] for s in run["optimizer_steps"]} == {"StandInHybridAdam"}
    assert run["scheduler_warnings"] == []  # torch's "lr_scheduler.step() before optimizer.step()" check holds


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP32_RUNS + FP16_RUNS)
def test_weights_train_after_warmup_and_stay_finite(ranks, name):
    run = _run(ranks, name)
    assert run["finite"]
    assert run["moved"] > 1e-3  # with the schedule dead after a swap, warm-up leaves the rate at 0 forever


# ---- multi-rank: the non-finite gradient ---------------------------------------------------------


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP32_RUNS + FP16_RUNS)
def test_a_non_finite_gradient_on_one_rank_is_skipped_on_every_rank_and_counted(ranks, name):
    for rank in (0, 1):
        run = _run(ranks, name, rank)
        poisoned = set(run["poisoned_updates"])
        digests = [run["initial_digest"]] + [local["digest"] for local in run["local"]]
        for update, local in enumerate(run["local"], start=1):
            expected = (1, 0) if update in poisoned else (0, 1)
            assert (local["skipped"], local["taken"]) == expected, (rank, update, local)
            if update in poisoned:  # nothing of the skipped step reached the weights
                assert local["digest"] == digests[update - 1]
        assert run["logged_skipped_steps"] == [local["skipped"] for local in run["local"]]
        assert run["logged_optimizer_steps"] == [local["taken"] for local in run["local"]]


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP32_RUNS + FP16_RUNS)
def test_ranks_stay_in_step(ranks, name):
    first, second = _run(ranks, name, 0), _run(ranks, name, 1)
    assert first["digest"] == second["digest"]
    assert [local["digest"] for local in first["local"]] == [local["digest"] for local in second["local"]]


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", [n for n in FP32_RUNS if n != "accelerate"])
def test_fp32_backends_train_as_plain_accelerate(ranks, name):
    run, reference = _run(ranks, name), _run(ranks, "accelerate")
    assert run["logged_lr"] == reference["logged_lr"]
    pattern = [(local["skipped"], local["taken"]) for local in run["local"]]
    assert pattern == [(local["skipped"], local["taken"]) for local in reference["local"]]
    assert run["rel_diff_to_accelerate"] < 1e-4


@pytest.mark.distributed
@needs_colossalai
@pytest.mark.parametrize("name", FP16_RUNS)
def test_fp16_loss_scaler_backs_off_and_training_goes_on(ranks, name):
    """Two overflows in a row: the scaler lowers its scale (ColossalAI's at the second, its
    hysteresis), and the next update is a normal step again (before the fix: plain Accelerate
    raised "unscale_() has already been called", ZeRO's scale never moved)."""
    run = _run(ranks, name)
    scales = [local["loss_scale"] for local in run["local"]]
    last_poisoned = run["poisoned_updates"][-1]
    assert scales[last_poisoned - 1] < scales[0]
    assert run["local"][last_poisoned]["taken"] == 1
    assert run["local"][last_poisoned]["digest"] != run["local"][last_poisoned - 1]["digest"]


@pytest.mark.distributed
@needs_colossalai
def test_colossalai_ddp_fp16_overflow_is_skipped_by_its_scaler(ranks):
    for rank in (0, 1):
        found = _scenario(ranks, "ddp_fp16", rank)
        assert found["world_size"] == 2
        first, overflow, after = found["history"]
        assert (first["taken"], overflow["taken"], after["taken"]) == (True, False, True)
        assert overflow["loss_scaled"] and overflow["scale"] == first["scale"] / 2
        assert overflow["digest"] == first["digest"] != after["digest"]
    assert _scenario(ranks, "ddp_fp16", 0)["history"] == _scenario(ranks, "ddp_fp16", 1)["history"]


@pytest.mark.distributed
@needs_colossalai
def test_gemini_bf16_skips_an_overflow_found_on_any_rank(ranks):
    """colossalai's GeminiOptimizer.step on a stand-in: with coati_hf's overflow check an overflow
    counted on rank 1 only makes both ranks skip, resets the counter and gradient accumulation
    (or the next backward would add onto the inf), and the next clean step is taken."""
    for rank in (0, 1):
        found = _scenario(ranks, "gemini", rank)
        assert found["world_size"] == 2 and found["skips_non_finite_steps"]
        skipped, clean = found["history"]
        assert skipped == {"skipped": True, "weight_changed": False, "counter_after": 0, "accumulating_after": False}
        assert clean["skipped"] is False and clean["weight_changed"]


@pytest.mark.distributed
@needs_colossalai
def test_gemini_grad_norm_is_read_without_disturbing_its_step(ranks):
    for rank in (0, 1):
        found = _scenario(ranks, "gemini", rank)
        assert found["grad_norm"] == pytest.approx((4.0 + 1.0 + 4.0) ** 0.5 / 2.0)  # replicated + both shards, / loss scale
        assert found["norms_kept"] == [4.0, float((rank + 1) ** 2)]  # Gemini's step still finds them
        assert found["grad_norm_without_clipping"] is None  # Gemini records chunk norms only when it clips


# ---- multi-rank: schedulers built before the HybridAdam swap ---------------------------------------


@pytest.mark.distributed
@needs_colossalai
def test_handwritten_loop_scheduler_never_prepared_drives_the_swapped_optimizer(ranks):
    for rank in (0, 1):
        found = _scenario(ranks, "handwritten", rank)
        assert found["world_size"] == 2
        stepped = [step["lrs"][0] for step in found["optimizer_steps"]]
        assert {step["type"] for step in found["optimizer_steps"]} == {"StandInHybridAdam"}
        assert len(set(found["scheduled_lr"])) == len(found["scheduled_lr"])  # a rate that changes every step
        assert stepped == pytest.approx(found["scheduled_lr"])  # steps 4 and 5 come after the state was reloaded
        assert found["scheduler_warnings"] == []


@pytest.mark.distributed
@needs_colossalai
def test_trainer_scheduler_passed_in_drives_the_swapped_optimizer(ranks):
    for rank in (0, 1):
        found = _scenario(ranks, "trainer_user_scheduler", rank)
        assert found["world_size"] == 2
        stepped = [step["lrs"][0] for step in found["optimizer_steps"]]
        assert stepped == pytest.approx(found["logged_lr"])
        assert stepped[0] == 0.0 and max(stepped) == pytest.approx(LR)


# ---- in this process -------------------------------------------------------------------------------


class _StandInHybridAdam:
    """Built lazily: a torch Adam with HybridAdam's constructor (HybridAdam needs CUDA kernels)."""

    @staticmethod
    def make():
        import torch

        class StandInHybridAdam(torch.optim.Adam):
            def __init__(self, model_params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                         adamw_mode=True, **defaults):  # fmt: skip
                super().__init__(model_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=adamw_mode)

        return StandInHybridAdam


@needs_colossalai
def test_swap_shares_param_groups_so_an_earlier_scheduler_stays_live(monkeypatch):
    import colossalai.nn.optimizer as colossal_optimizers
    import torch

    from coati_hf.colossalai.optimizers import rebind_replaced_optimizer, to_hybrid_adam

    monkeypatch.setattr(colossal_optimizers, "HybridAdam", _StandInHybridAdam.make())
    model = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: (step + 1) / 4)
    hybrid = to_hybrid_adam(adamw)
    assert type(hybrid).__name__ == "StandInHybridAdam" and hybrid.param_groups is adamw.param_groups
    assert [g["weight_decay"] for g in hybrid.param_groups] == [adamw.defaults["weight_decay"], 0.0]
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(torch.ones(1, 3)).sum().backward()
            seen.append(hybrid.param_groups[0]["lr"])
            hybrid.step()
            scheduler.step()
            hybrid.zero_grad()
    assert seen == pytest.approx([0.025, 0.05, 0.075])
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    # a state load gives the stepping optimizer new group dicts; rebinding shares them again
    hybrid.load_state_dict(hybrid.state_dict())
    rebind_replaced_optimizer(hybrid)
    scheduler.step()
    assert hybrid.param_groups[0]["lr"] == pytest.approx(0.125)


@needs_colossalai
def test_swap_refuses_to_drop_optimizer_state(monkeypatch):
    import colossalai.nn.optimizer as colossal_optimizers
    import torch

    from coati_hf.colossalai.optimizers import to_hybrid_adam

    monkeypatch.setattr(colossal_optimizers, "HybridAdam", _StandInHybridAdam.make())
    model = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    adamw.step()
    with pytest.raises(ValueError, match="already holds state"):
        to_hybrid_adam(adamw)


@pytest.mark.parametrize("stage, strategy", [(2, "zero2"), (3, "gemini")])
def test_ppo_under_deepspeed_stops_before_model_work_and_names_the_colossalai_strategy(tmp_path, monkeypatch, stage, strategy):
    """What ``accelerate launch --config_file recipes/accelerate/deepspeed_zero{2,3}.yaml`` sets up:
    ``ACCELERATE_USE_DEEPSPEED``, so the config gets a DeepSpeedPlugin. (DeepSpeed is not installed
    here; only the plugin's link to the deepspeed package is skipped.)"""
    from accelerate.utils import DeepSpeedPlugin

    from coati_hf.ppo import trainer as trainer_module
    from coati_hf.ppo.config import PPOConfig

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
    monkeypatch.setattr(DeepSpeedPlugin, "set_deepspeed_weakref", lambda self: None)
    args = PPOConfig(output_dir=str(tmp_path), report_to=[])
    assert args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == stage

    def no_model_work(*args, **kwargs):
        raise AssertionError("the roles were built before the DeepSpeed check")

    monkeypatch.setattr(trainer_module, "build_roles", no_model_work)
    with pytest.raises(ValueError, match=rf"does not run under DeepSpeed.*ZeRO-{stage}.*--colossalai_strategy {strategy}\b"):
        trainer_module.PPOTrainer(
            args=args, processing_class=object(), model=None, ref_model=None, reward_model=None, train_dataset=[]
        )

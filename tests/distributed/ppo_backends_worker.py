"""One rank of the PPO backend matrix (run by tests/test_ppo_backends.py).

Launched as ``torchrun --nproc_per_node 2 tests/distributed/ppo_backends_worker.py OUT_DIR``;
``PPO_BACKENDS_ONLY=ppo:zero2,gemini`` runs only the named scenarios (a scenario that fails on
one rank can leave the other waiting in a collective until the 150 s timeout).
Every scenario runs on every rank (they are collective); each rank writes what it saw to
``OUT_DIR/rank{r}.json`` and the pytest side asserts on it, one test per property.

The PPO run is the same everywhere: a tiny random-init Llama actor and critic, updates of one
optimizer step each (2 micro-batches of 2 prompts accumulated per rank), a linear schedule with 2
warm-up steps (the first update trains at rate 0), and a gradient hook on rank 1 only that turns
one weight's gradient into +inf at update 2 (fp32: 3 updates) or at updates 2 and 3 (fp16: 4
updates; ColossalAI's scaler lowers its scale at the second overflow in a row). Recorded per run
and rank: the ``lr`` logged per update, the skipped and taken steps of each update (from
``_optimize``'s own counts), a weight digest and the loss scale after each update, the learning
rate held by the torch optimizer each time it is stepped (a global step pre-hook: under
ColossalAI this is the inner optimizer the Booster drives, under a HybridAdam swap the new
optimizer), the final weights (a distance to the plain-Accelerate run) and whether they moved
and are finite.

Runs (``PPO_RUNS``):
- ``accelerate``: plain Accelerate, fp32 -- the reference.
- ``ddp``, ``zero1``, ``zero2``: ColossalAI on the CPU (gloo, the cpu shim), fp32.
- ``zero2_swap``: zero2 with the HybridAdam swap on (``hybrid_adam=True``, as ``zero2_cpu`` and
  Gemini do); HybridAdam needs CUDA kernels, so ``colossalai.nn.optimizer.HybridAdam`` is a
  stand-in with HybridAdam's constructor over torch's Adam (:class:`StandInHybridAdam`).
- ``accelerate_fp16``: plain Accelerate with the ``GradScaler`` Accelerate builds for fp16 on a
  GPU (on a CPU it builds none) and fp16 autocast.
- ``zero2_fp16``: ColossalAI ZeRO-2's own fp16 (LowLevelZero's dynamic loss scaler, overflow
  all-reduced over ranks), with coati_hf's "no fp16 on CPU" refusal lifted for the test.

Other scenarios:
- ``handwritten``: a hand-written loop with ColossalAIAccelerator (zero2 + swap stand-in), an
  AdamW and a warm-up LambdaLR built before ``prepare`` and never prepared; after 3 steps the
  optimizer state is saved and loaded, then 2 more steps.
- ``trainer_user_scheduler``: ``transformers.Trainer`` + ``ColossalAIMixin`` (zero2 + swap
  stand-in) given ``optimizers=(AdamW, warm-up scheduler)`` built before the swap.
- ``ddp_fp16``: a hand-written loop with ColossalAI DDP's fp16 (``TorchAMPOptimizer``); its
  ``torch.cuda.amp.GradScaler`` disables itself without CUDA, so the test builds the CPU
  ``torch.amp.GradScaler`` with the same arguments. Step 2 is poisoned on rank 1.
- ``gemini``: Gemini needs CUDA; this runs colossalai's own ``GeminiOptimizer.step`` on a stand-in
  optimizer (no chunks: the chunk manager's overflow counter and accumulation flag, the inner
  optimizer) after coati_hf's bf16 overflow check is installed, with an overflow on rank 1 only;
  and ``gemini_grad_norm`` on stand-in chunks (one replicated, one sharded per rank).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.pop("COATI_HF_STRATEGY", None)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from coati_hf.colossalai import ColossalAIPlugin  # noqa: E402
from coati_hf.models import load_tokenizer, make_tiny_llama  # noqa: E402
from coati_hf.models.embedded import embedded_model_dir  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)

INJECT_RANK = 1  # the gradient is poisoned on this rank only
WARMUP = 2
LR = 1e-3


class StandInHybridAdam(torch.optim.Adam):
    """What the HybridAdam swap builds, on a CPU: colossalai's HybridAdam constructor (and the
    ``div_scale`` argument Gemini passes to ``step``) over torch's Adam; ``adamw_mode`` is
    decoupled weight decay, as in HybridAdam."""

    def __init__(self, model_params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 adamw_mode=True, **defaults):  # fmt: skip
        super().__init__(model_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=adamw_mode)

    def step(self, closure=None, div_scale: float = -1):
        return super().step(closure)


def install_hybrid_adam_stand_in():
    import colossalai.nn.optimizer as colossal_optimizers

    colossal_optimizers.HybridAdam = StandInHybridAdam


def lift_cpu_fp16_refusal():
    """coati_hf refuses fp16 on a CPU for users; ZeRO's fp16 loss scaler itself runs on the CPU
    accelerator (with the cpu shim), so the test lifts the refusal to exercise it."""
    from coati_hf.colossalai import accelerator as accelerator_module

    accelerator_module._check_precision_on_device = lambda precision, device_type: None


def install_gpu_style_grad_scaler(accelerator):
    """What Accelerate builds for mixed_precision='fp16' on a GPU (on a CPU it builds no scaler):
    ``get_grad_scaler(distributed_type)`` and fp16 autocast."""
    from accelerate.utils import get_grad_scaler

    accelerator.scaler = get_grad_scaler(accelerator.distributed_type)
    accelerator.native_amp = True


def log(msg):
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"[worker] {msg}", flush=True)


@contextlib.contextmanager
def recording_optimizer_steps(sink: list, current: dict):
    """Record, for every torch optimizer step on this rank, the update it belongs to and the
    learning rates its parameter groups hold at that moment."""

    def hook(optimizer, args, kwargs):
        sink.append({"update": current.get("update"), "type": type(optimizer).__name__,
                     "lrs": [float(group["lr"]) for group in optimizer.param_groups]})  # fmt: skip

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def weights_digest(module) -> list[float]:
    """Float64 sum and sum of squares of every trainable weight: equal across ranks iff in step."""
    params = [p.detach().double() for p in module.parameters() if p.requires_grad]
    return [float(sum(p.sum() for p in params)), float(sum((p * p).sum() for p in params))]


# PPO runs: name -> (plugin or None, fp16); fp32 runs poison update 2 of 3, fp16 runs updates 2 and 3 of 4
PPO_RUNS = {
    "accelerate": (None, False),
    "ddp": (ColossalAIPlugin("ddp"), False),
    "zero1": (ColossalAIPlugin("zero1"), False),
    "zero2": (ColossalAIPlugin("zero2"), False),
    "zero2_swap": (ColossalAIPlugin("zero2", hybrid_adam=True), False),
    "accelerate_fp16": (None, True),
    "zero2_fp16": (ColossalAIPlugin("zero2"), True),
}
POISONED = {False: (2,), True: (2, 3)}


def run_ppo(name, tokenizer, workdir, reference_weights):
    from coati_hf.ppo.config import PPOConfig
    from coati_hf.ppo.trainer import PPOTrainer

    plugin, fp16 = PPO_RUNS[name]
    poisoned_updates = POISONED[fp16]
    updates = poisoned_updates[-1] + 1
    rank = dist.get_rank()
    policy, tok = make_tiny_llama(seed=0, tokenizer=copy.deepcopy(tokenizer))
    reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tok)
    world = dist.get_world_size()
    per_update = 2 * 2 * world  # per_device_train_batch_size x gradient_accumulation_steps x ranks
    prompts = Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(per_update * updates)]})
    args = PPOConfig(
        output_dir=os.path.join(workdir, f"ppo-{name}"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        num_mini_batches=1, num_ppo_epochs=1, total_episodes=per_update * updates, response_length=4, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=WARMUP, report_to=[], use_cpu=True, seed=0, logging_steps=1,
        num_sample_generations=0, save_strategy="no", local_rollout_forward_batch_size=2, bf16=False, fp16=fp16,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=prompts, colossalai_plugin=plugin)  # fmt: skip
    if fp16 and plugin is None:
        install_gpu_style_grad_scaler(trainer.accelerator)
    initial = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    initial_digest = weights_digest(trainer.model)

    current, steps, local = {}, [], []
    poisoned = trainer.model.policy.model.layers[0].mlp.up_proj.weight
    poison = poisoned.register_hook(
        lambda grad: torch.full_like(grad, float("inf")) if current.get("update") in poisoned_updates and rank == INJECT_RANK else grad
    )
    original_optimize = trainer._optimize

    def optimize(*a, **kw):
        current["update"] = trainer.state.global_step + 1
        stats = original_optimize(*a, **kw)
        local.append({"skipped": len(stats.get("skipped_steps", [])), "taken": len(stats.get("optimizer_steps", [])),
                      "loss_scale": loss_scale(trainer), "digest": weights_digest(trainer.model)})  # fmt: skip
        return stats

    trainer._optimize = optimize
    with warnings.catch_warnings(record=True) as caught, recording_optimizer_steps(steps, current):
        warnings.simplefilter("always")
        trainer.train()
    poison.remove()

    logs = [h for h in trainer.state.log_history if "ppo/optimizer_steps" in h]
    final = [p.detach().clone() for p in trainer.accelerator.unwrap_model(trainer.model_wrapped).parameters() if p.requires_grad]
    result = {
        "poisoned_updates": list(poisoned_updates),
        "initial_digest": initial_digest,
        "world_size": trainer.accelerator.num_processes,
        "accelerator_class": type(trainer.accelerator).__name__,
        "logged_lr": [h["lr"] for h in logs],
        "logged_skipped_steps": [h["ppo/skipped_steps"] for h in logs],
        "logged_optimizer_steps": [h["ppo/optimizer_steps"] for h in logs],
        "local": local,
        "optimizer_steps": steps,
        "finite": all(bool(torch.isfinite(p).all()) for p in final),
        "moved": float(torch.sqrt(sum(((f.double() - i.double()) ** 2).sum() for f, i in zip(final, initial)))),
        "digest": weights_digest(trainer.accelerator.unwrap_model(trainer.model_wrapped)),
        "scheduler_warnings": [str(w.message)[:160] for w in caught if "lr_scheduler" in str(w.message)],
    }
    if reference_weights is not None:
        diff = torch.sqrt(sum(((f.double() - r.double()) ** 2).sum() for f, r in zip(final, reference_weights)))
        result["rel_diff_to_accelerate"] = float(diff / torch.sqrt(sum((r.double() ** 2).sum() for r in reference_weights)))
    trainer.accelerator.free_memory()
    return result, final


def loss_scale(trainer):
    """The dynamic loss scale after the step (None without one)."""
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None:
        return float(scaler.get_scale())
    mixin = getattr(trainer.optimizer, "mixed_precision_mixin", None)
    return float(mixin.loss_scale) if hasattr(mixin, "loss_scale") else None


def scenario_handwritten(tokenizer, workdir, out):
    """A hand-written loop whose scheduler was built on the AdamW before prepare() swapped it, and
    never given to prepare(): it must still drive the optimizer that steps, also after the
    optimizer state is saved and loaded."""
    from coati_hf.colossalai import ColossalAIAccelerator

    accelerator = ColossalAIAccelerator(colossalai_plugin=ColossalAIPlugin("zero2", hybrid_adam=True), cpu=True, mixed_precision="no")
    model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, step / 4))  # changes at every step
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = torch.arange(24).reshape(2, 12) * 37 % 1000 + 5 + dist.get_rank()
    steps, current, scheduled = [], {}, []
    path = os.path.join(workdir, "handwritten_optimizer.bin")
    with warnings.catch_warnings(record=True) as caught, recording_optimizer_steps(steps, current):
        warnings.simplefilter("always")
        for step in range(5):
            if step == 3:
                accelerator.save_optimizer(optimizer, path)
                accelerator.load_optimizer(optimizer, path)
            current["update"] = step + 1
            scheduled.append(scheduler.get_last_lr()[0])
            loss = model(input_ids=ids, labels=ids).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    out["handwritten"] = {
        "world_size": accelerator.num_processes,
        "scheduled_lr": scheduled,
        "optimizer_steps": steps,
        "scheduler_warnings": [str(w.message)[:160] for w in caught if "lr_scheduler" in str(w.message)],
    }
    accelerator.free_memory()


def scenario_trainer_user_scheduler(tokenizer, workdir, out):
    """transformers' Trainer + ColossalAIMixin given a scheduler built on the AdamW before the swap."""
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

    from coati_hf.colossalai import ColossalAIMixin

    class MixinTrainer(ColossalAIMixin, Trainer):
        pass

    ids = [[(start * 7 + k) % 1000 + 100 for k in range(16)] for start in range(32)]
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 16] * 32, "labels": ids})
    model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=WARMUP, num_training_steps=4)
    args = TrainingArguments(output_dir=os.path.join(workdir, "trainer"), per_device_train_batch_size=4, max_steps=4,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)  # fmt: skip
    trainer = MixinTrainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, scheduler),
                           colossalai_plugin=ColossalAIPlugin("zero2", hybrid_adam=True))  # fmt: skip
    steps, current = [], {}
    with recording_optimizer_steps(steps, current):
        trainer.train()
    out["trainer_user_scheduler"] = {
        "world_size": trainer.accelerator.num_processes,
        "logged_lr": [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h],
        "optimizer_steps": steps,
    }


def scenario_ddp_fp16(tokenizer, out):
    """ColossalAI DDP fp16 through clip_and_step: an overflow on one rank is skipped on both by the
    scaler, which lowers its scale; the next step is taken (no "unscale_() already called")."""
    from coati_hf.colossalai import ColossalAIAccelerator
    from coati_hf.colossalai.stepping import clip_and_step

    cuda_scaler = torch.cuda.amp.GradScaler
    torch.cuda.amp.GradScaler = lambda **kwargs: torch.amp.GradScaler("cpu", **kwargs)  # what CUDA would build
    try:
        accelerator = ColossalAIAccelerator(colossalai_plugin=ColossalAIPlugin("ddp", precision="fp16"), cpu=True, mixed_precision="no")
        model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
        model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=LR))
    finally:
        torch.cuda.amp.GradScaler = cuda_scaler
    ids = torch.arange(24).reshape(2, 12) * 37 % 1000 + 5 + dist.get_rank()
    poisoned = accelerator.unwrap_model(model).model.layers[0].mlp.up_proj.weight
    step = {"index": 0}
    handle = poisoned.register_hook(
        lambda g: torch.full_like(g, float("inf")) if step["index"] == 2 and dist.get_rank() == INJECT_RANK else g
    )
    history = []
    for index in (1, 2, 3):
        step["index"] = index
        accelerator.backward(model(input_ids=ids, labels=ids).loss)
        outcome = clip_and_step(accelerator, optimizer, list(model.parameters()), 1.0)
        optimizer.zero_grad()
        history.append({"taken": outcome.taken, "loss_scaled": outcome.loss_scaled, "scale": float(optimizer.scaler.get_scale()),
                        "digest": weights_digest(accelerator.unwrap_model(model))})  # fmt: skip
    handle.remove()
    out["ddp_fp16"] = {"world_size": accelerator.num_processes, "history": history}
    accelerator.free_memory()


def scenario_gemini(out):
    from types import SimpleNamespace

    from colossalai.amp.naive_amp.mixed_precision_mixin import BF16MixedPrecisionMixin
    from colossalai.zero.gemini.gemini_optimizer import GeminiOptimizer

    from coati_hf.colossalai.stepping import gemini_grad_norm, install_gemini_overflow_check, skips_non_finite_steps, track_skipped_steps

    rank = dist.get_rank()
    weight = torch.nn.Parameter(torch.ones(4))
    chunk_manager = SimpleNamespace(overflow_counter=torch.zeros(1, dtype=torch.int), accumulating_grads=False, reuse_fp16_chunk=False)
    optimizer = GeminiOptimizer.__new__(GeminiOptimizer)  # colossalai's step, stand-in state (no CUDA chunks)
    optimizer.optim = StandInHybridAdam([weight], lr=0.1)
    optimizer.module = SimpleNamespace(master_weights=False, chunk_manager=chunk_manager)
    optimizer.mix_precision_mixin = BF16MixedPrecisionMixin()
    optimizer.verbose, optimizer.clipping_flag = False, False
    optimizer._set_grad_ptr = optimizer._clear_global_norm = optimizer._register_states = lambda: None
    install_gemini_overflow_check(optimizer)
    track_skipped_steps(optimizer)
    history = []
    for index in (1, 2):
        weight.grad = torch.ones(4)
        chunk_manager.accumulating_grads = True  # gradient accumulation on: the backward switched it on
        if index == 1 and rank == INJECT_RANK:
            chunk_manager.overflow_counter += 1  # what Gemini's reduce hook counts for a chunk with inf/NaN
        before = weight.detach().clone()
        optimizer.step()
        history.append({"skipped": optimizer.step_was_skipped, "weight_changed": not torch.equal(before, weight.detach()),
                        "counter_after": int(chunk_manager.overflow_counter.item()),
                        "accumulating_after": chunk_manager.accumulating_grads})  # fmt: skip

    # gemini_grad_norm: a replicated chunk (squared norm 4 on every rank) and a sharded one ((rank+1)^2 per rank),
    # fp16 loss scale 2: sqrt(4 + 1 + 4) / 2 = 1.5 on 2 ranks; the recorded norms stay for Gemini's own step
    replicated = SimpleNamespace(l2_norm=4.0, is_gathered=True, torch_pg=None)
    shard = SimpleNamespace(l2_norm=float((rank + 1) ** 2), is_gathered=False, torch_pg=None)
    chunks = [SimpleNamespace(grad_chunk=replicated), SimpleNamespace(grad_chunk=shard)]
    measured = SimpleNamespace(clipping_flag=True, chunk16_set=chunks, module=optimizer.module,
                               mix_precision_mixin=SimpleNamespace(loss_scale=2.0))  # fmt: skip
    out["gemini"] = {
        "world_size": dist.get_world_size(),
        "skips_non_finite_steps": skips_non_finite_steps(optimizer),
        "history": history,
        "grad_norm": gemini_grad_norm(measured),
        "norms_kept": [replicated.l2_norm, shard.l2_norm],
        "grad_norm_without_clipping": gemini_grad_norm(SimpleNamespace(clipping_flag=False)),
    }


def main():
    out_dir = sys.argv[1]
    start = time.time()
    PartialState(cpu=True, timeout=datetime.timedelta(seconds=150))
    tokenizer = load_tokenizer(embedded_model_dir())
    install_hybrid_adam_stand_in()
    lift_cpu_fp16_refusal()
    out = {"world_size": int(os.environ["WORLD_SIZE"]), "timings": {}, "ppo": {}}
    with tempfile.TemporaryDirectory() as local:
        holder = [local]
        dist.broadcast_object_list(holder, src=0)
        workdir = holder[0]
        reference = None
        # the fp16 runs last: Accelerate's state keeps the mixed precision of the first trainer that set it
        scenarios = [("gemini", None), ("handwritten", None), ("trainer_user_scheduler", None), ("ddp_fp16", None)]
        scenarios += [(f"ppo:{name}", name) for name in PPO_RUNS]
        only = [name for name in os.environ.get("PPO_BACKENDS_ONLY", "").split(",") if name]
        scenarios = [entry for entry in scenarios if not only or entry[0] in only]
        for scenario, name in scenarios:
            t0 = time.time()
            try:
                if name is not None:
                    result, final = run_ppo(name, tokenizer, workdir, reference)
                    if name == "accelerate":
                        reference = final
                    out["ppo"][name] = result
                elif scenario == "handwritten":
                    scenario_handwritten(tokenizer, workdir, out)
                elif scenario == "trainer_user_scheduler":
                    scenario_trainer_user_scheduler(tokenizer, workdir, out)
                elif scenario == "ddp_fp16":
                    scenario_ddp_fp16(tokenizer, out)
                else:
                    scenario_gemini(out)
            except Exception as err:  # recorded, so the other scenarios still report
                out.setdefault("errors", {})[scenario] = traceback.format_exc()
                log(f"scenario {scenario} failed: {err!r}")
            out["timings"][scenario] = round(time.time() - t0, 2)
            log(f"{scenario}: {out['timings'][scenario]}s")
        dist.barrier()
    out["timings"]["total"] = round(time.time() - start, 2)
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main()

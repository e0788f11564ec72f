"""One rank of the ColossalAI backend's multi-rank checks (run by tests/test_colossalai_distributed.py).

Launched as ``torchrun --nproc_per_node 2 tests/distributed/colossalai_worker.py OUT_DIR``.
Every scenario runs on every rank (they are collective); each rank writes its findings to
``OUT_DIR/rank{r}.json`` and the pytest side asserts on them, one test per finding, so each
check can fail on its own. One launch for all scenarios keeps the start-up cost (torch,
transformers, colossalai imports; the process group) to a single ~10 s.

Scenarios (all fp32 unless named):
- trainer_losses[strategy]: a plain ``transformers.Trainer`` + ``ColossalAIMixin``, 6 steps,
  for no strategy (plain Accelerate), ddp, zero1, zero2; plus gradient accumulation 2 for
  all four; plus zero2 in bf16 (must just train).
- optimizer_state_bytes[strategy]: bytes of the inner optimizer's state tensors on this rank.
- sft / reward: coati_hf's SFTTrainer and RewardTrainer (config field colossalai_strategy) under ddp and zero2.
- resume: zero2 run of 6 steps saving at step 3, and a fresh trainer resumed from
  checkpoint-3; the losses of steps 4-6 (and, as a control, of a resume without optimizer.pt).
- export: save_model under zero2, reload with plain from_pretrained, max weight difference.
- two_models: actor + critic with their own optimizers through the accelerator (PPO's
  shape), ddp vs zero2.
- env_var: strategy picked from $COATI_HF_STRATEGY.
- second train() on the same trainer, evaluate() after training, LoRA (peft) under zero2.
- accelerator_state: ColossalAIAccelerator.save_state/load_state in a hand-written loop.
- reload_weights: weights loaded into a boosted model + sync_master_weights(), ddp vs zero2.
- ppo: coati_hf's PPOTrainer (actor + critic, one optimizer over both) with gradient accumulation
  and 2 PPO epochs under plain Accelerate, ddp and zero2: metrics, optimizer steps, weight updates.
- trainer_optimizer_steps_accum2: optimizer steps of the Trainer's own loop with accumulation 2.
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
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from coati_hf.colossalai import ColossalAIMixin  # noqa: E402
from coati_hf.colossalai.accelerator import inner_optimizer  # noqa: E402
from coati_hf.models import load_tokenizer, make_tiny_llama  # noqa: E402
from coati_hf.models.embedded import embedded_model_dir  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)

STEPS = 6


class MixinTrainer(ColossalAIMixin, Trainer):
    pass


def log(msg):
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"[worker] {msg}", flush=True)


def lm_dataset(tokenizer, n=48, length=20):
    texts = [f"The number {i} is {'even' if i % 2 == 0 else 'odd'}, and {i * 7 % 13} is its residue." for i in range(n)]
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True)
    labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})


def training_args(output_dir, **overrides):
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=2e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        max_grad_norm=1.0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def losses_of(trainer, after_step=0):
    """Per-step training losses logged after ``after_step`` (logging_steps=1)."""
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > after_step]


def grad_norms_of(trainer):
    return [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]


def state_bytes(optimizer):
    """Bytes held by the inner torch optimizer's per-parameter state tensors (not 'step')."""
    total = 0
    for state in inner_optimizer(optimizer).state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                total += value.numel() * value.element_size()
    return total


@contextlib.contextmanager
def counting_optimizer_steps():
    """Count the steps of every torch optimizer (the inner one of any wrapper) on this rank."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    counter = {"count": 0}

    def hook(optimizer, args, kwargs):
        counter["count"] += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def run_trainer(tokenizer, dataset, strategy, workdir, **arg_overrides):
    model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
    trainer = MixinTrainer(
        model=model,
        args=training_args(os.path.join(workdir, f"run-{strategy}"), **arg_overrides),
        train_dataset=dataset,
        colossalai_plugin=strategy,
    )
    trainer.train()
    return trainer


def scenario_trainer(tokenizer, dataset, workdir, out):
    out["trainer_losses"], out["trainer_grad_norms"], out["optimizer_state_bytes"], out["accelerator_class"] = {}, {}, {}, {}
    for strategy in (None, "ddp", "zero1", "zero2"):
        t0 = time.time()
        trainer = run_trainer(tokenizer, dataset, strategy, workdir)
        key = strategy or "accelerate"
        out["trainer_losses"][key] = losses_of(trainer)
        out["trainer_grad_norms"][key] = grad_norms_of(trainer)
        out["optimizer_state_bytes"][key] = state_bytes(trainer.optimizer)
        out["accelerator_class"][key] = type(trainer.accelerator).__name__
        log(f"trainer {key}: {time.time() - t0:.1f}s losses {out['trainer_losses'][key]}")
    out["trainer_losses_accum2"], out["trainer_optimizer_steps_accum2"] = {}, {}
    for strategy in (None, "ddp", "zero1", "zero2"):
        with counting_optimizer_steps() as steps:
            trainer = run_trainer(tokenizer, dataset, strategy, workdir, per_device_train_batch_size=2, gradient_accumulation_steps=2)
        out["trainer_losses_accum2"][strategy or "accelerate"] = losses_of(trainer)
        out["trainer_optimizer_steps_accum2"][strategy or "accelerate"] = steps["count"]
    out["second_train_losses"], out["eval_loss"] = {}, {}
    for strategy in ("ddp", "zero2"):
        trainer = run_trainer(tokenizer, dataset, strategy, workdir)
        out["eval_loss"][strategy] = trainer.evaluate(eval_dataset=dataset.select(range(16)))["eval_loss"]
        trainer.train()  # a second train() on the same trainer re-prepares the already boosted objects
        out["second_train_losses"][strategy] = losses_of(trainer)
    out["lora_losses"] = {}
    for strategy in ("ddp", "zero2"):
        from peft import LoraConfig, get_peft_model

        model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        trainer = MixinTrainer(
            model=model,
            args=training_args(os.path.join(workdir, f"lora-{strategy}"), learning_rate=1e-2),
            train_dataset=dataset,
            colossalai_plugin=strategy,
        )
        trainer.train()
        out["lora_losses"][strategy] = losses_of(trainer)
    trainer = run_trainer(tokenizer, dataset, "zero2", workdir, bf16=True)
    out["bf16_zero2_losses"] = losses_of(trainer)
    out["bf16_zero2_param_dtype"] = str(next(trainer.model.parameters()).dtype)


def scenario_env_var(tokenizer, dataset, workdir, out):
    os.environ["COATI_HF_STRATEGY"] = "zero1"
    try:
        model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
        trainer = MixinTrainer(model=model, args=training_args(os.path.join(workdir, "env")), train_dataset=dataset)
        out["env_var_strategy"] = trainer.colossalai_plugin.strategy if trainer.colossalai_plugin else None
    finally:
        del os.environ["COATI_HF_STRATEGY"]


def scenario_resume(tokenizer, dataset, workdir, out):
    run_dir = os.path.join(workdir, "resume")
    args = dict(save_strategy="steps", save_steps=3, output_dir=run_dir)
    model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
    full = MixinTrainer(model=model, args=training_args(**args), train_dataset=dataset, colossalai_plugin="zero2")
    full.train()
    out["resume_full_losses"] = losses_of(full)
    checkpoint = os.path.join(run_dir, "checkpoint-3")
    out["resume_checkpoint_files"] = sorted(os.listdir(checkpoint))
    model, _ = make_tiny_llama(seed=1, tokenizer=tokenizer)  # different init: everything must come from the checkpoint
    resumed = MixinTrainer(model=model, args=training_args(**args), train_dataset=dataset, colossalai_plugin="zero2")
    resumed.train(resume_from_checkpoint=checkpoint)
    out["resume_resumed_losses"] = losses_of(resumed, after_step=3)  # steps 1-3 come from trainer_state.json
    # Control: the same resume without the optimizer state must diverge, or the check above proves nothing.
    dist.barrier()
    if dist.get_rank() == 0:
        os.remove(os.path.join(checkpoint, "optimizer.pt"))
    dist.barrier()
    model, _ = make_tiny_llama(seed=1, tokenizer=tokenizer)
    control = MixinTrainer(model=model, args=training_args(**args), train_dataset=dataset, colossalai_plugin="zero2")
    control.train(resume_from_checkpoint=checkpoint)
    out["resume_without_optimizer_losses"] = losses_of(control, after_step=3)


def scenario_export(tokenizer, dataset, workdir, out):
    trainer = run_trainer(tokenizer, dataset, "zero2", workdir)
    export_dir = os.path.join(workdir, "export")
    trainer.save_model(export_dir)
    # save_model ends with a barrier: the folder is complete on every rank here.
    reloaded = AutoModelForCausalLM.from_pretrained(export_dir)
    trained = trainer.accelerator.unwrap_model(trainer.model_wrapped).state_dict()
    reloaded_state = reloaded.state_dict()
    out["export_files"] = sorted(os.listdir(export_dir))
    out["export_missing_keys"] = sorted(set(trained) ^ set(reloaded_state))
    out["export_max_abs_diff"] = max((trained[k] - reloaded_state[k]).abs().max().item() for k in trained if k in reloaded_state)
    initial, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
    out["export_changed_from_init"] = max((initial.state_dict()[k] - reloaded_state[k]).abs().max().item() for k in reloaded_state)


def scenario_reload_weights(tokenizer, out):
    """Weights loaded into an already boosted model, then sync_master_weights() (a custom resume)."""
    from coati_hf.colossalai import ColossalAIAccelerator

    out["reload_weights"] = {}
    ids = torch.arange(24).reshape(2, 12) * 37 % 1000 + 5 + int(os.environ.get("RANK", 0))
    for strategy in ("ddp", "zero2"):
        accelerator = ColossalAIAccelerator(colossalai_plugin=strategy, cpu=True)
        model, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
        initial = copy.deepcopy(model.state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        model, optimizer = accelerator.prepare(model, optimizer)
        losses = []
        for step in range(4):
            if step == 2:
                accelerator.unwrap_model(model).load_state_dict(initial)
                accelerator.sync_master_weights()
            loss = model(input_ids=ids, labels=ids).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        out["reload_weights"][strategy] = losses
        accelerator.free_memory()


def scenario_ppo(tokenizer, workdir, out):
    """coati_hf's PPOTrainer (actor + critic, one optimizer over both) with gradient accumulation 2
    and 2 PPO epochs, under plain Accelerate (the reference), ColossalAI ddp and zero2: the logged
    metrics, the number of optimizer steps and the weight updates of each run."""
    try:
        from coati_hf.ppo.config import PPOConfig
        from coati_hf.ppo.trainer import PPOTrainer
    except ImportError as err:
        out["ppo_unavailable"] = repr(err)
        return
    prompts = Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(16)]})
    out["ppo_logs"], out["ppo_optimizer_steps"], out["ppo_weight_update_rel_diff"], out["ppo_accelerator_class"] = {}, {}, {}, {}
    updates, weights, out["ppo_final_weight_rel_diff"] = {}, {}, {}
    for strategy in (None, "ddp", "zero2"):
        key = strategy or "accelerate"
        policy, tok = make_tiny_llama(seed=0, tokenizer=copy.deepcopy(tokenizer))
        ref, _ = make_tiny_llama(seed=0, tokenizer=tok)
        reward, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tok)
        args = PPOConfig(
            output_dir=os.path.join(workdir, f"ppo-{key}"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
            num_mini_batches=1, num_ppo_epochs=2, total_episodes=16, response_length=6, learning_rate=1e-3, report_to=[],
            use_cpu=True, seed=0, logging_steps=1, num_sample_generations=0, save_strategy="no", gradient_checkpointing=False,
            local_rollout_forward_batch_size=2, colossalai_strategy=strategy, bf16=False,
        )  # fmt: skip
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward, train_dataset=prompts)
        initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        with counting_optimizer_steps() as steps:
            trainer.train()
        keys = ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "objective/kl_k3")
        out["ppo_logs"][key] = [[h[k] for k in keys] for h in trainer.state.log_history if keys[0] in h]
        out["ppo_optimizer_steps"][key] = steps["count"]
        out["ppo_accelerator_class"][key] = type(trainer.accelerator).__name__
        final = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        weights[key] = {name: p.detach().clone() for name, p in final.named_parameters()}
        updates[key] = {name: weights[key][name] - initial[name] for name in initial}
        log(f"ppo {key}: {steps['count']} optimizer steps, logs {out['ppo_logs'][key]}")

    def norm(tensors):
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))

    reference = updates["accelerate"]
    out["ppo_weight_update_norm"] = norm(reference.values())
    for key in ("ddp", "zero2"):
        # ||W_key - W_ref|| / ||W_ref - W_init||: the disagreement relative to how far training moved
        out["ppo_weight_update_rel_diff"][key] = norm(updates[key][n] - reference[n] for n in reference) / out["ppo_weight_update_norm"]
        out["ppo_final_weight_rel_diff"][key] = norm(weights[key][n] - weights["accelerate"][n] for n in reference) / norm(
            weights["accelerate"].values()
        )


def scenario_accelerator_state(tokenizer, dataset, workdir, out):
    """ColossalAIAccelerator.save_state / load_state in a hand-written loop (zero2)."""
    from torch.utils.data import DataLoader

    from coati_hf.colossalai import ColossalAIAccelerator

    def build(seed):
        accelerator = ColossalAIAccelerator(colossalai_plugin="zero2", cpu=True)
        model, _ = make_tiny_llama(seed=seed, tokenizer=tokenizer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=12)
        loader = DataLoader(dataset.with_format("torch"), batch_size=4)
        return (accelerator, *accelerator.prepare(model, optimizer, loader, scheduler))

    def train(accelerator, model, optimizer, scheduler, batches):
        losses = []
        for batch in batches:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        return losses

    state_dir = os.path.join(workdir, "accelerator_state")
    accelerator, model, optimizer, loader, scheduler = build(seed=0)
    batches = list(loader)[:6]
    train(accelerator, model, optimizer, scheduler, batches[:3])
    accelerator.save_state(state_dir)
    out["state_files"] = sorted(os.listdir(state_dir))
    out["state_continued_losses"] = train(accelerator, model, optimizer, scheduler, batches[3:])
    accelerator.free_memory()
    accelerator, model, optimizer, loader, scheduler = build(seed=1)  # different init: all must come from the folder
    accelerator.load_state(state_dir)
    out["state_reloaded_losses"] = train(accelerator, model, optimizer, scheduler, batches[3:])
    accelerator.free_memory()


def scenario_trl(tokenizer, workdir, out):
    """coati_hf's SFTTrainer and RewardTrainer (TRL subclasses with the mixin), switched on by
    the config field ``colossalai_strategy``."""
    from coati_hf import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    prompts = [f"What is {i} plus {i}?" for i in range(32)]
    sft_data = Dataset.from_dict({"prompt": prompts, "completion": [f" It is {2 * i}." for i in range(32)]})
    pref_data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": "No idea."}]}
            for i, p in enumerate(prompts)
        ]
    )
    common = dict(bf16=False, per_device_train_batch_size=4, max_steps=4, learning_rate=2e-3, logging_steps=1, save_strategy="no",
                  report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0,
                  gradient_checkpointing=False)
    out["sft_losses"], out["reward_losses"] = {}, {}
    for strategy in ("ddp", "zero2"):
        model, tok = make_tiny_llama(seed=0, tokenizer=copy.deepcopy(tokenizer))
        config = SFTConfig(output_dir=os.path.join(workdir, f"sft-{strategy}"), max_length=64, colossalai_strategy=strategy, **common)
        sft = SFTTrainer(model=model, args=config, train_dataset=sft_data, processing_class=tok)
        assert type(sft.accelerator).__name__ == "ColossalAIAccelerator"
        sft.train()
        out["sft_losses"][strategy] = losses_of(sft)
        model, tok = make_tiny_llama("sequence_classification", seed=0, tokenizer=copy.deepcopy(tokenizer))
        config = RewardConfig(output_dir=os.path.join(workdir, f"rm-{strategy}"), max_length=64, colossalai_strategy=strategy, **common)
        rm = RewardTrainer(model=model, args=config, train_dataset=pref_data, processing_class=tok)
        rm.train()
        out["reward_losses"][strategy] = losses_of(rm)
        log(f"coati_hf {strategy}: sft {out['sft_losses'][strategy]} rm {out['reward_losses'][strategy]}")


def scenario_two_models(tokenizer, out):
    """PPO's shape: an actor (causal LM) and a critic (value head), each with its own optimizer."""
    from coati_hf.colossalai import ColossalAIAccelerator

    out["two_models"] = {}
    for strategy in ("ddp", "zero2"):
        accelerator = ColossalAIAccelerator(colossalai_plugin=strategy, cpu=True)
        actor, _ = make_tiny_llama(seed=0, tokenizer=tokenizer)
        critic, _ = make_tiny_llama("sequence_classification", seed=1, tokenizer=tokenizer)
        actor_opt = torch.optim.AdamW(actor.parameters(), lr=1e-3)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-3)
        actor, actor_opt, critic, critic_opt = accelerator.prepare(actor, actor_opt, critic, critic_opt)
        generator = torch.Generator().manual_seed(accelerator.process_index)
        history = []
        for _ in range(4):
            ids = torch.randint(0, 1000, (2, 12), generator=generator)
            actor_loss = actor(input_ids=ids, labels=ids).loss
            accelerator.backward(actor_loss)  # owner found from the autograd graph
            accelerator.clip_grad_norm_(actor.parameters(), 1.0)
            actor_opt.step()
            actor_opt.zero_grad()
            values = critic(input_ids=ids).logits.squeeze(-1)
            critic_loss = (values - 1.0).pow(2).mean()
            accelerator.backward(critic_loss)
            critic_opt.step()
            critic_opt.zero_grad()
            pair = torch.tensor([actor_loss.item(), critic_loss.item()])
            history.append(accelerator.reduce(pair, reduction="mean").tolist())
        out["two_models"][strategy] = history
        accelerator.free_memory()


def main():
    out_dir = sys.argv[1]
    start = time.time()
    # Accelerate creates the (gloo) process group, as it would for any trainer; a short
    # timeout turns a rank stuck in a collective into an error instead of a 30-minute hang.
    PartialState(cpu=True, timeout=datetime.timedelta(seconds=150))
    tokenizer = load_tokenizer(embedded_model_dir())
    dataset = lm_dataset(tokenizer)
    out = {"world_size": int(os.environ["WORLD_SIZE"]), "timings": {}}
    with tempfile.TemporaryDirectory() as local:
        # One shared working folder (rank 0's) so checkpoints written by rank 0 are seen by all.
        holder = [local]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(holder, src=0)
        workdir = holder[0]
        for name, run in [
            ("trainer", lambda: scenario_trainer(tokenizer, dataset, workdir, out)),
            ("env_var", lambda: scenario_env_var(tokenizer, dataset, workdir, out)),
            ("resume", lambda: scenario_resume(tokenizer, dataset, workdir, out)),
            ("export", lambda: scenario_export(tokenizer, dataset, workdir, out)),
            ("two_models", lambda: scenario_two_models(tokenizer, out)),
            ("accelerator_state", lambda: scenario_accelerator_state(tokenizer, dataset, workdir, out)),
            ("reload_weights", lambda: scenario_reload_weights(tokenizer, out)),
            ("trl", lambda: scenario_trl(tokenizer, workdir, out)),
            ("ppo", lambda: scenario_ppo(tokenizer, workdir, out)),
        ]:
            t0 = time.time()
            try:
                run()
            except Exception as err:  # recorded, so the other scenarios still report
                import traceback

                out.setdefault("errors", {})[name] = traceback.format_exc()
                log(f"scenario {name} failed: {err!r}")
            out["timings"][name] = round(time.time() - t0, 2)
            log(f"scenario {name}: {out['timings'][name]}s")
        if dist.is_initialized():
            dist.barrier()
    out["timings"]["total"] = round(time.time() - start, 2)
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

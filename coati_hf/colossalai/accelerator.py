"""An ``accelerate.Accelerator`` that trains through ``colossalai.booster.Booster``.

Accelerate has no hook for third-party backends (``DistributedType`` is a closed enum),
so this subclass keeps everything Accelerate does well -- process group, device,
dataloader sharding, gather/reduce, RNG and sampler checkpointing, gradient-accumulation
bookkeeping -- and hands the parts that a sharded optimizer changes to the Booster:

=====================  ===================================================================
``prepare``            models and their optimizers go through ``Booster.boost`` (paired by
                       parameter identity); dataloaders and schedulers go to Accelerate
``backward``           ``optimizer.backward(loss)``: ZeRO reduces/scatters gradients here
``clip_grad_norm_``    ZeRO, Gemini: the global norm of the sharded gradients; the clip
                       itself happens inside ``optimizer.step()`` at the requested norm
``no_sync``            DDP: ``model.no_sync()``; ZeRO-1: ``optimizer.no_sync()``; ZeRO-2 and
                       Gemini reduce every micro-batch (their gradients are sharded anyway)
``unwrap_model``       the original ``nn.Module`` (a PEFT model stays a PEFT model)
``get_state_dict``     the full weights (a collective gather under Gemini)
``save_state``         ``Booster.save_model``/``save_optimizer`` (sharded states are gathered
``load_state``         and written once; on load each rank takes its shard) + Accelerate's
                       scheduler, sampler and RNG state
=====================  ===================================================================

Typical use, in a script launched with ``accelerate launch`` or ``torchrun``::

    accelerator = ColossalAIAccelerator(colossalai_plugin="zero2")   # or a ColossalAIPlugin
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    for batch in dataloader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

Two models with two optimizers (PPO's actor and critic) are prepared in one call or
separately; ``backward`` finds the optimizer that owns the parameters a loss depends on
(or takes ``optimizer=`` explicitly).

An LR scheduler built before ``prepare`` keeps working: under ZeRO the inner optimizer is the
one you created (ZeRO swaps its parameter lists for the rank's shards in place), and where
``prepare`` swaps an Adam/AdamW for HybridAdam (``zero2_cpu``, Gemini) the two share their
param groups (:mod:`~coati_hf.colossalai.optimizers`). :func:`inner_optimizer` returns the
torch optimizer that steps.

What a step with non-finite gradients does (skipped by the loss scaler's or by the caller's
decision, the same on every rank) is :mod:`~coati_hf.colossalai.stepping`'s contract;
:func:`~coati_hf.colossalai.stepping.clip_and_step` applies it.

ZeRO steps fp32 master shards and copies them into the model: after loading weights into
an already boosted model by hand, call :meth:`ColossalAIAccelerator.sync_master_weights`.
On colossalai's CPU accelerator (gloo) the :mod:`~coati_hf.colossalai.cpu_shim` is applied.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state, save_accelerator_state

from .optimizers import REPLACED_ATTRIBUTE, inner_optimizer, rebind_replaced_optimizer, to_hybrid_adam
from .plugin import (
    ColossalAIPlugin,
    StrategyNotSupportedError,
    check_strategy_supported,
    normalize_precision,
    resolve_plugin,
)
from .stepping import (
    gemini_found_overflow,
    gemini_grad_norm,
    install_gemini_overflow_check,
    track_skipped_steps,
    zero_grad_norm,
)

__all__ = ["ColossalAIAccelerator", "inner_optimizer", "to_hybrid_adam", "zero_grad_norm"]

logger = logging.getLogger(__name__)

# File names inside an accelerator state folder (beside Accelerate's own files).
BOOSTED_MODEL_NAME = "colossalai_model"
BOOSTED_OPTIMIZER_NAME = "colossalai_optimizer"


@dataclass
class _Boosted:
    """One boosted model, the optimizer that trains it (if any), and its parameter ids."""

    model: torch.nn.Module
    optimizer: object | None
    param_ids: frozenset


class ColossalAIAccelerator(Accelerator):
    """``accelerate.Accelerator`` whose training objects are boosted by ColossalAI.

    Args:
        colossalai_plugin: a :class:`~coati_hf.colossalai.ColossalAIPlugin` or a strategy
            name (``"zero2"``, ...). ``None`` reads ``$COATI_HF_STRATEGY``; with neither,
            construction fails (use a plain ``Accelerator`` for plain Accelerate).
        *args, **kwargs: passed to ``accelerate.Accelerator``. ``mixed_precision`` is the
            default for the plugin's precision; the plugin then owns precision (no
            autocast from Accelerate on boosted models).
    """

    def __init__(self, *args, colossalai_plugin: ColossalAIPlugin | str | None = None, **kwargs):
        plugin = resolve_plugin(None, colossalai_plugin)
        if plugin is None:
            raise ValueError(
                "ColossalAIAccelerator needs a strategy: pass colossalai_plugin=... or set COATI_HF_STRATEGY"
            )
        check_strategy_supported(plugin.strategy)
        super().__init__(*args, **kwargs)
        self._setup_colossalai(plugin)

    @classmethod
    def from_accelerator(cls, accelerator: Accelerator, colossalai_plugin: ColossalAIPlugin | str) -> "ColossalAIAccelerator":
        """Turn an already constructed ``Accelerator`` into a ``ColossalAIAccelerator`` in place.

        The Trainer builds its Accelerator from many of its arguments (dataloader and
        gradient-accumulation configuration, kwargs handlers); converting that object keeps
        all of it, and the process group it created, instead of rebuilding it.
        """
        plugin = resolve_plugin(None, colossalai_plugin)
        check_strategy_supported(plugin.strategy)
        if accelerator._models or accelerator._optimizers:
            raise RuntimeError("Convert the Accelerator before preparing any model or optimizer with it")
        accelerator.__class__ = cls
        accelerator._setup_colossalai(plugin)
        return accelerator

    # ---- set-up ------------------------------------------------------------------------------
    def _setup_colossalai(self, plugin: ColossalAIPlugin) -> None:
        from ..quiet import silence_colossalai_notices

        silence_colossalai_notices()  # before colossalai's imports warn about optional packages
        from colossalai.accelerator import get_accelerator, set_accelerator
        from colossalai.booster import Booster

        from .cpu_shim import apply_cpu_shim

        plugin = plugin.replace()
        if plugin.precision is None:
            plugin.precision = normalize_precision(self.mixed_precision)
        if plugin.is_gemini and plugin.precision == "fp32":
            logger.warning("Gemini keeps fp32 master weights and computes in bf16: using precision='bf16'")
            plugin.precision = "bf16"
        if plugin.max_norm is None:
            plugin.max_norm = 0.0

        _ensure_process_group(self.device)
        # colossalai picks CUDA whenever it exists; follow Accelerate's device instead.
        if self.device.type == "cpu" and get_accelerator().name != "cpu":
            set_accelerator("cpu")
        device_type = get_accelerator().name
        _check_precision_on_device(plugin.precision, device_type)
        if device_type == "cpu":
            apply_cpu_shim()

        self.colossalai_plugin = plugin
        self.booster = Booster(
            plugin=plugin.build(device_type=device_type),
            # TorchDDPPlugin leaves precision to the Booster; only fp16 has an implementation there
            # (bf16 under DDP is autocast, applied in _boost).
            mixed_precision="fp16" if plugin.strategy == "ddp" and plugin.precision == "fp16" else None,
        )
        self._boosted: list[_Boosted] = []

    # ---- preparation -------------------------------------------------------------------------
    def prepare(self, *args, device_placement=None):
        """Boost models with their optimizers; prepare everything else with Accelerate.

        Each optimizer is paired with the model (in this call, or prepared earlier) whose
        parameters it holds. Returns the objects in the order given.
        """
        from colossalai.interface import ModelWrapper, OptimizerWrapper

        if device_placement is None:
            device_placement = [None] * len(args)
        results = list(args)
        done = [False] * len(args)
        for k, obj in enumerate(args):
            if isinstance(obj, (ModelWrapper, OptimizerWrapper)):  # boosted earlier (e.g. a second Trainer.train())
                results[k], done[k] = self._register_boosted(obj), True

        models = [i for i, obj in enumerate(args) if isinstance(obj, torch.nn.Module) and not isinstance(obj, ModelWrapper)]
        optimizers = [i for i, obj in enumerate(args) if isinstance(obj, torch.optim.Optimizer)]
        for i in models:
            param_ids = {id(p) for p in args[i].parameters()}
            j = next((j for j in optimizers if not done[j] and _optimizer_param_ids(args[j]) & param_ids), None)
            boosted = self._boost(args[i], args[j] if j is not None else None)
            results[i], done[i] = boosted.model, True
            if j is not None:
                results[j], done[j] = boosted.optimizer, True
        for j in optimizers:
            if not done[j]:
                results[j], done[j] = self.prepare_optimizer(args[j]), True

        for k, obj in enumerate(args):
            if done[k]:
                continue
            if isinstance(obj, torch.utils.data.DataLoader):
                results[k] = self.prepare_data_loader(obj, device_placement=device_placement[k])
            elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
                results[k] = self.prepare_scheduler(obj)
        for obj in results:
            if any(obj is item for container in (self._dataloaders, self._schedulers) for item in container):
                obj._is_accelerate_prepared = True
        return tuple(results) if len(results) > 1 else results[0]

    def prepare_model(self, model: torch.nn.Module, device_placement=None, evaluation_mode: bool = False):
        """Boost ``model`` for training; with ``evaluation_mode=True`` only place it (Accelerate's way)."""
        if evaluation_mode:
            return super().prepare_model(model, device_placement=device_placement, evaluation_mode=True)
        return self._boost(model, None).model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, device_placement=None):
        """Boost an optimizer whose model was prepared earlier (in another ``prepare`` call)."""
        ids = _optimizer_param_ids(optimizer)
        record = next((r for r in self._boosted if r.optimizer is None and r.param_ids & ids), None)
        if record is None:
            raise ValueError(
                "ColossalAIAccelerator boosts an optimizer together with its model: prepare the model first, or pass "
                "both to the same prepare() call"
            )
        return self._boost(record.model, optimizer, record=record).optimizer

    def prepare_scheduler(self, scheduler):
        """Accelerate's ``AcceleratedScheduler``, tied to the boosted optimizer that drives it.

        A scheduler built on an Adam/AdamW that was swapped for HybridAdam keeps it: the two
        optimizers share their param groups, and torch's step-order check stays on the
        optimizer the scheduler patched.
        """
        from accelerate.scheduler import AcceleratedScheduler

        if getattr(scheduler, "_is_accelerate_prepared", False):
            if scheduler not in self._schedulers:
                self._schedulers.append(scheduler)
            return scheduler
        target = getattr(scheduler, "optimizer", None)
        optimizers = self._optimizers
        for opt in self._optimizers:
            if target is inner_optimizer(opt):
                optimizers = opt
                break
            if target is not None and target is getattr(inner_optimizer(opt), REPLACED_ATTRIBUTE, None):
                optimizers = opt
                break
        scheduler = AcceleratedScheduler(
            scheduler, optimizers, step_with_optimizer=self.step_scheduler_with_optimizer, split_batches=self.split_batches
        )
        self._schedulers.append(scheduler)
        return scheduler

    def _register_boosted(self, obj):
        """Track an object boosted before ``free_memory()`` (the Trainer frees at every ``train()``)."""
        from colossalai.interface import OptimizerWrapper

        model = getattr(obj, "_coati_hf_boosted_model", None) if isinstance(obj, OptimizerWrapper) else obj
        if model is None:
            raise ValueError("This optimizer was boosted outside ColossalAIAccelerator; prepare the raw optimizer instead")
        record = self._record_for_model(model)
        if record is None:
            record = _Boosted(model, None, frozenset(id(p) for p in model.parameters()))
            self._boosted.append(record)
            self._models.append(model)
        if isinstance(obj, OptimizerWrapper) and record.optimizer is not obj:
            record.optimizer = obj
            self._optimizers.append(obj)
        return obj

    def _boost(self, model, optimizer, record: _Boosted | None = None) -> _Boosted:
        from colossalai.interface import OptimizerWrapper

        plugin = self.colossalai_plugin
        if optimizer is not None and plugin.uses_hybrid_adam:
            optimizer = to_hybrid_adam(optimizer)  # shares the param groups of the optimizer it replaces
        if record is not None and plugin.strategy == "ddp":
            boosted_model, boosted_optimizer = record.model, OptimizerWrapper(optimizer)
        else:
            boosted_model, boosted_optimizer, *_ = self.booster.boost(model, optimizer)
        if record is None:
            if plugin.strategy == "ddp" and plugin.precision == "bf16":
                boosted_model.forward = _autocast_forward(boosted_model.forward, self.device.type, torch.bfloat16)
            record = _Boosted(boosted_model, None, frozenset(id(p) for p in boosted_model.parameters()))
            self._boosted.append(record)
            self._models.append(boosted_model)
        if boosted_optimizer is not None:
            record.optimizer = boosted_optimizer
            boosted_optimizer._coati_hf_boosted_model = boosted_model
            if plugin.is_gemini:
                install_gemini_overflow_check(boosted_optimizer)  # before the skip tracking reads its mixin
            track_skipped_steps(boosted_optimizer)
            self._optimizers.append(boosted_optimizer)
            if self._is_zero(boosted_optimizer):
                _zero_grad_clears_optimizer(boosted_model, boosted_optimizer)
        return record

    # ---- training step -----------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, optimizer=None, **kwargs):
        """``loss.backward()`` through the boosted optimizer that owns the loss's parameters.

        Divides by ``gradient_accumulation_steps`` like Accelerate. ``optimizer`` picks the
        boosted optimizer explicitly; otherwise it is the only one, or the one whose
        model's parameters appear in the loss's autograd graph.
        """
        loss = loss / self.gradient_accumulation_steps
        kwargs.pop("learning_rate", None)  # LOMO-only argument of Accelerate's backward
        optimizer = optimizer if optimizer is not None else self._optimizer_for_loss(loss)
        if optimizer is None:
            loss.backward(**kwargs)
        else:
            optimizer.backward(loss, **kwargs)

    def _optimizer_for_loss(self, loss):
        optimizers = [r.optimizer for r in self._boosted if r.optimizer is not None]
        if len(optimizers) <= 1:
            return optimizers[0] if optimizers else None
        in_graph = _parameter_ids_in_graph(loss)
        owners = [r.optimizer for r in self._boosted if r.optimizer is not None and r.param_ids & in_graph]
        if len(owners) > 1 and not self._is_ddp:
            raise ValueError(
                "This loss depends on the parameters of several ZeRO/Gemini-boosted models; call "
                "accelerator.backward(loss_i, optimizer=opt_i) once per model's own loss instead"
            )
        return owners[0] if owners else None

    def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
        """Total gradient norm of ``parameters`` (a tensor); clips to ``max_norm``.

        Under ZeRO the gradients are sharded inside the optimizer: the global norm is
        computed from the shards (one all-reduce) and ``max_norm`` is handed to the
        optimizer, which clips while stepping. ``max_norm=inf`` only measures.

        Under Gemini the norm comes from the chunk norms Gemini records while reducing, which
        it does only when it clips (the plugin's ``max_norm > 0``; ``max_norm`` here then
        replaces it). Without them, returns ``inf`` when a rank's gradients overflowed and
        ``None`` otherwise. Either way Gemini's own step skips non-finite gradients
        (:func:`~coati_hf.colossalai.stepping.install_gemini_overflow_check`). Collective
        under ZeRO and Gemini: call on every rank.
        """
        parameters = list(parameters)
        record = self._record_for_parameters(parameters)
        optimizer = record.optimizer if record is not None else None
        if optimizer is None:
            return super().clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        if self._is_ddp:
            if hasattr(optimizer, "scaler"):  # fp16 (TorchAMPOptimizer): unscale before measuring
                optimizer.unscale_grad()
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        if float(norm_type) != 2.0:
            raise ValueError("ColossalAI's sharded optimizers clip by the 2-norm only")
        clip = max_norm is not None and 0 < float(max_norm) < float("inf")
        if self._is_zero(optimizer):
            norm = zero_grad_norm(optimizer)
            if clip:
                optimizer._clip_grad_norm = float(max_norm)
            return torch.tensor(norm, device=self.device)
        if self.colossalai_plugin.is_gemini:
            if clip and optimizer.clipping_flag:
                optimizer.max_norm = float(max_norm)
            norm = gemini_grad_norm(optimizer)
            if norm is None and gemini_found_overflow(optimizer):
                norm = float("inf")
            return None if norm is None else torch.tensor(norm, device=self.device)
        return None  # hybrid parallel: clipped inside step() with the plugin's max_norm

    @contextlib.contextmanager
    def no_sync(self, model):
        """Skip gradient synchronisation for this micro-batch where the strategy allows it."""
        record = self._record_for_model(model)
        context = contextlib.nullcontext()
        if record is not None and self._is_ddp:
            context = _ddp_module(record.model).no_sync()
        elif record is not None and record.optimizer is not None and self.colossalai_plugin.strategy == "zero1":
            context = record.optimizer.no_sync()
        # ZeRO-2 shards gradients as they are produced (no local full gradient to accumulate
        # into), Gemini likewise: both reduce every micro-batch and accumulate the shards.
        with context:
            yield

    @property
    def optimizer_step_was_skipped(self):
        return any(getattr(opt, "step_was_skipped", False) for opt in self._optimizers)

    # ---- models out --------------------------------------------------------------------------
    def unwrap_model(self, model, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True):
        from colossalai.interface import ModelWrapper

        while isinstance(model, ModelWrapper):
            try:
                model = model.unwrap(unwrap_peft=False)
            except TypeError:  # wrappers whose unwrap() takes no argument
                model = model.unwrap()
        return super().unwrap_model(model, keep_fp32_wrapper=keep_fp32_wrapper, keep_torch_compile=keep_torch_compile)

    def get_state_dict(self, model, unwrap: bool = True):
        """Full (unsharded) weights. Collective under Gemini: call it on every rank."""
        record = self._record_for_model(model)
        if record is not None and self.colossalai_plugin.is_gemini:
            return record.model.state_dict(only_rank_0=False)
        return super().get_state_dict(model, unwrap=unwrap)

    # ---- checkpoints -------------------------------------------------------------------------
    def sync_master_weights(self, model=None) -> None:
        """Copy the model's working weights into ZeRO's fp32 master shards.

        ZeRO steps master copies of the weights and writes them back to the model. Weights
        loaded into a model *after* it was boosted (``load_state_dict`` on the unwrapped
        module) are therefore overwritten at the next step unless this is called. A no-op
        for DDP and for models without a ZeRO optimizer. ``model=None``: every boosted model.
        """
        for record in self._boosted:
            if model is not None and record is not self._record_for_model(model):
                continue
            if record.optimizer is not None and self._is_zero(record.optimizer):
                record.optimizer.update_master_params(record.model)

    def save_optimizer(self, optimizer, path: str) -> None:
        """Write the full (gathered) optimizer state to one file. Call on every rank; the file is
        complete on return (the Booster writes on rank 0 without a barrier)."""
        self.booster.save_optimizer(optimizer, path, shard=False)
        self.wait_for_everyone()

    def load_optimizer(self, optimizer, path: str) -> None:
        """Load a file written by :meth:`save_optimizer`; each rank keeps its own shard.

        Loading gives the stepping optimizer new param-group dicts; an Adam/AdamW it replaced
        (HybridAdam swap) shares them again, so schedulers built on it stay live.
        """
        self.booster.load_optimizer(optimizer, path)
        rebind_replaced_optimizer(inner_optimizer(optimizer))

    def save_state(self, output_dir: str | None = None, safe_serialization: bool = True, **save_model_func_kwargs):
        """Save boosted models and optimizers through the Booster, the rest as Accelerate does.

        Collective: call on every rank. Writes ``colossalai_model[_i].bin`` and
        ``colossalai_optimizer[_i].bin`` (full, unsharded states) plus Accelerate's
        scheduler, sampler and RNG files.
        """
        if output_dir is None:
            raise ValueError("ColossalAIAccelerator.save_state needs an output_dir")
        os.makedirs(output_dir, exist_ok=True)
        self.wait_for_everyone()
        for i, record in enumerate(self._boosted):
            self.booster.save_model(record.model, os.path.join(output_dir, _indexed(BOOSTED_MODEL_NAME, i, ".bin")))
            if record.optimizer is not None:
                self.save_optimizer(record.optimizer, os.path.join(output_dir, _indexed(BOOSTED_OPTIMIZER_NAME, i, ".bin")))
        plain_models = self._plain_models()
        save_location = save_accelerator_state(
            output_dir,
            [self.get_state_dict(m, unwrap=False) for m in plain_models],
            [],
            self._schedulers,
            self._dataloaders,
            self.state.process_index,
            self.step,
            self.scaler,
            save_on_each_node=self.project_configuration.save_on_each_node,
            safe_serialization=safe_serialization,
        )
        for i, obj in enumerate(self._custom_objects):
            from accelerate.checkpointing import save_custom_state

            save_custom_state(obj, output_dir, i, save_on_each_node=self.project_configuration.save_on_each_node)
        self.project_configuration.iteration += 1
        self.wait_for_everyone()
        return save_location

    def load_state(self, input_dir: str | None = None, load_kwargs: dict | None = None, **load_model_func_kwargs):
        """Load a folder written by :meth:`save_state`. Collective: call on every rank."""
        if input_dir is None or not os.path.isdir(input_dir):
            raise ValueError(f"Tried to find {input_dir} but folder does not exist")
        for i, record in enumerate(self._boosted):
            self.booster.load_model(record.model, os.path.join(input_dir, _indexed(BOOSTED_MODEL_NAME, i, ".bin")))
            if record.optimizer is not None:
                self.load_optimizer(record.optimizer, os.path.join(input_dir, _indexed(BOOSTED_OPTIMIZER_NAME, i, ".bin")))
        override = load_accelerator_state(
            input_dir,
            self._plain_models(),
            [],
            self._schedulers,
            self._dataloaders,
            self.state.process_index,
            self.scaler,
            load_model_func_kwargs.pop("map_location", "cpu"),
            load_kwargs,
            **load_model_func_kwargs,
        )
        if "step" in override:
            self.step = override["step"]
        for index, obj in enumerate(self._custom_objects):
            from accelerate.checkpointing import load_custom_state

            load_custom_state(obj, input_dir, index)
        self.wait_for_everyone()

    # ---- bookkeeping -------------------------------------------------------------------------
    def free_memory(self, *objects):
        self._boosted = []
        return super().free_memory(*objects)

    def is_boosted(self, model) -> bool:
        return self._record_for_model(model) is not None

    def _plain_models(self):
        boosted = {id(r.model) for r in self._boosted}
        return [m for m in self._models if id(m) not in boosted]

    def _record_for_model(self, model) -> _Boosted | None:
        for record in self._boosted:
            if model is record.model or model is self.unwrap_model(record.model):
                return record
        return None

    def _record_for_parameters(self, parameters) -> _Boosted | None:
        ids = {id(p) for p in parameters}
        return next((r for r in self._boosted if r.param_ids & ids), None)

    @staticmethod
    def _is_zero(optimizer) -> bool:
        from colossalai.zero import LowLevelZeroOptimizer

        return isinstance(optimizer, LowLevelZeroOptimizer)

    @property
    def _is_ddp(self) -> bool:
        return self.colossalai_plugin.strategy == "ddp"


# ---- helpers ------------------------------------------------------------------------------------


def _indexed(name: str, index: int, suffix: str) -> str:
    return f"{name}{suffix}" if index == 0 else f"{name}_{index}{suffix}"


def _optimizer_param_ids(optimizer) -> set:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _parameter_ids_in_graph(tensor: torch.Tensor) -> set:
    """Ids of the leaf tensors (parameters) that ``tensor``'s autograd graph reaches."""
    found, seen, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _check_precision_on_device(precision: str, device_type: str) -> None:
    """fp16 needs a dynamic loss scaler that works on the device: ColossalAI DDP's
    ``torch.cuda.amp.GradScaler`` disables itself without CUDA (overflows would reach the
    weights unnoticed), so fp16 on colossalai's CPU accelerator is refused."""
    if device_type == "cpu" and precision == "fp16":
        raise StrategyNotSupportedError(
            "fp16 training (dynamic loss scaling) needs a CUDA GPU; on CPU use precision 'bf16' or 'fp32'"
        )


def _ensure_process_group(device: torch.device) -> None:
    """ColossalAI's plugins need ``torch.distributed``; in a single process, make a 1-rank group.

    Under ``accelerate launch``/``torchrun`` Accelerate has already created the group;
    it is never created twice.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def _ddp_module(model):
    """The ``DistributedDataParallel`` inside a boosted DDP model (possibly under an fp16 wrapper)."""
    while not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _autocast_forward(forward, device_type: str, dtype: torch.dtype):
    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)

    return autocast_forward


def _zero_grad_clears_optimizer(model, optimizer) -> None:
    """Make ``model.zero_grad()`` also clear the gradient shards ZeRO keeps in its optimizer.

    transformers' Trainer zeroes gradients with ``model.zero_grad()``; under ZeRO the
    reduced gradients live in the optimizer's gradient store, which only
    ``optimizer.zero_grad()`` clears. Without this they would add up across steps.
    """
    module_zero_grad = model.zero_grad

    def zero_grad(set_to_none: bool = True):
        optimizer.zero_grad(set_to_none=set_to_none)
        module_zero_grad(set_to_none=set_to_none)

    model.zero_grad = zero_grad

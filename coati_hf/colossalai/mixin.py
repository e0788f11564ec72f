"""Make any ``transformers.Trainer`` subclass train through ColossalAI.

Put the mixin first in the bases -- that is the whole change::

    class MyDPOTrainer(ColossalAIMixin, trl.DPOTrainer):
        pass

    trainer = MyDPOTrainer(model=..., args=..., ...)   # + optionally colossalai_plugin=ColossalAIPlugin(...)

The strategy comes from, first match wins: the ``colossalai_plugin=`` keyword; the
``colossalai_strategy`` field of the trainer's config (our ``SFTConfig``, ``RewardConfig``,
``PPOConfig``); ``$COATI_HF_STRATEGY``. With none of them the mixin changes nothing and the
trainer runs on plain Accelerate.

What the mixin changes when a strategy is selected:

- ``create_accelerator_and_postprocess``: the Trainer's Accelerator (built from its
  arguments as usual) becomes a :class:`ColossalAIAccelerator`. Knobs left ``None`` in
  the plugin come from the arguments: precision from ``bf16``/``fp16``, clipping from
  ``max_grad_norm``, Gemini's gradient accumulation from ``gradient_accumulation_steps``,
  DDP's ``find_unused_parameters`` from ``ddp_find_unused_parameters``.
- ``create_scheduler``: the LR scheduler drives the inner torch optimizer (a boosted
  optimizer is not a ``torch.optim.Optimizer``). A scheduler passed in ``optimizers=`` and
  built on an AdamW that ``zero2_cpu``/Gemini swap for HybridAdam drives it too (the two share
  their param groups, :mod:`~coati_hf.colossalai.optimizers`).
- ``_save_optimizer_and_scheduler`` / ``_load_optimizer_and_scheduler``: the optimizer
  state is gathered on every rank and written once by rank 0 (``optimizer.pt``, the
  Trainer's own file name); on resume every rank takes its shard. Loading first re-syncs
  ZeRO's fp32 master weights from the model, so weights loaded into the boosted model
  just before (a trainer's own resume code) are not undone by the next step.
- ``_save``: the model is exported in Hub format (``save_pretrained`` on rank 0, full
  weights, gathered first under Gemini), then all ranks wait at a barrier.

Gradient accumulation, logging, evaluation and ``resume_from_checkpoint`` go through the
Trainer's own code paths unchanged.
"""

from __future__ import annotations

import os

from .plugin import ColossalAIPlugin, check_strategy_supported, resolve_plugin

# transformers' checkpoint file names (kept identical so Trainer's resume logic finds them)
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"


class ColossalAIMixin:
    """Trainer mixin: route training through :class:`~coati_hf.colossalai.ColossalAIAccelerator`.

    Args:
        colossalai_plugin: optional :class:`ColossalAIPlugin` or strategy name; wins over
            ``args.colossalai_strategy`` and ``$COATI_HF_STRATEGY``.
    """

    def __init__(self, *args, colossalai_plugin: ColossalAIPlugin | str | None = None, **kwargs):
        # Read by create_accelerator_and_postprocess, which Trainer.__init__ calls.
        self._colossalai_plugin_request = colossalai_plugin
        self.colossalai_plugin: ColossalAIPlugin | None = None
        super().__init__(*args, **kwargs)

    @property
    def colossalai_enabled(self) -> bool:
        return getattr(self, "colossalai_plugin", None) is not None

    # ---- accelerator -------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self):
        plugin = resolve_plugin(self.args, getattr(self, "_colossalai_plugin_request", None))
        if plugin is None:
            self.colossalai_plugin = None
            return super().create_accelerator_and_postprocess()
        check_strategy_supported(plugin.strategy)  # before any process group or model work
        plugin = self._colossalai_plugin_from_args(plugin)
        result = super().create_accelerator_and_postprocess()
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                f"ColossalAI strategy '{plugin.strategy}' replaces DeepSpeed/FSDP: remove the deepspeed/fsdp settings "
                "(or the colossalai strategy)"
            )
        from .accelerator import ColossalAIAccelerator

        self.accelerator = ColossalAIAccelerator.from_accelerator(self.accelerator, plugin)
        self.colossalai_plugin = self.accelerator.colossalai_plugin
        return result

    def _colossalai_plugin_from_args(self, plugin: ColossalAIPlugin) -> ColossalAIPlugin:
        """Fill the plugin's unset knobs from the TrainingArguments."""
        args = self.args
        changes = {}
        if plugin.precision is None:
            changes["precision"] = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"
        if plugin.max_norm is None:
            changes["max_norm"] = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
        if plugin.enable_gradient_accumulation is None:
            changes["enable_gradient_accumulation"] = getattr(args, "gradient_accumulation_steps", 1) > 1
        if plugin.strategy == "ddp" and getattr(args, "ddp_find_unused_parameters", None) is not None:
            changes["find_unused_parameters"] = bool(args.ddp_find_unused_parameters)
        return plugin.replace(**changes)

    # ---- training step -----------------------------------------------------------------------
    def training_step(self, *args, **kwargs):
        """The Trainer's step, returning a plain tensor. Under Gemini the loss is a ColoTensor,
        whose in-place operators are out-of-place: the Trainer's running loss
        (``tr_loss += step``, then ``tr_loss -= tr_loss`` at each log) would never be reset, and
        every logged loss would be the sum of all the steps before it."""
        import torch

        loss = super().training_step(*args, **kwargs)
        if self.colossalai_enabled and isinstance(loss, torch.Tensor) and type(loss) is not torch.Tensor:
            loss = loss.data  # ColoTensor's .data is a plain tensor (the same storage)
        return loss

    # ---- optimizer and scheduler -------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if optimizer is None and self.colossalai_enabled and self.optimizer is not None:
            from .accelerator import inner_optimizer

            optimizer = inner_optimizer(self.optimizer)
        return super().create_scheduler(num_training_steps=num_training_steps, optimizer=optimizer)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.colossalai_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        import torch

        # Collective: the sharded states are gathered from every rank, rank 0 writes.
        self.accelerator.save_optimizer(self.optimizer, os.path.join(output_dir, OPTIMIZER_NAME))
        if self.args.should_save and self.lr_scheduler is not None:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.colossalai_enabled or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        import torch

        optimizer_file = os.path.join(checkpoint, OPTIMIZER_NAME)
        scheduler_file = os.path.join(checkpoint, SCHEDULER_NAME)
        # Weights may have been loaded into the already boosted model just before (a custom
        # resume): make ZeRO's master copy follow them, or the next step would undo the load.
        self.accelerator.sync_master_weights()
        if not (os.path.isfile(optimizer_file) and os.path.isfile(scheduler_file)):
            return
        self.accelerator.load_optimizer(self.optimizer, optimizer_file)
        self.lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))

    # ---- export ------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Hub-format export: rank 0 ``save_pretrained`` of the full weights, then a barrier."""
        if not self.colossalai_enabled:
            return super()._save(output_dir, state_dict=state_dict)
        if state_dict is None and self.colossalai_plugin.is_gemini and self.accelerator.is_boosted(self.model_wrapped):
            state_dict = self.accelerator.get_state_dict(self.model_wrapped)  # collective gather
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            self.accelerator.wait_for_everyone()

"""What every coati_hf config takes from the machine it runs on.

:class:`RunDefaultsMixin` is a base of :class:`coati_hf.trainer_common.CoatiArgumentsMixin`, so
``SFTConfig``, ``RewardConfig`` and ``PPOConfig`` apply these rules when they are built, before
transformers sets up its device (which happens once, on first use, and decides the world size):

- **No accelerator** (no CUDA, XPU, MPS, NPU, ... device; :func:`has_accelerator`):
  ``use_cpu=True``. Under ``accelerate launch --multi_gpu --num_processes N``, ``torchrun`` or
  ``mpirun`` on such a machine, transformers then joins every process into one gloo group
  (``MULTI_CPU``, world size N); without it each process trains alone, believes it is rank 0 of
  1 and writes the same output folder. On a single process it changes nothing, except that
  ``bf16=True`` is then accepted on a CPU.
- **No accelerator**: ``dataloader_pin_memory=False``. Pinned memory only helps copies to an
  accelerator; with none, torch warns on every DataLoader that it will not pin.
- **Activation checkpointing**: TRL's configs switch it on by default through the name
  ``gradient_checkpointing``, which transformers 5 deprecated in favour of
  ``activation_checkpointing`` (a FutureWarning on every config built). Here the same default
  (on) is given through the new name; whichever name the user sets wins, and setting the old
  name still warns, as transformers intends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def has_accelerator() -> bool:
    """True when torch sees a device to train on besides the CPU (CUDA, ROCm, XPU, MPS, NPU, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool(
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or (mps is not None and mps.is_available())
    )


def apply_run_defaults(args) -> None:
    """Apply the module's rules to a ``TrainingArguments`` whose ``__post_init__`` has not run yet."""
    if getattr(args, "activation_checkpointing", None) is None and getattr(args, "gradient_checkpointing", None) is None:
        args.activation_checkpointing = True
    if not has_accelerator():
        if not args.use_cpu:
            logger.debug("No accelerator found: use_cpu=True, so several processes form one gloo (MULTI_CPU) group.")
        args.use_cpu = True
        args.dataloader_pin_memory = False


@dataclass
class RunDefaultsMixin:
    """Config mixin applying :func:`apply_run_defaults` before the rest of ``__post_init__``."""

    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing` (transformers 5). Left unset with "
            "`activation_checkpointing` unset too, activation checkpointing is on, as in TRL."
        },
    )

    def __post_init__(self):
        apply_run_defaults(self)
        super().__post_init__()

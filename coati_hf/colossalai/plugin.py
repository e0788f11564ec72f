"""Which ColossalAI strategy to train with, and how to switch it on.

A strategy is named the way Coati's ``--plugin``/``--strategy`` flag names it:

- ``ddp``: ``TorchDDPPlugin``, plain data parallel (the reference). CPU and CUDA.
- ``zero1``: ``LowLevelZeroPlugin(stage=1)``, optimizer states sharded. CPU and CUDA.
- ``zero2``: ``LowLevelZeroPlugin(stage=2)``, optimizer states and gradients sharded. CPU and CUDA.
- ``zero2_cpu``: ``zero2`` with optimizer states offloaded to host memory and stepped
  there by ``HybridAdam`` (CPUAdam kernel). CUDA only.
- ``gemini``: ``GeminiPlugin(placement_policy="static")``, ZeRO-3 over parameter chunks. CUDA only.
- ``gemini_auto``: ``GeminiPlugin(placement_policy="auto")``, chunks move between GPU and
  CPU as memory allows. CUDA only.
- ``3d``: ``HybridParallelPlugin``, tensor x pipeline x data parallel. CUDA only, and only
  with a transformers that ``colossalai.shardformer`` supports (4.51; not transformers 5).

Three ways to select one, first match wins (see :func:`resolve_strategy`):

1. ``args.colossalai_strategy`` -- a field of ``SFTConfig``/``RewardConfig``/``PPOConfig``;
2. the environment variable ``COATI_HF_STRATEGY`` (so an ``accelerate launch`` command
   line can set it for any trainer that uses :class:`~coati_hf.colossalai.ColossalAIMixin`);
3. nothing: plain Accelerate, untouched.

This module imports neither torch nor colossalai at import time; ``build`` imports
colossalai when the plugin object is needed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("ddp", "zero1", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")
#: Strategies that cannot run without a CUDA GPU (with the reason shown to the user).
CUDA_ONLY_STRATEGIES = {
    "zero2_cpu": "offloads optimizer states from GPU to host memory and steps them with HybridAdam's CPUAdam kernel",
    "gemini": "manages parameters in CUDA chunks and needs HybridAdam",
    "gemini_auto": "manages parameters in CUDA chunks and needs HybridAdam",
    "3d": "shards layers with colossalai.shardformer across GPUs",
}
#: Strategies that shard with ``LowLevelZeroPlugin`` (CPU-capable).
ZERO_STRATEGIES = ("zero1", "zero2", "zero2_cpu")
GEMINI_STRATEGIES = ("gemini", "gemini_auto")
PRECISIONS = ("fp32", "bf16", "fp16")

STRATEGY_ENV_VAR = "COATI_HF_STRATEGY"
INSTALL_HINT = "pip install --no-deps colossalai==0.5.0 einops galore-torch bitsandbytes"
# Strategies that work on any machine; named in every "not supported here" message.
CPU_FALLBACK = "zero2"


class StrategyNotSupportedError(RuntimeError):
    """The selected strategy cannot run on this machine or software stack."""


@dataclass
class ColossalAIPlugin:
    """A ColossalAI training strategy and its knobs.

    ``None`` in ``precision`` and ``max_norm`` means "take it from the run": the
    accelerator reads its ``mixed_precision`` (``TrainingArguments.bf16``/``fp16``) and
    the Trainer mixin reads ``TrainingArguments.max_grad_norm``.
    """

    strategy: str = field(default="zero2", metadata={"help": f"One of {', '.join(STRATEGIES)}."})
    precision: str | None = field(
        default=None,
        metadata={"help": "fp32, bf16 or fp16. None: from the accelerator's mixed_precision (TrainingArguments.bf16/fp16)."},
    )
    max_norm: float | None = field(
        default=None,
        metadata={"help": "Gradient clipping norm applied inside the sharded optimizer (0 = off). None: from max_grad_norm."},
    )
    initial_scale: float = field(default=2**16, metadata={"help": "Initial dynamic loss scale (fp16 only); Coati uses 2**16."})

    # ---- zero1 / zero2 / zero2_cpu (LowLevelZeroPlugin)
    reduce_bucket_size_in_m: int = field(default=12, metadata={"help": "Gradient reduce bucket size, in millions of elements."})
    overlap_communication: bool | None = field(
        default=None, metadata={"help": "Overlap gradient reduction with backward (CUDA streams). None: on for CUDA, off on CPU."}
    )
    offload: bool | None = field(
        default=None, metadata={"help": "Offload optimizer states to host memory. None: only for zero2_cpu."}
    )
    hybrid_adam: bool | None = field(
        default=None,
        metadata={"help": "Swap a torch Adam/AdamW for colossalai's HybridAdam at prepare time. None: for zero2_cpu and gemini*."},
    )

    # ---- ddp (TorchDDPPlugin)
    find_unused_parameters: bool = field(default=False, metadata={"help": "DDP find_unused_parameters."})
    bucket_cap_mb: int = field(default=25, metadata={"help": "DDP bucket size in MB."})

    # ---- gemini / gemini_auto (GeminiPlugin)
    placement_policy: str | None = field(
        default=None, metadata={"help": "Gemini placement policy: 'static' or 'auto'. None: from the strategy name."}
    )
    offload_optim_frac: float = field(default=0.0, metadata={"help": "Static placement: fraction of optimizer states on CPU."})
    offload_param_frac: float = field(default=0.0, metadata={"help": "Static placement: fraction of parameters on CPU."})
    enable_gradient_accumulation: bool | None = field(
        default=None, metadata={"help": "Gemini gradient accumulation. None: on when gradient_accumulation_steps > 1."}
    )

    # ---- 3d (HybridParallelPlugin)
    tp_size: int = field(default=1, metadata={"help": "Tensor parallel size (3d)."})
    pp_size: int = field(default=1, metadata={"help": "Pipeline parallel size (3d)."})
    sp_size: int | None = field(default=None, metadata={"help": "Sequence parallel size (3d)."})
    zero_stage: int = field(default=0, metadata={"help": "ZeRO stage inside the 3d plugin (0, 1 or 2)."})
    microbatch_size: int | None = field(default=None, metadata={"help": "Pipeline micro-batch size (3d)."})

    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Passed verbatim to the ColossalAI plugin constructor (overrides the above)."}
    )

    def __post_init__(self):
        self.strategy = normalize_strategy(self.strategy)
        if self.strategy is None:
            raise ValueError(f"ColossalAIPlugin needs a strategy, one of {STRATEGIES}")
        if self.precision is not None:
            self.precision = normalize_precision(self.precision)
            if self.strategy in GEMINI_STRATEGIES and self.precision == "fp32":
                raise ValueError("Gemini trains in bf16 or fp16 (fp32 master weights); set precision='bf16'")

    # ---- derived settings -------------------------------------------------------------
    @property
    def is_zero(self) -> bool:
        return self.strategy in ZERO_STRATEGIES

    @property
    def is_gemini(self) -> bool:
        return self.strategy in GEMINI_STRATEGIES

    @property
    def zero_stage_of_strategy(self) -> int:
        """ZeRO stage of a ``LowLevelZeroPlugin`` strategy (0 for the others)."""
        return {"zero1": 1, "zero2": 2, "zero2_cpu": 2}.get(self.strategy, 0)

    @property
    def uses_hybrid_adam(self) -> bool:
        if self.hybrid_adam is not None:
            return self.hybrid_adam or self.is_gemini  # Gemini accepts nothing else
        return self.strategy in ("zero2_cpu", "gemini", "gemini_auto")

    def replace(self, **changes) -> "ColossalAIPlugin":
        return dataclasses.replace(self, **changes)

    # ---- construction of the colossalai plugin ------------------------------------------
    def build(self, device_type: str = "cuda"):
        """The ``colossalai.booster.plugin`` object for this strategy.

        Needs an initialized ``torch.distributed`` process group. ``device_type`` is the
        type of colossalai's accelerator ("cpu" or "cuda"); it only changes defaults that
        differ between the two (communication overlap needs CUDA streams).
        """
        require_colossalai()
        precision = self.precision or "fp32"
        max_norm = float(self.max_norm or 0.0)
        on_cpu = device_type == "cpu"
        if self.strategy == "ddp":
            from colossalai.booster.plugin import TorchDDPPlugin

            kwargs = dict(find_unused_parameters=self.find_unused_parameters, bucket_cap_mb=self.bucket_cap_mb)
            return TorchDDPPlugin(**{**kwargs, **self.extra})
        if self.is_zero:
            from colossalai.booster.plugin import LowLevelZeroPlugin

            overlap = self.overlap_communication
            if overlap is None or on_cpu:
                overlap = not on_cpu
            offload = self.offload if self.offload is not None else self.strategy == "zero2_cpu"
            kwargs = dict(
                stage=self.zero_stage_of_strategy,
                precision=precision,
                initial_scale=self.initial_scale,
                max_norm=max_norm,
                reduce_bucket_size_in_m=self.reduce_bucket_size_in_m,
                overlap_communication=overlap,
                cpu_offload=offload,
            )
            return LowLevelZeroPlugin(**{**kwargs, **self.extra})
        if self.is_gemini:
            from colossalai.booster.plugin import GeminiPlugin

            policy = self.placement_policy or ("auto" if self.strategy == "gemini_auto" else "static")
            kwargs = dict(
                precision=precision if precision != "fp32" else "bf16",
                placement_policy=policy,
                initial_scale=self.initial_scale,
                max_norm=max_norm,
                enable_gradient_accumulation=bool(self.enable_gradient_accumulation),
            )
            if policy == "static":
                kwargs.update(offload_optim_frac=self.offload_optim_frac, offload_param_frac=self.offload_param_frac)
            return GeminiPlugin(**{**kwargs, **self.extra})
        if self.strategy == "3d":
            from colossalai.booster.plugin import HybridParallelPlugin

            kwargs = dict(
                tp_size=self.tp_size,
                pp_size=self.pp_size,
                zero_stage=self.zero_stage,
                precision=precision,
                initial_scale=self.initial_scale,
                max_norm=max_norm,
                parallel_output=False,
            )
            if self.sp_size is not None:
                kwargs["sp_size"] = self.sp_size
            if self.microbatch_size is not None:
                kwargs["microbatch_size"] = self.microbatch_size
            return HybridParallelPlugin(**{**kwargs, **self.extra})
        raise AssertionError(self.strategy)  # unreachable: validated in __post_init__


# ---- selection ------------------------------------------------------------------------------


def normalize_strategy(name) -> str | None:
    """``"ZeRO2"`` -> ``"zero2"``; ``None``/``""``/``"none"``/``"no"`` -> ``None``; unknown -> ValueError."""
    if name is None:
        return None
    if isinstance(name, ColossalAIPlugin):
        return name.strategy
    key = str(name).strip().lower().replace("-", "_")
    if key in ("", "none", "no", "off", "accelerate"):
        return None
    if key not in STRATEGIES:
        raise ValueError(f"Unknown ColossalAI strategy {name!r}; choose one of {', '.join(STRATEGIES)} (or None)")
    return key


def normalize_precision(precision: str | None) -> str:
    key = {"no": "fp32", "none": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(precision).lower(), str(precision).lower()
    )
    if key not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}")
    return key


def resolve_strategy(args=None) -> str | None:
    """The strategy a run asks for: ``args.colossalai_strategy``, else ``$COATI_HF_STRATEGY``, else ``None``.

    ``None`` means plain Accelerate. A :class:`ColossalAIPlugin` in
    ``args.colossalai_strategy`` counts as its strategy.
    """
    from_args = getattr(args, "colossalai_strategy", None) if args is not None else None
    if from_args is not None and (not isinstance(from_args, str) or from_args.strip()):
        return normalize_strategy(from_args)
    try:
        return normalize_strategy(os.environ.get(STRATEGY_ENV_VAR))
    except ValueError as err:
        raise ValueError(f"{err} -- read from the environment variable {STRATEGY_ENV_VAR}") from None


def resolve_plugin(args=None, plugin: ColossalAIPlugin | str | None = None) -> ColossalAIPlugin | None:
    """A :class:`ColossalAIPlugin` for this run, or ``None`` for plain Accelerate.

    ``plugin`` (an explicit object or name) wins over ``args.colossalai_strategy``, which
    wins over ``$COATI_HF_STRATEGY``. A plugin found in ``args`` is copied, never mutated.
    """
    if isinstance(plugin, ColossalAIPlugin):
        return plugin.replace()
    if plugin is not None:
        strategy = normalize_strategy(plugin)
        return ColossalAIPlugin(strategy=strategy) if strategy else None
    from_args = getattr(args, "colossalai_strategy", None) if args is not None else None
    if isinstance(from_args, ColossalAIPlugin):
        return from_args.replace()
    strategy = resolve_strategy(args)
    return ColossalAIPlugin(strategy=strategy) if strategy else None


# ---- capability checks ----------------------------------------------------------------------


def colossalai_available() -> bool:
    return importlib.util.find_spec("colossalai") is not None


def require_colossalai() -> None:
    if not colossalai_available():
        raise ImportError(
            "The ColossalAI backend needs the 'colossalai' package, installed without its dependencies "
            f"(its pins conflict with trl/transformers 5): {INSTALL_HINT}"
        )


def check_strategy_supported(strategy, *, cuda_available: bool | None = None) -> str:
    """Fail fast if ``strategy`` cannot run here; return its normalized name.

    Raises ``ValueError`` for an unknown name, ``ImportError`` (with the install command)
    when colossalai is missing, and :class:`StrategyNotSupportedError` (a
    ``RuntimeError``) for a CUDA-only strategy on a machine without CUDA, naming a
    strategy that will work. ``cuda_available`` overrides detection (tests).
    """
    name = normalize_strategy(strategy)
    if name is None:
        raise ValueError(f"No ColossalAI strategy given; choose one of {', '.join(STRATEGIES)}")
    require_colossalai()
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if name in CUDA_ONLY_STRATEGIES and not cuda_available:
        raise StrategyNotSupportedError(
            f"ColossalAI strategy '{name}' needs a CUDA GPU (it {CUDA_ONLY_STRATEGIES[name]}), and this machine has "
            f"none. On CPU use strategy '{CPU_FALLBACK}' (ZeRO-2: optimizer states and gradients sharded across ranks) "
            "or 'ddp'."
        )
    if name == "3d":
        _check_shardformer_importable()
    return name


#: The ColossalAI strategy that shards as a DeepSpeed ZeRO stage does.
DEEPSPEED_COUNTERPARTS = {0: "ddp", 1: "zero1", 2: "zero2", 3: "gemini"}


def refuse_deepspeed(args, trainer: str = "PPOTrainer") -> None:
    """Raise one clear ``ValueError`` when ``args`` runs under DeepSpeed, naming the ColossalAI
    strategy that shards the same way.

    DeepSpeed is switched on through ``TrainingArguments`` (``--deepspeed``, or an accelerate
    config with ``distributed_type: DEEPSPEED``, which sets ``ACCELERATE_USE_DEEPSPEED``): both
    leave ``args.deepspeed_plugin`` set when the arguments are built, before any model work.
    PPO cannot follow DeepSpeed's engine: it steps the optimizer inside ``backward`` and divides
    by its own accumulation count (PPO takes exactly one step per minibatch and decides whether to
    take it), and ZeRO-3's empty parameter shards break folding LoRA into the weights for
    generation and the lean-MLP probe.
    """
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None and not getattr(args, "deepspeed", None):
        return
    stage = getattr(plugin, "zero_stage", None)
    strategy = DEEPSPEED_COUNTERPARTS.get(stage, "zero2")
    described = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed"
    raise ValueError(
        f"{trainer} does not run under DeepSpeed (this run asks for {described}: --deepspeed or an accelerate config "
        "with distributed_type: DEEPSPEED). DeepSpeed steps the optimizer inside backward() and divides by its own "
        "accumulation count, and ZeRO-3 leaves empty parameter shards; PPO needs neither. Use the ColossalAI strategy "
        f"that does the same: --colossalai_strategy {strategy} (or colossalai_strategy: {strategy} in the recipe), "
        "launched without the DeepSpeed config (e.g. --accelerate_config multi_gpu). SFT and reward-model training "
        "keep DeepSpeed."
    )


def _check_shardformer_importable() -> None:
    """The 3d strategy rewrites models with colossalai.shardformer, written against transformers 4.51."""
    try:
        importlib.import_module("colossalai.shardformer.modeling.llama")
    except ImportError as err:
        import transformers

        raise StrategyNotSupportedError(
            f"ColossalAI strategy '3d' (tensor/pipeline parallel) needs colossalai.shardformer, which does not import "
            f"with transformers {transformers.__version__} ({err}). Use '{CPU_FALLBACK}' or 'gemini' instead, or run 3d "
            "in a separate environment with transformers==4.51.3."
        ) from err

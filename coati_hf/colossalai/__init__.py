"""ColossalAI backend for Accelerate and any ``transformers.Trainer``.

- :class:`ColossalAIPlugin`: the strategy (``ddp``, ``zero1``, ``zero2``, ``zero2_cpu``,
  ``gemini``, ``gemini_auto``, ``3d``) and its knobs.
- :class:`ColossalAIAccelerator`: an ``accelerate.Accelerator`` that routes ``prepare``,
  ``backward``, clipping, unwrapping and state save/load to ``colossalai.booster.Booster``.
- :class:`ColossalAIMixin`: ``class MyTrainer(ColossalAIMixin, SomeTrainer)`` trains
  through it when a strategy is selected (``args.colossalai_strategy``, else
  ``$COATI_HF_STRATEGY``), and changes nothing otherwise.
- :func:`resolve_strategy`, :func:`check_strategy_supported`: selection and fail-fast checks.
- :func:`apply_cpu_shim`: what colossalai 0.5.0 needs to run ZeRO on its CPU accelerator.
- :mod:`.stepping` (``clip_and_step``): one optimizer step and the non-finite-gradient contract,
  for plain Accelerate and every strategy; :mod:`.optimizers`: the optimizer that actually steps
  and the HybridAdam swap that keeps learning-rate schedulers alive.

Nothing here imports torch or colossalai until it is used.
"""

from __future__ import annotations

from coati_hf._lazy import install_lazy_attributes

_LAZY_ATTRS = {
    "ColossalAIPlugin": ".plugin",
    "STRATEGIES": ".plugin",
    "CUDA_ONLY_STRATEGIES": ".plugin",
    "STRATEGY_ENV_VAR": ".plugin",
    "StrategyNotSupportedError": ".plugin",
    "resolve_strategy": ".plugin",
    "resolve_plugin": ".plugin",
    "check_strategy_supported": ".plugin",
    "ColossalAIAccelerator": ".accelerator",
    "inner_optimizer": ".accelerator",
    "ColossalAIMixin": ".mixin",
    "apply_cpu_shim": ".cpu_shim",
}


install_lazy_attributes(globals(), _LAZY_ATTRS)

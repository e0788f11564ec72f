"""Smaller models for inference: int8 on the CPU, 8-bit / 4-bit through bitsandbytes on a GPU.

Modes (``--quantize``):

- ``int8``: each ``nn.Linear`` weight stored as int8 with one float scale per output row
  (symmetric, ``scale = max|row| / 127``); activations stay in floating point. The matmul
  reads the int8 weight directly (``torch._weight_int8pack_mm``, the CPU kernel PyTorch ships
  for weight-only int8) or, where that kernel is missing, through the dequantized weight.
- ``int8-dynamic``: PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``)
  of the ``nn.Linear`` layers: int8 weights with one scale per tensor, and activations
  quantized on the fly with one scale per tensor. Measured on SmolLM2-135M (whose activations
  have outliers ~40x the typical value at the first token): next-token distributions
  2.1 nats (KL) from float32's on average and 39% of greedy choices changed, against 0.006
  nats and 98% unchanged for ``int8``. Kept for models without such outliers.
- ``8bit`` / ``4bit``: bitsandbytes' LLM.int8() and NF4 (compute in bfloat16 where the GPU
  supports it), applied while loading. They need a CUDA GPU and the ``bitsandbytes`` package.

``int8`` and ``int8-dynamic`` run on the CPU; the model is loaded in float32 first. An output
layer that shares its weight with the input embedding (tied embeddings, as SmolLM2) stays in
float32: quantizing it would store a second copy of the embedding and cost memory instead of
saving it. A mode the machine cannot run is a :class:`~coati_hf.chat.errors.ChatError` raised
before any weight is read.
"""

from __future__ import annotations

from .errors import ChatError

import torch

QUANTIZE_MODES = ("int8", "int8-dynamic", "8bit", "4bit")
CPU_MODES = ("int8", "int8-dynamic")
BITSANDBYTES_MODES = ("8bit", "4bit")


def check_quantize_mode(mode: str | None) -> None:
    """Raise :class:`ChatError` if ``mode`` is unknown or cannot run on this machine."""
    if mode is None or mode == "none":
        return
    if mode not in QUANTIZE_MODES:
        raise ChatError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(QUANTIZE_MODES)}")
    if mode == "int8":
        return
    if mode == "int8-dynamic":
        engines = torch.backends.quantized.supported_engines
        if not any(engine in engines for engine in ("x86", "fbgemm", "qnnpack", "onednn")):
            raise ChatError(f"--quantize int8-dynamic needs a quantized CPU engine ({engines}); use --quantize int8")
        return
    if not torch.cuda.is_available():
        raise ChatError(
            f"--quantize {mode} runs on a CUDA GPU (bitsandbytes) and this machine has none; "
            "use --quantize int8 on the CPU, or no --quantize"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ChatError(f"--quantize {mode} needs bitsandbytes: pip install bitsandbytes") from None


def bitsandbytes_config(mode: str):
    """The ``BitsAndBytesConfig`` for ``"8bit"`` or ``"4bit"`` (NF4, double quantization)."""
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "4bit":
        compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    raise ValueError(f"not a bitsandbytes mode: {mode!r}")


def _tied_output_layer(model):
    """The output ``Linear`` if it shares its weight with the input embedding, else None."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if output is None or inputs is None:
        return None
    return output if output.weight is inputs.weight else None


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` with an int8 weight and one float32 scale per output row (mode ``int8``)."""

    def __init__(self, linear: torch.nn.Linear, use_kernel: bool = True):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        self.use_kernel = use_kernel and _int8_kernel_works()

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.device.type == "cpu":
            flat = x.reshape(-1, self.in_features).contiguous()
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale.to(x.dtype)).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, per-row scale"


_KERNEL_WORKS: bool | None = None


def _int8_kernel_works() -> bool:
    """Whether this PyTorch has a working ``_weight_int8pack_mm`` on the CPU (checked once)."""
    global _KERNEL_WORKS
    if _KERNEL_WORKS is None:
        try:
            x, w, s = torch.ones(2, 64), torch.ones(8, 64, dtype=torch.int8), torch.full((8,), 0.5)
            _KERNEL_WORKS = bool(torch.allclose(torch._weight_int8pack_mm(x, w, s), torch.full((2, 8), 32.0)))
        except (AttributeError, RuntimeError, NotImplementedError):
            _KERNEL_WORKS = False
    return _KERNEL_WORKS


def _linear_layers(model) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """``(parent, attribute, layer)`` for every ``nn.Linear`` but a tied output layer."""
    tied = _tied_output_layer(model)
    found = []
    for parent in model.modules():
        for attribute, child in parent.named_children():
            if type(child) is torch.nn.Linear and child is not tied:
                found.append((parent, attribute, child))
    return found


def quantize_int8(model, use_kernel: bool = True):
    """Mode ``int8`` (module rules): every ``nn.Linear`` but a tied output layer becomes an
    :class:`Int8Linear`. Returns ``model`` (modified in place) in eval mode on the CPU."""
    model = model.to("cpu", dtype=torch.float32).eval()
    layers = _linear_layers(model)
    if not layers:
        raise ChatError("--quantize int8 found no Linear layer to quantize in this model")
    for parent, attribute, layer in layers:
        setattr(parent, attribute, Int8Linear(layer, use_kernel=use_kernel))
    return model


def quantize_int8_dynamic(model):
    """Mode ``int8-dynamic`` (module rules): ``torch.ao.quantization.quantize_dynamic`` of every
    ``nn.Linear`` but a tied output layer. Returns ``model`` (modified in place) in eval mode."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    model = model.to("cpu", dtype=torch.float32).eval()
    tied = _tied_output_layer(model)
    names = {
        name: default_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module is not tied
    }
    if not names:
        raise ChatError("--quantize int8-dynamic found no Linear layer to quantize in this model")
    with warnings.catch_warnings():  # torch.ao's notice that eager quantization moves to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, qconfig_spec=names, dtype=torch.qint8, inplace=True)


def weight_bytes(model) -> int:
    """Bytes held by the model's weights and buffers, each storage counted once (tied weights
    once), quantized weights at their packed size."""
    seen: set[tuple[int, int]] = set()

    def size(value) -> int:
        if isinstance(value, (tuple, list)):
            return sum(size(item) for item in value)
        if not hasattr(value, "element_size") or not hasattr(value, "data_ptr"):
            return 0
        key = (value.data_ptr(), value.numel())
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return int(model.get_memory_footprint())  # bitsandbytes' packed weights
    return sum(size(value) for value in model.state_dict(keep_vars=True).values())


def format_bytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"

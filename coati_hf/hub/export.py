"""Write a trained model as an ordinary Hugging Face folder that plain ``from_pretrained`` loads.

A PEFT model is written twice: merged weights at ``output_dir`` (so
``AutoModelFor*.from_pretrained(output_dir)`` gives the trained model) and the adapter
alone in ``output_dir/adapter`` (so ``PeftModel.from_pretrained(base, output_dir/adapter)``
works and the small artefact can be shared). The live model is never modified: merging
happens on a copy.
"""

from __future__ import annotations

import copy
import os

ADAPTER_SUBFOLDER = "adapter"


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged_copy(model):
    """A plain ``PreTrainedModel`` with any LoRA adapter merged in; ``model`` is left untouched."""
    if not is_peft_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_for_hub(model, tokenizer, output_dir: str | os.PathLike, *, is_main_process: bool = True, state_dict=None) -> str:
    """Save ``model`` (merged if PEFT, plus its adapter) and ``tokenizer`` in safetensors format.

    ``state_dict``: full weights gathered beforehand when the live model holds only a shard of
    them (ColossalAI Gemini); ignored for PEFT models, whose weights are never sharded that way.
    """
    output_dir = str(output_dir)
    if not is_main_process:
        return output_dir
    os.makedirs(output_dir, exist_ok=True)
    if is_peft_model(model):
        model.save_pretrained(os.path.join(output_dir, ADAPTER_SUBFOLDER), safe_serialization=True)
    if state_dict is not None and not is_peft_model(model):
        model.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
    else:
        merged_copy(model).save_pretrained(output_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return output_dir

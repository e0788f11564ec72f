"""coati_hf: ColossalChat's RLHF pipeline (SFT -> reward model -> PPO with PTX) for Hugging Face.

The public names are imported lazily so that ``import coati_hf`` stays fast: torch,
transformers and trl load only when a trainer or model helper is first touched.
"""

from __future__ import annotations

from coati_hf._lazy import install_lazy_attributes
from coati_hf.quiet import silence_bitsandbytes_cpu_kernel_notice

silence_bitsandbytes_cpu_kernel_notice()  # before peft/transformers can import bitsandbytes

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_ATTRS = {
    # stage 1 and 2
    "SFTTrainer": "coati_hf.sft",
    "SFTConfig": "coati_hf.sft",
    "RewardTrainer": "coati_hf.reward",
    "RewardConfig": "coati_hf.reward",
    # stage 3
    "PPOTrainer": "coati_hf.ppo.trainer",
    "PPOConfig": "coati_hf.ppo.config",
    "ExperienceMaker": "coati_hf.ppo.experience",
    "Experience": "coati_hf.ppo.experience",
    # ColossalAI backend
    "ColossalAIPlugin": "coati_hf.colossalai.plugin",
    "ColossalAIAccelerator": "coati_hf.colossalai.accelerator",
    "ColossalAIMixin": "coati_hf.colossalai.mixin",
    # models
    "EMBEDDED_MODEL_NAME": "coati_hf.models",
    "load_causal_lm": "coati_hf.models",
    "load_sequence_classifier": "coati_hf.models",
    "load_tokenizer": "coati_hf.models",
    "make_tiny_llama": "coati_hf.models",
}


install_lazy_attributes(globals(), _LAZY_ATTRS)

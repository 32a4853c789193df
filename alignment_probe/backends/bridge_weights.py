"""The Bridge's HookedTransformer-named parameters in HookedTransformer's values for the Gemma families, so E0's
weight diff reads the same numbers on both lines.

TransformerLens 3.9 folds what Gemma's Hugging Face code does at run time into the weights it holds: RMSNorm
scales ``x · (1 + w)``, so its norm weights are ``1 + w``; the embedding is multiplied by √d_model, so ``W_E`` is
too; and the norms after attention and after the MLP are ``ln1_post``/``ln2_post``. The Bridge's
``tl_named_parameters`` gives the raw ``w``, the unscaled embedding, and no post-norms (measured on a tiny
Gemma-2 twin, transformer-lens 4.3 vs 3.9).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor

# Hugging Face architectures whose RMSNorm is x·(1 + w) and whose embedding is scaled by √d_model
GEMMA_ARCHITECTURES = frozenset(
    {"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}
)
_NORMS = ("ln1.w", "ln2.w", "ln_final.w")
# HookedTransformer's post-norm name -> the Hugging Face decoder layer's attribute
_POST_NORMS = {"ln1_post.w": "post_attention_layernorm", "ln2_post.w": "post_feedforward_layernorm"}


def hooked_values(
    named: Iterable[tuple[str, Tensor]], bridge: Any, architecture: str | None
) -> Iterator[tuple[str, Tensor]]:
    """``named`` (the Bridge's parameters by HookedTransformer name) as HookedTransformer 3.9 holds them."""
    if architecture not in GEMMA_ARCHITECTURES:
        yield from named
        return
    d_model = bridge.original_model.config.get_text_config().hidden_size
    for name, tensor in named:
        if name == "embed.W_E":  # Hugging Face multiplies by √d_model in the weights' dtype
            yield name, tensor * tensor.new_tensor(math.sqrt(d_model))
        elif name == "ln_final.w" or (name.startswith("blocks.") and name.endswith(_NORMS)):
            yield name, tensor + 1
        else:
            yield name, tensor
    for i, block in enumerate(bridge.blocks):
        layer = getattr(block, "original_component", None)
        for ours, theirs in _POST_NORMS.items():
            norm = getattr(layer, theirs, None)
            if norm is not None and getattr(norm, "weight", None) is not None:
                yield f"blocks.{i}.{ours}", norm.weight + 1

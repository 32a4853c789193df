"""A Hugging Face attention module seen through HookedTransformer's ``AbstractAttention`` interface, for AtP*'s QK
fix on the TransformerBridge backend (engine/attribution.py's ``attention_z``).

The Bridge's ``hook_q``/``hook_k``/``hook_v`` are the projections' outputs per head (before rotary, KV heads
before repetition), as on HookedTransformer, so ``attention_z`` can recompute z from them once it has the
family's rotary, score scale, soft-cap and causal/sliding mask. Those come from the Hugging Face module itself:
its ``scaling`` and ``sliding_window``, the decoder's ``rotary_emb`` and the modelling file's own
``apply_rotary_pos_emb`` (partial rotary included). What ``attention_z`` would need beyond that (QK norms,
ALiBi, attention sinks, clipped QKV) is refused with the alternative named, not approximated.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from alignment_probe.errors import ConfigError

_ALTERNATIVE = (
    "Estimate the key rows with plain AtP (estimator 'atp'), patch them exactly (kv_head_patch), or run on the "
    "HookedTransformer line (transformer-lens 3.9, --backend hooked)."
)


def _refuse(architecture: str | None, what: str) -> ConfigError:
    return ConfigError(
        f"AtP*'s QK fix on the TransformerBridge backend does not model {what} ({architecture}). {_ALTERNATIVE}"
    )


class BridgeAttention:
    """The parts of ``AbstractAttention`` that ``attention_z`` and ``qk_fix_terms`` read, for one layer."""

    training = False
    _attention_dir_override = None

    def __init__(self, hf_attention: torch.nn.Module, hf_model: torch.nn.Module, architecture: str | None):
        config: Any = hf_model.config
        for attr, what in (
            ("q_norm", "a QK norm"),
            ("k_norm", "a QK norm"),
            ("sinks", "attention sinks"),
        ):
            if getattr(hf_attention, attr, None) is not None:
                raise _refuse(architecture, what)
        if getattr(config, "clip_qkv", None) is not None:
            raise _refuse(architecture, "clipped QKV")
        if getattr(config, "alibi", False) or "alibi" in str(getattr(config, "position_embedding_type", "")):
            raise _refuse(architecture, "ALiBi")
        scaling = getattr(hf_attention, "scaling", None)
        if scaling is None:
            raise _refuse(architecture, "an attention without a 'scaling' attribute")
        self.attn_scale = 1.0 / float(scaling)
        # the layer's own window where the module keeps one (Gemma-2/3, Qwen2: None on full-attention layers), else
        # the config's, which Mistral's attention hands to its kernel for every layer
        window: Any
        if hasattr(hf_attention, "sliding_window"):
            window = getattr(hf_attention, "sliding_window", None)
        else:
            window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        self._window = int(window) if window else None
        decoder = getattr(hf_model, getattr(hf_model, "base_model_prefix", "model"), hf_model)
        self._rotary = getattr(decoder, "rotary_emb", None)
        module = sys.modules[type(hf_attention).__module__]
        self._apply = getattr(module, "apply_rotary_pos_emb", None)
        if (self._rotary is None) != (self._apply is None):
            raise _refuse(architecture, "a rotary embedding outside the decoder's 'rotary_emb'")
        soft_cap = getattr(config, "attn_logit_softcapping", None)
        self.cfg = SimpleNamespace(
            positional_embedding_type="rotary" if self._rotary is not None else "standard",
            use_qk_norm=False,
            original_architecture=architecture,
            clip_qkv=None,
            use_logn_attn=False,
            attn_scores_soft_cap=float(soft_cap) if soft_cap else -1.0,  # TransformerLens: ≤ 0 means none
            attention_dir="causal",
            use_attention_sinks=False,
            n_heads=config.num_attention_heads,
        )

    def apply_rotary(self, x: Tensor, past_kv_pos_offset: int = 0, attention_mask: Tensor | None = None) -> Tensor:
        """x ``[batch, pos, heads, d_head]`` rotated at positions 0 … pos − 1 (right-padded batches)."""
        assert self._rotary is not None and self._apply is not None
        positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + x.shape[1], device=x.device)[None]
        cos, sin = self._rotary(x, positions)
        heads_first = x.transpose(1, 2)
        rotated, _ = self._apply(heads_first, heads_first, cos.to(x.dtype), sin.to(x.dtype))
        out: Tensor = rotated.transpose(1, 2)
        return out

    def apply_causal_mask(
        self, scores: Tensor, past_kv_pos_offset: int = 0, attention_mask: Tensor | None = None
    ) -> Tensor:
        """scores ``[batch, heads, q, k]`` with future keys (and keys beyond a sliding window) at −inf."""
        q = torch.arange(scores.shape[-2], device=scores.device)[:, None] + past_kv_pos_offset
        k = torch.arange(scores.shape[-1], device=scores.device)[None, :]
        blocked = k > q
        if self._window is not None:  # Hugging Face's sliding window: a query sees the last `window` keys
            blocked = blocked | (q - k >= self._window)
        return scores.masked_fill(blocked, float("-inf"))


def bridge_attention(bridge: Any, layer: int, architecture: str | None) -> BridgeAttention:
    """Block ``layer``'s attention of a TransformerBridge as :class:`BridgeAttention`."""
    component = bridge.blocks[layer].attn
    hf_attention = getattr(component, "original_component", None)
    if hf_attention is None:
        raise _refuse(architecture, "an attention the Bridge does not wrap as one Hugging Face module")
    return BridgeAttention(hf_attention, bridge.original_model, architecture)

r"""AtP*'s QK fix (Kramár et al. 2024, arXiv 2403.00745) for attribution patching at the keys
(:mod:`~alignment_probe.engine.attribution`, E10): one head's attention recomputed *exactly* from its queries, the
patched keys and its values — everything TransformerLens does between ``hook_k`` and the softmax — so that only
what follows z is linearised."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from alignment_probe.errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens.components import AbstractAttention

# Architectures whose QK norm runs over the whole projected vector (all heads at once), as in TransformerLens.
FULL_VECTOR_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def attn_hook(layer: int, hook: str) -> str:
    """``blocks.{layer}.attn.hook_{hook}`` for any of the attention's hooks (``q`` too, which no patch names)."""
    return f"blocks.{layer}.attn.hook_{hook}"


def check_qk_fix_supported(attn: AbstractAttention) -> None:
    """Refuse, naming the fix, an attention whose scores :func:`attention_z` does not reproduce."""
    cfg = attn.cfg
    if cfg.positional_embedding_type == "relative_positional_bias":
        raise ConfigError(
            "AtP*'s QK fix recomputes attention from hook_q/hook_k/hook_v and does not model T5's "
            "relative position bias; estimate the k rows with plain AtP (estimator 'atp') or patch "
            "them exactly (kv_head_patch)."
        )


def _qk_normed(attn: AbstractAttention, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """TransformerLens's QK norms: per head on d_head (``use_qk_norm``: Gemma-3, Qwen3), or over the whole
    projected vector (OLMo-2/3, OLMoE: then one head's keys change every head's normalised keys)."""
    cfg = attn.cfg
    if cfg.use_qk_norm:
        q, k = attn._apply_qk_norm(q, attn.q_norm), attn._apply_qk_norm(k, attn.k_norm)
    if cfg.original_architecture in FULL_VECTOR_QK_NORM:
        q = attn.q_norm(q.flatten(-2)).unflatten(-1, q.shape[-2:])
        k = attn.k_norm(k.flatten(-2)).unflatten(-1, k.shape[-2:])
    return q, k


def attention_z(
    attn: AbstractAttention,
    q: Float[Tensor, "batch pos n_heads d_head"],
    k: Float[Tensor, "batch pos n_kv_heads d_head"],
    v: Float[Tensor, "batch pos n_kv_heads d_head"],
    heads: Sequence[int] | None = None,
) -> Float[Tensor, "batch pos heads d_head"]:
    """z of the query heads ``heads`` (None: all) from the values at ``hook_q``, ``hook_k`` and ``hook_v``,
    computed the way TransformerLens's attention does after those hooks (abstract_attention.py, 3.9):
    QK norm, clipping, rotary (applied *after* ``hook_k``, at positions 0 … pos − 1: right-padded batches
    need no offsets), log-n query scaling, scores q·k/attn_scale (grouped-query: KV head g serves query
    heads g·r … g·r + r − 1, r = n_heads / n_kv_heads), soft-capping, ALiBi, the causal (and sliding
    window) mask, attention sinks, softmax, pattern × v. Real positions match the model's own ``hook_z``
    to float rounding (tests/integration/test_atp_heads.py checks it across architectures)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    cfg = attn.cfg
    check_qk_fix_supported(attn)
    q, k = _qk_normed(attn, q, k)
    if cfg.clip_qkv is not None:
        q, k, v = (t.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv) for t in (q, k, v))
    if cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q, 0, None), attn.apply_rotary(k, 0, None)
    if getattr(cfg, "use_logn_attn", False) and not attn.training:
        q = attn._apply_logn_scaling(q, 0)
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    heads = list(range(q.shape[2])) if heads is None else list(heads)
    q, k, v = q[:, :, heads], k[:, :, heads], v[:, :, heads]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / attn.attn_scale
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
    if cfg.positional_embedding_type == "alibi":
        slopes = attn.create_alibi_bias(cfg.n_heads, scores.shape[-1], scores.device)[heads]
        scores = scores + slopes.to(scores.dtype)
    if (attn._attention_dir_override or cfg.attention_dir) == "causal":
        scores = attn.apply_causal_mask(scores, 0, None)
    if cfg.use_attention_sinks:
        sink = attn.sinks[heads].reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[-2], -1)
        combined = torch.cat([scores, sink.to(scores.dtype)], dim=-1)
        pattern = (combined - combined.max(dim=-1, keepdim=True).values).softmax(-1)[..., :-1]
    else:
        pattern = scores.softmax(-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern).to(v.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def patched_keys(
    k: Float[Tensor, "batch pos n_kv_heads d_head"],
    k_src: Float[Tensor, "batch pos n_kv_heads d_head"],
    mask: Bool[Tensor, "batch pos"],
    factor: float,
    group: int | None,
) -> Float[Tensor, "batch pos n_kv_heads d_head"]:
    """The target's keys with KV head ``group`` (None: all) moved ``factor`` of the way to the source's at
    the masked positions — what the exact engines write (Replace: the source's keys themselves)."""
    new = k_src if factor == 1.0 else k + factor * (k_src - k)
    where = mask[:, :, None, None].to(k.device)
    if group is not None:
        where = where & (torch.arange(k.shape[2], device=k.device) == group)[None, None, :, None]
    return torch.where(where, new.to(k.dtype), k)


def qk_fix_terms(
    attn: AbstractAttention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_src: Tensor,
    grad_z: Float[Tensor, "batch pos n_heads d_head"],
    mask: Bool[Tensor, "batch pos"],
    factor: float,
    group: int | None,
) -> Float[Tensor, "batch pos"]:
    """AtP* terms per query position: Σ_h (z′ − z)·∂logp/∂z over the query heads whose z the patched keys
    move, z′ from :func:`attention_z` with :func:`patched_keys`, z from the same function with the clean
    keys (so the difference holds no recomputation rounding: unchanged keys give exactly 0)."""
    new_k = patched_keys(k, k_src, mask, factor, group)
    if torch.equal(new_k, k):
        return torch.zeros(grad_z.shape[:2], dtype=torch.float64, device=grad_z.device)
    rep = q.shape[2] // k.shape[2]
    heads_mix = attn.cfg.original_architecture in FULL_VECTOR_QK_NORM  # one head's keys renormalise them all
    heads = None if group is None or heads_mix else range(group * rep, (group + 1) * rep)
    with torch.no_grad():
        dz = attention_z(attn, q, new_k, v, heads).double() - attention_z(attn, q, k, v, heads).double()
    g = grad_z if heads is None else grad_z[:, :, list(heads)]
    return (dz * g.double()).sum((-1, -2))

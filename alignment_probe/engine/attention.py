"""The engines' attention: TransformerLens's, without its extra passes over the attention scores.

TransformerLens's attention writes a ``[batch, heads, query, key]`` tensor five times a forward (the
scores, the scores divided by the scale, the masked scores from ``torch.where``, the pattern, the pattern
with NaNs replaced), plus a boolean ``isnan`` of it: on a narrow model that is a third of a forward's time
(bench/README.md). The engines never read the scores or the pattern, so inside their forwards
:func:`lean_attention` swaps each supported attention module's ``forward`` for one of two others that keep
everything else of TransformerLens's forward:

* the queries, keys and values come from the module's own ``calculate_qkv_matrices`` (or its products
  without the zero biases, below; ``hook_q``,
  ``hook_k``, ``hook_v`` fire; QK norms, split inputs and grouped keys/values as TransformerLens
  does them), rotary as its ``apply_rotary`` does it, operation for operation, in fewer passes
  (:func:`_rotate`; ``hook_rot_q``, ``hook_rot_k``), the key/value cache from its own ``append``;
* the causal mask and the padding mask are TransformerLens's (keys at positions ≤ the query's,
  ``attention_mask`` over cached and new keys), grouped heads as ``repeat_interleave`` groups them;
* ``hook_z`` fires on the same ``[batch, pos, head_index, d_head]`` tensor, and the output
  projection is the same ``F.linear``;
* biases that are all zeros (most rotary families have none; TransformerLens keeps zero parameters)
  are not added to the projections: TransformerLens copies them into each output before the product
  accumulates onto it, and x + 0 = x, so the values are the same bits.

``"exact"`` (:func:`exact_forward`, the engines' default) runs TransformerLens's own operations on the same
operands, the divide, mask and NaN passes in place: the **same bits** as TransformerLens (tested on every
family), so every exact identity of the engines (identity = 0, per-sequence sums, a row independent of its
batch on one thread) is kept. ``"sdpa"`` (:func:`sdpa_forward`) fuses scores, mask, softmax and
pattern × values into ``scaled_dot_product_attention``, which never materialises the pattern (the
memory-light choice for long sequences on a GPU); it equals TransformerLens to float rounding (~1e-6
relative), and a row then depends on its batch's padded width at that level.

A continuation's prompt keys and values (engine/prefix.py) come as a :class:`PromptKV`: rotated once per
prompt, and written straight into the ``[batch, heads, d_head, key]`` / ``[batch, heads, key, d_head]``
tensors the two products of ``exact`` read, grouped heads repeated as they are written. TransformerLens
instead concatenates the prompt's raw keys with the new ones, rotates all of them, repeats them per head
and copies them into that layout again, in every block of every continuation: on the bundled model over
100 prompt keys, most of a continuation's time outside its matrix products. The values are the same
(rotary is element-wise, the rest are copies), so the products see the same operands in the same layout:
the same bits.

``hook_attn_scores`` and ``hook_pattern`` do not fire on either path, so a forward that has a hook on
either (a cache that asks for the pattern, a user's hook), or that passes an additive mask or a position
bias, runs TransformerLens's own forward; so do families whose attention is more than this (ALiBi,
sliding windows, soft-capped scores, attention sinks, log-n scaling, OLMo's QK norm, per-head results,
4-bit weights): :func:`supports_lean` names them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

# Architectures whose attention TransformerLens changes outside calculate_qkv_matrices (QK norm on the
# flat projections).
_OLMO_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
_MARK = "_alignment_probe_lean"  # the kind of forward lean_attention has swapped in, while it has
_ZERO = "_alignment_probe_zero_biases"  # (query/key/value biases, output bias) all zeros, while swapped
_POSITIONS = "_alignment_probe_rotary_positions"  # a padding mask's rotary position ids, kept on the mask


def supports_lean(attn: Any) -> bool:
    """Whether :func:`exact_forward` and :func:`sdpa_forward` compute what this TransformerLens attention module
    computes (the families and options their shared code covers)."""
    from transformer_lens.components import Attention, GroupedQueryAttention

    cfg = attn.cfg
    return (type(attn) in (Attention, GroupedQueryAttention)
            and cfg.positional_embedding_type in ("rotary", "standard")
            and (attn._attention_dir_override or cfg.attention_dir) == "causal"
            and getattr(attn, "attn_type", "global") == "global"
            and not cfg.use_attention_sinks and not cfg.use_logn_attn and not cfg.use_attn_result
            and not cfg.load_in_4bit and cfg.clip_qkv is None
            and not (cfg.attn_scores_soft_cap is not None and cfg.attn_scores_soft_cap > 0)
            and cfg.original_architecture not in _OLMO_QK_NORM
            and bool(torch.isneginf(attn.IGNORE)))


def reads_prompt_kv(attn: Any) -> bool:
    """Whether this attention module now runs the exact lean forward, which reads a :class:`PromptKV`."""
    return attn.__dict__.get(_MARK) == "exact"


def _hooked(point: torch.nn.Module) -> bool:
    return bool(point._forward_hooks or point._backward_hooks or point._forward_pre_hooks)


def causal_mask(n_query: int, offset: int, attention_mask: Int[Tensor, "batch key_pos"] | None,
                n_key: int, device: Any) -> Tensor:
    """TransformerLens's mask as booleans: query i (at position offset + i) sees key j ≤ offset + i,
    and only keys the padding mask keeps. ``[1 | batch, 1, query_pos, key_pos]``."""
    q = torch.arange(offset, offset + n_query, device=device)
    k = torch.arange(n_key, device=device)
    mask = (k[None, :] <= q[:, None])[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    return mask


def _zero_biases(attn: Any) -> tuple[bool, bool]:
    """Whether the query/key/value biases, and the output bias, are all zeros (most rotary families have none;
    TransformerLens keeps zero parameters and adds them, a copy into every projection's output)."""
    plain = not (attn.cfg.use_split_qkv_input or attn.cfg.use_attn_in or attn.cfg.use_qk_norm)
    qkv = plain and not any(bool(b.any()) for b in (attn.b_Q, *_kv_params(attn)[1::2]))
    return qkv, not bool(attn.b_O.any())


def _kv_params(attn: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``W_K, b_K, W_V, b_V`` as TransformerLens's ``calculate_qkv_matrices`` reads them (grouped-query attention:
    the ungrouped ``_W_K``… unless the config asks to repeat them first)."""
    from transformer_lens.components import GroupedQueryAttention

    if isinstance(attn, GroupedQueryAttention) and not attn.cfg.ungroup_grouped_query_attention:
        return attn._W_K, attn._b_K, attn._W_V, attn._b_V
    return attn.W_K, attn.b_K, attn.W_V, attn.b_V


def _project(x: Float[Tensor, "batch pos d_model"], w: Float[Tensor, "head_index d_model d_head"],
             b: Float[Tensor, "head_index d_head"]) -> Float[Tensor, "batch pos head_index d_head"]:
    """TransformerLens's ``simple_attn_linear`` for an all-zero bias, which it would copy into the output before
    the product accumulates onto it (x + 0 = x: the same bits)."""
    if x.device != w.device:
        w = w.to(x.device)
    out = F.linear(x, w.permute(0, 2, 1).reshape(-1, w.shape[1]))  # "h m d -> (h d) m", as TransformerLens
    return out.reshape(x.shape[0], x.shape[1], b.shape[0], b.shape[1])


def _calculate_qkv(self: Any, query_input: Tensor, key_input: Tensor, value_input: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``calculate_qkv_matrices``, without adding its biases when they are all zeros (marked by
    :func:`lean_attention`); its hooks fire on the same values."""
    if not self.__dict__[_ZERO][0]:
        return self.calculate_qkv_matrices(query_input, key_input, value_input)
    w_k, b_k, w_v, b_v = _kv_params(self)
    return (self.hook_q(_project(query_input, self.W_Q, self.b_Q)), self.hook_k(_project(key_input, w_k, b_k)),
            self.hook_v(_project(value_input, w_v, b_v)))


def _rotary_tables(self: Any, offset: int, n: int, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The cos and sin rows ``apply_rotary`` multiplies by: positions ``offset ..`` of its tables, or with a padding
    mask TransformerLens's ``get_offset_position_ids`` rows (computed once per mask and offset, kept on the mask
    object: every block of a forward, queries and keys alike, uses the same positions; the engines build a new
    mask for every forward and never change one in place)."""
    if attention_mask is None:
        return (self.rotary_cos[None, offset: offset + n, None, :], self.rotary_sin[None, offset: offset + n, None, :])
    from transformer_lens.utilities import get_offset_position_ids

    kept = attention_mask.__dict__.setdefault(_POSITIONS, {})
    key = (offset, self.rotary_cos.device)
    if key not in kept:
        kept[key] = get_offset_position_ids(offset, attention_mask).to(self.rotary_cos.device)
    ids = kept[key]
    return self.rotary_cos[ids, None, :], self.rotary_sin[ids, None, :]


def _rotate(self: Any, xs: tuple[Tensor, ...], offsets: tuple[int, ...], attention_mask: Tensor | None
            ) -> list[Tensor]:
    """``apply_rotary`` of each ``x`` at its offset, the same operations on the same values (so the same bits),
    with fewer copies: the flipped half is built by one ``cat``, the products accumulate in place, nothing is
    concatenated when rotary covers the whole head, and inputs at the same positions share their cos/sin rows.
    TransformerLens's own ``apply_rotary`` where it would do more (dynamic NTK scaling, tables to extend)."""
    cfg = self.cfg
    if (cfg.use_dynamic_ntk_rope or cfg.rotary_adjacent_pairs
            or max(o + x.size(1) for x, o in zip(xs, offsets)) > self.rotary_cos.shape[0]
            or any(x.device != self.rotary_sin.device or x.dtype != self.rotary_sin.dtype for x in xs)):
        # (another dtype than the tables': TransformerLens's products promote, the in-place ones here would not)
        return [self.apply_rotary(x, o, attention_mask) for x, o in zip(xs, offsets)]
    tables: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    out = []
    for x, offset in zip(xs, offsets):
        if (offset, x.size(1)) not in tables:
            tables[(offset, x.size(1))] = _rotary_tables(self, offset, x.size(1), attention_mask)
        cos, sin = tables[(offset, x.size(1))]
        x_rot, x_pass = x[..., : cfg.rotary_dim], x[..., cfg.rotary_dim:]
        half = x_rot.size(-1) // 2
        x_flip = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)  # rotate_every_two: [-x1, x0]
        rotated = (x_rot * cos).add_(x_flip.mul_(sin))  # x_rot * cos + x_flip * sin
        out.append(rotated if x_pass.size(-1) == 0 else torch.cat([rotated, x_pass], dim=-1))
    return out


def _qkv(self: Any, query_input: Tensor, key_input: Tensor, value_input: Tensor, past_kv_cache_entry: Any,
         attention_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """TransformerLens's queries, keys and values (its own hooks fire), the key/value cache appended and rotary
    applied as it does them, and its causal × padding mask as booleans."""
    q, k, v = _calculate_qkv(self, query_input, key_input, value_input)
    offset = 0
    if past_kv_cache_entry is not None:  # keys are cached before rotary, as TransformerLens does
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    if self.cfg.positional_embedding_type == "rotary":
        q, k = _rotate(self, (q, k), (offset, 0), attention_mask)
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
    return q, k, v, causal_mask(q.shape[1], offset, attention_mask, k.shape[1], q.device)


class PromptKV:
    """One block's cached prompt keys and values for a batch of continuations (row ``r`` continues the prompt
    whose keys are ``keys[r]``, ``[prompt_len, kv_heads, d_head]``, before rotary), in the layout the exact
    attention's products read: ``keys_t`` ``[batch, heads, d_head, prompt_width + width]`` (rotated, grouped
    heads repeated) and ``values`` ``[batch, heads, prompt_width + width, d_head]``; the continuation's own
    keys and values are written into the last ``width`` positions during its forward. Padded positions hold
    zeros (masked). ``past_keys``/``past_values`` and :meth:`append` are TransformerLens's cache entry (the
    raw keys, right-padded), for a forward that runs TransformerLens's own attention.

    ``rotated_t[r]``: row r's prompt keys after rotary, ``[kv_heads, d_head, prompt_len]``, made once per prompt
    by the caller (engine/prefix.py keeps them with the prompt)."""

    frozen = True

    def __init__(self, attn: Any, keys: list[Tensor], values: list[Tensor], rotated_t: list[Tensor], width: int,
                 device: Any) -> None:
        self._keys, self._values = keys, values
        self._raw: tuple[Tensor, Tensor] | None = None
        self.prompt_width = p = max(int(k.shape[0]) for k in keys)
        n, (kv_heads, d_head) = len(keys), keys[0].shape[1:]
        self.groups = attn.cfg.n_heads // kv_heads
        total = p + width
        # Not zeroed as a whole: every position is written below (a prompt's keys, zeros where it is padded) or by
        # operands() (the continuation's own)
        self.keys_t = keys[0].new_empty((n, kv_heads, self.groups, d_head, total), device=device)
        self.values = values[0].new_empty((n, kv_heads, self.groups, total, d_head), device=device)
        for r, (k_t, v) in enumerate(zip(rotated_t, values)):
            length = k_t.shape[-1]  # k_t: [kv_heads, d_head, len]; v: [len, kv_heads, d_head]
            self.keys_t[r, :, :, :, :length] = k_t[:, None]
            self.values[r, :, :, :length] = v.transpose(0, 1)[:, None]
            if length < p:  # padded keys and values are zeros (masked; a pattern of 0 times a value must be 0)
                self.keys_t[r, :, :, :, length:p] = 0
                self.values[r, :, :, length:p] = 0

    def _padded(self) -> tuple[Tensor, Tensor]:
        if self._raw is None:
            from alignment_probe.engine.prefix import pad_stack

            device = self.keys_t.device
            self._raw = (pad_stack(self._keys, self.prompt_width).to(device),
                         pad_stack(self._values, self.prompt_width).to(device))
        return self._raw

    @property
    def past_keys(self) -> Tensor:
        return self._padded()[0]

    @property
    def past_values(self) -> Tensor:
        return self._padded()[1]

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        """TransformerLens's ``append`` of a frozen entry: the raw prompt keys and values, then the new ones."""
        keys, values = self._padded()
        return torch.cat([keys, new_keys], dim=1), torch.cat([values, new_values], dim=1)

    def operands(self, rot_keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The continuation's rotated keys and its values ``[batch, width, kv_heads, d_head]`` written after the
        prompt's; returns the products' operands ``[batch, heads, d_head, keys]`` and ``[batch, heads, keys, d_head]``."""
        p = self.prompt_width
        self.keys_t[..., p:] = rot_keys.permute(0, 2, 3, 1)[:, :, None]
        self.values[:, :, :, p:] = values.permute(0, 2, 1, 3)[:, :, None]
        n, kv_heads, groups, d_head, total = self.keys_t.shape
        return (self.keys_t.view(n, kv_heads * groups, d_head, total),
                self.values.view(n, kv_heads * groups, total, d_head))


def _qkv_prompt_kv(self: Any, query_input: Tensor, key_input: Tensor, value_input: Tensor, entry: PromptKV,
                   attention_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_qkv` for a continuation whose prompt keys and values are a :class:`PromptKV`: the new keys rotated
    at their own positions (TransformerLens rotates the prompt's and the new ones together, element by element,
    at the same positions), returned as the products' operands with the prompt's."""
    q, k, v = _calculate_qkv(self, query_input, key_input, value_input)
    offset = entry.prompt_width
    if self.cfg.positional_embedding_type == "rotary":
        q, k = _rotate(self, (q, k), (offset, offset), attention_mask)
        q = self.hook_rot_q(q)
    keys_t, values = entry.operands(k, v)
    return q, keys_t, values, causal_mask(q.shape[1], offset, attention_mask, keys_t.shape[-1], q.device)


def _output(self: Any, z: Float[Tensor, "batch pos head_index d_head"]) -> Float[Tensor, "batch pos d_model"]:
    """``hook_z`` and TransformerLens's output projection, operation for operation."""
    z = self.hook_z(z)
    w = self.W_O.permute(2, 0, 1).reshape(self.W_O.shape[-1], -1).contiguous()  # "h d m -> m (h d)"
    b_O = None if self.__dict__[_ZERO][1] else self.b_O  # an all-zero bias is not added (the same bits)
    if w.device != z.device:
        w, b_O = w.to(z.device), b_O.to(z.device) if b_O is not None else None
    return F.linear(z.reshape(z.shape[0], z.shape[1], -1).to(w.dtype), w, b_O)


def _hooked_rot_k(self: Any) -> bool:
    point = getattr(self, "hook_rot_k", None)  # rotary models only
    return point is not None and _hooked(point)


def _fallback(self: Any, additive_attention_mask: Tensor | None, position_bias: Tensor | None) -> bool:
    return (additive_attention_mask is not None or position_bias is not None
            or _hooked(self.hook_attn_scores) or _hooked(self.hook_pattern))


def _attend_exact(self: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor
                  ) -> Float[Tensor, "batch pos head_index d_head"]:
    """TransformerLens's scores, mask, softmax and pattern × values, the same operations on the same operands (so
    the same bits), with the ``[batch, heads, query, key]`` passes done in place: the scale divides the scores
    where they are, the mask fills them, NaNs of fully masked rows are zeroed in the pattern itself."""
    if q.shape[2] != k.shape[2]:  # grouped heads, repeated as GroupedQueryAttention does
        repeats = q.shape[2] // k.shape[2]
        k = torch.repeat_interleave(k, dim=2, repeats=repeats)
        v = torch.repeat_interleave(v, dim=2, repeats=repeats)
    return _products(self, q, k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3), mask)


def _products(self: Any, q: Tensor, keys_t: Float[Tensor, "batch head_index d_head key_pos"],
              values: Float[Tensor, "batch head_index key_pos d_head"], mask: Tensor
              ) -> Float[Tensor, "batch pos head_index d_head"]:
    """The exact attention from its operands (a :class:`PromptKV` gives them already in this layout; the products
    copy any other layout into it first)."""
    scores = q.permute(0, 2, 1, 3) @ keys_t  # [batch, head_index, query_pos, key_pos]
    scores.div_(self.attn_scale)
    scores.masked_fill_(~mask.to(scores.device), float("-inf"))
    pattern = F.softmax(scores, dim=-1).nan_to_num_(nan=0.0)  # a row with no key: 0, as TransformerLens
    pattern = pattern.to(device=values.device, dtype=values.dtype)
    return (pattern @ values).permute(0, 2, 1, 3)


def _attend_sdpa(self: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor
                 ) -> Float[Tensor, "batch pos head_index d_head"]:
    """The same attention fused into one ``scaled_dot_product_attention`` (float rounding, no pattern in memory)."""
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.to(q.dtype).transpose(1, 2),
                                       attn_mask=mask, scale=1.0 / float(self.attn_scale),
                                       enable_gqa=q.shape[2] != k.shape[2])
    if z.device.type != "cpu":  # a row with no key at all: TransformerLens's pattern is 0 there (CPU SDPA gives 0)
        z = torch.nan_to_num(z, nan=0.0)
    return z.transpose(1, 2)


def _lean_forward(attend: Any) -> Any:
    """An ``AbstractAttention.forward`` that computes queries, keys and values, the output projection and their
    hooks as TransformerLens does and the attention itself with ``attend``; TransformerLens's own forward where
    that would differ (:func:`_fallback`)."""

    def forward(self: Any, query_input: Tensor, key_input: Tensor, value_input: Tensor,
                past_kv_cache_entry: Any = None, additive_attention_mask: Tensor | None = None,
                attention_mask: Int[Tensor, "batch offset_pos"] | None = None,
                position_bias: Tensor | None = None) -> Float[Tensor, "batch pos d_model"]:
        if _fallback(self, additive_attention_mask, position_bias):
            return type(self).forward(self, query_input, key_input, value_input,
                                      past_kv_cache_entry=past_kv_cache_entry,
                                      additive_attention_mask=additive_attention_mask,
                                      attention_mask=attention_mask, position_bias=position_bias)
        if (attend is _attend_exact and isinstance(past_kv_cache_entry, PromptKV)
                and not _hooked_rot_k(self)):  # hook_rot_k sees all keys: the general path builds them
            q, keys_t, values, mask = _qkv_prompt_kv(self, query_input, key_input, value_input,
                                                     past_kv_cache_entry, attention_mask)
            return _output(self, _products(self, q, keys_t, values, mask))
        q, k, v, mask = _qkv(self, query_input, key_input, value_input, past_kv_cache_entry, attention_mask)
        return _output(self, attend(self, q, k, v, mask))

    forward.__doc__ = attend.__doc__
    return forward


exact_forward = _lean_forward(_attend_exact)
sdpa_forward = _lean_forward(_attend_sdpa)
FORWARDS = {"exact": exact_forward, "sdpa": sdpa_forward}
ATTENTION = (*FORWARDS, "transformer_lens")  # FastEngine(attention=...): the last is TransformerLens's own forward


def lean_attention(*models: Any, kind: str = "exact") -> contextlib.AbstractContextManager[None]:
    """Inside the ``with`` block, every supported attention module of ``models`` runs :func:`exact_forward`
    (``kind="exact"``) or :func:`sdpa_forward` (``"sdpa"``); their own forwards are back afterwards (also on
    an error). Re-entrant: modules already swapped by an outer block are left to it."""
    from alignment_probe.engine.swap import block_parts, swapped_forwards

    return swapped_forwards(models, block_parts("attn"), FORWARDS[kind], supports_lean, _MARK,
                            lambda attn: {_MARK: kind, _ZERO: _zero_biases(attn)})

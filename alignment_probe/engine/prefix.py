"""Forwards of a pair's shared prompt once, and of its two completions continued from it.

A pair's two sequences share BOS + prompt. By causality the prompt positions of a run depend only
on the prompt's inputs, so when both runs of a pair see the same inputs at the prompt positions
(the clean runs always; a patched run when its patch is the same on both prompts) the prompt is
computed once and each completion continues from its keys and values — TransformerLens's own
``past_kv_cache`` mechanism, which works with ``start_at_layer``.

How a batch of continuations of prompts of different lengths stays exact:

* prompt forwards are right-padded; each prompt's keys/values are kept unpadded, per block;
* a continuation batch gathers its rows' prompt keys/values into a right-padded
  ``[batch, longest prompt, heads, d_head]`` frozen ``TransformerLensKeyValueCache`` (TransformerLens's own
  cache and entries, public constructors) and passes the attention mask ``[prompt mask | completion mask]``,
  so padded prompt keys are masked out;
* TransformerLens derives rotary positions (and absolute position embeddings) from that mask
  (``cumsum − 1``), so completion token j of a row with a P-token prompt sits at position P + j,
  as in the full sequence;
* the first completion token is predicted by the prompt's last position: the prompt forward keeps
  that final residual, the continuation scores the rest.

Only rotary and standard (absolute, learned) position embeddings are supported: ALiBi and
shortformer models fall back to full sequences (:func:`supports_prefix`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

CaptureFn = Callable[[str], bool]


def supports_prefix(model: Any) -> bool:
    """Whether continuing from a key/value cache reproduces the full sequence for this model."""
    cfg = model.cfg
    return (
        cfg.positional_embedding_type in ("rotary", "standard")
        and not getattr(cfg, "use_attention_sinks", False)
        and not getattr(cfg, "use_logn_attn", False)
        and not getattr(cfg, "use_dynamic_ntk_rope", False)
        and getattr(cfg, "attention_dir", "causal") == "causal"
        # Sliding-window attention (Mistral, Gemma-2/3, GPT-Neo's local layers): TransformerLens masks the
        # window only within one forward, so a continuation from a cache would see keys past the window.
        and not getattr(cfg, "use_local_attn", False)
    )


@dataclass
class PromptState:
    """What the continuations of one prompt need: its keys and values at every block the forward
    ran (None below ``start``), and the final residual at its last position."""

    keys: list[Tensor | None]  # per block: [prompt_len, kv_heads, d_head]
    values: list[Tensor | None]
    last: Float[Tensor, " d_model"]
    length: int


def pad_stack(tensors: Sequence[Tensor], width: int) -> Tensor:
    """Right-pad tensors of shape [len, ...] with zeros to ``width`` and stack: [batch, width, ...]."""
    out = tensors[0].new_zeros((len(tensors), width, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def length_mask(lengths: Sequence[int], width: int, device: Any) -> Int[Tensor, "batch width"]:
    pos = torch.arange(width, device=device)
    return (pos[None, :] < torch.tensor(list(lengths), device=device)[:, None]).to(torch.int64)


def _cache_class() -> tuple[type[Any], type[Any]]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    return TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry


@contextmanager
def writing(model: Any, hook: str | None, written: Tensor | None) -> Iterator[None]:
    """During the block: the activation at ``hook`` is replaced by ``written`` (nothing if ``hook`` is None).

    ``model.hooks(...)`` does the same but on exit resets every hook point of the model, ~1 ms of Python
    per forward on the bundled model, paid by every patched forward; this adds and removes the one hook,
    at its own context level as ``model.hooks`` would."""
    if hook is None:
        yield
        return
    point = model.hook_dict[hook]
    model.context_level += 1
    level = model.context_level
    try:
        point.add_hook(lambda act, hook: written.to(act.dtype), dir="fwd", level=level)  # type: ignore[union-attr]
        yield
    finally:
        point.remove_hooks("fwd", level=level)
        model.context_level -= 1


def _run(
    model: Any,
    x: Tensor,
    *,
    start: int | None,
    hook: str | None,
    written: Tensor | None,
    capture: CaptureFn | None,
    **kwargs: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward to the final residual (before ``ln_final``), a hook writing ``written`` if any."""
    if start is not None:
        kwargs["start_at_layer"] = start
    with writing(model, hook, written):
        if capture is None:
            return model(x, stop_at_layer=model.cfg.n_layers, **kwargs), {}
        out, cache = model.run_with_cache(
            x, names_filter=capture, stop_at_layer=model.cfg.n_layers, return_cache_object=False, **kwargs
        )
    return out, dict(cache)


@torch.inference_mode()
def run_prompts(
    model: Any,
    start: int | None,
    inputs: Sequence[Tensor],
    *,
    hook: str | None = None,
    written: Sequence[Tensor] | None = None,
    capture: CaptureFn | None = None,
) -> tuple[list[PromptState], dict[str, Tensor], Float[Tensor, "batch pos d_model"]]:
    """Forward right-padded prompts and keep what their continuations need.

    ``inputs``: token ids ``[len]`` (``start`` None: from the embedding) or residuals ``[len, d_model]``
    (start at block ``start``). Returns one :class:`PromptState` per prompt, the captured
    activations ``[batch, width, d_model]`` and the final residual.
    """
    KVCache, _ = _cache_class()
    device = model.cfg.device
    lengths = [int(t.shape[0]) for t in inputs]
    width = max(lengths)
    x = pad_stack(list(inputs), width).to(device)
    mask = length_mask(lengths, width, device)
    cache = KVCache.init_cache(model.cfg, device, len(inputs))
    w = None if written is None else pad_stack(list(written), width).to(device)
    out, acts = _run(
        model, x, start=start, hook=hook, written=w, capture=capture, attention_mask=mask, past_kv_cache=cache
    )
    first = 0 if start is None else start
    states = []
    for b, n in enumerate(lengths):
        keys = [None if i < first else e.past_keys[b, :n] for i, e in enumerate(cache.entries)]
        values = [None if i < first else e.past_values[b, :n] for i, e in enumerate(cache.entries)]
        states.append(PromptState(keys, values, out[b, n - 1], n))
    return states, acts, out


@torch.inference_mode()
def run_continuations(
    model: Any,
    start: int | None,
    prompts: Sequence[PromptState],
    inputs: Sequence[Tensor],
    *,
    hook: str | None = None,
    written: Sequence[Tensor] | None = None,
    capture: CaptureFn | None = None,
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """Forward completions, row r continuing prompt ``prompts[r]`` (rows may share a prompt).

    ``inputs`` as in :func:`run_prompts`, for the completion positions only. Returns the final
    residual ``[batch, width, d_model]`` and the captured activations, completion positions only.
    """
    KVCache, Entry = _cache_class()
    device = model.cfg.device
    lengths = [int(t.shape[0]) for t in inputs]
    width = max(lengths)
    p_width = max(p.length for p in prompts)
    first = 0 if start is None else start
    entries: list[Any] = []
    for i in range(model.cfg.n_layers):
        if i < first:
            entries.append(None)
            continue
        # one statement each, so the ignores stay on their lines whatever the formatter does
        prompt_keys: list[torch.Tensor] = [p.keys[i] for p in prompts]  # type: ignore[misc]
        prompt_values: list[torch.Tensor] = [p.values[i] for p in prompts]  # type: ignore[misc]
        entries.append(Entry(pad_stack(prompt_keys, p_width), pad_stack(prompt_values, p_width), frozen=True))
    prompt_mask = length_mask([p.length for p in prompts], p_width, device)
    mask = length_mask(lengths, width, device)
    x = pad_stack(list(inputs), width).to(device)
    w = None if written is None else pad_stack(list(written), width).to(device)
    cache = KVCache(entries=entries, previous_attention_mask=prompt_mask, frozen=True)
    if start is None:  # from tokens: TransformerLens appends the prompt mask and offsets positions itself
        out, acts = _run(
            model, x, start=None, hook=hook, written=w, capture=capture, attention_mask=mask, past_kv_cache=cache
        )
    else:  # from a residual: the blocks need the whole mask, prompt and completion
        out, acts = _run(
            model,
            x,
            start=start,
            hook=hook,
            written=w,
            capture=capture,
            attention_mask=torch.cat([prompt_mask, mask], dim=1),
            past_kv_cache=cache,
        )
    return out, acts

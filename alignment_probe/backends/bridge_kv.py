"""The Bridge backend's key/value state: one prompt's keys and values (prompt sharing) and a sequence being decoded,
both in Hugging Face's own ``DynamicCache`` (the keys as the model cached them, rotary applied)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from alignment_probe.backends.base import pad_stack


@dataclass
class BridgePromptKV:
    """One prompt's keys and values per block as the model cached them (rotary applied), None below the block its
    forward started at; unpadded: ``[kv_heads, prompt_len, d_head]``."""

    keys: list[Tensor | None]
    values: list[Tensor | None]
    length: int


@dataclass
class BridgeDecodeState:
    """A sequence being decoded: Hugging Face's cache and how many tokens it has seen."""

    cache: Any
    seen: int = 0


def new_cache(config: Any) -> Any:
    """An empty ``DynamicCache`` for the decoder whose config is ``config``."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(config=config)


def prompt_states(cache: Any, lengths: Sequence[int], first: int, n_layers: int) -> list[BridgePromptKV]:
    """Each row's prompt keys and values out of the batch's filled ``cache`` (row b unpadded to ``lengths[b]``),
    None below block ``first`` (never run)."""
    states: list[BridgePromptKV] = []
    for b, n in enumerate(lengths):
        keys: list[Tensor | None] = [None] * first
        values: list[Tensor | None] = [None] * first
        for i in range(first, n_layers):
            layer = cache.layers[i]
            keys.append(layer.keys[b, :, :n])
            values.append(layer.values[b, :, :n])
        states.append(BridgePromptKV(keys, values, int(n)))
    return states


def prompts_cache(prompts: Sequence[BridgePromptKV], first: int, n_layers: int, config: Any) -> Any:
    """A ``DynamicCache`` holding the rows' prompt keys/values right-padded to the longest prompt. Cache layers below
    ``first`` (never run) hold layer ``first``'s tensors, so that the decoder sizes its masks from them as from any
    layer."""
    p_width = max(p.length for p in prompts)
    cache = new_cache(config)
    for i in range(n_layers if first < n_layers else 0):  # from the final residual: no block runs
        src = max(i, first)
        prompt_keys: list[Tensor] = [p.keys[src].transpose(0, 1) for p in prompts]  # type: ignore[union-attr]
        prompt_values: list[Tensor] = [p.values[src].transpose(0, 1) for p in prompts]  # type: ignore[union-attr]
        k = pad_stack(prompt_keys, p_width).transpose(1, 2)  # [batch, kv_heads, p_width, d_head]
        v = pad_stack(prompt_values, p_width).transpose(1, 2)
        layer = cache.layers[i]
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache

"""Running some of a ``TransformerBridge``'s decoder layers on a given residual (what start-at-layer needs).

The Bridge's own ``start_at_layer`` runs every block anyway (it feeds the residual through the whole forward and
swaps it back in at block k), which would throw away the fast engine's main saving. So every forward of the
Bridge backend is run by :class:`LayerRunner`:

1. the decoder's own forward runs with each decoder layer replaced by a *recorder* that keeps what it was
   handed (the family's attention masks — full and sliding —, rotary embeddings, positions, cache) and passes
   the hidden state through untouched; the last recorder stops the forward before the final norm. No block
   computes, and every family-specific detail of the preamble is Hugging Face's own;
2. the real layers from ``start`` to ``stop`` run on the residual with those arguments, through the Bridge's
   block wrappers (so every hook of those blocks fires);
3. where logits are wanted, the final norm, the unembedding and the family's final logit soft-cap (Gemma-2/3).

:func:`~alignment_probe.backends.bridge_loading.self_check` checks that route against the Hugging Face model's own
forward at load.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor


class _Recorded(Exception):
    """Raised by the last recorder: the preamble is recorded, the rest of the forward is not wanted."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``index`` during the preamble pass: keeps its arguments, computes nothing."""

    def __init__(self, real: torch.nn.Module, store: dict[int, Any], index: int, last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_real", real)  # not a submodule: the decoder's forward only reads attributes
        self._store, self._index, self._last = store, index, last

    def __getattr__(self, name: str) -> Any:  # some decoders read a layer's attributes (attention_type …)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_real"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self._store[self._index] = (hidden, args[1:], kwargs)
        if self._last:
            raise _Recorded
        return hidden


class LayerRunner:
    """Runs decoder layers ``start … stop−1`` of the Hugging Face model inside a Bridge on a given residual, with
    the arguments the model's own forward hands each layer (module docstring)."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        hf = bridge.original_model
        path = bridge.adapter.component_mapping["blocks"].name  # e.g. "model.layers", "transformer.h"
        parent, _, self._attr = path.rpartition(".")
        self.decoder: torch.nn.Module = hf.get_submodule(parent) if parent else hf
        params = inspect.signature(self.decoder.forward).parameters
        # transformers 5.2x renamed past_key_values to cache; read which this decoder takes
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # Older decoders (GPT-Neo) index each layer's output tuple for attention weights when the config asks for
        # them (the Bridge's does); a recorder returns the hidden state alone, so ask for none.
        self._extra = {"output_attentions": False} if "output_attentions" in params else {}
        self.config = self.decoder.config
        self.soft_cap = getattr(hf.config, "final_logit_softcapping", None) or getattr(
            self.config, "final_logit_softcapping", None
        )

    @property
    def layers(self) -> Any:
        return getattr(self.decoder, self._attr)

    def preamble(
        self,
        inputs: Tensor,
        upto: int,
        *,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        cache: Any,
    ) -> dict[int, Any]:
        """Per layer below ``upto``: (hidden state in, positional args, keyword args) as the decoder's forward
        hands them. ``inputs``: ids, or a float tensor passed as ``inputs_embeds`` (only its shape and dtype matter
        then: the caller brings the residual)."""
        layers = self.layers
        real = list(layers)
        store: dict[int, Any] = {}
        for i in range(upto):
            layers[i] = _Recorder(real[i], store, i, last=i == upto - 1)
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids, **self._extra}
        if cache is not None:
            kwargs.update({self._cache_kw: cache, "use_cache": True})
        key = "inputs_embeds" if inputs.is_floating_point() else "input_ids"
        try:
            self.decoder(**{key: inputs}, **kwargs)
        except _Recorded:
            pass
        finally:
            for i in range(upto):
                layers[i] = real[i]
        return store

    def run(
        self,
        inputs: Tensor,
        start: int,
        stop: int,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
    ) -> Tensor:
        """The residual entering block ``stop``, from ``inputs`` (ids with ``start`` 0, else the residual entering
        block ``start``)."""
        if stop <= start and inputs.is_floating_point():
            return inputs
        store = self.preamble(
            inputs, max(stop, 1), attention_mask=attention_mask, position_ids=position_ids, cache=cache
        )
        hidden = inputs if inputs.is_floating_point() else store[0][0]
        layers = self.layers
        for i in range(start, stop):
            _, args, kwargs = store[i]
            out = layers[i](hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def logits(self, resid: Tensor) -> Tensor:
        """Final norm, unembedding and the family's final soft-cap, on final residuals ``[..., d_model]``."""
        logits: Tensor = self.bridge.unembed(self.bridge.ln_final(resid))
        if self.soft_cap:
            logits = self.soft_cap * torch.tanh(logits / self.soft_cap)
        return logits


def _cache_under_its_old_name(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


def mend_kv_cache(bridge: Any) -> None:
    """The Bridge's attention reads the key/value cache as ``past_key_values`` (or ``layer_past``); transformers
    5.2x hands it to the attention as ``cache``, which the Bridge then ignores (no key/value is cached; its own
    cached generation attends to the new tokens only). A pre-hook on each attention hands it on under the old name."""
    for block in bridge.blocks:
        attn = getattr(block, "attn", None)
        if attn is not None and not getattr(attn, "_alignment_probe_cache_mended", False):
            attn.register_forward_pre_hook(_cache_under_its_old_name, with_kwargs=True)
            object.__setattr__(attn, "_alignment_probe_cache_mended", True)


def positions(mask: Tensor, offset: Tensor | None = None) -> Tensor:
    """Positions of right-padded rows from their 0/1 mask (``cumsum − 1``, as TransformerLens derives them),
    shifted by each row's ``offset`` (its prompt's length)."""
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if offset is None else pos + offset[:, None]

"""The TransformerBridge backend (TransformerLens 4.x): the seam's primitives on the Hugging Face model the Bridge
wraps, and :func:`load`, a local checkpoint unprocessed behind the seam.

The Bridge replaces each Hugging Face submodule by a wrapper that carries HookedTransformer's hook points
(``enable_compatibility_mode(no_processing=True)`` gives them HookedTransformer's names); the Hugging Face
model still runs its own code. Every forward here is run by
:class:`~alignment_probe.backends.bridge_runner.LayerRunner`, which runs only the decoder layers asked for (the
Bridge's own ``start_at_layer`` runs every block anyway); at load
:func:`~alignment_probe.backends.bridge_loading.self_check` checks that route against the Hugging Face model's
own forward on a few tokens (a family whose head does something else is refused, not silently wrong).

Prompt sharing continues completions from the prompt's keys and values in Hugging Face's own ``DynamicCache``
(:mod:`~alignment_probe.backends.bridge_kv`: the keys as the model cached them, rotary applied), with the
attention mask ``[prompt | completion]`` and the positions ``P + j``; it is off for sliding-window attention, as
on the HookedTransformer line.

The modules: this one (the backend: facts, forwards, prompt key/values, weights), ``bridge_hooks`` (the hook
points by name), ``bridge_runner`` (the layer runner), ``bridge_kv`` (the key/value caches), ``bridge_loading``
(booting the Bridge, the load-time check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from alignment_probe.backends import register
from alignment_probe.backends.base import (
    Backend,
    Capture,
    Hooks,
    ModelFacts,
    PromptKV,
    length_mask,
)
from alignment_probe.backends.bridge_attention import bridge_attention
from alignment_probe.backends.bridge_hooks import BridgeHooks
from alignment_probe.backends.bridge_kv import (
    BridgeDecodeState,
    BridgePromptKV,
    new_cache,
    prompt_states,
    prompts_cache,
)
from alignment_probe.backends.bridge_loading import boot, checkpoint_shape, self_check
from alignment_probe.backends.bridge_runner import LayerRunner, mend_kv_cache, positions
from alignment_probe.backends.bridge_weights import hooked_values


class BridgeBackend(Backend):
    """The seam on a ``TransformerBridge`` in compatibility mode, unprocessed (logits equal Hugging Face's)."""

    name: ClassVar[str] = "bridge"

    def __init__(self, model: Any, tokenizer: Any = None):
        self.model: Any = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.runner = LayerRunner(model)
        mend_kv_cache(model)
        self.hook_points = BridgeHooks(model)

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def facts(self) -> ModelFacts:  # type: ignore[override]  # read from the config each time: models may move
        cfg = self.model.cfg
        hf = self.model.original_model.config
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return ModelFacts(
            architecture=str((getattr(hf, "architectures", None) or [cfg.architecture])[0]),
            n_layers=int(cfg.n_layers),
            d_model=int(cfg.d_model),
            d_vocab=int(cfg.d_vocab),
            n_heads=int(cfg.n_heads),
            n_kv_heads=int(n_kv),
            d_head=int(cfg.d_head),
            d_mlp=None if cfg.d_mlp is None else int(cfg.d_mlp),
            n_ctx=getattr(cfg, "n_ctx", None),
            normalization_type=cfg.normalization_type,
            positional_embedding_type=str(cfg.positional_embedding_type),
            act_fn=cfg.act_fn,
            device=self.device,
            dtype=self.dtype,
        )

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (with a device map, the blocks may sit elsewhere)."""
        return torch.device(self.model.cfg.device)

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.model.cfg.dtype
        return dtype

    def shares_prompt_kv(self) -> bool:
        cfg = self.runner.config
        types = set(getattr(cfg, "layer_types", None) or ())
        sliding = bool(getattr(cfg, "sliding_window", None)) and (not types or "sliding_attention" in types)
        sliding = sliding or "sliding_attention" in types or bool(getattr(cfg, "attention_types", None))  # GPT-Neo
        return (
            not sliding
            and str(self.model.cfg.positional_embedding_type) in ("rotary", "standard")
            and getattr(self.model.cfg, "attention_dir", "causal") == "causal"
        )

    # -- hooks ----------------------------------------------------------------------------------------
    def hooked(self, hooks: Hooks) -> contextlib.AbstractContextManager[None]:
        """Adds ``hooks`` to their points at a new context level (the hook sees the name it was asked by), removes
        exactly those on exit."""
        return self.hook_points.hooked(hooks)

    # -- forwards -------------------------------------------------------------------------------------
    def _forward(
        self,
        inputs: Tensor,
        *,
        start: int | None,
        stop: int | None,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        cache: Any,
        hooks: Hooks,
        capture: Capture,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        store: dict[str, Tensor] = {}
        first = 0 if start is None else start
        last = self.n_layers if stop is None else stop
        inputs = inputs.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
            if position_ids is None:
                position_ids = positions(attention_mask)[:, -inputs.shape[1] :]
        with self.hooked([*hooks, *self.hook_points.capturing(capture, store, self.device)]):
            out = self.runner.run(
                inputs, first, last, attention_mask=attention_mask, position_ids=position_ids, cache=cache
            )
            if stop is None:
                out = self.runner.logits(out)
        return out.to(self.device), store

    def run(
        self,
        inputs: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        attention_mask: Tensor | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self._forward(
            inputs,
            start=start_at_layer,
            stop=stop_at_layer,
            attention_mask=attention_mask,
            position_ids=None,
            cache=None,
            hooks=hooks,
            capture=capture,
        )

    def unembed(self, resid: Tensor) -> Tensor:
        return self.runner.logits(resid[None])[0].to(resid.device)

    def _new_cache(self) -> Any:
        return new_cache(self.runner.config)

    def run_prompts(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor], list[PromptKV]]:
        cache = self._new_cache()
        mask = length_mask(lengths, inputs.shape[1], self.device)
        out, acts = self._forward(
            inputs,
            start=start_at_layer,
            stop=self.n_layers,
            attention_mask=mask,
            position_ids=None,
            cache=cache,
            hooks=hooks,
            capture=capture,
        )
        first = 0 if start_at_layer is None else start_at_layer
        states: list[PromptKV] = list(prompt_states(cache, lengths, first, self.n_layers))
        return out, acts, states

    def run_continuations(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        prompts: Sequence[BridgePromptKV],  # type: ignore[override]
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Hugging Face's ``DynamicCache`` holding the rows' prompt keys/values right-padded to the longest prompt,
        the mask ``[prompt mask | completion mask]`` (padded prompt keys masked out) and positions ``P + j``.
        Cache layers below ``start_at_layer`` (never run) hold layer ``start_at_layer``'s tensors, so that the
        decoder sizes its masks from them as from any layer."""
        first = 0 if start_at_layer is None else start_at_layer
        p_width = max(p.length for p in prompts)
        cache = prompts_cache(prompts, first, self.n_layers, self.runner.config)
        prompt_lengths = torch.tensor([p.length for p in prompts], device=self.device)
        prompt_mask = length_mask([p.length for p in prompts], p_width, self.device)
        mask = length_mask(lengths, inputs.shape[1], self.device)
        return self._forward(
            inputs,
            start=start_at_layer,
            stop=self.n_layers,
            attention_mask=torch.cat([prompt_mask, mask], dim=1),
            position_ids=positions(mask, prompt_lengths),
            cache=cache,
            hooks=hooks,
            capture=capture,
        )

    def new_decode_state(self) -> BridgeDecodeState:
        return BridgeDecodeState(self._new_cache())

    def decode_step(self, tokens: Tensor, state: BridgeDecodeState, *, stop_at_layer: int | None = None) -> Tensor:  # type: ignore[override]
        n = tokens.shape[1]
        positions = torch.arange(state.seen, state.seen + n, device=self.device)[None]
        out, _ = self._forward(
            tokens,
            start=None,
            stop=stop_at_layer,
            attention_mask=None,
            position_ids=positions,
            cache=state.cache,
            hooks=(),
            capture=None,
        )
        state.seen += n
        return out

    # -- weights --------------------------------------------------------------------------------------
    def _hf_path(self, name: str) -> str | None:
        mapping = self.model.adapter.component_mapping
        if name.startswith("blocks."):
            return f"{mapping['blocks'].name}.{name.split('.')[1]}"
        return mapping[name].name if name in mapping else None

    def part(self, name: str) -> torch.nn.Module | None:
        if name.startswith("blocks."):
            block: torch.nn.Module = self.model.blocks[int(name.split(".")[1])]
            return block
        return getattr(self.model, name, None) if self._hf_path(name) is not None else None

    def swap_part(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """The Bridge's component goes both where the Hugging Face model runs it and where the Bridge names it."""
        old = self.part(name)
        path = self._hf_path(name)
        if old is None or path is None:
            raise KeyError(f"{name}: no such part to swap in this {self.facts.architecture}")
        parent, _, attr = path.rpartition(".")
        owner = self.model.original_model.get_submodule(parent) if parent else self.model.original_model
        setattr(owner, attr, module)  # a block: the ModuleList the Bridge's ``blocks`` also is
        if not name.startswith("blocks."):
            setattr(self.model, name, module)
        self.hook_points.forget()  # the hook points at this part are the swapped-in component's now
        return old

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The Bridge's HookedTransformer-named parameters, with grouped key/value weights as HookedTransformer keeps
        them (``attn._W_K``/``_W_V``/``_b_K``/``_b_V``, one per key/value head; the Bridge repeats them per query
        head), so weight diffs count each parameter once on both backends."""

        n_heads, n_kv = self.facts.n_heads, self.facts.n_kv_heads
        group = n_heads // n_kv
        for name, tensor in hooked_values(self.model.tl_named_parameters(), self.model, self.facts.architecture):
            leaf = name.rsplit(".", 1)[-1]
            if group > 1 and leaf in ("W_K", "W_V", "b_K", "b_V"):
                yield f"{name.rsplit('.', 1)[0]}._{leaf}", tensor[::group]
            else:
                yield name, tensor

    def attention(self, layer: int) -> Any:

        return bridge_attention(self.model, layer, self.facts.architecture)


def load(
    path: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
    tokenizer: Any = None,
    device_map: Any = None,
) -> BridgeBackend:
    """A local Hugging Face checkpoint directory as an unprocessed ``TransformerBridge`` behind the seam.

    ``device_map`` (``"auto"``, ``"balanced"`` or a dict of module name → device) splits the model through
    accelerate instead of putting it on ``device``. The Bridge gets its own copy of the tokenizer: it sets a BOS
    token on tokenizers that have none (Qwen), which would change how the pair's text is tokenised."""
    bridge, tokenizer, source = boot(
        path, device=device, dtype=dtype, source=source, tokenizer=tokenizer, device_map=device_map
    )
    backend = BridgeBackend(bridge, tokenizer)
    self_check(backend, source)
    register(backend)
    return backend


def wrap(model: Any) -> BridgeBackend:
    return BridgeBackend(model, getattr(model, "tokenizer", None))


__all__ = ["BridgeBackend", "BridgePromptKV", "checkpoint_shape", "load", "wrap"]

"""The TransformerBridge backend (TransformerLens 4.x): loading a local checkpoint unprocessed, and the seam's
primitives on the Hugging Face model the Bridge wraps.

The Bridge replaces each Hugging Face submodule by a wrapper that carries HookedTransformer's hook points
(``enable_compatibility_mode(no_processing=True)`` gives them HookedTransformer's names); the Hugging Face
model still runs its own code. Its ``start_at_layer`` runs every block anyway (it feeds the residual through
the whole forward and swaps it back in at block k), which would throw away the fast engine's main saving. So
every forward here is run by :class:`_LayerRunner`:

1. the decoder's own forward runs with each decoder layer replaced by a *recorder* that keeps what it was
   handed (the family's attention masks — full and sliding —, rotary embeddings, positions, cache) and passes
   the hidden state through untouched; the last recorder stops the forward before the final norm. No block
   computes, and every family-specific detail of the preamble is Hugging Face's own;
2. the real layers from ``start`` to ``stop`` run on the residual with those arguments, through the Bridge's
   block wrappers (so every hook of those blocks fires);
3. where logits are wanted, the final norm, the unembedding and the family's final logit soft-cap (Gemma-2/3).

At load :func:`load` checks that route against the Hugging Face model's own forward on a few tokens (a family
whose head does something else is refused, not silently wrong).

Prompt sharing continues completions from the prompt's keys and values in Hugging Face's own ``DynamicCache``
(the keys as the model cached them, rotary applied), with the attention mask ``[prompt | completion]`` and the
positions ``P + j``; it is off for sliding-window attention, as on the HookedTransformer line.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    capture_filter,
    length_mask,
    pad_stack,
)
from alignment_probe.backends.loading import check_finite_weights, load_tokenizer, quiet_loading, resolve_dtype
from alignment_probe.checkpoint_files import check_checkpoint_dir
from alignment_probe.errors import ArchitectureNotSupportedError, CheckpointError, ConfigError

# Tokens the load-time check runs through both routes; the tolerance it allows (float32 rounding of a
# different summation order is ~1e-6; a missing soft-cap or scale is far larger).
_SELF_CHECK_TOKENS = 8
_SELF_CHECK_ATOL = {torch.float32: 1e-4, torch.float64: 1e-8}


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


class _LayerRunner:
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


def _mend_kv_cache(bridge: Any) -> None:
    """The Bridge's attention reads the key/value cache as ``past_key_values`` (or ``layer_past``); transformers
    5.2x hands it to the attention as ``cache``, which the Bridge then ignores (no key/value is cached; its own
    cached generation attends to the new tokens only). A pre-hook on each attention hands it on under the old name."""
    for block in bridge.blocks:
        attn = getattr(block, "attn", None)
        if attn is not None and not getattr(attn, "_alignment_probe_cache_mended", False):
            attn.register_forward_pre_hook(_cache_under_its_old_name, with_kwargs=True)
            object.__setattr__(attn, "_alignment_probe_cache_mended", True)


def _positions(mask: Tensor, offset: Tensor | None = None) -> Tensor:
    """Positions of right-padded rows from their 0/1 mask (``cumsum − 1``, as TransformerLens derives them),
    shifted by each row's ``offset`` (its prompt's length)."""
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if offset is None else pos + offset[:, None]


def _on_its_device(fn: Any) -> Any:
    """A hook function whose replacement lands on the device of the activation it replaces: with a device map the
    value written may come from a block (or the other model) on another device."""

    def hook(act: Tensor, hook: Any) -> Any:
        out = fn(act, hook=hook)
        return out.to(act.device) if isinstance(out, Tensor) and out.device != act.device else out

    return hook


def _ht_name_first(name: str) -> tuple[bool, int]:
    return name.endswith((".hook_in", ".hook_out")), name.count(".")


class BridgeBackend(Backend):
    """The seam on a ``TransformerBridge`` in compatibility mode, unprocessed (logits equal Hugging Face's)."""

    name: ClassVar[str] = "bridge"

    def __init__(self, model: Any, tokenizer: Any = None):
        self.model: Any = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.runner = _LayerRunner(model)
        _mend_kv_cache(model)
        self._points: dict[str, Any] | None = None  # hook name → hook point, built on first use
        self._names_of_point: list[list[str]] = []
        self._paths: dict[str, str] | None = None  # hook name → its module path in the Bridge

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
    def _hook_points(self) -> dict[str, Any]:
        """Hook name → hook point, every name the Bridge knows (HookedTransformer's and its own).

        Resolved through each point's module path, not the Bridge's registry: after :meth:`swap_part` the path
        leads into the swapped-in component (the registry would still hold the old one's points)."""
        if self._points is None:
            if self._paths is None:
                where = {id(m): path for path, m in self.model.named_modules()}
                self._paths = {name: where[id(p)] for name, p in self.model.hook_dict.items() if id(p) in where}
            self._points = {name: self.model.get_submodule(path) for name, path in self._paths.items()}
            by_point: dict[int, list[str]] = {}
            for name, point in self._points.items():
                by_point.setdefault(id(point), []).append(name)
            # one name list per point, HookedTransformer's name first: the Bridge's own names for the same point
            # are its wrappers' ``….hook_in``/``….hook_out`` (``blocks.0.attn.o.hook_in`` is ``attn.hook_z``)
            self._names_of_point = [sorted(names, key=_ht_name_first) for names in by_point.values()]
        return self._points

    @contextmanager
    def hooked(self, hooks: Hooks) -> Iterator[None]:
        """Adds ``hooks`` to their points at a new context level (the hook sees the name it was asked by), removes
        exactly those on exit."""
        if not hooks:
            yield
            return
        model, points = self.model, self._hook_points()
        model.context_level += 1
        level = model.context_level
        added = []
        try:
            for target, fn in hooks:
                names = [target] if isinstance(target, str) else self._matching(target)
                for name in names:
                    if name not in points:
                        raise KeyError(f"{name}: no such hook point on this TransformerBridge")
                    point = points[name]
                    point.add_hook(_on_its_device(fn), dir="fwd", level=level, alias_names=[name])
                    added.append(point)
            yield
        finally:
            for point in added:
                point.remove_hooks("fwd", level=level)
            model.context_level -= 1

    def _matching(self, keep: Any) -> list[str]:
        """Per hook point, the first of its names (HookedTransformer's first) that ``keep`` accepts: a filter that
        accepts two names of one point still hooks it once."""
        self._hook_points()
        return [next(n for n in names if keep(n)) for names in self._names_of_point if any(keep(n) for n in names)]

    def _capturing(self, capture: Capture, store: dict[str, Tensor]) -> list[tuple[str, Any]]:
        keep = capture_filter(capture)
        if keep is None:
            return []

        def save(act: Tensor, hook: Any) -> None:
            store[hook.name] = act.to(self.device)  # with a device map, the block's device may be another

        return [(name, save) for name in self._matching(keep)]

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
                position_ids = _positions(attention_mask)[:, -inputs.shape[1] :]
        with self.hooked([*hooks, *self._capturing(capture, store)]):
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
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=self.runner.config)

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
        states: list[PromptKV] = []
        for b, n in enumerate(lengths):
            keys: list[Tensor | None] = [None] * first
            values: list[Tensor | None] = [None] * first
            for i in range(first, self.n_layers):
                layer = cache.layers[i]
                keys.append(layer.keys[b, :, :n])
                values.append(layer.values[b, :, :n])
            states.append(BridgePromptKV(keys, values, int(n)))
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
        cache = self._new_cache()
        for i in range(self.n_layers if first < self.n_layers else 0):  # from the final residual: no block runs
            src = max(i, first)
            prompt_keys: list[Tensor] = [p.keys[src].transpose(0, 1) for p in prompts]  # type: ignore[union-attr]
            prompt_values: list[Tensor] = [p.values[src].transpose(0, 1) for p in prompts]  # type: ignore[union-attr]
            k = pad_stack(prompt_keys, p_width).transpose(1, 2)  # [batch, kv_heads, p_width, d_head]
            v = pad_stack(prompt_values, p_width).transpose(1, 2)
            layer = cache.layers[i]
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        prompt_lengths = torch.tensor([p.length for p in prompts], device=self.device)
        prompt_mask = length_mask([p.length for p in prompts], p_width, self.device)
        mask = length_mask(lengths, inputs.shape[1], self.device)
        return self._forward(
            inputs,
            start=start_at_layer,
            stop=self.n_layers,
            attention_mask=torch.cat([prompt_mask, mask], dim=1),
            position_ids=_positions(mask, prompt_lengths),
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
        self._points = None  # the hook points at this part are the swapped-in component's now
        return old

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The Bridge's HookedTransformer-named parameters, with grouped key/value weights as HookedTransformer keeps
        them (``attn._W_K``/``_W_V``/``_b_K``/``_b_V``, one per key/value head; the Bridge repeats them per query
        head), so weight diffs count each parameter once on both backends."""
        n_heads, n_kv = self.facts.n_heads, self.facts.n_kv_heads
        group = n_heads // n_kv
        for name, tensor in self.model.tl_named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if group > 1 and leaf in ("W_K", "W_V", "b_K", "b_V"):
                yield f"{name.rsplit('.', 1)[0]}._{leaf}", tensor[::group]
            else:
                yield name, tensor

    def attention(self, layer: int) -> Any:
        raise ConfigError(
            "AtP*'s QK fix recomputes attention patterns through HookedTransformer's attention module, which the "
            "TransformerBridge backend (TransformerLens 4.x) does not have. Estimate the key rows with plain AtP "
            "(estimator 'atp'), patch them exactly (kv_head_patch), or run on the HookedTransformer line "
            "(transformer-lens 3.9, --backend hooked)."
        )


# -- loading --------------------------------------------------------------------------------------------


def _bridge_config(path: str, source: str) -> Any:
    """The Bridge's config for the checkpoint in ``path`` (its config.json only), refusing what it cannot adapt."""
    from transformer_lens.model_bridge.sources.transformers import (  # type: ignore[attr-defined,unused-ignore]  # 4.x
        source as tf_source,
    )
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # unreadable or unknown model_type
        raise CheckpointError(
            f"The config.json of {source} cannot be read by transformers ({type(exc).__name__}: {exc})."
        ) from exc
    try:
        arch = tf_source.determine_architecture_from_hf_config(hf_config)  # type: ignore[no-untyped-call,unused-ignore]
        cfg = tf_source.build_bridge_config_from_hf(hf_config, arch, path, torch.float32)
        tf_source.architecture_adapter_factory.ArchitectureAdapterFactory.select_architecture_adapter(cfg)
    except (ValueError, NotImplementedError, KeyError, AttributeError) as exc:
        raise ArchitectureNotSupportedError(
            f"TransformerLens's TransformerBridge cannot adapt the checkpoint {source} ({type(exc).__name__}: "
            f"{exc}). Pass a checkpoint of an architecture it supports (transformer_lens.supported_models)."
        ) from exc
    return cfg


def _resident(model: torch.nn.Module) -> torch.nn.Module:
    """The parameters that hold data here (a ``disk`` device map leaves offloaded ones on the meta device until
    their block runs), under their names, for the finite-weights check."""
    holder = torch.nn.Module()
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.device.type != "meta":
            holder.register_parameter(f"p{i}", p)
            holder._parameters[name] = holder._parameters.pop(f"p{i}")  # the name in messages, dots and all
    return holder


def checkpoint_shape(path: str, source: str) -> tuple[int | None, int]:
    """(n_ctx, n_layers) the Bridge gives the checkpoint in ``path`` (its config only, no weights read)."""
    cfg = _bridge_config(path, source)
    return getattr(cfg, "n_ctx", None), int(cfg.n_layers)


def _self_check(backend: BridgeBackend, source: str) -> None:
    """The layer runner's logits equal the Hugging Face model's own forward on a few tokens, else refuse."""
    atol = _SELF_CHECK_ATOL.get(backend.dtype)
    if atol is None:  # half precision: the two routes round differently; float32 is where the check means something
        return
    vocab = backend.d_vocab
    ids = (torch.arange(_SELF_CHECK_TOKENS) * 7919 % vocab)[None].to(backend.device)
    with torch.inference_mode():
        ours, _ = backend.run(ids)
        theirs = backend.model.original_model(input_ids=ids).logits.to(ours.device)
    err = (ours.float().log_softmax(-1) - theirs.float().log_softmax(-1)).abs().max().item()
    if not err <= atol:
        raise ArchitectureNotSupportedError(
            f"{source}: running this {backend.facts.architecture}'s decoder layers one by one (what start-at-layer "
            f"needs) does not reproduce its own forward (log-prob error {err:.2e}); its forward does something the "
            "TransformerBridge backend does not model. Use the HookedTransformer line (--backend hooked) for it."
        )


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
    from transformer_lens.model_bridge import TransformerBridge

    real = Path(path).expanduser().resolve()
    check_checkpoint_dir(real)
    source = source or str(real)
    torch_dtype = resolve_dtype(dtype)
    _bridge_config(str(real), source)  # refuses an unsupported architecture before any weights load
    if tokenizer is None:
        tokenizer = load_tokenizer(real, source)
    where: dict[str, Any] = {"device_map": device_map} if device_map is not None else {"device": device}
    try:
        with quiet_loading():
            bridge = TransformerBridge.boot_transformers(
                str(real), dtype=torch_dtype, tokenizer=copy.deepcopy(tokenizer), **where
            )
    except (ArchitectureNotSupportedError, CheckpointError):
        raise
    except ValueError as exc:  # a device map accelerate or the Bridge refuses
        if device_map is not None:
            raise ConfigError(f"--device-map {device_map!r} cannot place {source}: {exc}") from exc
        raise CheckpointError(f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}).") from exc
    except Exception as exc:  # truncated weights, shapes that disagree with config.json
        raise CheckpointError(
            f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}). The weight files "
            "may be truncated (an interrupted copy or download) or disagree with config.json; save "
            "or download the checkpoint again (--debug shows the traceback)."
        ) from exc
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.eval()
    if getattr(bridge.cfg, "original_architecture", None) is None:  # HookedTransformer's config names the class
        bridge.cfg.original_architecture = (getattr(bridge.original_model.config, "architectures", None) or [None])[0]
    check_finite_weights(_resident(bridge), source)
    backend = BridgeBackend(bridge, tokenizer)
    _self_check(backend, source)
    register(backend)
    return backend


def wrap(model: Any) -> BridgeBackend:
    return BridgeBackend(model, getattr(model, "tokenizer", None))


__all__ = ["BridgeBackend", "BridgePromptKV", "checkpoint_shape", "load", "wrap"]

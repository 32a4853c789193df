"""The HookedTransformer backend (TransformerLens 3.9): loading a local checkpoint unprocessed, and the seam's
primitives on TransformerLens's own forward (``start_at_layer``/``stop_at_layer``, its key/value cache).

Loading builds the TransformerLens config from the checkpoint's own config.json (never from a built-in table:
:mod:`alignment_probe.families` for the families TransformerLens configures only by official name), converts
the Hugging Face weights and loads them with every processing flag off, so logits equal Hugging Face's; the
Hugging Face copy is released before :func:`load` returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

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
from alignment_probe.backends.loading import (
    check_finite_weights,
    load_hf_model,
    load_tokenizer,
    name_safe_path,
    resolve_dtype,
)
from alignment_probe.checkpoint_files import check_checkpoint_dir, read_checkpoint_config
from alignment_probe.errors import ArchitectureNotSupportedError
from alignment_probe.families import build_config, check_architecture


@dataclass
class HookedPromptKV:
    """One prompt's keys and values per block (None below the block its forward started at), unpadded."""

    keys: list[Tensor | None]  # per block: [prompt_len, kv_heads, d_head]
    values: list[Tensor | None]
    length: int


def _kv_cache_classes() -> tuple[type[Any], type[Any]]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    return TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry


class HookedBackend(Backend):
    """The seam on a ``HookedTransformer`` (every forward is TransformerLens's own)."""

    name: ClassVar[str] = "hooked"

    def __init__(self, model: HookedTransformer, tokenizer: Any = None):
        self.model: HookedTransformer = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)

    @property
    def facts(self) -> ModelFacts:  # type: ignore[override]  # read from the config each time: models may move
        cfg = self.model.cfg
        n_kv = cfg.n_key_value_heads
        if n_kv is None or getattr(cfg, "ungroup_grouped_query_attention", False):
            n_kv = cfg.n_heads
        return ModelFacts(
            architecture=str(cfg.original_architecture or ""),
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
            device=torch.device(cfg.device or "cpu"),
            dtype=cfg.dtype,
        )

    @property
    def n_layers(self) -> int:  # read per forward: cheaper than the whole facts record
        return int(self.model.cfg.n_layers)

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device or "cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cfg.dtype

    def shares_prompt_kv(self) -> bool:
        cfg = self.model.cfg
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

    # -- forwards -------------------------------------------------------------------------------------
    @contextmanager
    def hooked(self, hooks: Hooks) -> Iterator[None]:
        """``model.hooks(...)`` without its cost: that resets every hook point of the model on exit, ~1 ms of Python
        per forward on the bundled model; this adds and removes only these hooks, at their own context level."""
        if not hooks:
            yield
            return
        model = self.model
        model.context_level += 1
        level = model.context_level
        points = []
        try:
            for target, fn in hooks:
                names = [target] if isinstance(target, str) else [n for n in model.hook_dict if target(n)]
                for name in names:
                    point = model.hook_dict[name]
                    point.add_hook(fn, dir="fwd", level=level)
                    points.append(point)
            yield
        finally:
            for point in points:
                point.remove_hooks("fwd", level=level)
            model.context_level -= 1

    def run(
        self,
        inputs: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        attention_mask: Tensor | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if start_at_layer is not None:
            kwargs["start_at_layer"] = start_at_layer
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        model = self.model
        inputs = inputs.to(model.cfg.device)
        names_filter = capture_filter(capture)
        with self.hooked(hooks):
            if names_filter is None:
                out: Tensor = model(inputs, stop_at_layer=stop_at_layer, **kwargs)
                return out, {}
            out, cache = model.run_with_cache(  # type: ignore[assignment,unused-ignore]  # the residual or the logits, a Tensor
                inputs, names_filter=names_filter, stop_at_layer=stop_at_layer, return_cache_object=False, **kwargs
            )
        return out, dict(cache)

    def unembed(self, resid: Tensor) -> Tensor:
        return self.model.unembed(self.model.ln_final(resid[None]))[0]

    def run_prompts(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor], list[PromptKV]]:
        KVCache, _ = _kv_cache_classes()
        device = self.model.cfg.device
        cache = KVCache.init_cache(self.model.cfg, device, inputs.shape[0])
        mask = length_mask(lengths, inputs.shape[1], device)
        out, acts = self.run(
            inputs,
            start_at_layer=start_at_layer,
            stop_at_layer=self.n_layers,
            attention_mask=mask,
            hooks=hooks,
            capture=capture,
            past_kv_cache=cache,
        )
        first = 0 if start_at_layer is None else start_at_layer
        states: list[PromptKV] = []
        for b, n in enumerate(lengths):
            keys = [None if i < first else e.past_keys[b, :n] for i, e in enumerate(cache.entries)]
            values = [None if i < first else e.past_values[b, :n] for i, e in enumerate(cache.entries)]
            states.append(HookedPromptKV(keys, values, int(n)))
        return out, acts, states

    def run_continuations(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        prompts: Sequence[HookedPromptKV],  # type: ignore[override]
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A frozen ``TransformerLensKeyValueCache`` (TransformerLens's own cache and entries, public constructors)
        of the rows' prompt keys/values right-padded to the longest prompt, with the attention mask
        ``[prompt mask | completion mask]``: padded prompt keys are masked out, and TransformerLens derives rotary
        (and absolute) positions from the mask (``cumsum − 1``), so completion token j of a P-token prompt sits at
        P + j as in the full sequence."""
        KVCache, Entry = _kv_cache_classes()
        device = self.model.cfg.device
        p_width = max(p.length for p in prompts)
        first = 0 if start_at_layer is None else start_at_layer
        entries: list[Any] = []
        for i in range(self.n_layers):
            if i < first:
                entries.append(None)
                continue
            # one statement each, so the ignores stay on their lines whatever the formatter does
            prompt_keys: list[Tensor] = [p.keys[i] for p in prompts]  # type: ignore[misc]
            prompt_values: list[Tensor] = [p.values[i] for p in prompts]  # type: ignore[misc]
            entries.append(Entry(pad_stack(prompt_keys, p_width), pad_stack(prompt_values, p_width), frozen=True))
        prompt_mask = length_mask([p.length for p in prompts], p_width, device)
        mask = length_mask(lengths, inputs.shape[1], device)
        cache = KVCache(entries=entries, previous_attention_mask=prompt_mask, frozen=True)
        # From tokens TransformerLens appends the prompt mask and offsets positions itself; from a residual the
        # blocks need the whole mask, prompt and completion.
        full = mask if start_at_layer is None else torch.cat([prompt_mask, mask], dim=1)
        return self.run(
            inputs,
            start_at_layer=start_at_layer,
            stop_at_layer=self.n_layers,
            attention_mask=full,
            hooks=hooks,
            capture=capture,
            past_kv_cache=cache,
        )

    def new_decode_state(self) -> Any:
        KVCache, _ = _kv_cache_classes()
        return KVCache.init_cache(self.model.cfg, self.model.cfg.device, 1)

    def decode_step(self, tokens: Tensor, state: Any, *, stop_at_layer: int | None = None) -> Tensor:
        out: Tensor = self.model(tokens.to(self.model.cfg.device), past_kv_cache=state, stop_at_layer=stop_at_layer)
        return out

    # -- weights --------------------------------------------------------------------------------------
    def part(self, name: str) -> torch.nn.Module | None:
        if name.startswith("blocks."):
            block: torch.nn.Module = self.model.blocks[int(name.split(".")[1])]
            return block
        return getattr(self.model, name, None)

    def swap_part(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        old = self.part(name)
        assert old is not None, f"{name}: no such part to swap"
        if name.startswith("blocks."):
            self.model.blocks[int(name.split(".")[1])] = module  # type: ignore[assignment,unused-ignore]  # the other model's block
        else:
            setattr(self.model, name, module)
        return old

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.model.named_parameters())

    def attention(self, layer: int) -> Any:
        return self.model.blocks[layer].attn


# -- loading --------------------------------------------------------------------------------------------


class _SoftCappedUnembed(torch.nn.Module):
    """Unembed, then ``cap * tanh(logits / cap)`` (Gemma-2's final logit soft-capping).

    TransformerLens applies the cap in ``forward()`` after ``model.unembed``; scoring unembeds only
    the completion positions by calling ``model.unembed`` itself and would skip it. Moving the cap into
    the module (and switching it off in the config) gives both routes HF's logits exactly once.
    Parameters keep their names (``unembed.W_U``, ``unembed.b_U``), so fingerprints are unchanged."""

    def __init__(self, unembed: Any, cap: float) -> None:  # TransformerLens's Unembed
        super().__init__()
        self.W_U: torch.Tensor = unembed.W_U
        self.b_U: torch.Tensor = unembed.b_U
        self.cap = cap

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        logits = residual @ self.W_U + self.b_U
        return self.cap * torch.tanh(logits / self.cap)


def _move_soft_cap_into_unembed(model: HookedTransformer) -> None:
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    if cap is not None and cap > 0:
        model.unembed = _SoftCappedUnembed(model.unembed, float(cap))  # type: ignore[assignment,unused-ignore]  # its forward, W_U and b_U
        model.cfg.output_logits_soft_cap = -1.0


@contextmanager
def _conversion_errors(source: str, arch: str) -> Iterator[None]:
    """TransformerLens's failures to build a config or convert weights, as one error that names the checkpoint."""
    try:
        yield
    except ArchitectureNotSupportedError as exc:
        raise ArchitectureNotSupportedError(f"{source}: {exc}") from exc
    except (NotImplementedError, ValueError, KeyError, AttributeError, AssertionError) as exc:
        raise ArchitectureNotSupportedError(
            f"TransformerLens cannot convert the {arch} checkpoint {source} ({type(exc).__name__}: {exc}). It supports "
            "the released variants of each family; use one (--debug shows the traceback)."
        ) from exc


def load(
    path: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
    tokenizer: Any = None,
    device_map: Any = None,
) -> HookedBackend:
    """A local Hugging Face checkpoint directory as an unprocessed ``HookedTransformer`` behind the seam
    (``device_map`` must be None: the split is the Bridge's, ``backends.check_device_map``)."""
    from transformer_lens import loading_from_pretrained as loading

    from alignment_probe.backends import check_device_map

    check_device_map("hooked", device_map)
    real = Path(path).expanduser().resolve()
    check_checkpoint_dir(real)
    source = source or str(real)
    torch_dtype = resolve_dtype(dtype)
    safe = str(name_safe_path(real))
    arch = check_architecture(read_checkpoint_config(real), source)  # before reading any weights
    if tokenizer is None:
        tokenizer = load_tokenizer(real, source)
    hf_model = load_hf_model(safe, torch_dtype, source)
    with _conversion_errors(source, arch):
        cfg = build_config(safe, hf_model.config.to_dict(), device=device, dtype=torch_dtype)
        state_dict = loading.get_pretrained_state_dict(safe, cfg, hf_model, dtype=torch_dtype)
    del hf_model  # the state dict still views its tensors; they go when it is emptied below
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(  # empties state_dict key by key, releasing the Hugging Face tensors
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    del state_dict
    gc.collect()
    _move_soft_cap_into_unembed(model)
    model.to(device, print_details=False)  # TransformerLens would print "Moving model to device" for each model
    model.eval()
    check_finite_weights(model, source)
    store_weights_column_major(model)
    backend = HookedBackend(model, tokenizer)
    register(backend)
    return backend


def wrap(model: HookedTransformer) -> HookedBackend:
    return HookedBackend(model, getattr(model, "tokenizer", None))


def checkpoint_shape(path: str, source: str) -> tuple[int | None, int]:
    """(n_ctx, n_layers) of the TransformerLens config the checkpoint in ``path`` gets (its config only)."""
    from transformers import AutoConfig

    real = Path(path)
    arch = check_architecture(read_checkpoint_config(real), source)
    safe = str(name_safe_path(real))
    with _conversion_errors(source, arch):
        cfg = build_config(safe, AutoConfig.from_pretrained(safe).to_dict(), device="cpu", dtype=torch.float32)
    return getattr(cfg, "n_ctx", None), int(cfg.n_layers)


# The attention's 3-D weights, stored so that TransformerLens's rearrangement into a ``[out, in]`` matrix
# is a view: the axes permutation that takes the stored (contiguous) tensor to the parameter's shape.
_ATTENTION_LAYOUT = {
    "W_Q": (0, 2, 1),
    "W_K": (0, 2, 1),
    "W_V": (0, 2, 1),
    "_W_K": (0, 2, 1),
    "_W_V": (0, 2, 1),
    "W_O": (1, 2, 0),
}


def store_weights_column_major(model: torch.nn.Module) -> None:
    """Store every weight in the memory layout TransformerLens's matrix products read (same values).

    TransformerLens multiplies activations by ``W`` through ``W.T``-shaped kernels; with a row-major
    ``W`` PyTorch copies ``W.T.contiguous()`` on every call, which on a CPU costs about as much as the
    matrix product itself (measured: a 1B forward 10–13 s → 5.5 s). Likewise the attention rearranges
    ``W_Q``/``W_K``/``W_V`` ``[head, d_model, d_head]`` into ``[(head d_head), d_model]`` and ``W_O``
    ``[head, d_head, d_model]`` into ``[d_model, (head d_head)]`` on every call, a copy unless the memory
    already has that order. The products then read the same values in the same layout as the copies
    they replace: outputs are bit-identical.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            order = _ATTENTION_LAYOUT.get(name.rsplit(".", 1)[-1])
            if p.dim() == 2 and p.is_contiguous():
                p.data = p.data.T.contiguous().T
            elif p.dim() == 3 and order is not None and p.is_contiguous():
                inverse = tuple(order.index(i) for i in range(3))  # stored axes: the parameter's, permuted
                p.data = p.data.permute(*inverse).contiguous().permute(*order)


__all__ = ["HookedBackend", "HookedPromptKV", "checkpoint_shape", "load", "store_weights_column_major", "wrap"]

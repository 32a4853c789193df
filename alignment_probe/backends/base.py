"""The backend seam: the few primitives the engine and the experiments ask of a loaded model.

Everything above this layer (the engines, scoring, generation, exports, the experiments) reaches a model
only through a :class:`Backend`; only the modules of ``alignment_probe.backends`` touch a TransformerLens
model's internals (``start_at_layer``, its key/value cache, ``ln_final``/``unembed``, ``blocks``). Two
implementations: :mod:`~alignment_probe.backends.hooked` (``HookedTransformer``, TransformerLens 3.9) and
:mod:`~alignment_probe.backends.bridge` (``TransformerBridge``, TransformerLens 4.x).

Conventions every implementation keeps, so the layers above never branch on the backend:

* **Hook names are HookedTransformer's**: ``blocks.{l}.hook_resid_pre|mid|post``, ``hook_attn_out``,
  ``hook_mlp_out``, ``attn.hook_z`` ``[batch, pos, n_heads, d_head]``, ``attn.hook_q``, ``attn.hook_k``/``hook_v``
  ``[batch, pos, n_kv_heads, d_head]`` (the key/value heads *before* grouped-query repetition). A hook function
  is TransformerLens's ``fn(activation, hook) -> new activation | None`` (``hook.name`` is the hook's name).
* **Residuals are the raw (unprocessed) basis**: ``run(..., stop_at_layer=l)`` returns the residual entering
  block ``l`` (``resid_pre[l]``; ``l = n_layers``: the final residual, before the final norm), and
  ``run(resid, start_at_layer=l)`` continues from it, *skipping* the blocks below ``l`` (their compute is the
  saving the fast engine is built on).
* **Right padding**: batches are right-padded; real tokens need no mask. Calls that continue from a prompt's
  keys and values take the rows' lengths and build whatever mask the model needs themselves.
* **Logits come with the family's final soft-cap applied** (Gemma-2), by :meth:`Backend.unembed` and by
  ``run`` alike.

The native model (``Backend.model``) is still what notebooks and users get as ``twins.base``/``twins.tuned``:
``run_with_cache``/``run_with_hooks``/``generate`` exist on both TransformerLens lines.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

# TransformerLens's hook function: (activation, hook point) -> replacement activation, or None to leave it.
HookFn = Callable[..., Any]
# A hook's target: one exact hook name, or a filter over names (``lambda name: ...``).
HookTarget = str | Callable[[str], bool]
Hooks = Sequence[tuple[HookTarget, HookFn]]
# What to capture during a forward: a filter over hook names, or the names themselves; None: nothing.
Capture = Callable[[str], bool] | Collection[str] | None

# The parts a weight transplant swaps between two models (engine/hybrid.py): ``embed`` and ``pos_embed`` (the
# embedding, with block 0), ``blocks.{i}``, ``ln_final`` and ``unembed`` (the head, with block L−1).
EMBED_PARTS = ("embed", "pos_embed")
HEAD_PARTS = ("ln_final", "unembed")


@dataclass(frozen=True)
class ModelFacts:
    """What the layers above read about a model's shape: the batch planner (``device``, ``d_model``), the pair
    compatibility check (every field but ``device``/``dtype``), manifests, site shapes."""

    architecture: str  # Hugging Face's class name, e.g. ``LlamaForCausalLM``
    n_layers: int
    d_model: int
    d_vocab: int
    n_heads: int  # query heads (``attn.hook_z``, ``hook_q``)
    n_kv_heads: int  # key/value heads as ``attn.hook_k``/``hook_v`` present them (= n_heads without grouping)
    d_head: int
    d_mlp: int | None
    n_ctx: int | None  # the context the model was configured with
    normalization_type: str | None
    positional_embedding_type: str
    act_fn: str | None
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> dict[str, Any]:
        """JSON-able, for manifests."""
        return {
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_key_value_heads": self.n_kv_heads,
            "d_head": self.d_head,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    def shape_fields(self) -> dict[str, Any]:
        """The fields two models must share for their activations to be swapped (pair.check_compatible)."""
        return {
            k: getattr(self, k)
            for k in (
                "architecture",
                "n_layers",
                "d_model",
                "d_vocab",
                "n_heads",
                "n_kv_heads",
                "d_head",
                "d_mlp",
                "normalization_type",
                "positional_embedding_type",
                "act_fn",
            )
        }


class PromptKV(Protocol):
    """One prompt's keys and values at every block a prompt forward ran (opaque: the backend that made it reads
    it), unpadded. Made by :meth:`Backend.run_prompts`, consumed by :meth:`Backend.run_continuations`."""

    @property
    def length(self) -> int: ...  # the prompt's tokens


class DecodeState(Protocol):
    """A growing key/value cache of one sequence being decoded (opaque; :meth:`Backend.decode_step`)."""


class Backend(ABC):
    """One loaded model behind the seam. ``model``: the native TransformerLens model (its hook points carry
    HookedTransformer's names); ``tokenizer``: its Hugging Face tokenizer; ``facts``: its shape."""

    name: ClassVar[str]  # "hooked" or "bridge": what manifests record
    model: torch.nn.Module
    tokenizer: Any
    facts: ModelFacts

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.facts.n_layers

    @property
    def d_model(self) -> int:
        return self.facts.d_model

    @property
    def d_vocab(self) -> int:
        return self.facts.d_vocab

    @property
    def device(self) -> torch.device:
        return self.facts.device

    @property
    def dtype(self) -> torch.dtype:
        return self.facts.dtype

    def heads_at(self, site: str) -> int:
        """Heads of a per-head site as its hook presents them: query heads at ``z``/``q``, key/value heads at
        ``k``/``v`` (all query heads where the backend ungroups grouped-query attention)."""
        return self.facts.n_heads if site in ("z", "q") else self.facts.n_kv_heads

    @abstractmethod
    def shares_prompt_kv(self) -> bool:
        """Whether continuing from a prompt's keys/values reproduces the full sequence for this model (false
        for local/sliding-window attention, ALiBi, attention sinks …): else the engine runs full sequences."""

    # -- forwards -------------------------------------------------------------------------------------
    @abstractmethod
    def hooked(self, hooks: Hooks) -> contextlib.AbstractContextManager[None]:
        """Inside the block, every forward of ``model`` runs ``hooks`` (removed on exit, also on an error)."""

    @abstractmethod
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
        """One forward. ``inputs``: token ids ``[batch, pos]`` (``start_at_layer`` None) or the residual
        ``[batch, pos, d_model]`` entering block ``start_at_layer`` (the blocks below are not computed).
        Returns the logits ``[batch, pos, d_vocab]`` (``stop_at_layer`` None) or the residual entering block
        ``stop_at_layer`` (``n_layers``: the final residual, before the final norm), and the activations
        ``capture`` names (hook name → ``[batch, pos, ...]``; empty when ``capture`` is None). No grad mode is
        imposed: the caller's (inference, no-grad or autograd) holds."""

    @abstractmethod
    def unembed(self, resid: Tensor) -> Tensor:
        """Logits ``[n, d_vocab]`` (model dtype, soft-cap applied) of final residuals ``[n, d_model]`` taken
        before the final norm: final norm + unembedding of the selected positions only."""

    @abstractmethod
    def run_prompts(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor], list[PromptKV]]:
        """Right-padded prompts ``inputs`` (ids ``[batch, width]`` or residuals ``[batch, width, d_model]`` at
        ``start_at_layer``) of ``lengths`` real tokens: the final residual ``[batch, width, d_model]``, the
        captured activations, and each prompt's keys/values (unpadded) for :meth:`run_continuations`."""

    @abstractmethod
    def run_continuations(
        self,
        inputs: Tensor,
        lengths: Sequence[int],
        prompts: Sequence[PromptKV],
        *,
        start_at_layer: int | None = None,
        hooks: Hooks = (),
        capture: Capture = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Right-padded completions ``inputs`` (ids or residuals at ``start_at_layer``) of ``lengths`` tokens, row
        r continuing ``prompts[r]`` (rows may share a prompt; a prompt made at or below ``start_at_layer``): the
        final residual and captured activations at the completion positions only. Positions continue the
        prompt's (token j of a P-token prompt's completion sits at P + j), padded prompt keys are masked."""

    @abstractmethod
    def new_decode_state(self) -> DecodeState:
        """An empty key/value cache for decoding one sequence with :meth:`decode_step`."""

    @abstractmethod
    def decode_step(self, tokens: Tensor, state: DecodeState, *, stop_at_layer: int | None = None) -> Tensor:
        """Forward ``tokens`` ``[1, n]`` after what ``state`` holds (which grows by them): logits ``[1, n, d_vocab]``
        (or the residual entering ``stop_at_layer``). Hooks come from an enclosing :meth:`hooked`."""

    # -- weights --------------------------------------------------------------------------------------
    @abstractmethod
    def part(self, name: str) -> torch.nn.Module | None:
        """The module holding a transplantable part's weights (``embed``, ``pos_embed``, ``blocks.{i}``,
        ``ln_final``, ``unembed``); None where the family has no such part (``pos_embed`` with rotary)."""

    @abstractmethod
    def swap_part(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """Put ``module`` (the same part of a compatible model) in place of part ``name``; returns the one it
        replaced. Forwards then run it as this model's own (engine/hybrid.py swaps back afterwards)."""

    @abstractmethod
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter under HookedTransformer's names and layouts (``embed.W_E``, ``blocks.{l}.attn.W_Q``
        ``[heads, d_model, d_head]``, ``blocks.{l}.mlp.W_in`` ``[d_model, d_mlp]``, ``ln_final.w``, ``unembed.W_U``
        …): what E0's weight diff reads, the same names on both backends."""

    @abstractmethod
    def attention(self, layer: int) -> Any:
        """Block ``layer``'s attention module with HookedTransformer's ``AbstractAttention`` interface (cfg,
        ``apply_rotary``, ``attn_scale``, ``apply_causal_mask`` …), for AtP*'s exact recomputation of a pattern
        (engine/attribution.py). A backend that has none raises :class:`~alignment_probe.errors.ConfigError`
        naming the alternative (plain AtP, or the exact engine)."""


class BackendLoader(Protocol):
    """What each backend module (``backends.hooked``, ``backends.bridge``) offers at module level: ``load``,
    ``wrap``, ``checkpoint_shape`` (``backends.load_model``/``backend_of``/``checkpoint_shape`` dispatch to them).
    ``load`` registers the backend it returns (``backends.register``) so ``backend_of(backend.model)`` finds it."""

    def load(
        self,
        path: str,
        *,
        device: str,
        dtype: torch.dtype,
        source: str,
        tokenizer: Any = None,
        device_map: Any = None,
    ) -> Backend:
        """A local Hugging Face checkpoint folder, unprocessed (logits equal Hugging Face's), in eval mode."""
        ...

    def wrap(self, model: Any) -> Backend:
        """The backend of a native model built or loaded elsewhere (``backends.backend_of`` calls it)."""
        ...

    def checkpoint_shape(self, path: str, source: str) -> tuple[int | None, int]:
        """(context length, layers) the backend gives the checkpoint in ``path``, from its config only (no
        weights read); refuses an architecture the backend cannot convert."""
        ...


def pad_stack(tensors: Sequence[Tensor], width: int) -> Tensor:
    """Right-pad tensors of shape [len, ...] with zeros to ``width`` and stack: [batch, width, ...]."""
    out = tensors[0].new_zeros((len(tensors), width, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def length_mask(lengths: Sequence[int], width: int, device: Any) -> Tensor:
    """``[batch, width]`` int64: 1 at each row's first ``lengths[r]`` positions (right padding), else 0."""
    pos = torch.arange(width, device=device)
    return (pos[None, :] < torch.tensor(list(lengths), device=device)[:, None]).to(torch.int64)


def capture_filter(capture: Capture) -> Callable[[str], bool] | None:
    """``capture`` as a filter over hook names (None: capture nothing)."""
    if capture is None or callable(capture):
        return capture
    names = frozenset(capture)
    return lambda n: n in names

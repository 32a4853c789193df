"""What a patch does to one activation: pure functions of cached tensors.

Every intervention answers one question: *given the target model's own activation at a hook point
and the source model's activation at the same hook point on the same tokens, what should the
target see instead?* Both activations are ``[pos, d_model]`` for one sequence. The engine then
writes the answer only at the positions in scope and runs the rest of the target model.

==================  ===============================================================  =========
intervention        new activation                                                   method.md
==================  ===============================================================  =========
Replace             h_src                                                            E1, E3, E5
Interpolate(α)      h_tgt + α (h_src − h_tgt)   (α > 1 extrapolates)                 E4
GaussianNoise       noise with h_src's per-position mean and norm                    E3 (a)
RandomDirection     h_tgt + ‖h_src − h_tgt‖ · random unit vector                     E3 (b)
AddVector(kind)     h_tgt + scale · v, v from the source's completion tokens          E5
Project(V_k)        reconstruct: (h_src − μ) V_k V_kᵀ + μ; difference: h_tgt + P_k Δ  E6
AddFixed(v)         h_tgt + v, one vector fitted elsewhere (every position alike)    E11 (old)
AddByClass(V)       h_tgt + V[class of the position] at the predicting positions     E11
                    (classes: last prompt token, first K, rest; nothing elsewhere)
Transplant(w)       the residual entering block a, then blocks a … a+w−1 of the      E8
                    source's *weights* (engine/hybrid.py)
==================  ===============================================================  =========

Random interventions draw from a generator seeded by (seed, pair, side, layer), so every engine
and every batch order draws the same numbers.

**Traits.** Each intervention class declares what the engines may assume about it, as class attributes read by
:func:`same_on_both_prompts` (a new intervention, e.g. in an experiment's own module, declares its own and needs
no engine edit):

* ``same_on_both_prompts``: True when it writes the same values on the prompt positions of a pair's two runs
  whose inputs there are the same (a function of each position's activations, or one value per pair), so the fast
  engine runs the prompt once for both; False when they differ (noise seeded per side); None (undeclared): shared
  only where the two prompt values are found equal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from alignment_probe.vocab import (
    LOWRANK_MODE_NAMES,
    SCOPES,
    VECTOR_KINDS,
    LowRankMode,
    Side,
    VectorKind,
    check,
    check_scope,
    check_side,
    parse_scope,
)

Act = Float[Tensor, "pos d *rest"]  # [pos, d_model]; per-head hooks: [pos, heads, d_head]
# Both runs of a pair: their lengths differ, so ``pos`` is not tied to the sequence in context.
SideAct = Float[Tensor, "_pos d *rest"]


@dataclass
class SequenceContext:
    """What an intervention may look at for one sequence of one pair, at one hook point."""

    pair_id: int
    side: Side
    layer: int
    target: Act
    source: Act
    prompt_len: int  # positions [0, prompt_len) are BOS + prompt
    length: int  # real tokens; completion is [prompt_len, length)
    # Source activations of both sequences of the pair (for vectors built from the other run).
    source_by_side: dict[Side, SideAct] = field(default_factory=dict)
    prompt_len_by_side: dict[Side, int] = field(default_factory=dict)
    length_by_side: dict[Side, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_side(self.side)


@runtime_checkable
class Intervention(Protocol):
    """A callable from one sequence's :class:`SequenceContext` to the activation the target sees (its traits:
    the module docstring)."""

    def __call__(self, ctx: SequenceContext) -> Act: ...


def same_on_both_prompts(intervention: Intervention) -> bool | None:
    """The intervention's declared ``same_on_both_prompts`` trait (None where it declares none)."""
    declared = getattr(intervention, "same_on_both_prompts", None)
    return None if declared is None else bool(declared)


def _generator(seed: int, ctx: SequenceContext) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{ctx.pair_id}|{ctx.side}|{ctx.layer}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _randn_like(x: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True)
class Replace:
    """Activation patching proper: the target sees the source's activation."""

    same_on_both_prompts: ClassVar[bool] = True  # a function of each position's activations

    def __call__(self, ctx: SequenceContext) -> Act:
        return ctx.source


@dataclass(frozen=True)
class ReplaceHead:
    """Patch one head: the target's per-head activation ([pos, heads, d_head]) with head ``head`` taken from
    the source (E7: ``z`` per query head, ``k``/``v`` per key/value head)."""

    same_on_both_prompts: ClassVar[bool] = True

    head: int

    def __call__(self, ctx: SequenceContext) -> Act:
        if ctx.target.dim() != 3 or not 0 <= self.head < ctx.target.shape[1]:
            raise ValueError(
                f"ReplaceHead({self.head}) needs a per-head activation [pos, heads, d_head] with more "
                f"than {self.head} heads; got shape {tuple(ctx.target.shape)}"
            )
        out = ctx.target.clone()
        out[:, self.head] = ctx.source[:, self.head]
        return out


@dataclass(frozen=True)
class Interpolate:
    """Dose-response: move a fraction α of the way from the target's activation to the source's."""

    same_on_both_prompts: ClassVar[bool] = True

    alpha: float

    def __call__(self, ctx: SequenceContext) -> Act:
        if self.alpha == 1:  # the source itself, as Replace writes it (t + (s − t) can round off s by an ulp)
            return ctx.source
        return ctx.target + self.alpha * (ctx.source - ctx.target)


@dataclass(frozen=True)
class GaussianNoise:
    """Control (a): Gaussian noise with the same per-position mean and norm as the source activation,
    so only the *information* is removed, not the scale."""

    same_on_both_prompts: ClassVar[bool] = False  # its generator is seeded per side

    seed: int = 0

    def __call__(self, ctx: SequenceContext) -> Act:
        src = ctx.source.float()
        mean = src.mean(-1, keepdim=True)
        z = _randn_like(src, _generator(self.seed, ctx)).float()
        z = z - z.mean(-1, keepdim=True)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (mean + z * (src - mean).norm(dim=-1, keepdim=True)).to(ctx.source.dtype)


@dataclass(frozen=True)
class RandomDirection:
    """Control (b): shift the target by as much as tuning did, but in a random direction."""

    same_on_both_prompts: ClassVar[bool] = False  # its generator is seeded per side

    seed: int = 0

    def __call__(self, ctx: SequenceContext) -> Act:
        shift = (ctx.source - ctx.target).float()
        u = _randn_like(shift, _generator(self.seed, ctx)).float()
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (ctx.target.float() + u * shift.norm(dim=-1, keepdim=True)).to(ctx.target.dtype)


def completion_mean(ctx: SequenceContext, side: Side) -> Float[Tensor, " d_model"]:
    """Mean source activation over the completion tokens of one run of the pair."""
    act = ctx.source_by_side[side]
    return act[ctx.prompt_len_by_side[side] : ctx.length_by_side[side]].mean(0)


@dataclass(frozen=True)
class AddVector:
    """Source-vector variants (E5): add v+ (``chosen``), v- (``rejected``) or v± = v+ − v-
    (``contrast``), built from the source model's completion tokens of this pair, times ``scale``."""

    same_on_both_prompts: ClassVar[bool] = True  # one vector per pair (not per side)

    kind: VectorKind
    scale: float = 1.0

    def __post_init__(self) -> None:
        check(self.kind, VECTOR_KINDS, "vector kind")

    def __call__(self, ctx: SequenceContext) -> Act:
        if self.kind == "chosen":
            v = completion_mean(ctx, "chosen")
        elif self.kind == "rejected":
            v = completion_mean(ctx, "rejected")
        elif self.kind == "contrast":
            v = completion_mean(ctx, "chosen") - completion_mean(ctx, "rejected")
        else:
            raise ValueError(f"unknown vector kind {self.kind!r}")
        return ctx.target + self.scale * v


@dataclass(frozen=True, eq=False)
class Project:
    """Low-rank patching (E6) with an orthonormal basis ``basis`` [d_model, k] fitted elsewhere.

    * ``reconstruct``: the target sees the rank-k reconstruction of the source activation,
      ``(h_src − μ) V Vᵀ + μ`` (μ = the centre subtracted before the SVD, or 0).
    * ``difference``: the target moves by the part of (h_src − h_tgt) inside the subspace.
    """

    same_on_both_prompts: ClassVar[bool] = True

    mode: LowRankMode
    basis: Float[Tensor, "d_model k"]
    centre: Float[Tensor, " d_model"] | None = None

    def __post_init__(self) -> None:
        check(self.mode, LOWRANK_MODE_NAMES, "low-rank mode")

    def __call__(self, ctx: SequenceContext) -> Act:
        v = self.basis.to(ctx.source.device, ctx.source.dtype)
        if self.mode == "reconstruct":
            mu = torch.zeros_like(ctx.source[0]) if self.centre is None else self.centre.to(ctx.source)
            return (ctx.source - mu) @ v @ v.T + mu
        if self.mode == "difference":
            return ctx.target + (ctx.source - ctx.target) @ v @ v.T
        raise ValueError(f"unknown low-rank mode {self.mode!r}")


@dataclass(frozen=True, eq=False)
class AddFixed:
    """Steering (E11): add one fixed vector ``vector`` [d_model], fitted elsewhere (e.g. the mean tuning
    shift at a layer, scaled), to the target's activation at every position in scope. ``vector = 0``
    leaves the activation bit-for-bit unchanged."""

    same_on_both_prompts: ClassVar[bool] = True  # one vector for every position

    vector: Float[Tensor, " d_model"]

    def __call__(self, ctx: SequenceContext) -> Act:
        return ctx.target + self.vector.to(ctx.target.device, ctx.target.dtype)


# E11's position classes (localization.md): the predicting positions of a sequence are the last prompt token
# through the second-to-last completion token (the positions whose next-token distributions score the completion).
POSITION_CLASSES = ("last_prompt", "first", "rest")  # LP, F (the first K predicting completion positions), R


def predicting_classes(prompt_len: int, length: int, first_k: int, width: int | None = None) -> Tensor:
    """The class of each of ``width`` positions (default ``length``): 0 = LP (``prompt_len − 1``), 1 = F (the
    first ``first_k`` predicting completion positions), 2 = R (the rest, up to ``length − 2``), −1 = not a
    predicting position (BOS, the earlier prompt, the last completion token, padding). int64 [width]."""
    width = length if width is None else width
    cls = torch.full((width,), -1, dtype=torch.long)
    end = min(length - 1, width)  # the last completion token predicts nothing that is scored
    if prompt_len < 1 or end < prompt_len:
        return cls
    cls[prompt_len - 1] = 0
    cls[prompt_len : min(prompt_len + first_k, end)] = 1
    cls[prompt_len + first_k : end] = 2
    return cls


@dataclass(frozen=True, eq=False)
class AddByClass:
    """Steering (E11): add ``vectors[c]`` ([3, d_model], rows in :data:`POSITION_CLASSES` order) at exactly the
    predicting positions of class c (:func:`predicting_classes` with ``first_k``); every other position (BOS,
    the earlier prompt, the last completion token) is left bit-for-bit as it was, and so is everything when the
    vectors are 0. Its prompt values depend on the prompt only (the LP position), so they are the same on both
    runs of a pair."""

    vectors: Float[Tensor, "classes d_model"]  # classes = 3, checked below with a clearer message
    first_k: int = 8
    same_on_both_prompts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(POSITION_CLASSES):
            raise ValueError(
                f"AddByClass needs one vector per position class {POSITION_CLASSES}: shape [3, d_model], "
                f"got {tuple(self.vectors.shape)}"
            )
        if not isinstance(self.first_k, int) or self.first_k < 0:
            raise ValueError(f"AddByClass first_k must be a whole number ≥ 0, got {self.first_k!r}")

    def __call__(self, ctx: SequenceContext) -> Act:
        if ctx.target.dim() != 2 or ctx.target.shape[-1] != self.vectors.shape[1]:
            raise ValueError(
                f"AddByClass adds [d_model = {self.vectors.shape[1]}] vectors to a residual-shaped "
                f"activation [pos, d_model]; got shape {tuple(ctx.target.shape)} (per-head hooks "
                "cannot be steered)"
            )
        cls = predicting_classes(ctx.prompt_len, ctx.length, self.first_k, ctx.target.shape[0]).to(ctx.target.device)
        at = cls >= 0
        out = ctx.target.clone()
        out[at] = ctx.target[at] + self.vectors.to(ctx.target.device, ctx.target.dtype)[cls[at]]
        return out


@dataclass(frozen=True)
class Transplant:
    """Weight transplant (E8): run blocks ``a … a+width−1`` of the source model inside the target, every other
    block the target's own. The hook point is the residual entering block a (``resid_pre``), and what the
    hybrid sees there is the *target's* own residual (blocks below a are the target's), except at a = 0, where
    the embedding goes with block 0's owner, the source. The engine swaps the blocks (and, when the window
    holds the last block, the final norm and unembedding) for the rest of the forward (engine/hybrid.py), so a
    transplant of every block is the source model itself."""

    width: int
    same_on_both_prompts: ClassVar[bool] = True  # a function of each position's own activation

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"Transplant width must be a whole number ≥ 1, got {self.width!r}")

    def blocks(self, start: int) -> range:
        return range(start, start + self.width)

    def __call__(self, ctx: SequenceContext) -> Act:
        return ctx.source if ctx.layer == 0 else ctx.target


def scope_mask(scope: str, prompt_len: int, length: int, width: int) -> Bool[Tensor, " width"]:
    """Boolean mask over ``width`` positions of the positions a patch writes to.

    ``scope`` is one of :data:`SCOPES` or ``first_completion:K`` (the first K completion positions,
    fewer when the completion is shorter); anything else raises a VocabularyError (a ValueError).
    """
    name, k = parse_scope(scope)
    mask = torch.zeros(width, dtype=torch.bool)
    if name == "first_completion" and k is not None:  # parse_scope gives first_completion its K
        mask[prompt_len : min(prompt_len + k, length)] = True
    elif scope == "all":
        mask[:length] = True
    elif scope == "all_but_bos":
        mask[1:length] = True
    elif scope == "prompt":
        mask[:prompt_len] = True
    elif scope == "completion":
        mask[prompt_len:length] = True
    elif scope == "last_prompt":
        mask[prompt_len - 1] = True
    elif scope == "predicting":  # the last prompt token through the second-to-last completion token
        mask[max(prompt_len - 1, 0) : max(length - 1, 0)] = True
    else:  # unreachable: parse_scope rejected it
        raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    return mask


def apply_in_scope(intervention: Intervention, ctx: SequenceContext, scope: str) -> Act:
    """The target's activation with the intervention written only at the positions in scope."""
    check_scope(scope)
    new = intervention(ctx)
    mask = scope_mask(scope, ctx.prompt_len, ctx.length, ctx.target.shape[0]).to(ctx.target.device)
    mask = mask.view(-1, *([1] * (ctx.target.dim() - 1)))  # broadcast over d_model (or heads × d_head)
    return torch.where(mask, new.to(ctx.target.dtype), ctx.target)

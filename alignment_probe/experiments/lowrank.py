"""E6 — low-rank reconstruction (appendix A5, Table 2).

Stack the tuned model's activations at one layer over all tokens of all pairs into H (N·T × d)
and find its principal directions (SVD). Then patch only what lives in the top-k directions:

* ``reconstruct`` (the paper's literal reading): the base sees the rank-k reconstruction of the
  tuned activation, ``(h_tuned − μ) V_k V_kᵀ + μ``.
* ``difference``: the directions are those of D = H_tuned − H_base, and the base moves by the part
  of the tuning shift inside them, ``h_base + P_k (h_tuned − h_base)``.

The **effect ratio** is the mean low-rank effect divided by the mean effect of the full patch at
the same layer and scope (``lowrank_full`` rows); the **variance explained** is the share of
squared singular values in the top k. The BOS position is left out of the fit and of the patch by
default (its norm dominates residual streams). The subspace is fitted on all pairs, and also on one
half with the effect measured on the other (``split = "fit"/"heldout"``), since k is chosen from
the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.interventions import Project, Replace
from alignment_probe.pair import Twins
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences
from alignment_probe.vocab import LOWRANK_MODE_NAMES, LOWRANK_MODES, Hook, LowRankMode, Role, check

MODES = LOWRANK_MODES  # experiment name → low-rank mode (defined once, in alignment_probe.vocab)
# stacked_activations: [rows, d_model] per model, and the owning pair of every row under "pair_id".
Stacked = dict[str, Float[Tensor, "rows d_model"] | Int[Tensor, " rows"]]
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class Subspace:
    """Principal directions of a stack of activations (columns of ``basis``, strongest first)."""

    basis: Float[Tensor, "d_model d_model"]
    variance: Float[Tensor, " d_model"]  # squared singular values, descending
    centre: Float[Tensor, " d_model"] | None

    def top(self, k: int) -> Float[Tensor, "d_model k"]:
        return self.basis[:, :k]

    def variance_explained(self, k: int) -> float:
        return float(self.variance[:k].sum() / self.variance.sum().clamp_min(1e-30))


@torch.inference_mode()
def stacked_activations(pair: Twins, tokenized: Sequence[TokenizedPair], *, layer: int, hook: Hook = "resid_post",
                        models: Iterable[Role] = ("base", "tuned"), exclude_bos: bool = True,
                        pairs_per_batch: int = 8) -> Stacked:
    """Real-token activations of each model at one hook point, stacked over all sequences: [N·T, d].

    The extra key ``"pair_id"`` holds, for every row, the pair it came from (to select a subset)."""
    name = hook_name(layer, hook)
    out: dict[str, list[Tensor]] = {m: [] for m in models}
    owner: list[Tensor] = []
    first = 1 if exclude_bos else 0
    for lo in range(0, len(tokenized), pairs_per_batch):
        seqs = pair_sequences(tokenized[lo: lo + pairs_per_batch])
        batch = make_batch(seqs)
        owner += [torch.full((s.length - first,), s.pair_id, dtype=torch.long) for s in seqs]
        for m in out:
            model = pair.models()[m]
            _, cache = model.run_with_cache(batch.tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
            acts = cache[name].float().cpu()
            out[m] += [acts[i, first: s.length] for i, s in enumerate(seqs)]
    return {m: torch.cat(v) for m, v in out.items()} | {"pair_id": torch.cat(owner)}


def rows_of(acts: Stacked, pair_ids: Iterable[int]) -> Stacked:
    """The rows of :func:`stacked_activations` that belong to ``pair_ids``."""
    keep = torch.isin(acts["pair_id"], torch.tensor(sorted(pair_ids), dtype=torch.long))
    return {m: v[keep] for m, v in acts.items()}


def fit_subspace(stack: Float[Tensor, "rows d_model"], *, centre: bool = True) -> Subspace:
    """Principal directions via the eigendecomposition of the d×d second-moment matrix (float64)."""
    x = stack.double()
    mu = x.mean(0) if centre else None
    if mu is not None:
        x = x - mu
    evals, evecs = torch.linalg.eigh(x.T @ x)
    order = torch.argsort(evals, descending=True)
    return Subspace(basis=evecs[:, order].float(), variance=evals[order].clamp_min(0),
                    centre=None if mu is None else mu.float())


def fit_for_mode(mode: LowRankMode, acts: Stacked, *, centre: bool) -> Subspace:
    check(mode, LOWRANK_MODE_NAMES, "low-rank mode")
    stack = acts["tuned"] if mode == "reconstruct" else acts["tuned"] - acts["base"]
    return fit_subspace(stack, centre=centre)


def ks_for(d_model: int, ks: Sequence[int]) -> list[int]:
    return sorted({k for k in ks if k <= d_model} | {d_model})


def lowrank_specs(experiment: str, subspace: Subspace, *, layer: int, ks: Sequence[int], hook: Hook, scope: str,
                  split: str = "all", pair_ids: frozenset[int] | None = None) -> list[PatchSpec]:
    mode = MODES[check(experiment, MODES, "low-rank experiment")]
    centre = subspace.centre if mode == "reconstruct" else None
    return [PatchSpec(RowKey(experiment, "base", "tuned", hook, scope, "both", layer, float(k), split),
                      Project(mode, subspace.top(k), centre), pair_ids) for k in ks]


def full_patch_specs(layers: Iterable[int], *, hook: Hook, scope: str) -> list[PatchSpec]:
    """The denominator of the effect ratio: the full tuned→base patch at the same layer and scope."""
    return [PatchSpec(RowKey("lowrank_full", "base", "tuned", hook, scope, "both", layer, math.nan, "all"), Replace())
            for layer in layers]

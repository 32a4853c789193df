"""Principal directions of stacked activations: the subspace E6 (low rank) fits and patches in, and E11's
low-rank baseline projects on. Pure tensor functions; the activations come from
:func:`alignment_probe.experiments.lowrank.stacked_activations` (or any [rows, d_model] stack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from alignment_probe.vocab import LOWRANK_MODE_NAMES, LowRankMode, check

# stacked_activations: [rows, d_model] per model, and the owning pair of every row under "pair_id".
Stacked = dict[str, Float[Tensor, "rows d_model"] | Int[Tensor, " rows"]]
Subset = dict[str, Float[Tensor, "kept d_model"] | Int[Tensor, " kept"]]  # rows_of: some of those rows


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


def rows_of(acts: Stacked, pair_ids: Iterable[int]) -> Subset:
    """The rows of :func:`~alignment_probe.experiments.lowrank.stacked_activations` that belong to ``pair_ids``."""
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
    return Subspace(
        basis=evecs[:, order].float(), variance=evals[order].clamp_min(0), centre=None if mu is None else mu.float()
    )


def fit_for_mode(mode: LowRankMode, acts: Stacked, *, centre: bool) -> Subspace:
    check(mode, LOWRANK_MODE_NAMES, "low-rank mode")
    stack = acts["tuned"] if mode == "reconstruct" else acts["tuned"] - acts["base"]
    return fit_subspace(stack, centre=centre)

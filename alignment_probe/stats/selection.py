"""Held-out selection (statistics.md, "Selection is always held out"): the explore/confirm split of the pairs and
the record of what one half chose and how it measured on the other."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from alignment_probe.stats.bootstrap import bootstrap_mean_ci

# --------------------------------------------------------------------------------------------------
# held-out evaluation of data-driven choices
# --------------------------------------------------------------------------------------------------


def split_halves(pair_ids: Sequence[int], *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split pair ids into a ``fit`` half and a ``heldout`` half: disjoint, together all of them.

    Deterministic: the ids are sorted, shuffled with ``default_rng(seed)``, and the first
    ``ceil(n/2)`` go to ``fit``; both halves come back sorted. The input order does not matter.
    """
    ids = sorted(int(p) for p in pair_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("pair_ids contains duplicates")
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_fit = (len(ids) + 1) // 2
    fit = sorted(ids[i] for i in perm[:n_fit])
    held = sorted(ids[i] for i in perm[n_fit:])
    return fit, held


def explore_confirm(pair_ids: Sequence[int], *, seed: int = 0) -> tuple[list[int], list[int]]:
    """The explore and confirm halves of the pairs (statistics.md, "Selection is always held out").

    The same split as :func:`split_halves` (explore = its first half), so every experiment that chooses from
    the data with one seed uses the same explore pairs.
    """
    return split_halves(pair_ids, seed=seed)


def selection_record(
    explore_ids: Sequence[int],
    confirm_ids: Sequence[int],
    chosen: Any,
    confirm_values: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    in_sample: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """The summary's ``selection`` entry: which pairs chose, what they chose, and the chosen value on the others.

    ``confirm_values`` are the per-pair values of the chosen quantity on the confirm pairs (one per pair);
    ``in_sample`` optionally the explore pairs' (reported beside, labelled in-sample). Returns
    ``{"explore_pair_ids", "confirm_pair_ids", "chosen", "confirm": {"mean", "ci_low", "ci_high", "n"},
    "in_sample": {...} | None}``.
    """
    explore = sorted(int(p) for p in explore_ids)
    confirm = sorted(int(p) for p in confirm_ids)
    if set(explore) & set(confirm):
        raise ValueError(f"explore and confirm pairs overlap: {sorted(set(explore) & set(confirm))[:5]}")

    def cell(values: Sequence[float] | np.ndarray | None) -> dict[str, Any] | None:
        v = None if values is None else np.asarray(values, dtype=np.float64).ravel()
        if v is None or v.size == 0:
            return None if values is None else {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
        mean, lo, hi = bootstrap_mean_ci(v, seed=seed, n_boot=n_boot, level=level)
        return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size)}

    return {
        "explore_pair_ids": explore,
        "confirm_pair_ids": confirm,
        "chosen": chosen,
        "confirm": cell(confirm_values),
        "in_sample": cell(in_sample),
    }

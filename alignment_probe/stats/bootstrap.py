"""The bootstrap over pairs: resampled means, mean CIs, and the pairs × layers matrix they read.

Pairs are resampled jointly across layers (the package docstring says why); every function is seeded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

# Columns that identify one condition of the effects table (all but layer and pair_id). Used only to
# explain duplicate rows; kept local so this module depends on numpy/pandas/scipy alone.
_CONDITION_COLUMNS = ("experiment", "target", "source", "hook", "scope", "sides", "param", "split")


# --------------------------------------------------------------------------------------------------
# bootstrap primitives
# --------------------------------------------------------------------------------------------------


def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` counts: row b says how many times each of the n items was drawn in
    resample b (each row sums to n). Multiplying by a data matrix gives resampled sums."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _check_boot_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _tails(level: float) -> tuple[float, float]:
    """Percentiles (0-100) bounding the central ``level`` of a distribution, e.g. (2.5, 97.5)."""
    return 50.0 * (1.0 - level), 50.0 * (1.0 + level)


def bootstrap_means(matrix: np.ndarray, *, seed: int = 0, n_boot: int = 2000) -> np.ndarray:
    """Resampled column means of a pairs × layers ``matrix``: ``[n_boot, n_layers]``.

    Every resample draws one set of pairs (rows, with replacement) and uses it for all columns.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    n = m.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    counts = _bootstrap_counts(n, n_boot, np.random.default_rng(seed))
    return counts @ m / n


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and its percentile-bootstrap confidence interval.

    Resample the values with replacement ``n_boot`` times, take each resample's mean, and report
    the ``(1-level)/2`` and ``(1+level)/2`` percentiles of those means. With one value there is
    nothing to resample and the interval collapses to the value itself. For the same values and
    seed this equals the interval :func:`per_layer_summary` gives a one-layer table.
    """
    _check_boot_args(n_boot, level)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return mean, mean, mean
    boots = bootstrap_means(v, seed=seed, n_boot=n_boot)[:, 0]
    lo, hi = np.percentile(boots, _tails(level))
    return mean, float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# the pairs × layers matrix
# --------------------------------------------------------------------------------------------------


def effect_matrix(effects: pd.DataFrame) -> tuple[np.ndarray, list[int], list[int]]:
    """Pivot one condition's rows of the effects table into ``(matrix, pair_ids, layers)``.

    ``matrix[i, j]`` is the effect of pair ``pair_ids[i]`` at layer ``layers[j]``; rows are sorted
    by pair id and columns by layer. The slice must hold exactly one row per (pair, layer): a
    missing combination, a duplicate (usually the slice still mixes several conditions, e.g. several
    α values) or a non-finite effect raises ``ValueError``, because a bootstrap over pairs needs
    every pair measured at every layer.
    """
    missing_cols = {"layer", "pair_id", "effect"} - set(effects.columns)
    if missing_cols:
        raise ValueError(f"effects table lacks column(s) {sorted(missing_cols)}")
    if len(effects) == 0:
        raise ValueError("effects slice is empty")
    dup = effects.duplicated(["pair_id", "layer"], keep=False)
    if dup.any():
        varying = [c for c in _CONDITION_COLUMNS if c in effects.columns and effects[c].nunique(dropna=False) > 1]
        hint = f"; these columns vary, so select one value of each: {varying}" if varying else ""
        first = effects.loc[dup, ["pair_id", "layer"]].iloc[0]
        raise ValueError(
            f"effects slice has several rows for (pair_id={int(first['pair_id'])}, "
            f"layer={int(first['layer'])}): pass one experiment/condition at a time{hint}"
        )
    eff = effects["effect"].to_numpy(dtype=np.float64)
    if not np.isfinite(eff).all():
        raise ValueError(f"effects slice holds {int((~np.isfinite(eff)).sum())} non-finite effect value(s)")
    wide = effects.pivot(index="pair_id", columns="layer", values="effect").sort_index().sort_index(axis=1)
    holes = wide.isna()
    if holes.to_numpy().any():
        where = holes.stack()
        where = where[where]
        examples = ", ".join(f"(pair {int(p)}, layer {int(layer)})" for p, layer in list(where.index)[:5])
        raise ValueError(
            f"effects slice is missing {int(holes.to_numpy().sum())} (pair, layer) combination(s), "
            f"e.g. {examples}: every pair must be measured at every layer"
        )
    return (wide.to_numpy(dtype=np.float64), [int(p) for p in wide.index], [int(layer) for layer in wide.columns])


def per_layer_summary(
    effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> list[dict[str, Any]]:
    """Mean effect per layer with its bootstrap CI over pairs, ordered by layer.

    ``effects`` is one experiment/condition's slice of the effects table. Returns
    ``[{"layer", "mean", "ci_low", "ci_high", "n"}, ...]``. Pairs are resampled jointly: resample b
    uses the same pair ids at every layer (see the module docstring for why).
    """
    _check_boot_args(n_boot, level)
    matrix, _, layers = effect_matrix(effects)
    return _summary_rows(matrix, layers, seed=seed, n_boot=n_boot, level=level)


def _summary_rows(
    matrix: np.ndarray, layers: Sequence[int], *, seed: int, n_boot: int, level: float
) -> list[dict[str, Any]]:
    n = matrix.shape[0]
    means = matrix.mean(axis=0)
    if n == 1:
        lo = hi = means
    else:
        lo, hi = np.percentile(bootstrap_means(matrix, seed=seed, n_boot=n_boot), _tails(level), axis=0)
    return [
        {"layer": int(layer), "mean": float(m), "ci_low": float(a), "ci_high": float(b), "n": int(n)}
        for layer, m, a, b in zip(layers, means, lo, hi)
    ]

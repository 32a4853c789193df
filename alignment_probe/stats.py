"""Statistics over pairs: bootstrap confidence intervals, peak and onset layers, held-out checks.

Every number this toolkit reports is a mean over a *sample* of preference pairs. A different sample
of pairs would give a different number, so each one comes with a 95% bootstrap confidence interval
over pairs (docs/method.md, "Statistics everywhere"), and every choice made from the data (the peak
layer) is also evaluated on pairs that were not used to make it.

**The bootstrap in one paragraph.** We cannot draw fresh pairs from the data distribution, but we
can draw from the next best thing: the pairs we have. A bootstrap resample draws ``n`` pairs *with
replacement* from the ``n`` observed pairs (some appear twice, some not at all) and recomputes the
statistic. Repeating that ``n_boot`` times shows how much the statistic wobbles when the sample of
pairs changes; the central 95% of those recomputed values is the *percentile* bootstrap interval.
The interval narrows like ``1/sqrt(n)``: four times as many pairs, half the width.

**Pairs are the unit, jointly across layers.** A pair that is "easy" (large gain) tends to have
large effects at every layer. When a per-layer curve is bootstrapped, one resample picks one set of
pair ids and uses it for *every* layer, exactly as a new experiment on new pairs would. That keeps the
between-layer correlation, so statements that compare layers (which layer peaks, where the curve
rises) get honest intervals. Implementation: the effects become a pairs × layers matrix and each
resample is a vector of counts (how often each pair was drawn); the resampled means of all layers
are then one matrix product ``counts @ matrix / n``.

Everything is seeded (``numpy.random.default_rng(seed)``): same inputs and seed, same output.
All public functions return plain Python types, ready for ``json.dumps``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

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


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = 2000,
                      level: float = 0.95) -> tuple[float, float, float]:
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
        raise ValueError(f"effects slice has several rows for (pair_id={int(first['pair_id'])}, "
                         f"layer={int(first['layer'])}): pass one experiment/condition at a time{hint}")
    eff = effects["effect"].to_numpy(dtype=np.float64)
    if not np.isfinite(eff).all():
        raise ValueError(f"effects slice holds {int((~np.isfinite(eff)).sum())} non-finite effect value(s)")
    wide = effects.pivot(index="pair_id", columns="layer", values="effect").sort_index().sort_index(axis=1)
    holes = wide.isna()
    if holes.to_numpy().any():
        where = holes.stack()
        where = where[where]
        examples = ", ".join(f"(pair {int(p)}, layer {int(layer)})" for p, layer in list(where.index)[:5])
        raise ValueError(f"effects slice is missing {int(holes.to_numpy().sum())} (pair, layer) combination(s), "
                         f"e.g. {examples}: every pair must be measured at every layer")
    return (wide.to_numpy(dtype=np.float64), [int(p) for p in wide.index], [int(layer) for layer in wide.columns])


def per_layer_summary(effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000,
                      level: float = 0.95) -> list[dict[str, Any]]:
    """Mean effect per layer with its bootstrap CI over pairs, ordered by layer.

    ``effects`` is one experiment/condition's slice of the effects table. Returns
    ``[{"layer", "mean", "ci_low", "ci_high", "n"}, ...]``. Pairs are resampled jointly: resample b
    uses the same pair ids at every layer (see the module docstring for why).
    """
    _check_boot_args(n_boot, level)
    matrix, _, layers = effect_matrix(effects)
    return _summary_rows(matrix, layers, seed=seed, n_boot=n_boot, level=level)


def _summary_rows(matrix: np.ndarray, layers: Sequence[int], *, seed: int, n_boot: int,
                  level: float) -> list[dict[str, Any]]:
    n = matrix.shape[0]
    means = matrix.mean(axis=0)
    if n == 1:
        lo = hi = means
    else:
        lo, hi = np.percentile(bootstrap_means(matrix, seed=seed, n_boot=n_boot), _tails(level), axis=0)
    return [{"layer": int(layer), "mean": float(m), "ci_low": float(a), "ci_high": float(b), "n": int(n)}
            for layer, m, a, b in zip(layers, means, lo, hi)]


# --------------------------------------------------------------------------------------------------
# peak and onset layers
# --------------------------------------------------------------------------------------------------


def _curve(mean_by_layer: Any, layers: Sequence[int] | None) -> tuple[np.ndarray, list[int]]:
    if isinstance(mean_by_layer, Mapping):
        items = sorted(mean_by_layer.items())
        ids, values = [int(k) for k, _ in items], np.array([v for _, v in items], dtype=np.float64)
    elif isinstance(mean_by_layer, pd.Series):
        s = mean_by_layer.sort_index()
        ids, values = [int(k) for k in s.index], s.to_numpy(dtype=np.float64)
    else:
        values = np.asarray(mean_by_layer, dtype=np.float64).ravel()
        ids = list(range(values.size))
    if layers is not None:
        if len(layers) != values.size:
            raise ValueError(f"{len(layers)} layer ids for {values.size} values")
        ids = [int(x) for x in layers]
    if values.size == 0 or np.isnan(values).all():
        raise ValueError("need at least one non-NaN mean effect")
    return values, ids


def peak_layer(mean_by_layer: Any, layers: Sequence[int] | None = None) -> int:
    """The layer with the largest mean effect (the first one on ties; NaNs are ignored).

    ``mean_by_layer`` is a sequence indexed by layer (position = layer id), or a dict / Series
    mapping layer id → mean; ``layers`` overrides the ids of a plain sequence.
    """
    values, ids = _curve(mean_by_layer, layers)
    return ids[int(np.nanargmax(values))]


def onset_layer(mean_by_layer: Any, layers: Sequence[int] | None = None) -> int:
    """The first layer whose mean effect reaches half of the curve's maximum (docs/method.md).

    Why not only the peak: with resid_post patching at all positions the last layer carries almost
    the whole gain, so the curve rises to the end and its argmax says little. The onset says where
    the effect *appears*: the earliest layer already holding half of the best layer's effect.
    A step from 0 to 1 at layer 3 has onset 3; a linear ramp 0, 1, 2, 3, 4 has onset 2.

    Convention when the maximum is negative (no layer moves the preference in the tuned
    direction): no layer "reaches" max/2 > max in a meaningful sense, and the onset is the peak.
    """
    values, ids = _curve(mean_by_layer, layers)
    return ids[int(_onset_index(values[None, :])[0])]


def _onset_index(means: np.ndarray) -> np.ndarray:
    """Row-wise onset column index of a ``[k, n_layers]`` array of mean curves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        top = np.nanmax(means, axis=1)
    peak = np.nanargmax(np.where(np.isnan(means), -np.inf, means), axis=1)
    reached = means >= (top / 2.0)[:, None]  # NaN compares False
    first = np.argmax(reached, axis=1)
    return np.where(top >= 0, first, peak)


def _peak_index(means: np.ndarray) -> np.ndarray:
    return np.argmax(np.where(np.isnan(means), -np.inf, means), axis=1)


def _int_interval(samples: np.ndarray, level: float) -> list[int]:
    """Percentile interval of integer-valued samples, widened outwards to values that occur."""
    lo_q, hi_q = _tails(level)
    lo = np.percentile(samples, lo_q, method="lower")
    hi = np.percentile(samples, hi_q, method="higher")
    return [int(lo), int(hi)]


def peak_onset_with_ci(matrix: np.ndarray, layers: Sequence[int], *, seed: int = 0, n_boot: int = 2000,
                       level: float = 0.95) -> dict[str, Any]:
    """Peak and onset layers of the mean curve, each with a bootstrap CI over pairs.

    The point estimates come from the mean over all pairs. For the intervals, every bootstrap
    resample of pairs (joint across layers) gives its own mean curve, hence its own peak and onset
    layer; the CI is the 2.5th-97.5th percentile of those layer ids (for ``level`` 0.95), taken as
    values that occur ("lower"/"higher" percentile methods), so it is a pair of real layer ids.
    A CI of ``[8, 8]`` means every plausible resample of pairs agrees on layer 8; ``[5, 14]`` means
    the data cannot pin the layer down.

    Returns ``{"peak_layer", "peak_layer_ci": [lo, hi], "onset_layer", "onset_layer_ci": [lo, hi]}``
    with layer ids from ``layers`` (not column indices).
    """
    _check_boot_args(n_boot, level)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"matrix must be a non-empty pairs × layers array, got shape {m.shape}")
    ids = np.array([int(x) for x in layers])
    if ids.size != m.shape[1]:
        raise ValueError(f"{ids.size} layer ids for a matrix with {m.shape[1]} columns")
    means = m.mean(axis=0)
    peak = int(ids[_peak_index(means[None, :])[0]])
    onset = int(ids[_onset_index(means[None, :])[0]])
    boots = bootstrap_means(m, seed=seed, n_boot=n_boot)
    return {
        "peak_layer": peak,
        "peak_layer_ci": _int_interval(ids[_peak_index(boots)], level),
        "onset_layer": onset,
        "onset_layer_ci": _int_interval(ids[_onset_index(boots)], level),
    }


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


def heldout_peak(matrix: np.ndarray, layers: Sequence[int], pair_ids: Sequence[int], *, seed: int = 0,
                 n_boot: int = 2000, level: float = 0.95) -> dict[str, Any]:
    """Choose the peak layer on half of the pairs, measure it on the other half.

    The peak of a noisy curve is partly where the noise happened to be high ("winner's curse"):
    the mean effect at the argmax overstates the effect a new sample would show there. Choosing the
    layer on the ``fit`` half and reporting the ``heldout`` half's mean at that layer (with its
    bootstrap CI) removes that bias. ``fit_mean`` (the fit half's mean at the chosen layer) is
    returned too, so the optimism of the in-sample number can be seen.

    ``pair_ids[i]`` labels ``matrix[i]``. Returns ``{"chosen_layer", "fit_pairs", "heldout_pairs",
    "fit_mean", "heldout_mean", "heldout_ci": [lo, hi]}``. Needs at least two pairs.
    """
    m = np.asarray(matrix, dtype=np.float64)
    ids = [int(p) for p in pair_ids]
    if m.ndim != 2 or m.shape[0] != len(ids):
        raise ValueError(f"matrix of shape {m.shape} does not match {len(ids)} pair ids")
    if len(layers) != m.shape[1]:
        raise ValueError(f"{len(layers)} layer ids for a matrix with {m.shape[1]} columns")
    if len(ids) < 2:
        raise ValueError("a held-out split needs at least two pairs")
    fit, held = split_halves(ids, seed=seed)
    row = {p: i for i, p in enumerate(ids)}
    fit_rows, held_rows = [row[p] for p in fit], [row[p] for p in held]
    col = int(_peak_index(m[fit_rows].mean(axis=0)[None, :])[0])
    mean, lo, hi = bootstrap_mean_ci(m[held_rows, col], seed=seed, n_boot=n_boot, level=level)
    return {
        "chosen_layer": int(layers[col]),
        "fit_pairs": fit,
        "heldout_pairs": held,
        "fit_mean": float(m[fit_rows, col].mean()),
        "heldout_mean": mean,
        "heldout_ci": [lo, hi],
    }


# --------------------------------------------------------------------------------------------------
# dose-response
# --------------------------------------------------------------------------------------------------


def spearman_monotonicity(params: Sequence[float], means: Sequence[float]) -> float:
    """Spearman rank correlation between a parameter grid (e.g. α) and the mean effect.

    +1: the effect rises with α at every step (any monotone shape, linear or not); -1: it falls;
    near 0: no monotone relation. Points where either value is NaN are dropped; with fewer than
    two points left, or a constant series, the answer is NaN.
    """
    from scipy.stats import spearmanr

    x = np.asarray(params, dtype=np.float64).ravel()
    y = np.asarray(means, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"{x.size} params for {y.size} means")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(x, y).statistic
    return float(rho)


# --------------------------------------------------------------------------------------------------
# one call per experiment
# --------------------------------------------------------------------------------------------------


def summarize_experiment(effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000,
                         level: float = 0.95) -> dict[str, Any]:
    """Everything the report says about one per-layer experiment/condition.

    Returns ``{"per_layer": [{"layer", "mean", "ci_low", "ci_high", "n"}, ...], "peak_layer",
    "peak_layer_ci", "onset_layer", "onset_layer_ci", "heldout"}`` where ``heldout`` is
    :func:`heldout_peak`'s dict (``None`` with fewer than two pairs). Plain Python types only.
    """
    _check_boot_args(n_boot, level)
    matrix, pair_ids, layers = effect_matrix(effects)
    out: dict[str, Any] = {"per_layer": _summary_rows(matrix, layers, seed=seed, n_boot=n_boot, level=level)}
    out.update(peak_onset_with_ci(matrix, layers, seed=seed, n_boot=n_boot, level=level))
    out["heldout"] = (heldout_peak(matrix, layers, pair_ids, seed=seed, n_boot=n_boot, level=level)
                      if len(pair_ids) >= 2 else None)
    return out

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


# Effects that differ by less than this (nats, plus the same relative to the curve's scale) are ties: layers that
# carry exactly the same effect (every resid_post layer above a planted block) differ only by float rounding.
TIE_ATOL = 1e-6
TIE_RTOL = 1e-6


def _tie_tolerance(top: np.ndarray) -> np.ndarray:
    return TIE_ATOL + TIE_RTOL * np.abs(np.where(np.isfinite(top), top, 0.0))


def _peak_index(means: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Row-wise argmax of ``[k, n_layers]`` mean curves (NaNs ignored).

    With ``rng`` ties (within :data:`TIE_ATOL`/:data:`TIE_RTOL`) are broken uniformly at random, so a bootstrap
    argmax distribution over layers that carry the same effect spreads over all of them instead of piling onto
    the first (statistics.md: "never towards the first layer"). Without ``rng``: the first of the tied maxima.
    """
    filled = np.where(np.isnan(means), -np.inf, means)
    if rng is None:
        return np.argmax(filled, axis=1)
    top = filled.max(axis=1, keepdims=True)
    tied = filled >= top - _tie_tolerance(top)
    # a uniform random key per cell; the largest key among the tied cells wins
    keys = np.where(tied, rng.random(tied.shape), -1.0)
    return np.argmax(keys, axis=1)


def _int_interval(samples: np.ndarray, level: float) -> list[int]:
    """Percentile interval of integer-valued samples, widened outwards to values that occur."""
    lo_q, hi_q = _tails(level)
    lo = np.percentile(samples, lo_q, method="lower")
    hi = np.percentile(samples, hi_q, method="higher")
    return [int(lo), int(hi)]


def peak_onset_with_ci(
    matrix: np.ndarray, layers: Sequence[int], *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> dict[str, Any]:
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
    # ties broken at random (a stream of its own, so the resamples stay those of every other function here)
    tie_rng = np.random.default_rng([seed, 1])
    return {
        "peak_layer": peak,
        "peak_layer_ci": _int_interval(ids[_peak_index(boots, tie_rng)], level),
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


def heldout_peak(
    matrix: np.ndarray,
    layers: Sequence[int],
    pair_ids: Sequence[int],
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
) -> dict[str, Any]:
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
    col = int(_peak_index(m[fit_rows].mean(axis=0)[None, :], np.random.default_rng([seed, 2]))[0])
    mean, lo, hi = bootstrap_mean_ci(m[held_rows, col], seed=seed, n_boot=n_boot, level=level)
    return {
        "chosen_layer": int(layers[col]),
        "fit_pairs": fit,
        "heldout_pairs": held,
        "fit_mean": float(m[fit_rows, col].mean()),
        "heldout_mean": mean,
        "heldout_ci": [lo, hi],
        "selection": selection_record(
            fit,
            held,
            int(layers[col]),
            m[held_rows, col],
            seed=seed,
            n_boot=n_boot,
            level=level,
            in_sample=m[fit_rows, col],
        ),
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


def summarize_experiment(
    effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> dict[str, Any]:
    """Everything the report says about one per-layer experiment/condition.

    Returns ``{"per_layer": [{"layer", "mean", "ci_low", "ci_high", "n"}, ...], "peak_layer",
    "peak_layer_ci", "onset_layer", "onset_layer_ci", "peak_set", "peak_set_rule", "layers_swept", "heldout",
    "selection"}`` where ``heldout`` is :func:`heldout_peak`'s dict and ``selection`` its explore/confirm record
    (both ``None`` with fewer than two pairs); ``peak_set`` is :func:`peak_set`'s. Plain Python types only.
    """
    _check_boot_args(n_boot, level)
    matrix, pair_ids, layers = effect_matrix(effects)
    out: dict[str, Any] = {"per_layer": _summary_rows(matrix, layers, seed=seed, n_boot=n_boot, level=level)}
    out.update(peak_onset_with_ci(matrix, layers, seed=seed, n_boot=n_boot, level=level))
    out.update(peak_set(matrix, layers, seed=seed, n_boot=n_boot, level=level))
    out["heldout"] = (
        heldout_peak(matrix, layers, pair_ids, seed=seed, n_boot=n_boot, level=level) if len(pair_ids) >= 2 else None
    )
    out["selection"] = out["heldout"]["selection"] if out["heldout"] else None
    return out


# --------------------------------------------------------------------------------------------------
# statistics.md: peak sets, ratios, simultaneous bands, nulls as bounds, explore/confirm records
# --------------------------------------------------------------------------------------------------


def peak_set(
    matrix: np.ndarray, layers: Sequence[int], *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> dict[str, Any]:
    """Every layer whose effect is not significantly below the maximum: the peak as a set.

    Let m* be the layer with the largest mean effect. For each layer ℓ the paired difference
    d_ℓ = effect(m*) − effect(ℓ) is bootstrapped over pairs (the same resamples for every layer); ℓ is in the
    set unless the one-sided ``level`` lower bound of mean d_ℓ (its ``1 − level`` percentile) is above 0
    (beyond float-rounding ties). A planted twin whose whole gain is carried by several layers therefore gets
    all of them, not the first. Returns ``{"peak_set": [layer ids], "peak_set_rule": str, "layers_swept": n}``;
    ``layers_swept`` says how coarse the grid was (statistics.md: say how many layers were swept).
    """
    _check_boot_args(n_boot, level)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"matrix must be a non-empty pairs × layers array, got shape {m.shape}")
    if len(layers) != m.shape[1]:
        raise ValueError(f"{len(layers)} layer ids for a matrix with {m.shape[1]} columns")
    means = m.mean(axis=0)
    top = int(_peak_index(means[None, :])[0])
    diff = m[:, [top]] - m  # pairs × layers, ≥ 0 in the mean at every layer
    if m.shape[0] == 1:
        lower = diff[0]
    else:
        lower = np.percentile(bootstrap_means(diff, seed=seed, n_boot=n_boot), 100.0 * (1.0 - level), axis=0)
    tol = _tie_tolerance(np.array([means[top]]))[0]
    members = [int(layer) for layer, lb in zip(layers, lower) if not lb > tol]
    rule = (
        f"layers whose mean effect is not significantly below the maximum (layer {int(layers[top])}): "
        f"one-sided paired bootstrap of max − effect at {level:.0%}, {n_boot} resamples over pairs"
    )
    return {"peak_set": members, "peak_set_rule": rule, "layers_swept": int(m.shape[1])}


def ratio_ci(
    num: Sequence[float] | np.ndarray,
    den: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
) -> dict[str, Any]:
    """mean(num) / mean(den) under statistics.md's ratio rule.

    ``num[i]`` and ``den[i]`` belong to pair i and are resampled together. The ratio is ``defined`` only when
    the denominator's bootstrap CI excludes 0; its interval is then the percentile interval of the resampled
    ratios, *every* resample kept (a resample whose denominator is 0 gives ±inf and sits in a tail; the
    interval is read from order statistics so infinities never turn into NaN and are never dropped).
    Otherwise ``ratio``, ``ci_low`` and ``ci_high`` are NaN and ``text`` says "undefined (denominator CI spans 0)".
    Numerator and denominator are always reported with their own CIs (in nats).

    Returns ``{"defined", "ratio", "ci_low", "ci_high", "numerator": {"mean", "ci_low", "ci_high"},
    "denominator": {...}, "n", "n_infinite", "rule", "text"}``.
    """
    _check_boot_args(n_boot, level)
    a = np.asarray(num, dtype=np.float64).ravel()
    b = np.asarray(den, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"{a.size} numerator values for {b.size} denominator values")
    if a.size == 0:
        raise ValueError("ratio_ci needs at least one pair")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("ratio_ci got non-finite per-pair values")
    lo_q, hi_q = _tails(level)
    boots = (
        np.array([[a[0], b[0]]]) if a.size == 1 else bootstrap_means(np.stack([a, b], axis=1), seed=seed, n_boot=n_boot)
    )
    num_b, den_b = boots[:, 0], boots[:, 1]

    def interval(x: np.ndarray) -> tuple[float, float]:
        return (float(np.percentile(x, lo_q, method="lower")), float(np.percentile(x, hi_q, method="higher")))

    n_lo, n_hi = interval(num_b)
    d_lo, d_hi = interval(den_b)
    out: dict[str, Any] = {
        "numerator": {"mean": float(a.mean()), "ci_low": n_lo, "ci_high": n_hi},
        "denominator": {"mean": float(b.mean()), "ci_low": d_lo, "ci_high": d_hi},
        "n": int(a.size),
        "rule": (
            f"a ratio is reported only when the denominator's {level:.0%} CI excludes 0; its CI is the "
            "percentile bootstrap of the ratio over pairs, no resample dropped"
        ),
    }
    defined = (d_lo > 0 or d_hi < 0) and b.mean() != 0
    if not defined:
        out.update(
            defined=False,
            ratio=math.nan,
            ci_low=math.nan,
            ci_high=math.nan,
            n_infinite=0,
            text=(
                f"undefined (denominator CI spans 0): numerator {a.mean():+.3g} [{n_lo:+.3g}, {n_hi:+.3g}] "
                f"nats, denominator {b.mean():+.3g} [{d_lo:+.3g}, {d_hi:+.3g}] nats"
            ),
        )
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num_b / den_b
    # 0/0 cannot happen with a denominator CI away from 0 unless a resample's mean is exactly 0: count it as inf
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    r_lo, r_hi = interval(np.sort(ratios))
    point = float(a.mean() / b.mean())
    out.update(
        defined=True,
        ratio=point,
        ci_low=r_lo,
        ci_high=r_hi,
        n_infinite=int((~np.isfinite(ratios)).sum()),
        text=f"{point:.3g} [{r_lo:.3g}, {r_hi:.3g}]",
    )
    return out


def simultaneous_band(matrix: np.ndarray, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95) -> dict[str, Any]:
    """Max-|t| bootstrap bands over the m columns (cells of a map) of a pairs × cells ``matrix``.

    Each resample's column means are studentised by the columns' bootstrap standard errors; the ``level``
    quantile ``c`` of the largest |t| over all m cells gives bands mean ± c·se that hold for every cell at once
    (family-wise), which a claim about "the largest cell" needs (statistics.md). Cells with no spread (se 0)
    get a band of zero width. Returns ``{"m", "critical", "mean": [...], "band_low": [...],
    "band_high": [...], "rule"}``.
    """
    _check_boot_args(n_boot, level)
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"matrix must be a non-empty pairs × cells array, got shape {x.shape}")
    means = x.mean(axis=0)
    if x.shape[0] == 1:
        crit, se = math.nan, np.zeros_like(means)
    else:
        boots = bootstrap_means(x, seed=seed, n_boot=n_boot)
        se = boots.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(boots - means) / se
        t = np.where(se > 0, t, 0.0)
        crit = float(np.percentile(t.max(axis=1), 100.0 * level))
    half = np.nan_to_num(crit) * se
    return {
        "m": int(x.shape[1]),
        "critical": crit,
        "mean": means.tolist(),
        "band_low": (means - half).tolist(),
        "band_high": (means + half).tolist(),
        "rule": (
            f"max-|t| bootstrap band over m = {x.shape[1]} cells at {level:.0%} (family-wise), "
            f"{n_boot} resamples over pairs"
        ),
    }


def effect_or_bound(
    values: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95, unit: str = "nats"
) -> dict[str, Any]:
    """A mean with its CI, and when the CI includes 0 the bound a finite sample supports instead of "0".

    statistics.md: "no effect" is never printed as 0; print ``|effect| < B at 95 %`` with B the larger
    absolute CI end. Returns ``{"mean", "ci_low", "ci_high", "n", "excludes_zero", "bound", "text"}``
    (``bound`` is None when the CI excludes 0).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    mean, lo, hi = bootstrap_mean_ci(v, seed=seed, n_boot=n_boot, level=level)
    excludes = lo > 0 or hi < 0
    bound = None if excludes else float(max(abs(lo), abs(hi)))
    text = (
        f"{mean:+.3g} {unit} [{lo:+.3g}, {hi:+.3g}]"
        if excludes
        else f"|effect| < {bound:.2g} {unit} at {level:.0%} (mean {mean:+.3g}, CI [{lo:+.3g}, {hi:+.3g}])"
    )
    return {
        "mean": mean,
        "ci_low": lo,
        "ci_high": hi,
        "n": int(v.size),
        "excludes_zero": bool(excludes),
        "bound": bound,
        "text": text,
    }


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


def coverage_rate(
    population: Sequence[float] | np.ndarray,
    *,
    sample_size: int = 40,
    n_draws: int = 200,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict[str, Any]:
    """How often the bootstrap CI of a ``sample_size``-pair subsample covers the population mean.

    statistics.md trusts a CI method only after this check: on a planted twin whose population effect is
    known (the mean over all its pairs), draw many seeded subsamples without replacement and count how often
    their ``level`` CI covers it. Returns ``{"rate", "n_draws", "sample_size", "population_mean", "level"}``.
    """
    pop = np.asarray(population, dtype=np.float64).ravel()
    if sample_size < 2 or sample_size > pop.size:
        raise ValueError(f"sample_size must be in [2, {pop.size}], got {sample_size}")
    rng = np.random.default_rng(seed)
    target = float(pop.mean())
    hits = 0
    for d in range(n_draws):
        sub = pop[rng.choice(pop.size, size=sample_size, replace=False)]
        _, lo, hi = bootstrap_mean_ci(sub, seed=seed + d, n_boot=n_boot, level=level)
        hits += lo <= target <= hi
    return {
        "rate": hits / n_draws,
        "n_draws": int(n_draws),
        "sample_size": int(sample_size),
        "population_mean": target,
        "level": level,
    }

"""Peak and onset layers, the peak as a set, the held-out peak, and one call per per-layer experiment."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from alignment_probe.stats.bootstrap import (
    _check_boot_args,
    _summary_rows,
    _tails,
    bootstrap_mean_ci,
    bootstrap_means,
    effect_matrix,
)
from alignment_probe.stats.selection import selection_record, split_halves

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
# the peak as a set (statistics.md)
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

"""Intervals beyond a mean's CI (statistics.md): ratios under the ratio rule, simultaneous bands over a map, a
bound instead of "0", the coverage check of the CI method, and the dose-response rank correlation."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from alignment_probe.stats.bootstrap import _check_boot_args, _tails, bootstrap_mean_ci, bootstrap_means

# --------------------------------------------------------------------------------------------------
# statistics.md: ratios, simultaneous bands, nulls as bounds, the coverage check
# --------------------------------------------------------------------------------------------------


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

"""What E11's summary measures, as pure functions of the effects table: per-pair effects, means with bootstrap CIs,
recovered fractions under the ratio rule, dose curves, the null's location, KL closed, and the difference of two
independent ratios."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from alignment_probe import stats
from alignment_probe.experiments.steering.common import (
    N_NULL,
    NULL,
    SCOPE,
)

# --------------------------------------------------------------------------------------------------
# the summary: a pure function of the effects, the scores and the fit record


def _per_pair(effects: pd.DataFrame, name: str, split: str, param: float, column: str = "effect") -> pd.Series:
    if not len(effects):
        return pd.Series(dtype=np.float64)
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, param)]
    return rows.set_index("pair_id")[column].sort_index()


def _per_token_effect(effects: pd.DataFrame, name: str, split: str, param: float, scores: pd.DataFrame) -> pd.Series:
    """The effect on per-token Δlogp: each side's log-prob change divided by its completion length."""
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, param)]
    rows = rows.set_index("pair_id").sort_index()
    n = scores.set_index("pair_id").reindex(rows.index)
    return (rows.patched_logp_chosen - rows.clean_logp_chosen) / n.n_chosen_tokens - (
        rows.patched_logp_rejected - rows.clean_logp_rejected
    ) / n.n_rejected_tokens


def _mean_ci(values: pd.Series | np.ndarray, cfg: Any) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, lo, hi = stats.bootstrap_mean_ci(v, seed=cfg.seed, n_boot=cfg.n_boot)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size)}


def _fraction(num: pd.Series, gain: pd.Series, cfg: Any, sign: float = 1.0) -> dict[str, Any]:
    """sign · mean(num) / mean(gain) over the pairs of ``num`` under the ratio rule (``stats.ratio_ci``)."""
    if len(num) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "defined": False, "text": "not run"}
    r = stats.ratio_ci(
        sign * num.to_numpy(dtype=np.float64),
        gain.reindex(num.index).to_numpy(dtype=np.float64),
        seed=cfg.seed,
        n_boot=cfg.n_boot,
    )
    return {
        "mean": r["ratio"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "defined": r["defined"],
        "text": r["text"],
    }


def _curve(
    effects: pd.DataFrame,
    name: str,
    split: str,
    scales: Sequence[float],
    gain: pd.Series,
    cfg: Any,
    *,
    at: float,
    fraction: str = "recovered_fraction",
    sign: float = 1.0,
) -> dict[str, Any]:
    """``by_c`` (per scale a, key ``c``: the mean effect and its CI) and the fraction at the chosen scale ``at``."""
    by_c = [{"c": float(a)} | _mean_ci(_per_pair(effects, name, split, a), cfg) for a in scales]
    return {"by_c": by_c, fraction: _fraction(_per_pair(effects, name, split, at), gain, cfg, sign)}


def null_location(effect: float, null_means: Sequence[float], gain_sign: float = 1.0) -> dict[str, Any]:
    """Where ``effect`` falls in the null's effects (both oriented along the gain's sign): ``percentile`` (share
    of draws below it, ties half, ×100), one-sided ``p`` = (1 + #draws at or above it)/(n + 1), ``q95`` (the
    null's 95th percentile in that direction, in nats) and ``exceeds_q95``."""
    m = np.asarray(null_means, dtype=np.float64)
    n = int(m.size)
    if n == 0 or not math.isfinite(effect):
        return {"n": n, "percentile": math.nan, "p": math.nan, "q95": math.nan, "exceeds_q95": False}
    s = 1.0 if gain_sign >= 0 else -1.0
    o, e = s * m, s * float(effect)
    q95 = float(np.quantile(o, 0.95))
    return {
        "n": n,
        "percentile": float(100.0 * ((o < e).sum() + 0.5 * (o == e).sum()) / n),
        "p": float((1 + (o >= e).sum()) / (n + 1)),
        "q95": s * q95,
        "exceeds_q95": bool(e > q95),
    }


def null_summary(
    effects: pd.DataFrame, v_effects: pd.Series, gain: pd.Series, cfg: Any, *, layer: int, scale: float
) -> tuple[dict[str, Any], pd.Series]:
    """The null at the chosen (ℓ, a) on the held-out half: :func:`null_location` of v's mean effect, the null's
    quantiles (nats and fractions of the gain) and every draw's mean; and the per-pair mean over the draws."""
    rows = effects[(effects.experiment == NULL) & (effects.split == "heldout")] if len(effects) else effects
    rule = (
        f"{N_NULL} random directions with v's per-class norms (a·‖v_ℓ,c‖), held-out half; p one-sided "
        "(1 + #draws at or above v)/(n + 1)"
    )
    if not len(rows):
        return {"n": 0, "percentile": math.nan, "p": math.nan, "layer": layer, "scale": scale, "rule": rule}, pd.Series(
            dtype=np.float64
        )
    table = rows.pivot(index="pair_id", columns="param", values="effect").sort_index()
    means = table.mean(axis=0).to_numpy()
    g = float(gain.reindex(table.index).mean())
    effect = float(v_effects.mean()) if len(v_effects) else math.nan
    quant = (0.05, 0.5, 0.95)
    out = null_location(effect, means, 1.0 if g >= 0 else -1.0) | {
        "effect": effect,
        "quantiles": {str(q): float(np.quantile(means, q)) for q in quant},
        "recovered_fraction_quantiles": {str(q): float(np.quantile(means, q) / g) if g else math.nan for q in quant},
        "means": [float(x) for x in means],
        "layer": layer,
        "scale": scale,
        "rule": rule,
    }
    return out, table.mean(axis=1)


def kl_summary(record: Mapping[str, Any], cfg: Any) -> dict[str, Any] | None:
    """KL(T ‖ B) and KL(T ‖ steered B) at the predicting positions (held-out half, per pair) and the fraction of
    KL(T ‖ B) closed, 1 − mean KL(T ‖ steered) / mean KL(T ‖ B) (the ratio rule): at the chosen scale and per
    scale (``by_c``)."""
    kl = record.get("kl")
    if not kl or not kl.get("pair_id"):
        return None
    ids = pd.Index(kl["pair_id"], name="pair_id")
    base = pd.Series(kl["base"], index=ids, dtype=np.float64)
    by_c = []
    for a, values in zip(kl["scales"], kl["steered"]):
        steered = pd.Series(values, index=ids, dtype=np.float64)
        by_c.append(
            {"c": float(a), "steered": _mean_ci(steered, cfg), "fraction_closed": _fraction(base - steered, base, cfg)}
        )
    at = next(r for r in by_c if abs(r["c"] - float(record["scale"])) < 1e-12)
    return {
        "positions": SCOPE,
        "layer": record.get("layer"),
        "scale": record.get("scale"),
        "base": _mean_ci(base, cfg),
        "steered": at["steered"],
        "fraction_closed": at["fraction_closed"],
        "by_c": by_c,
    }


def ratio_difference(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    *,
    seed: int,
    n_boot: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """mean(num_a)/mean(den_a) − mean(num_b)/mean(den_b) for two *independent* pair sets (e.g. the transfer pairs
    and the held-out half), with a percentile bootstrap CI that resamples each set on its own; defined only when
    both ratios are (statistics.md's ratio rule). No resample is dropped: an infinite one sits in a tail."""
    a, b = (stats.ratio_ci(n, d, seed=seed, n_boot=n_boot, level=level) for n, d in ((num_a, den_a), (num_b, den_b)))
    if not (a["defined"] and b["defined"]):
        return {
            "mean": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "defined": False,
            "text": "undefined (a denominator CI spans 0)",
        }
    boots = [
        stats.bootstrap_means(
            np.stack([np.asarray(n, np.float64), np.asarray(d, np.float64)], 1), seed=s, n_boot=n_boot
        )
        for (n, d), s in (((num_a, den_a), seed), ((num_b, den_b), seed + 1))
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = boots[0][:, 0] / boots[0][:, 1] - boots[1][:, 0] / boots[1][:, 1]
    diff = np.sort(np.where(np.isnan(diff), np.inf, diff))
    tail = (1 - level) / 2 * 100
    lo, hi = float(np.percentile(diff, tail, method="lower")), float(np.percentile(diff, 100 - tail, method="higher"))
    point = float(a["ratio"] - b["ratio"])
    return {"mean": point, "ci_low": lo, "ci_high": hi, "defined": True, "text": f"{point:+.3g} [{lo:+.3g}, {hi:+.3g}]"}

"""E11's rows in the findings table: "the localized direction steers the base" and "the vector transfers to another
dataset", each three-way by an explicit rule on the numbers it records."""

from __future__ import annotations

import math
from typing import Any, Mapping

from alignment_probe import plotting as P
from alignment_probe.experiments.steering.common import (
    MAIN,
)
from alignment_probe.experiments.verdict_rules import AGREES, DIFFERS, INCONCLUSIVE, Finding
from alignment_probe.formatting import fmt
from alignment_probe.formatting import num as _num


def _ci_text(d: Mapping[str, Any] | None) -> str:
    d = d or {}
    return f"{fmt(d.get('mean'))} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def steer_numbers(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers :func:`verdict` uses, by name (JSON-able)."""
    rec, null, gain = entry.get("recovered_fraction") or {}, entry.get("null") or {}, entry.get("gain") or {}
    at: Mapping[str, Any] = next(
        (r for r in entry.get("by_c") or [] if abs(_num(r.get("c")) - _num(entry.get("scale"))) < 1e-12), {}
    )
    return {
        "layer": entry.get("layer"),
        "scale": entry.get("scale"),
        "recovered_fraction": _num(rec.get("mean")),
        "recovered_ci_low": _num(rec.get("ci_low")),
        "recovered_ci_high": _num(rec.get("ci_high")),
        "recovered_defined": bool(rec.get("defined", False)),
        "effect": _num(at.get("mean")),
        "effect_ci_low": _num(at.get("ci_low")),
        "effect_ci_high": _num(at.get("ci_high")),
        "gain": _num(gain.get("mean")),
        "gain_ci_low": _num(gain.get("ci_low")),
        "gain_ci_high": _num(gain.get("ci_high")),
        "null_n": int(null.get("n") or 0),
        "null_q95": _num(null.get("q95")),
        "null_percentile": _num(null.get("percentile")),
        "null_p": _num(null.get("p")),
    }


def steer_outcome(n: Mapping[str, Any]) -> str:
    """The three-way rule on :func:`steer_numbers` (orientation: the gain's sign, so "above" means "towards the
    tuned model"). agrees iff the recovered fraction is defined, its CI lies above 0 and the effect exceeds the
    null's 95th percentile; differs iff it is defined and its CI lies below 0, or the effect's whole CI lies at or
    below that percentile (v is no better than random directions of its per-class norms); else inconclusive
    (the gain's CI spans 0, no null, or a CI that straddles)."""
    finite = all(
        math.isfinite(float(n[k]))
        for k in ("recovered_ci_low", "recovered_ci_high", "effect", "effect_ci_low", "effect_ci_high", "null_q95")
    )
    if not n["recovered_defined"] or n["null_n"] < 1 or not finite:
        return INCONCLUSIVE
    s = 1.0 if n["gain"] >= 0 else -1.0
    q95 = s * n["null_q95"]
    e, e_hi = s * n["effect"], max(s * n["effect_ci_low"], s * n["effect_ci_high"])
    if n["recovered_ci_low"] > 0 and e > q95:
        return AGREES
    if n["recovered_ci_high"] < 0 or e_hi <= q95:
        return DIFFERS
    return INCONCLUSIVE


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The localized direction steers the base" (E11, revised): three-way, :func:`steer_outcome`."""

    entry = P.experiment(summary, MAIN)
    if not entry:
        return None
    n = steer_numbers(entry)
    rec = entry.get("recovered_fraction") or {}
    ours = (
        f"layer {n['layer']}, a = {fmt(n['scale'])} ({entry.get('layer_rule') or 'rule not recorded'}), "
        f"held-out: recovered fraction {rec.get('text') or _ci_text(rec)}; effect {_ci_text({'mean': n['effect'], 'ci_low': n['effect_ci_low'], 'ci_high': n['effect_ci_high']})} nats "
        f"at the {fmt(n['null_percentile'])}th percentile of {n['null_n']} random directions "
        f"(their 95th: {fmt(n['null_q95'])} nats; p = {fmt(n['null_p'])})"
    )
    rule = (
        f"agrees iff the held-out recovered fraction's 95% CI excludes 0 from above "
        f"(here [{fmt(n['recovered_ci_low'])}, {fmt(n['recovered_ci_high'])}]) and the effect "
        f"({fmt(n['effect'])} nats) exceeds the null's 95th percentile ({fmt(n['null_q95'])} nats, n = "
        f"{n['null_n']} random directions with v's per-class norms); differs iff that CI lies below 0 or the "
        f"effect's CI high ({fmt(n['effect_ci_high'])}) is at or below that percentile; else inconclusive "
        f"(including a gain whose CI spans 0: [{fmt(n['gain_ci_low'])}, {fmt(n['gain_ci_high'])}] nats)"
    )
    return Finding(
        "steer",
        "The localized tuning shift steers the base towards the tuned model (E11)",
        "not in the paper (the localization spec's E11, revised 2026-12-07)",
        ours,
        steer_outcome(n),
        rule,
        numbers=n,
    )


def transfer_numbers(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    tr = entry.get("transfer")
    if not tr:
        return None
    rec, here, gain = tr.get("recovered_fraction") or {}, entry.get("recovered_fraction") or {}, tr.get("gain") or {}
    diff = tr.get("vs_heldout") or {}
    return {
        "layer": entry.get("layer"),
        "scale": entry.get("scale"),
        "n_pairs": tr.get("n_pairs"),
        "transfer_fraction": _num(rec.get("mean")),
        "transfer_ci_low": _num(rec.get("ci_low")),
        "transfer_ci_high": _num(rec.get("ci_high")),
        "transfer_defined": bool(rec.get("defined", False)),
        "heldout_fraction": _num(here.get("mean")),
        "heldout_defined": bool(here.get("defined", False)),
        "difference": _num(diff.get("mean")),
        "difference_ci_low": _num(diff.get("ci_low")),
        "difference_ci_high": _num(diff.get("ci_high")),
        "transfer_gain": _num(gain.get("mean")),
        "transfer_gain_ci_low": _num(gain.get("ci_low")),
        "transfer_gain_ci_high": _num(gain.get("ci_high")),
    }


def transfer_outcome(n: Mapping[str, Any]) -> str:
    """On the recovered fractions at the chosen (ℓ, a): agrees (transfers) iff both are defined, the transfer
    fraction's CI lies above 0 and the CI of (transfer − held-out) reaches 0 or above; differs (does not transfer
    as well) iff that difference's CI lies below 0 (statistics.md: "does not transfer" needs a CI that excludes
    the transferred value); else inconclusive."""
    vals = [float(n[k]) for k in ("transfer_ci_low", "difference_ci_low", "difference_ci_high")]
    if not (n["transfer_defined"] and n["heldout_defined"]) or not all(map(math.isfinite, vals)):
        return INCONCLUSIVE
    lo, _, d_hi = vals
    if d_hi < 0:
        return DIFFERS
    if lo > 0:
        return AGREES
    return INCONCLUSIVE


def verdict_transfer(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The vector fitted on one dataset steers another as well": three-way, :func:`transfer_outcome` (no row
    without ``--transfer-data``)."""

    entry = P.experiment(summary, MAIN)
    n = transfer_numbers(entry or {})
    if n is None:
        return None
    tr = entry["transfer"]
    ours = (
        f"layer {n['layer']}, a = {fmt(n['scale'])}: on {n['n_pairs']} pairs of the other dataset "
        f"(gain {_ci_text(tr.get('gain'))} nats) the vector recovers "
        f"{(tr.get('recovered_fraction') or {}).get('text') or _ci_text(tr.get('recovered_fraction'))} of the gain; "
        f"held-out half of the run's data {fmt(n['heldout_fraction'])}; transfer − held-out "
        f"{(tr.get('vs_heldout') or {}).get('text', '—')}"
    )
    rule = (
        f"agrees iff the transfer fraction's 95% CI [{fmt(n['transfer_ci_low'])}, {fmt(n['transfer_ci_high'])}] "
        f"lies above 0 and the CI of transfer − held-out fraction [{fmt(n['difference_ci_low'])}, "
        f"{fmt(n['difference_ci_high'])}] (independent bootstraps of the two pair sets) reaches 0; differs iff "
        "that CI lies below 0; else inconclusive (including an undefined ratio: a gain whose CI spans 0)"
    )
    return Finding(
        "steer_transfer",
        "The steering vector transfers to another dataset (E11)",
        "not in the paper (the localization spec's E11)",
        ours,
        transfer_outcome(n),
        rule,
        numbers=n,
    )

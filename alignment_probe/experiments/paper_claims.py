"""The paper's claims and the explicit rules that set a run's findings beside them (outcomes, thresholds and the
mid-depth band: :mod:`.verdict_rules`).

Effects are Δlogp summed over completion tokens (the paper's definition); every rule below uses these sums (the
per-token means stand beside them in the report's headline).

1. **Peak layer.** Agrees iff the whole *peak set* of tuned → base (the layers not significantly below the maximum,
   ``stats.peak_set``) lies in the mid-depth band; differs iff the peak set is disjoint from it; else inconclusive.
   A summary without a peak set uses the layers inside the bootstrap CI of the argmax. The half-maximum onset is
   shown but never judged: on any ramp it is mid-depth by construction.
2. **One non-zero LASSO coefficient.** Uses the bootstrap selection frequency of each layer. Agrees iff exactly one
   layer is non-zero, it is mid-depth, it is selected in ≥ ``LASSO_STABLE`` (95%) of bootstraps and every other layer
   in ≤ ``LASSO_RARE`` (5%); differs iff a layer outside the band is selected in ≥ 95%, or two or more layers are;
   else inconclusive (also without selection frequencies). An empty selection is a null (no layer predicts the
   per-pair gain well enough to survive the penalty), printed as such and never read as "differs": without a
   measured power it is no evidence against one layer (statistics.md: nulls are bounds, not facts).
3. **k = 4 gives ≈ 99% of the effect** (one row per low-rank mode run). At the only layer run (else the one nearest
   our peak) and k = 4, the held-out ratio (subspace fitted on the other half) when the summary gives its CI, else
   the in-sample one: undefined under the ratio rule (denominator CI spans 0) → inconclusive; CI inside
   ``RATIO_BAND`` [0.90, 1.10] → agrees; CI disjoint from it → differs; else inconclusive.
4. **Identity control is exactly 0.** Exact, two outcomes: agrees iff max |effect| ≤ ``IDENTITY_TOLERANCE`` (1e-6
   nats) over every per-pair row of the effects table (else over the per-layer means and CI ends); else differs.
5. **Reverse direction yields minimal change** (appendix A1). Margin M = ``REVERSE_MAX_RATIO`` (0.25) × max over
   layers of |mean tuned → base effect| (|mean gain| when tuned → base was not run). Agrees iff every layer's
   base → tuned CI lies inside [−M, M]; differs iff some layer's CI lies wholly outside it; else inconclusive. (A
   reverse effect as large as the forward one, −0.78 against +0.78, differs.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignment_probe import plotting as F
from alignment_probe.experiments.verdict_rules import (
    _EPS,
    AGREES,
    DEPTH_TOLERANCE,
    DIFFERS,
    IDENTITY_TOLERANCE,
    INCONCLUSIVE,
    LASSO_RARE,
    LASSO_STABLE,
    LOWRANK_K,
    NOT_RUN,
    PAPER_N_LAYERS,
    PAPER_PEAK_LAYER,
    PAPER_RELATIVE_DEPTH,
    RATIO_BAND,
    REVERSE_MAX_RATIO,
    Finding,
    _mid_depth,
    interval_vs_band,
    mid_depth_layers,
    plain,
    relative_depth,
    set_vs_band,
)
from alignment_probe.formatting import fmt, fmt_effect, fmt_layers, fmt_ratio
from alignment_probe.formatting import num as _num
from alignment_probe.vocab import LOWRANK_MODES


def _peak_set(entry: Mapping[str, Any], frame: pd.DataFrame) -> tuple[list[int], str]:
    """The peak set and where it came from: ``peak_set``, else the swept layers inside the argmax's bootstrap CI."""
    if entry.get("peak_set") is not None:
        return sorted(int(v) for v in entry["peak_set"]), "peak set"
    lo, hi = F.ci_pair(entry.get("peak_layer_ci"))
    if math.isfinite(lo) and math.isfinite(hi):
        return [int(v) for v in frame["layer"] if lo <= v <= hi], "layers inside the argmax's bootstrap CI"
    return [], "none"


def finding_peak(summary: Mapping[str, Any]) -> Finding:
    claim = "Alignment is concentrated at a mid-stack peak layer"
    paper = (
        f"Layer {PAPER_PEAK_LAYER} of {PAPER_N_LAYERS} (relative depth {PAPER_RELATIVE_DEPTH:.2f} "
        f"= {PAPER_PEAK_LAYER}/{PAPER_N_LAYERS - 1}; 0.50 as {PAPER_PEAK_LAYER}/{PAPER_N_LAYERS})"
    )
    rule = (
        f"agrees iff the whole tuned → base peak set (layers not significantly below the maximum) is mid-depth "
        f"(|layer / (n_layers − 1) − {PAPER_RELATIVE_DEPTH:.3f}| ≤ {DEPTH_TOLERANCE}); differs iff it is "
        "disjoint from the mid-depth layers; else inconclusive"
    )
    entry = F.experiment(summary, F.MAIN)
    if not entry or not entry.get("per_layer"):
        return Finding("peak", claim, paper, "patch_tuned_to_base not run", NOT_RUN, rule)
    frame = F.per_layer_frame(entry["per_layer"])
    n = F.n_layers(summary)
    members, source = _peak_set(entry, frame)
    band = mid_depth_layers(n)
    swept = int(entry.get("layers_swept") or len(frame))
    argmax = entry.get("peak_layer")
    if argmax is None and len(frame):
        argmax = int(frame.loc[frame["mean"].idxmax(), "layer"])
    verdict = set_vs_band(members, n)
    parts = [
        f"peak set layers {fmt_layers(members)} ({len(members)} of {swept} layers swept"
        + (f", of {n} in the model" if n and swept < n else "")
        + ")"
        + ("" if source == "peak set" else f" [{source}: the summary has no peak set]")
    ]
    if members and n:
        depths = [relative_depth(v, n) for v in members]
        parts.append(
            f"relative depth {fmt(min(depths), 2)}" + (f"–{fmt(max(depths), 2)}" if max(depths) > min(depths) else "")
        )
    parts.append(f"mid-depth layers {fmt_layers(band)}")
    numbers: dict[str, Any] = {
        "peak_set": members,
        "peak_set_source": source,
        "layers_swept": swept,
        "n_layers": n,
        "mid_depth_layers": band,
    }
    if argmax is not None:
        row = frame[frame["layer"] == int(argmax)]
        text = f"argmax layer {int(argmax)}"
        lo, hi = F.ci_pair(entry.get("peak_layer_ci"))
        if math.isfinite(lo):
            text += f" (bootstrap CI layers {lo:g}–{hi:g})"
        if len(row):
            m, a, b = (float(row[c].iloc[0]) for c in ("mean", "ci_low", "ci_high"))
            text += f", effect {fmt_effect(m, a, b)}"
            numbers.update(peak_mean=m, peak_ci=[a, b])
        parts.append(text)
        numbers.update(peak_layer=int(argmax), peak_layer_ci=[lo, hi])
    onset = entry.get("onset_layer")
    if onset is not None:
        parts.append(f"onset layer {int(onset)} (half-maximum: mid-depth on any ramp by construction, not judged)")
    if not members:
        parts.append("no peak set or argmax CI in the summary: uncertainty unknown")
    return Finding("peak", claim, paper, "; ".join(parts), verdict, rule, plain(numbers))


def finding_lasso(summary: Mapping[str, Any]) -> Finding:
    claim = "Only one layer has a non-zero LASSO coefficient"
    paper = f"Only layer {PAPER_PEAK_LAYER} (coefficient −0.18; Table 1)"
    rule = (
        f"agrees iff exactly one layer is non-zero, it is mid-depth, it is selected in ≥ {LASSO_STABLE:.0%} of "
        f"bootstraps and every other layer in ≤ {LASSO_RARE:.0%}; differs iff a layer outside mid-depth is "
        f"selected in ≥ {LASSO_STABLE:.0%}, or two or more layers are; else inconclusive (an empty selection is a "
        "null without measured power, not evidence against one layer)"
    )
    entry = F.experiment(summary, "lasso")
    coefs = [_num(c) for c in (entry or {}).get("coefficients") or []]
    if not coefs:
        return Finding("lasso", claim, paper, "lasso not run", NOT_RUN, rule)
    nonzero = entry.get("nonzero_layers")
    if nonzero is None:
        nonzero = [i for i, c in enumerate(coefs) if math.isfinite(c) and c != 0]
    nonzero = sorted(int(v) for v in nonzero)
    n = F.n_layers(summary) or len(coefs)
    freq = [_num(v) for v in entry.get("selection_frequency") or []]
    if nonzero:
        items = []
        for layer in nonzero:
            text = f"layer {layer} (coef {fmt(coefs[layer] if layer < len(coefs) else math.nan, signed=True)}"
            if layer < len(freq):
                text += f", selected in {fmt(freq[layer] * 100, 3)}% of bootstraps"
            items.append(text + ")")
        ours = f"{len(nonzero)} non-zero: " + ", ".join(items)
    else:
        ours = "no non-zero coefficient"
    numbers: dict[str, Any] = {"nonzero_layers": nonzero, "n_layers": n, "mid_depth_layers": mid_depth_layers(n)}
    if not freq:
        ours += "; no bootstrap selection frequencies: the stability of the selection is unknown"
        return Finding("lasso", claim, paper, ours, INCONCLUSIVE, rule, plain(numbers))
    stable = [i for i, f in enumerate(freq) if math.isfinite(f) and f >= LASSO_STABLE - _EPS]
    plausible = [i for i, f in enumerate(freq) if not (math.isfinite(f) and f <= LASSO_RARE + _EPS)]
    top = sorted(range(len(freq)), key=lambda i: -freq[i] if math.isfinite(freq[i]) else 0)[:3]
    ours += (
        "; highest selection frequency: "
        + ", ".join(f"layer {i}: {fmt(freq[i], 2)}" for i in top)
        + f"; selected in ≥ {LASSO_STABLE:.0%}: {fmt_layers(stable)}; in > {LASSO_RARE:.0%}: "
        f"{fmt_layers(plausible)}"
    )
    alpha = _num(entry.get("alpha_"))
    if math.isfinite(alpha):
        ours += f"; α* = {fmt(alpha)}"
    numbers.update(selection_frequency=freq, stable_layers=stable, plausible_layers=plausible)
    outside = [i for i in stable if not _mid_depth(relative_depth(i, n))]
    if len(nonzero) == 1 and stable == nonzero and plausible == nonzero and _mid_depth(relative_depth(nonzero[0], n)):
        verdict = AGREES
    elif outside or len(stable) >= 2:
        verdict = DIFFERS
    else:
        verdict = INCONCLUSIVE
    return Finding("lasso", claim, paper, ours, verdict, rule, plain(numbers))


def _evaluated_layer(layers: Sequence[int], summary: Mapping[str, Any]) -> int:
    layers = sorted(set(int(v) for v in layers))
    if len(layers) == 1:
        return layers[0]
    main = F.experiment(summary, F.MAIN)
    target = None
    if main and main.get("peak_layer") is not None:
        target = float(main["peak_layer"])
    else:
        n = F.n_layers(summary)
        target = PAPER_RELATIVE_DEPTH * (n - 1) if n else (layers[0] + layers[-1]) / 2
    return min(layers, key=lambda v: (abs(v - target), v))


def _part(row: Mapping[str, Any], key: str, mean_key: str) -> Any:
    """A ratio's numerator or denominator as the summary gives it: a ``{"mean","ci_low","ci_high"}`` dict when
    present, else the bare mean."""
    got = row.get(key)
    return got if isinstance(got, Mapping) else _num(row.get(mean_key))


def finding_lowrank(summary: Mapping[str, Any], mode: str = "lowrank_reconstruct") -> Finding:
    label = LOWRANK_MODES.get(mode, mode)
    claim = f"k = {LOWRANK_K} directions give ≈ 99% of the effect ({label})"
    paper = (
        f"k = {LOWRANK_K} (≈ 15% of variance) gives ratio 0.986 at layer 9 (Table 2; reading: "
        f"{'literal, reconstruct the tuned activations' if label == 'reconstruct' else 'the paper uses reconstruct; this is the difference-subspace reading'})"
    )
    rule = (
        f"the held-out effect ratio at k = {LOWRANK_K} (subspace fitted on the other half) when its CI is "
        f"reported, else the in-sample one: undefined (denominator CI spans 0) → inconclusive; CI inside "
        f"[{RATIO_BAND[0]:.2f}, {RATIO_BAND[1]:.2f}] → agrees; CI disjoint from it → differs; else inconclusive"
    )
    entry = F.experiment(summary, mode)
    frame = F.lowrank_frame(entry) if entry else pd.DataFrame()
    if frame.empty:
        return Finding(f"lowrank:{label}", claim, paper, f"{mode} not run", NOT_RUN, rule)
    layer = _evaluated_layer(frame["layer"].tolist(), summary)
    rows = [r for r in entry.get("by_k") or [] if int(r["layer"]) == layer and int(r["k"]) == LOWRANK_K]
    if not rows:
        ks = sorted(frame["k"].unique().tolist())
        return Finding(
            f"lowrank:{label}",
            claim,
            paper,
            f"k = {LOWRANK_K} not in the evaluated grid (k = {', '.join(map(str, ks))}) at layer {layer}",
            NOT_RUN,
            rule,
        )
    r = rows[0]
    lo, hi = F.ci_pair(r.get("effect_ratio_ci"))
    ratio = _num(r.get("effect_ratio"))
    use_held = "heldout_effect_ratio_ci" in r
    held = _num(r.get("heldout_effect_ratio"))
    hlo, hhi = F.ci_pair(r.get("heldout_effect_ratio_ci"))
    num, den = _part(r, "numerator", "effect_mean"), _part(r, "denominator", "full_effect_mean")
    n = F.n_layers(summary)
    in_sample = fmt_ratio(ratio, lo, hi, numerator=num, denominator=den)
    held_text = (
        fmt_ratio(
            held,
            hlo,
            hhi,
            numerator=_part(r, "heldout_numerator", "heldout_effect_mean"),
            denominator=_part(r, "heldout_denominator", "heldout_full_effect_mean"),
        )
        if use_held
        else fmt(held)
    )
    used = "held-out" if use_held else "in-sample"
    ours = (
        f"layer {layer} (relative depth {fmt(relative_depth(layer, n), 2)}), k = {LOWRANK_K}: "
        f"held-out ratio {held_text}; in-sample ratio {in_sample}; "
        f"variance explained {fmt(_num(r.get('variance_explained')) * 100, 3)}%; the verdict uses the {used} one"
    )
    others = sorted(set(frame["layer"].tolist()) - {layer})
    if others:
        ours += f"; other layers run: {', '.join(map(str, others))} (see figure)"
    v, vlo, vhi = (held, hlo, hhi) if use_held else (ratio, lo, hi)
    verdict = interval_vs_band(vlo, vhi, RATIO_BAND) if math.isfinite(v) else INCONCLUSIVE
    numbers = {
        "layer": layer,
        "k": LOWRANK_K,
        "ratio_used": used,
        "ratio": v,
        "ratio_ci": [vlo, vhi],
        "defined": math.isfinite(v),
        "band": list(RATIO_BAND),
        "in_sample_ratio": ratio,
        "in_sample_ratio_ci": [lo, hi],
        "heldout_ratio": held,
        "heldout_ratio_ci": [hlo, hhi],
        "numerator_mean_nats": _num(r.get("effect_mean")),
        "denominator_mean_nats": _num(r.get("full_effect_mean")),
        "variance_explained": _num(r.get("variance_explained")),
    }
    return Finding(f"lowrank:{label}", claim, paper, ours, verdict, rule, plain(numbers))


def finding_identity(summary: Mapping[str, Any], effects: pd.DataFrame | None = None) -> Finding:
    claim = "Identity (base → base) patching has exactly zero effect"
    paper = "Self-patching produces near-zero Δlogp (A2); by construction it must be exactly 0"
    rule = (
        f"exact: agrees iff max |effect| ≤ {IDENTITY_TOLERANCE:g} nats over every per-pair row (else over the "
        "per-layer means and CI ends); else differs"
    )
    values: list[float] = []
    source = ""
    if effects is not None and len(effects) and "experiment" in effects:
        rows = effects.loc[effects["experiment"] == "identity", "effect"]
        if len(rows):
            values = pd.to_numeric(rows, errors="coerce").abs().tolist()
            source = f"over {len(rows)} per-pair rows of the effects table"
    if not values:
        entry = F.experiment(summary, "identity")
        if not entry or not entry.get("per_layer"):
            return Finding("identity", claim, paper, "identity not run", NOT_RUN, rule)
        frame = F.per_layer_frame(entry["per_layer"])
        values = frame[["mean", "ci_low", "ci_high"]].abs().to_numpy().ravel().tolist()
        source = f"over the per-layer means and CI ends of {len(frame)} layers"
    finite = [v for v in values if math.isfinite(v)]
    numbers = {
        "tolerance_nats": IDENTITY_TOLERANCE,
        "source": source,
        "n_values": len(values),
        "n_non_finite": len(values) - len(finite),
    }
    if len(finite) < len(values):
        return Finding(
            "identity",
            claim,
            paper,
            f"non-finite identity effects ({source})",
            DIFFERS,
            rule,
            plain(numbers | {"max_abs_effect_nats": math.nan}),
        )
    biggest = max(finite) if finite else math.nan
    ours = f"max |effect| = {biggest:.3g} nats ({source})"
    return Finding(
        "identity",
        claim,
        paper,
        ours,
        AGREES if biggest <= IDENTITY_TOLERANCE else DIFFERS,
        rule,
        plain(numbers | {"max_abs_effect_nats": biggest}),
    )


def finding_reverse(summary: Mapping[str, Any]) -> Finding:
    claim = "Reverse direction (base → tuned) yields minimal change"
    paper = (
        "§3 (A1) reverses the patch “to see if it has any effect”; appendix A1: the reverse "
        "direction “yields minimal change” (one-way flow)"
    )
    rule = (
        f"margin M = {REVERSE_MAX_RATIO} × max|tuned → base mean| (× |mean gain| if tuned → base not run): "
        "agrees iff every layer's base → tuned CI lies inside [−M, M]; differs iff some layer's CI lies wholly "
        "outside it; else inconclusive"
    )
    rev = F.experiment(summary, F.REVERSE)
    if not rev or not rev.get("per_layer"):
        return Finding("reverse", claim, paper, "patch_base_to_tuned not run", NOT_RUN, rule)
    frame = F.per_layer_frame(rev["per_layer"])
    big = frame.loc[frame["mean"].abs().idxmax()]
    ours = f"largest |effect| at layer {int(big['layer'])}: {fmt_effect(big['mean'], big['ci_low'], big['ci_high'])}"
    main = F.experiment(summary, F.MAIN)
    if main and main.get("per_layer"):
        scale = float(F.per_layer_frame(main["per_layer"])["mean"].abs().max())
        against = "max |tuned → base mean|"
    else:
        scale = abs(_num(summary.get("gain_mean")))
        against = "|mean gain|"
    if not (math.isfinite(scale) and scale > 0):
        return Finding(
            "reverse", claim, paper, ours + "; nothing to compare it with (no tuned → base, no gain)", NOT_RUN, rule
        )
    margin = REVERSE_MAX_RATIO * scale
    lows, highs = frame["ci_low"].to_numpy(), frame["ci_high"].to_numpy()
    ok = np.isfinite(lows) & np.isfinite(highs)
    inside = ok & (lows >= -margin - _EPS) & (highs <= margin + _EPS)
    outside = ok & ((lows > margin + _EPS) | (highs < -margin - _EPS))
    out_layers = [int(v) for v in frame["layer"][outside]]
    verdict = AGREES if inside.all() else DIFFERS if outside.any() else INCONCLUSIVE
    ours += (
        f"; {against} = {scale:.3g} nats, margin M = {margin:.3g} nats; largest |reverse| / {against} = "
        f"{abs(float(big['mean'])) / scale:.2f}; layers whose CI lies inside ±M: {int(inside.sum())} of "
        f"{len(frame)}; wholly outside: {fmt_layers(out_layers)}"
    )
    numbers = {
        "scale_nats": scale,
        "scale_source": against,
        "margin_fraction": REVERSE_MAX_RATIO,
        "margin_nats": margin,
        "largest_layer": int(big["layer"]),
        "largest_mean": float(big["mean"]),
        "largest_ci": [float(big["ci_low"]), float(big["ci_high"])],
        "ratio_to_scale": abs(float(big["mean"])) / scale,
        "layers": len(frame),
        "layers_inside": int(inside.sum()),
        "layers_outside": out_layers,
    }
    return Finding("reverse", claim, paper, ours, verdict, rule, plain(numbers))

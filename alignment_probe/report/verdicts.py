"""The paper's claims, and the explicit rules that set a run's findings beside them.

Each finding gets ``"agrees"``, ``"differs"`` or ``"not run"`` by an explicit rule (the functions
``finding_*`` below; thresholds are the module constants). The report shows them as one table; an
experiment can add rows for the claims it answers by registering verdict functions
(``Experiment.verdicts``), which :func:`findings` appends.

1. **Peak layer.** Paper: layer 8 of Llama-3.2-1B's 16 layers. *Relative depth* = layer / (n_layers − 1),
   so 0 is the first block and 1 the last; the paper's peak is 8/15 ≈ 0.53 (8/16 = 0.5 if one divides by
   n_layers instead; both say "mid-stack"). Rule: ``agrees`` iff the relative depth of our peak layer (the
   argmax of the mean tuned → base effect) is within ``DEPTH_TOLERANCE`` (0.10) of 8/15; else ``differs``.
   The onset layer and both bootstrap CIs are reported beside it but do not enter the verdict.
2. **One non-zero LASSO coefficient.** Paper: only layer 8. Rule: ``agrees`` iff exactly one layer has a
   non-zero coefficient (``nonzero_layers`` from the summary, else coefficients ≠ 0) *and* that layer's
   relative depth is within ``DEPTH_TOLERANCE`` of 8/15; else ``differs``.
3. **k = 4 gives ≈ 99% of the effect** (one row per low-rank mode run: ``reconstruct`` is the paper's
   literal reading, ``difference`` the second reading of method E6). The evaluated layer is the only layer
   the mode was run at, else the one closest to our tuned → base peak, else the one closest to mid-depth.
   Rule: ``agrees`` iff the effect ratio at k = 4 lies in ``RATIO_BAND`` [0.90, 1.10] *and* the held-out
   ratio (when reported) lies there too; else ``differs``; ``not run`` if k = 4 is not in the grid.
4. **Identity control is exactly 0.** Rule: ``agrees`` iff max |effect| ≤ ``IDENTITY_TOLERANCE`` (1e-6
   nats), taken over every per-pair row of the effects table when it is given, else over the per-layer
   means and CI ends of the summary; else ``differs``.
5. **Reverse direction.** The paper's §3 says the reverse (base → tuned) patch was tried "to see if it has
   any effect"; its appendix A1 reports that it "yields minimal change" (alignment flows one way). Rule:
   r = max over layers of |mean base → tuned effect| divided by max over layers of |mean tuned → base
   effect| (or by |mean gain| when tuned → base was not run); ``agrees`` (minimal change) iff
   r ≤ ``REVERSE_MAX_RATIO`` (0.25); else ``differs``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from alignment_probe.experiments import registry
from alignment_probe.report import figures as F
from alignment_probe.report.format import _num, fmt, fmt_ci

AGREES, DIFFERS, INCONCLUSIVE, NOT_RUN = "agrees", "differs", "inconclusive", "not run"
VERDICTS = (AGREES, DIFFERS, INCONCLUSIVE)  # the three outcomes of a rule (statistics.md); NOT_RUN: no rule applied

PAPER_N_LAYERS = 16
PAPER_PEAK_LAYER = 8
PAPER_RELATIVE_DEPTH = PAPER_PEAK_LAYER / (PAPER_N_LAYERS - 1)
DEPTH_TOLERANCE = 0.10
LOWRANK_K = 4
RATIO_BAND = (0.90, 1.10)
IDENTITY_TOLERANCE = 1e-6
REVERSE_MAX_RATIO = 0.25


def relative_depth(layer: float, n_layers: int | None) -> float:
    """layer / (n_layers − 1): 0 = first block, 1 = last block."""
    if n_layers is None or n_layers < 2 or layer is None:
        return math.nan
    return float(layer) / (n_layers - 1)


def _mid_depth(rel: float) -> bool:
    return math.isfinite(rel) and abs(rel - PAPER_RELATIVE_DEPTH) <= DEPTH_TOLERANCE + 1e-12


# --------------------------------------------------------------------------------------------------
# findings vs the paper


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    paper: str
    ours: str
    verdict: str  # one of VERDICTS, or NOT_RUN
    rule: str
    # the numbers the rule used (JSON-able: name → value), printed beside the verdict and kept in the summary
    numbers: Mapping[str, Any] = field(default_factory=dict)
    # True: the claim holds on any data by how the quantity is defined (e.g. a half-maximum onset is mid-depth
    # on any ramp): not evidence, and labelled so
    by_construction: bool = False


def finding_peak(summary: Mapping[str, Any]) -> Finding:
    claim = "Alignment is concentrated at a mid-stack peak layer"
    paper = (f"Layer {PAPER_PEAK_LAYER} of {PAPER_N_LAYERS} (relative depth {PAPER_RELATIVE_DEPTH:.2f} "
             f"= {PAPER_PEAK_LAYER}/{PAPER_N_LAYERS - 1}; 0.50 as {PAPER_PEAK_LAYER}/{PAPER_N_LAYERS})")
    rule = (f"agrees iff |relative depth of our peak − {PAPER_RELATIVE_DEPTH:.3f}| ≤ {DEPTH_TOLERANCE}; "
            "relative depth = layer / (n_layers − 1)")
    entry = F.experiment(summary, F.MAIN)
    if not entry or not entry.get("per_layer"):
        return Finding("peak", claim, paper, "patch_tuned_to_base not run", NOT_RUN, rule)
    frame = F.per_layer_frame(entry["per_layer"])
    n = F.n_layers(summary)
    peak = entry.get("peak_layer")
    if peak is None:
        peak = int(frame.loc[frame["mean"].idxmax(), "layer"])
    peak = int(peak)
    row = frame[frame["layer"] == peak]
    parts = [f"peak layer {peak} of {n}"]
    lo, hi = F._ci_pair(entry.get("peak_layer_ci"))
    if math.isfinite(lo):
        parts[-1] += f" (95% CI layers {lo:g}–{hi:g})"
    rel = relative_depth(peak, n)
    parts.append(f"relative depth {fmt(rel, 2)}")
    if len(row):
        parts.append(f"mean effect {fmt(row['mean'].iloc[0], signed=True)} nats, "
                     f"{fmt_ci(row['ci_low'].iloc[0], row['ci_high'].iloc[0])}")
    onset = entry.get("onset_layer")
    if onset is not None:
        text = f"onset layer {int(onset)}"
        olo, ohi = F._ci_pair(entry.get("onset_layer_ci"))
        if math.isfinite(olo):
            text += f" (95% CI layers {olo:g}–{ohi:g})"
        parts.append(f"{text}, relative depth {fmt(relative_depth(int(onset), n), 2)}")
    verdict = AGREES if _mid_depth(rel) else DIFFERS
    return Finding("peak", claim, paper, "; ".join(parts), verdict, rule)


def finding_lasso(summary: Mapping[str, Any]) -> Finding:
    claim = "Only one layer has a non-zero LASSO coefficient"
    paper = f"Only layer {PAPER_PEAK_LAYER} (coefficient −0.18; Table 1)"
    rule = (f"agrees iff exactly one non-zero layer and its relative depth is within {DEPTH_TOLERANCE} "
            f"of {PAPER_RELATIVE_DEPTH:.3f}")
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
    if freq:
        top = sorted(range(len(freq)), key=lambda i: -freq[i] if math.isfinite(freq[i]) else 0)[:3]
        ours += "; highest selection frequency: " + ", ".join(f"layer {i}: {fmt(freq[i], 2)}" for i in top)
    alpha = _num(entry.get("alpha_"))
    if math.isfinite(alpha):
        ours += f"; α* = {fmt(alpha)}"
    ok = len(nonzero) == 1 and _mid_depth(relative_depth(nonzero[0], n))
    return Finding("lasso", claim, paper, ours, AGREES if ok else DIFFERS, rule)


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


def finding_lowrank(summary: Mapping[str, Any], mode: str = "lowrank_reconstruct") -> Finding:
    label = F.LOWRANK_MODES.get(mode, mode)
    claim = f"k = {LOWRANK_K} directions give ≈ 99% of the effect ({label})"
    paper = (f"k = {LOWRANK_K} (≈ 15% of variance) gives ratio 0.986 at layer 9 (Table 2; reading: "
             f"{'literal, reconstruct the tuned activations' if label == 'reconstruct' else 'the paper uses reconstruct; this is the difference-subspace reading'})")
    rule = (f"agrees iff the effect ratio at k = {LOWRANK_K} is in [{RATIO_BAND[0]:.2f}, {RATIO_BAND[1]:.2f}] "
            "and so is the held-out ratio when reported")
    entry = F.experiment(summary, mode)
    frame = F.lowrank_frame(entry) if entry else pd.DataFrame()
    if frame.empty:
        return Finding(f"lowrank:{label}", claim, paper, f"{mode} not run", NOT_RUN, rule)
    layer = _evaluated_layer(frame["layer"].tolist(), summary)
    sub = frame[(frame["layer"] == layer) & (frame["k"] == LOWRANK_K)]
    if sub.empty:
        ks = sorted(frame["k"].unique().tolist())
        return Finding(f"lowrank:{label}", claim, paper,
                       f"k = {LOWRANK_K} not in the evaluated grid (k = {', '.join(map(str, ks))}) at layer {layer}",
                       NOT_RUN, rule)
    r = sub.iloc[0]
    ratio, held = r["effect_ratio"], r["heldout_effect_ratio"]
    n = F.n_layers(summary)
    ours = (f"layer {layer} (relative depth {fmt(relative_depth(layer, n), 2)}): ratio {fmt(ratio)} "
            f"({fmt_ci(r['ci_low'], r['ci_high'])}), held-out {fmt(held)}, "
            f"variance explained {fmt(r['variance_explained'] * 100, 3)}%")
    others = sorted(set(frame["layer"].tolist()) - {layer})
    if others:
        ours += f"; other layers run: {', '.join(map(str, others))} (see figure)"

    def inside(v: float) -> bool:
        return math.isfinite(v) and RATIO_BAND[0] <= v <= RATIO_BAND[1]

    ok = inside(ratio) and (not math.isfinite(held) or inside(held))
    return Finding(f"lowrank:{label}", claim, paper, ours, AGREES if ok else DIFFERS, rule)


def finding_identity(summary: Mapping[str, Any], effects: pd.DataFrame | None = None) -> Finding:
    claim = "Identity (base → base) patching has exactly zero effect"
    paper = "Self-patching produces near-zero Δlogp (A2); by construction it must be exactly 0"
    rule = f"agrees iff max |effect| ≤ {IDENTITY_TOLERANCE:g} nats"
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
    if len(finite) < len(values):
        return Finding("identity", claim, paper, f"non-finite identity effects ({source})", DIFFERS, rule)
    biggest = max(finite) if finite else math.nan
    ours = f"max |effect| = {biggest:.3g} nats ({source})"
    return Finding("identity", claim, paper, ours, AGREES if biggest <= IDENTITY_TOLERANCE else DIFFERS, rule)


def finding_reverse(summary: Mapping[str, Any]) -> Finding:
    claim = "Reverse direction (base → tuned) yields minimal change"
    paper = ("§3 (A1) reverses the patch “to see if it has any effect”; appendix A1: the reverse "
             "direction “yields minimal change” (one-way flow)")
    rule = (f"agrees iff max|base → tuned mean| / max|tuned → base mean| ≤ {REVERSE_MAX_RATIO} "
            "(denominator |mean gain| if tuned → base not run)")
    rev = F.experiment(summary, F.REVERSE)
    if not rev or not rev.get("per_layer"):
        return Finding("reverse", claim, paper, "patch_base_to_tuned not run", NOT_RUN, rule)
    frame = F.per_layer_frame(rev["per_layer"])
    i = frame["mean"].abs().idxmax()
    big = frame.loc[i]
    ours = (f"largest |effect| at layer {int(big['layer'])}: {fmt(big['mean'], signed=True)} nats "
            f"({fmt_ci(big['ci_low'], big['ci_high'])})")
    if rev.get("peak_layer") is not None:
        ours += f"; peak (argmax) layer {int(rev['peak_layer'])}"
    main = F.experiment(summary, F.MAIN)
    if main and main.get("per_layer"):
        scale = F.per_layer_frame(main["per_layer"])["mean"].abs().max()
        against = "max |tuned → base|"
    else:
        scale = abs(_num(summary.get("gain_mean")))
        against = "|mean gain|"
    if not (math.isfinite(scale) and scale > 0):
        return Finding("reverse", claim, paper, ours + "; nothing to compare it with (no tuned → base, no gain)",
                       NOT_RUN, rule)
    ratio = abs(float(big["mean"])) / scale
    ours += f"; ratio to {against} = {ratio:.2f}"
    return Finding("reverse", claim, paper, ours, AGREES if ratio <= REVERSE_MAX_RATIO else DIFFERS, rule)


def findings(summary: Mapping[str, Any], effects: pd.DataFrame | None = None) -> list[Finding]:
    """The rows of "Findings vs the paper's claims", in order (see the module docstring for the rules)."""
    out = [finding_peak(summary), finding_lasso(summary)]
    modes = [m for m in F.LOWRANK_MODES if F.experiment(summary, m)] or ["lowrank_reconstruct"]
    out += [finding_lowrank(summary, m) for m in modes]
    out += [finding_identity(summary, effects), finding_reverse(summary)]
    for exp in registry.experiments():  # claims the newer instruments answer, in registry order
        for path in exp.verdicts:
            module, _, attr = path.partition(":")
            found = getattr(importlib.import_module(module), attr)(summary, effects)
            if found is not None:
                out.append(found)
    return out

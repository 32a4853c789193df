"""The self-contained HTML report of a run.

One file, opens offline: plotly.js is embedded once, inline, in ``<head>``; each figure is a ``<div>``
plus a small inline script. Sections: header (models, fingerprints, pairs, seed, date, versions),
headline numbers, findings vs the paper's claims (with verdicts by the rules below), the figures,
what was run (from the effects table, when given), what was not run, and a methods note.

Every string that comes from the user (model names, paths, config values, experiment names) is
passed through :func:`html.escape`; figures carry no user strings (plotly also escapes ``<`` in its
JSON).

Verdict rules
-------------
Each finding gets ``"agrees"``, ``"differs"`` or ``"not run"`` by an explicit rule (the functions
``finding_*`` below; thresholds are the module constants):

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

import html as _html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_probe.effects import EXPERIMENT_NAMES
from alignment_probe.experiments import registry
from alignment_probe.report import figures as F

AGREES, DIFFERS, NOT_RUN = "agrees", "differs", "not run"

PAPER_N_LAYERS = 16
PAPER_PEAK_LAYER = 8
PAPER_RELATIVE_DEPTH = PAPER_PEAK_LAYER / (PAPER_N_LAYERS - 1)
DEPTH_TOLERANCE = 0.10
LOWRANK_K = 4
RATIO_BAND = (0.90, 1.10)
IDENTITY_TOLERANCE = 1e-6
REVERSE_MAX_RATIO = 0.25

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
SCORES_FILES = ("scores.parquet", "scores.csv")
EFFECTS_FILES = ("effects.parquet", "effects.csv")
REPORT_FILE = "report.html"


def esc(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def _num(x: Any) -> float:
    return F._num(x)


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number to ``digits`` significant digits; "—" for None/NaN."""
    v = _num(x)
    if not math.isfinite(v):
        return "—"
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def fmt_ci(lo: Any, hi: Any, digits: int = 3) -> str:
    a, b = _num(lo), _num(hi)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "CI —"
    return f"95% CI [{a:.{digits}g}, {b:.{digits}g}]"


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
    verdict: str
    rule: str


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
    return out


# --------------------------------------------------------------------------------------------------
# HTML pieces

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:0 0 4px}h2{border-bottom:2px solid #e4e4e4;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:10px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f2f4f7}
.kv th{width:190px}.num{font-variant-numeric:tabular-nums;text-align:right}
.headline{display:flex;gap:14px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:190px}
.card .v{font-size:1.45em;font-weight:600}.card .l{color:#666;font-size:.85em}
.verdict{font-weight:600;white-space:nowrap;padding:2px 7px;border-radius:4px}
.agrees{background:#e3f4e1;color:#1d6b1a}.differs{background:#fde6e4;color:#a32117}
.not-run{background:#eee;color:#666}
.rule{color:#666;font-size:.85em}.caption{color:#555;font-size:.9em;margin:4px 0 0}
.figure{margin:18px 0 28px}code,pre{background:#f4f4f4;border-radius:3px}
pre{padding:8px;overflow-x:auto;font-size:.85em}
.muted{color:#777}
"""


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _short(fp: Any, n: int = 12) -> str:
    text = str(fp) if fp not in (None, "") else "—"
    return text if len(text) <= n else text[:n] + "…"


def _model_row(models: Mapping[str, Any], which: str) -> str:
    m = models.get(which)
    if isinstance(m, Mapping):
        source = m.get("source") or m.get("name") or m.get("path") or "—"
        fp = m.get("fingerprint")
        return (f"<code>{esc(source)}</code> · fingerprint <code title=\"{esc(fp if fp is not None else '')}\">"
                f"{esc(_short(fp))}</code>")
    return f"<code>{esc(m)}</code>" if m is not None else '<span class="muted">not recorded</span>'


def _header(summary: Mapping[str, Any], manifest: Mapping[str, Any], title: str) -> str:
    models = manifest.get("models") or {}
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    seed = config.get("seed", manifest.get("seed", summary.get("seed")))
    arch = [f"{k} {esc(models[k])}" for k in ("architecture", "n_layers", "d_model", "dtype", "device")
            if k in models and not isinstance(models[k], Mapping)]
    rows = [
        ("base model", _model_row(models, "base")),
        ("tuned model", _model_row(models, "tuned")),
    ]
    if arch:
        rows.append(("architecture", " · ".join(arch)))
    data_source = data.get("source") if isinstance(data, Mapping) else None
    if data_source is not None:
        rows.append(("data", f"<code>{esc(data_source)}</code>"))
    rows += [
        ("pairs", esc(summary.get("n_pairs", "—"))),
        ("layers", esc(F.n_layers(summary) or "—")),
        ("seed", esc(seed if seed is not None else "not recorded")),
        ("run date", esc(manifest.get("created") or manifest.get("date") or "not recorded")),
    ]
    if manifest.get("command"):
        rows.append(("command", f"<code>{esc(manifest['command'])}</code>"))
    versions = manifest.get("versions") or {}
    if isinstance(versions, Mapping) and versions:
        rows.append(("versions", ", ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items())))
    cfg = ""
    if config:
        cfg = ("<details><summary>full configuration</summary><pre>"
               f"{esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>")
    return f"<header><h1>{esc(title)}</h1>{_kv_table(rows)}{cfg}</header>"


def _headline(summary: Mapping[str, Any]) -> str:
    lo, hi = F._ci_pair(summary.get("gain_ci"))
    cards = [
        ("mean Δlogp, base", fmt(summary.get("base_delta_logp_mean"), 4, signed=True) + " nats", ""),
        ("mean Δlogp, tuned", fmt(summary.get("tuned_delta_logp_mean"), 4, signed=True) + " nats", ""),
        ("mean gain (tuned − base)", fmt(summary.get("gain_mean"), 4, signed=True) + " nats", fmt_ci(lo, hi)),
    ]
    html = '<div class="headline">' + "".join(
        f'<div class="card"><div class="l">{esc(label)}</div><div class="v">{esc(value)}</div>'
        f'<div class="l">{esc(sub)}</div></div>' for label, value, sub in cards) + "</div>"
    known = {"n_pairs", "n_layers", "base_delta_logp_mean", "tuned_delta_logp_mean", "gain_mean", "gain_ci",
             "experiments"}
    extra = []
    for k, v in summary.items():
        if k in known:
            continue
        if isinstance(v, float):
            extra.append((k, esc(fmt(v, 4))))
        elif isinstance(v, (int, str, bool)):
            extra.append((k, esc(v)))
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            extra.append((k, esc(f"[{fmt(v[0], 4)}, {fmt(v[1], 4)}]")))
    if extra:
        html += "<p class=\"muted\">Other summary numbers:</p>" + _kv_table(extra)
    return html


def _findings_table(rows: Sequence[Finding]) -> str:
    head = "<tr><th>#</th><th>claim</th><th>paper</th><th>ours</th><th>verdict</th></tr>"
    body = []
    for i, f in enumerate(rows, start=1):
        cls = f.verdict.replace(" ", "-")
        body.append(
            f'<tr data-finding="{esc(f.key)}"><td>{i}</td><td>{esc(f.claim)}</td><td>{esc(f.paper)}</td>'
            f'<td>{esc(f.ours)}</td><td><span class="verdict {esc(cls)}">{esc(f.verdict)}</span>'
            f'<div class="rule">rule: {esc(f.rule)}</div></td></tr>')
    return f'<table class="findings">{head}{"".join(body)}</table>'


def _heading(name: str) -> str:
    """A figure's report heading, as its experiment registered it."""
    for fig in registry.figures():
        if fig.name == name:
            return fig.heading
    return name.replace("_", " ")


def _figure_html(name: str, fig: Any) -> str:
    height = fig.layout.height or F.HEIGHT
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", default_height=f"{height}px",
                      default_width="100%", config={"displaylogo": False, "responsive": True})
    caption = F.FIGURES[name][2] if name in F.FIGURES else ""
    return (f'<section class="figure" id="section-{esc(name)}"><h3>{esc(_heading(name))}</h3>'
            f'{div}<p class="caption">{esc(caption)}</p></section>')


def _effects_overview(effects: pd.DataFrame | None) -> str:
    if effects is None or len(effects) == 0 or "experiment" not in effects:
        return ""
    rows = []
    for name, g in effects.groupby("experiment", sort=True):
        def uniq(col: str) -> str:
            if col not in g:
                return "—"
            vals = sorted(f"{v:g}" if isinstance(v, float) else str(v) for v in g[col].dropna().unique())
            if not vals:
                return "—"
            return ", ".join(vals) if len(vals) <= 6 else f"{len(vals)} values"
        pairs = g["pair_id"].nunique() if "pair_id" in g else "—"
        layers = g["layer"].nunique() if "layer" in g else "—"
        rows.append(f"<tr><td><code>{esc(name)}</code></td><td class=\"num\">{len(g)}</td>"
                    f"<td class=\"num\">{esc(pairs)}</td><td class=\"num\">{esc(layers)}</td>"
                    f"<td>{esc(uniq('hook'))}</td><td>{esc(uniq('scope'))}</td><td>{esc(uniq('sides'))}</td>"
                    f"<td>{esc(uniq('param'))}</td></tr>")
    head = ("<tr><th>experiment</th><th>rows</th><th>pairs</th><th>layers</th><th>hooks</th><th>scopes</th>"
            "<th>sides</th><th>param</th></tr>")
    return ("<h2>What was run (effects table)</h2>"
            f"<table>{head}{''.join(rows)}</table>")


def _not_run(summary: Mapping[str, Any], skipped: Mapping[str, str]) -> str:
    run = {n for n in EXPERIMENT_NAMES if F.experiment(summary, n)}
    missing = [n for n in EXPERIMENT_NAMES if n not in run]
    unknown = sorted(set((summary.get("experiments") or {})) - set(EXPERIMENT_NAMES))
    parts = ["<h2 id=\"not-run\">Experiments not run</h2>"]
    if missing:
        parts.append("<ul>" + "".join(f"<li><code>{esc(n)}</code> — not run</li>" for n in missing) + "</ul>")
    else:
        parts.append("<p>Every experiment was run.</p>")
    if skipped:
        parts.append("<p>Figures left out:</p><ul>" + "".join(
            f"<li><code>{esc(n)}</code> — {esc(why)}</li>" for n, why in skipped.items()) + "</ul>")
    if unknown:
        parts.append("<p>Also in the summary (no figure for them): "
                     + ", ".join(f"<code>{esc(n)}</code>" for n in unknown) + "</p>")
    return "".join(parts)


def _methods() -> str:
    return f"""<h2>Methods note</h2>
<p>The definitions follow <code>docs/method.md</code> (the project's precise version of the paper's
experiments): Δlogp = log p(y+|x) − log p(y−|x) summed over completion tokens; an <em>effect</em> is the
patched Δlogp minus the target model's own Δlogp, in nats; gain = Δlogp<sub>tuned</sub> − Δlogp<sub>base</sub>.
Every per-layer number is a mean over pairs with a seeded 95% bootstrap CI over pairs. The
<em>peak layer</em> is the argmax of the mean effect, the <em>onset layer</em> the first layer whose mean
reaches half of the maximum; both carry bootstrap CIs. Low-rank held-out ratios fit the subspace on one half
of the pairs and evaluate on the other.</p>
<p><em>Relative depth</em> = layer / (n_layers − 1): 0 is the first block, 1 the last. The paper's layer
{PAPER_PEAK_LAYER} of {PAPER_N_LAYERS} is at {PAPER_RELATIVE_DEPTH:.3f}.</p>
<p>Verdict rules (thresholds are constants in <code>alignment_probe/report/html.py</code>):</p>
<ol>
<li>Peak layer: agrees iff |relative depth of our peak − {PAPER_RELATIVE_DEPTH:.3f}| ≤ {DEPTH_TOLERANCE}.</li>
<li>LASSO: agrees iff exactly one layer has a non-zero coefficient and it lies within {DEPTH_TOLERANCE} relative
depth of the paper's.</li>
<li>Low rank: agrees iff the effect ratio at k = {LOWRANK_K} (and the held-out ratio, when reported) lies in
[{RATIO_BAND[0]:.2f}, {RATIO_BAND[1]:.2f}], at the only layer run, else the layer nearest our peak.</li>
<li>Identity: agrees iff max |effect| ≤ {IDENTITY_TOLERANCE:g} nats (per-pair rows when the effects table is
given).</li>
<li>Reverse: agrees (“minimal change”, appendix A1) iff max|base → tuned| / max|tuned → base| ≤
{REVERSE_MAX_RATIO}.</li>
</ol>
<p>“not run” means the experiment (or the needed grid point) is absent from this run.</p>"""


def render_report(summary: Mapping[str, Any], manifest: Mapping[str, Any] | None, *,
                  scores: pd.DataFrame | None = None, effects: pd.DataFrame | None = None,
                  title: str = "alignment-probe report") -> str:
    """The report as one self-contained HTML string (plotly.js inline, once; no network needed)."""
    from plotly.offline import get_plotlyjs

    manifest = manifest or {}
    figs, skipped = F.build_figures(summary, scores)
    toc = "".join(f'<li><a href="#section-{esc(n)}">{esc(_heading(n))}</a></li>' for n in figs)
    body = [
        _header(summary, manifest, title),
        "<h2>Headline</h2>", _headline(summary),
        "<h2>Findings vs the paper's claims</h2>",
        "<p class=\"muted\">Paper: Llama-3.2-1B base vs its preference-tuned twin, Anthropic HH pairs. "
        "Verdicts follow the explicit rules in the methods note below.</p>",
        _findings_table(findings(summary, effects)),
        "<h2>Figures</h2>",
        f"<ul>{toc}</ul>" if figs else "<p>No figure could be drawn: nothing was run.</p>",
        *(_figure_html(name, fig) for name, fig in figs.items()),
        _effects_overview(effects),
        _not_run(summary, skipped),
        _methods(),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style>"
            "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script>"
            f"</head><body><main>{''.join(body)}</main></body></html>\n")


def _first_existing(run_dir: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame | None, pd.DataFrame | None]:
    """(summary, manifest, scores, effects) read from a run directory: ``summary.json`` (required),
    ``manifest.json``, ``scores.parquet|csv`` and ``effects.parquet|csv`` (each optional)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found: pass summary= or point at a run directory")
    summary = json.loads(summary_path.read_text())
    manifest_path = run_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    scores_path = _first_existing(run_dir, SCORES_FILES)
    effects_path = _first_existing(run_dir, EFFECTS_FILES)
    return (summary, manifest, _read_table(scores_path) if scores_path else None,
            _read_table(effects_path) if effects_path else None)


def write_report(run_dir_or_path: str | Path, summary: Mapping[str, Any] | None = None,
                 manifest: Mapping[str, Any] | None = None, *, scores: pd.DataFrame | None = None,
                 effects: pd.DataFrame | None = None, title: str = "alignment-probe report") -> Path:
    """Write the report and return its path.

    ``run_dir_or_path`` is either a run directory (the report goes to ``<dir>/report.html``) or a target
    ``.html`` file. Whatever of summary / manifest / scores / effects is not passed is read from the
    directory (:func:`load_run` file names) when it exists there; a missing ``summary.json`` with no
    ``summary=`` is an error. Written atomically (temporary file + rename).
    """
    target = Path(run_dir_or_path)
    if target.suffix.lower() in (".html", ".htm"):
        out, run_dir = target, target.parent
    else:
        out, run_dir = target / REPORT_FILE, target
    if summary is None:
        summary, loaded_manifest, loaded_scores, loaded_effects = load_run(run_dir)
    else:
        loaded_manifest, loaded_scores, loaded_effects = {}, None, None
        if run_dir.is_dir():
            mp = run_dir / MANIFEST_FILE
            if manifest is None and mp.is_file():
                loaded_manifest = json.loads(mp.read_text())
            sp = _first_existing(run_dir, SCORES_FILES) if scores is None else None
            loaded_scores = _read_table(sp) if sp else None
            ep = _first_existing(run_dir, EFFECTS_FILES) if effects is None else None
            loaded_effects = _read_table(ep) if ep else None
    manifest = manifest if manifest is not None else loaded_manifest
    scores = scores if scores is not None else loaded_scores
    effects = effects if effects is not None else loaded_effects
    text = render_report(summary, manifest, scores=scores, effects=effects, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out

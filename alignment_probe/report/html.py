"""The self-contained HTML report of a run.

One file, opens offline: plotly.js is embedded once, inline, in ``<head>``; each figure is a ``<div>``
plus a small inline script. Sections: header (models, fingerprints, pairs, seed, date, versions),
headline numbers, findings vs the paper's claims (with verdicts by the rules below), the figures,
what was run (from the effects table, when given), what was not run, and a methods note.

Every string that comes from the user (model names, paths, config values, experiment names) is
passed through :func:`html.escape`; figures carry no user strings (plotly also escapes ``<`` in its
JSON).

Verdict rules: see :mod:`alignment_probe.experiments.verdicts` (the paper's claims, constants and rules).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_probe.experiments import registry
from alignment_probe.experiments.registry import EXPERIMENT_NAMES
from alignment_probe.experiments.verdicts import (  # noqa: F401  (the rules live there; kept importable here)
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
    finding_identity,
    finding_lasso,
    finding_lowrank,
    finding_peak,
    finding_reverse,
    findings,
    mid_depth_layers,
    relative_depth,
)
from alignment_probe.formatting import _num, esc, fmt, fmt_ci, fmt_effect, fmt_layers, fmt_value  # noqa: F401  (fmt/fmt_ci: kept importable here)
from alignment_probe.generation import table_html
from alignment_probe.report import figures as F
from alignment_probe.runfiles import SUMMARY_FILE, RunFiles
from alignment_probe.tokenview import TOKEN_STYLE, token_table

REPORT_FILE = "report.html"


CSS = """table.generations td{white-space:pre-wrap;vertical-align:top}mark{background:#fff3b0}

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
.not-run{background:#eee;color:#666}.inconclusive{background:#fff4d6;color:#7a5800}
.by-construction{background:#ececf6;color:#44446e}
.rule{color:#666;font-size:.85em}.numbers{color:#555;font-size:.8em;margin-top:4px;max-width:340px}
.numbers code{background:none;white-space:normal}.caption{color:#555;font-size:.9em;margin:4px 0 0}
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
        return (
            f'<code>{esc(source)}</code> · fingerprint <code title="{esc(fp if fp is not None else "")}">'
            f"{esc(_short(fp))}</code>"
        )
    return f"<code>{esc(m)}</code>" if m is not None else '<span class="muted">not recorded</span>'


def _header(summary: Mapping[str, Any], manifest: Mapping[str, Any], title: str) -> str:
    models = manifest.get("models") or {}
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    seed = config.get("seed", manifest.get("seed", summary.get("seed")))
    arch = [
        f"{k} {esc(models[k])}"
        for k in ("architecture", "n_layers", "d_model", "dtype", "device")
        if k in models and not isinstance(models[k], Mapping)
    ]
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
        cfg = (
            "<details><summary>full configuration</summary><pre>"
            f"{esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>"
        )
    return f"<header><h1>{esc(title)}</h1>{_kv_table(rows)}{cfg}</header>"


def _headline(summary: Mapping[str, Any]) -> str:
    lo, hi = F._ci_pair(summary.get("gain_ci"))
    gain = _num(summary.get("gain_mean"))
    cards = [
        ("mean Δlogp, base", fmt(summary.get("base_delta_logp_mean"), 4, signed=True) + " nats", ""),
        ("mean Δlogp, tuned", fmt(summary.get("tuned_delta_logp_mean"), 4, signed=True) + " nats", ""),
        (
            "mean gain (tuned − base), summed over tokens",
            fmt(gain, 4, signed=True) + " nats",
            fmt_ci(lo, hi) if F._num(lo) > 0 or F._num(hi) < 0 else fmt_effect(gain, lo, hi, what="gain"),
        ),
    ]
    if "gain_per_token_mean" in summary:  # statistics.md: the per-token mean beside every sum-based headline
        plo, phi = F._ci_pair(summary.get("gain_per_token_ci"))
        per_token = _num(summary.get("gain_per_token_mean"))
        cards.append(
            (
                "mean gain per completion token",
                fmt(per_token, 3, signed=True) + " nats/token",
                fmt_ci(plo, phi)
                if _num(plo) > 0 or _num(phi) < 0
                else fmt_effect(per_token, plo, phi, unit="nats/token", what="gain"),
            )
        )
    html = (
        '<div class="headline">'
        + "".join(
            f'<div class="card"><div class="l">{esc(label)}</div><div class="v">{esc(value)}</div>'
            f'<div class="l">{esc(sub)}</div></div>'
            for label, value, sub in cards
        )
        + "</div>"
    )
    known = {
        "n_pairs",
        "n_layers",
        "base_delta_logp_mean",
        "tuned_delta_logp_mean",
        "gain_mean",
        "gain_ci",
        "gain_per_token_mean",
        "gain_per_token_ci",
        "experiments",
        "verdicts",
        "verdicts_not_run",
    }
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
        html += '<p class="muted">Other summary numbers:</p>' + _kv_table(extra)
    return html


def _numbers(numbers: Mapping[str, Any]) -> str:
    if not numbers:
        return ""
    items = "; ".join(f"<code>{esc(k)}</code> = {esc(fmt_value(v))}" for k, v in numbers.items())
    return f'<div class="numbers">numbers used: {items}</div>'


def _findings_table(rows: Sequence[Finding]) -> str:
    head = "<tr><th>#</th><th>claim</th><th>paper</th><th>ours</th><th>verdict</th></tr>"
    body = []
    for i, f in enumerate(rows, start=1):
        cls = "by-construction" if f.shown != f.verdict else f.verdict.replace(" ", "-")
        badge = f'<span class="verdict {esc(cls)}">{esc(f.shown)}</span>'
        if f.shown != f.verdict:  # by construction: the rule's outcome, shown as not evidence
            badge += f'<div class="rule">(the rule gives “{esc(f.verdict)}”)</div>'
        body.append(
            f'<tr data-finding="{esc(f.key)}" data-verdict="{esc(f.verdict)}"><td>{i}</td><td>{esc(f.claim)}</td>'
            f"<td>{esc(f.paper)}</td><td>{esc(f.ours)}</td><td>{badge}"
            f'<div class="rule">rule: {esc(f.rule)}</div>{_numbers(f.numbers)}</td></tr>'
        )
    counts = {v: sum(f.verdict == v for f in rows) for v in (AGREES, DIFFERS, INCONCLUSIVE, NOT_RUN)}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return (
        f'<p class="muted">{esc(tally)}.</p>' if tally else ""
    ) + f'<table class="findings">{head}{"".join(body)}</table>'


# --------------------------------------------------------------------------------------------------
# peaks as sets, held-out selections, maps (statistics.md, "Selection is always held out" and "Peaks, tops and maps")


def _walk(node: Any, path: tuple[str, ...] = (), depth: int = 0) -> Any:
    """Every (path, dict) inside a summary entry, the entry itself first (depth-limited: summaries are shallow)."""
    if isinstance(node, Mapping):
        yield path, node
        if depth < 4:
            for k, v in node.items():
                yield from _walk(v, (*path, str(k)), depth + 1)
    elif isinstance(node, list) and depth < 4:
        for i, v in enumerate(node):
            if isinstance(v, Mapping):
                yield from _walk(v, (*path, str(i)), depth + 1)


def _where(name: str, path: Sequence[str]) -> str:
    parts = [p for p in path if p not in ("selection", "heldout")]
    return name + "".join(f" › {p}" for p in parts)


_PEAK_KEYS = ("peak_set", "layers_swept", "peak_layer", "peak_layer_ci", "per_layer")


def _found(
    summary: Mapping[str, Any], test: Any, keys: Sequence[str] | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """(where, dict) for each dict that passes ``test`` in any experiment's entry; one repeated inside an entry (a
    width's summary merged into its parent, ``heldout["selection"]`` beside ``selection``) is listed once: the same
    values of ``keys`` (default: every key) are the same thing."""
    out, seen = [], set()
    for name, entry in (summary.get("experiments") or {}).items():
        for path, node in sorted(_walk(entry), key=lambda pn: len(pn[0])):  # the shallowest copy names a repeat
            if test(node):
                same = {k: node.get(k) for k in keys} if keys is not None else node
                key = (name, json.dumps(same, sort_keys=True, default=str))
                if key not in seen:
                    seen.add(key)
                    out.append((_where(name, path), node))
    return out


def _ids(ids: Sequence[Any]) -> str:
    ids = list(ids or [])
    shown = ", ".join(str(v) for v in ids)
    return (
        f"{len(ids)} pairs"
        if not ids
        else f'<details><summary>{len(ids)} pairs</summary><span class="muted">ids {esc(shown)}</span></details>'
    )


def _cell(part: Any) -> str:
    if not isinstance(part, Mapping):
        return '<span class="muted">—</span>'
    text = fmt_effect(part.get("mean"), part.get("ci_low"), part.get("ci_high"))
    n = part.get("n")
    text += f" (n = {n})" if n is not None else ""
    per_token = part.get("per_token")  # a sum's per-token mean, where the summary gives it (statistics.md)
    if isinstance(per_token, Mapping):
        text += "; per token " + fmt_effect(
            per_token.get("mean"), per_token.get("ci_low"), per_token.get("ci_high"), unit="nats/token"
        )
    return esc(text)


def _peaks_selections_maps(summary: Mapping[str, Any]) -> str:
    n_model = F.n_layers(summary)
    peaks = _found(summary, lambda d: isinstance(d.get("peak_set"), list), _PEAK_KEYS)
    selections = _found(summary, lambda d: "explore_pair_ids" in d and "confirm_pair_ids" in d)
    maps = _found(summary, lambda d: "m" in d and ("band_low" in d or "critical" in d))
    if not (peaks or selections or maps):
        return ""
    parts = ['<h2 id="peaks">Peaks, held-out selections and maps</h2>']
    if peaks:
        rows = []
        for where, d in peaks:
            members = d["peak_set"]
            swept = d.get("layers_swept")
            lo, hi = F._ci_pair(d.get("peak_layer_ci"))
            argmax = d.get("peak_layer")
            arg = (
                f"{argmax}" + (f" (bootstrap CI {lo:g}–{hi:g})" if math.isfinite(lo) else "")
                if argmax is not None
                else "—"
            )
            depth = ""
            if members and n_model:
                ds = [relative_depth(v, n_model) for v in members]
                depth = f"{min(ds):.2f}" + (f"–{max(ds):.2f}" if max(ds) > min(ds) else "")
            grid = f"{swept} of {n_model}" if swept and n_model and swept < n_model else f"{swept}" if swept else "—"
            rows.append(
                f'<tr title="{esc(d.get("peak_set_rule") or "")}"><td><code>{esc(where)}</code></td>'
                f"<td>{esc(fmt_layers(members))} "
                f'<span class="muted">({len(members)} layer{"s" if len(members) != 1 else ""})</span></td>'
                f'<td class="num">{esc(grid)}</td><td>{esc(arg)}</td><td>{esc(depth)}</td></tr>'
            )
        parts.append(
            '<h3>Peaks as sets</h3><p class="muted">The peak set: every layer whose effect is not '
            "significantly below the maximum (one-sided paired bootstrap of max − effect over pairs, 95%; "
            "hover a row for its rule). The argmax alone is not a finding; on a coarse grid only the swept "
            "layers can be in the set.</p>"
            '<table class="peaks"><tr><th>experiment</th><th>peak set (layers)</th><th>layers swept</th>'
            f"<th>argmax layer</th><th>relative depth</th></tr>{''.join(rows)}</table>"
        )
    if selections:
        rows = []
        for where, d in selections:
            chosen = d.get("chosen")
            rows.append(
                f"<tr><td><code>{esc(where)}</code></td><td>{esc(fmt_value(chosen))}</td>"
                f"<td>{_ids(d.get('explore_pair_ids') or [])}</td><td>{_ids(d.get('confirm_pair_ids') or [])}</td>"
                f"<td>{_cell(d.get('confirm'))}</td><td>{_cell(d.get('in_sample'))}</td></tr>"
            )
        parts.append(
            '<h3>Held-out selections</h3><p class="muted">Whatever is chosen by looking at the data is '
            "chosen on the <em>explore</em> pairs and reported on the disjoint <em>confirm</em> pairs; the "
            "explore pairs' own number stands beside it, labelled in-sample (optimistic by selection).</p>"
            '<table class="selections"><tr><th>choice</th><th>chosen</th><th>explore pairs (choose)</th>'
            "<th>confirm pairs (report)</th><th>confirm number</th><th>in-sample (explore pairs)</th></tr>"
            f"{''.join(rows)}</table>"
        )
    if maps:
        rows = []
        for where, d in maps:
            rows.append(
                f'<tr><td><code>{esc(where)}</code></td><td class="num">{esc(d.get("m"))}</td>'
                f'<td>{esc(fmt(d.get("critical"), 3))}</td><td class="rule">{esc(d.get("rule", ""))}</td></tr>'
            )
        parts.append(
            '<h3>Maps</h3><p class="muted">A claim about the largest cell of a map of m cells uses '
            'simultaneous (max-|t|) bands over the m cells.</p><table class="maps"><tr><th>map</th>'
            f"<th>m cells</th><th>critical |t|</th><th>rule</th></tr>{''.join(rows)}</table>"
        )
    return "".join(parts)


def _heading(name: str) -> str:
    """A figure's report heading, as its experiment registered it."""
    for fig in registry.figures():
        if fig.name == name:
            return fig.heading
    return name.replace("_", " ")


def _figure_html(name: str, fig: Any) -> str:
    height = fig.layout.height or F.HEIGHT
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"fig-{name}",
        default_height=f"{height}px",
        default_width="100%",
        config={"displaylogo": False, "responsive": True},
    )
    caption = F.FIGURES[name][2] if name in F.FIGURES else ""
    return (
        f'<section class="figure" id="section-{esc(name)}"><h3>{esc(_heading(name))}</h3>'
        f'{div}<p class="caption">{esc(caption)}</p></section>'
    )


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
        rows.append(
            f'<tr><td><code>{esc(name)}</code></td><td class="num">{len(g)}</td>'
            f'<td class="num">{esc(pairs)}</td><td class="num">{esc(layers)}</td>'
            f"<td>{esc(uniq('hook'))}</td><td>{esc(uniq('scope'))}</td><td>{esc(uniq('sides'))}</td>"
            f"<td>{esc(uniq('param'))}</td></tr>"
        )
    head = (
        "<tr><th>experiment</th><th>rows</th><th>pairs</th><th>layers</th><th>hooks</th><th>scopes</th>"
        "<th>sides</th><th>param</th></tr>"
    )
    return f"<h2>What was run (effects table)</h2><table>{head}{''.join(rows)}</table>"


def _not_run(summary: Mapping[str, Any], skipped: Mapping[str, str]) -> str:
    """The default suite's experiments that are absent, the opt-in ones that were not asked for, and the
    figures that could not be drawn (with why)."""
    present = set(summary.get("experiments") or {})
    missing = [n for n in EXPERIMENT_NAMES if n not in present or not F.experiment(summary, n)]
    opt_in = [n for n in registry.experiment_names(opt_in=True) if n not in EXPERIMENT_NAMES and n not in present]
    known = set(registry.experiment_names(opt_in=True))
    unknown = sorted(present - known)
    parts = ['<h2 id="not-run">Experiments not run</h2>']
    if missing:
        parts.append("<ul>" + "".join(f"<li><code>{esc(n)}</code> — not run</li>" for n in missing) + "</ul>")
    else:
        parts.append("<p>Every experiment was run.</p>")
    if opt_in:
        parts.append(
            "<p>Opt-in experiments (run only when named in <code>--experiments</code>): "
            + ", ".join(f"<code>{esc(n)}</code>" for n in opt_in)
            + ".</p>"
        )
    if skipped:
        parts.append(
            "<p>Figures left out:</p><ul>"
            + "".join(f"<li><code>{esc(n)}</code> — {esc(why)}</li>" for n, why in skipped.items())
            + "</ul>"
        )
    if unknown:
        parts.append(
            "<p>Also in the summary (no figure for them): "
            + ", ".join(f"<code>{esc(n)}</code>" for n in unknown)
            + "</p>"
        )
    return "".join(parts)


def _methods() -> str:
    return f"""<h2>Methods note</h2>
<p>The definitions follow <code>docs/method.md</code> (the project's precise version of the paper's
experiments): Δlogp = log p(y+|x) − log p(y−|x) summed over completion tokens; an <em>effect</em> is the
patched Δlogp minus the target model's own Δlogp, in nats; gain = Δlogp<sub>tuned</sub> − Δlogp<sub>base</sub>.
Sums are dominated by completion length on real data: the headline gives the per-token mean beside the sum; the
verdicts use the sums. Every per-layer number is a mean over pairs with a seeded 95% bootstrap CI over pairs. A CI
that holds 0 is printed as a bound (“|effect| &lt; B nats at 95%”), never as 0. The <em>peak set</em> holds every
layer not significantly below the maximum (one-sided paired bootstrap); the argmax and the <em>onset layer</em>
(the first layer reaching half of the maximum) carry bootstrap CIs. A ratio is given only when its denominator's CI
excludes 0, else “undefined (denominator CI spans 0)” with numerator and denominator in nats. Anything chosen from
the data is chosen on explore pairs and reported on the confirm pairs.</p>
<p><em>Relative depth</em> = layer / (n_layers − 1): 0 is the first block, 1 the last. The paper's layer
{PAPER_PEAK_LAYER} of {PAPER_N_LAYERS} is at {PAPER_RELATIVE_DEPTH:.3f}; <em>mid-depth</em> layers are within
{DEPTH_TOLERANCE} of it.</p>
<p>Each verdict has three outcomes: <em>agrees</em> (the interval supports the claim), <em>differs</em> (it excludes
it), <em>inconclusive</em> (it is compatible with both). Each row states its rule and the numbers it used;
thresholds are constants in <code>alignment_probe/experiments/verdicts.py</code>:</p>
<ol>
<li>Peak layer: agrees iff the whole tuned → base peak set is mid-depth; differs iff it is disjoint from the mid-depth
layers. The half-maximum onset is mid-depth on any ramp by construction and is not judged.</li>
<li>LASSO: agrees iff exactly one layer is non-zero, mid-depth, selected in ≥ {LASSO_STABLE:.0%} of bootstraps and
every other layer in ≤ {LASSO_RARE:.0%}; differs iff a non-mid-depth layer or two or more layers are selected in
≥ {LASSO_STABLE:.0%}, or none is ever selected.</li>
<li>Low rank: the held-out effect ratio at k = {LOWRANK_K} (in-sample when no held-out CI is given): agrees iff its
CI lies in [{RATIO_BAND[0]:.2f}, {RATIO_BAND[1]:.2f}], differs iff the CI is disjoint from it; undefined ratios are
inconclusive.</li>
<li>Identity (exact): agrees iff max |effect| ≤ {IDENTITY_TOLERANCE:g} nats over every per-pair row.</li>
<li>Reverse (“minimal change”, appendix A1): with M = {REVERSE_MAX_RATIO} × max|tuned → base|, agrees iff every
layer's base → tuned CI lies in [−M, M]; differs iff some layer's CI lies wholly outside it.</li>
</ol>
<p>“not run” means the experiment (or the needed grid point) is absent from this run. The same verdicts are stored in
<code>summary.json</code> under <code>verdicts</code> (and <code>verdicts_not_run</code>).</p>"""


def _generations(summary: Mapping[str, Any]) -> str:
    """E12's "What the models say": the run's few prompts decoded under each condition, side by side."""
    entry = F.experiment(summary, "generations")
    if not entry or not entry.get("rows"):
        return ""
    return (
        '<h2 id="section-generations">What the models say (E12)</h2><p class="muted">Greedy decoding of '
        f"{len({r['pair_id'] for r in entry['rows']})} prompts of the run's data, "
        f"{esc(entry.get('max_new_tokens', ''))} new tokens, under conditions fixed in advance: "
        + ", ".join(f"<code>{esc(c)}</code>" for c in entry.get("conditions", []))
        + ". A patch decodes the tuned model in lockstep on the same prefix.</p>"
        + table_html(entry["rows"])
    )


def _token_examples(summary: Mapping[str, Any], tokens: pd.DataFrame | None, tokenizer: Any) -> str:
    """The per-token gain (every block transplanted: the tuned model itself) of the run's first two pairs by id,
    coloured on their tokens, beside the per-token heatmap (E9)."""
    if tokens is None or len(tokens) == 0:
        return ""
    n = F.n_layers(summary)
    gain_rows = tokens[(tokens["hook"] == "blocks") & (tokens["layer"] == 0) & (tokens["param"] == n)]
    rows = gain_rows if len(gain_rows) else tokens
    first = rows.iloc[0]
    where = {c: first[c] for c in ("experiment", "hook", "layer", "param") if c in rows.columns}
    table = token_table(pd.DataFrame(rows), (lambda: tokenizer) if tokenizer is not None else None)
    views = []
    for pid in sorted(rows["pair_id"].unique().tolist())[:2]:
        try:
            views.append(table(int(pid), **where)._repr_html_())
        except ValueError:
            continue
    what = "the per-token gain (every block from the tuned model)" if len(gain_rows) else "one per-token condition"
    return (
        f'<h2 id="section-tokens">Per-token effects on the tokens (E9)</h2><p class="muted">{esc(what)} '
        "for the run's first two pairs by id (chosen above rejected; blue: more likely, red: less; hover a token "
        'for its value). In a notebook: <code>ap.load_run(dir).tokens(pair_id, "token_map", hook=…, '
        f"layer=…)</code>.</p><style>{TOKEN_STYLE}</style>" + "".join(views)
    )


def render_report(
    summary: Mapping[str, Any],
    manifest: Mapping[str, Any] | None,
    *,
    scores: pd.DataFrame | None = None,
    effects: pd.DataFrame | None = None,
    title: str = "alignment-probe report",
    tokens: pd.DataFrame | None = None,
    tokenizer: Any = None,
) -> str:
    """The report as one self-contained HTML string (plotly.js inline, once; no network needed)."""
    from plotly.offline import get_plotlyjs

    manifest = manifest or {}
    figs, skipped = F.build_figures(summary, scores)
    toc = "".join(f'<li><a href="#section-{esc(n)}">{esc(_heading(n))}</a></li>' for n in figs)
    body = [
        _header(summary, manifest, title),
        "<h2>Headline</h2>",
        _headline(summary),
        "<h2>Findings vs the paper's claims</h2>",
        '<p class="muted">Paper: Llama-3.2-1B base vs its preference-tuned twin, Anthropic HH pairs. '
        "Each verdict (agrees / differs / inconclusive) follows the explicit rule printed beside it, from the numbers "
        "printed with it; effects are Δlogp summed over completion tokens.</p>",
        _findings_table(findings(summary, effects, scores)),
        _peaks_selections_maps(summary),
        "<h2>Figures</h2>",
        f"<ul>{toc}</ul>" if figs else "<p>No figure could be drawn: nothing was run.</p>",
        *(_figure_html(name, fig) for name, fig in figs.items()),
        _token_examples(summary, tokens, tokenizer),
        _generations(summary),
        _effects_overview(effects),
        _not_run(summary, skipped),
        _methods(),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style>"
        "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        f"</head><body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    run_dir_or_path: str | Path,
    summary: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    *,
    scores: pd.DataFrame | None = None,
    effects: pd.DataFrame | None = None,
    title: str = "alignment-probe report",
) -> Path:
    """Write the report and return its path.

    ``run_dir_or_path`` is either a run directory (the report goes to ``<dir>/report.html``) or a target
    ``.html`` file. Whatever of summary / manifest / scores / effects is not passed is read from the
    directory (:class:`~alignment_probe.runfiles.RunFiles`, the one reader of a run directory) when it is
    there; a missing ``summary.json`` with no ``summary=`` is an error. Written atomically (temporary file + rename).
    """
    target = Path(run_dir_or_path)
    if target.suffix.lower() in (".html", ".htm"):
        out, run_dir = target, target.parent
    else:
        out, run_dir = target / REPORT_FILE, target
    files = RunFiles(run_dir)  # each file read only if it is needed and there
    if summary is None:
        summary = files.summary
        if summary is None:
            raise FileNotFoundError(f"{run_dir / SUMMARY_FILE} not found: pass summary= or point at a run directory")
    manifest = manifest if manifest is not None else (files.manifest or {})
    scores = scores if scores is not None else files.scores
    effects = effects if effects is not None else files.effects
    text = render_report(summary, manifest, scores=scores, effects=effects, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out

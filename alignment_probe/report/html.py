"""The self-contained HTML report of a run.

One file, opens offline: plotly.js is embedded once, inline, in ``<head>``; each figure is a ``<div>``
plus a small inline script. Sections: header (models, fingerprints, pairs, seed, date, versions),
headline numbers, findings vs the paper's claims (with verdicts by the rules below), the figures,
what was run (from the effects table, when given), what was not run, and a methods note.

Every string that comes from the user (model names, paths, config values, experiment names) is
passed through :func:`html.escape`; figures carry no user strings (plotly also escapes ``<`` in its
JSON).

Verdict rules: see :mod:`alignment_probe.report.verdicts` (the paper's claims, constants and rules).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_probe.effects import EXPERIMENT_NAMES
from alignment_probe.experiments import registry
from alignment_probe.report import figures as F
from alignment_probe.report.format import esc, fmt, fmt_ci  # noqa: F401  (fmt/fmt_ci: kept importable here)
from alignment_probe.report.verdicts import (  # noqa: F401  (the rules live there; kept importable here)
    AGREES, DEPTH_TOLERANCE, DIFFERS, IDENTITY_TOLERANCE, LOWRANK_K, NOT_RUN, PAPER_N_LAYERS, PAPER_PEAK_LAYER,
    PAPER_RELATIVE_DEPTH, RATIO_BAND, REVERSE_MAX_RATIO, Finding, finding_identity, finding_lasso, finding_lowrank,
    finding_peak, finding_reverse, findings, relative_depth)

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
SCORES_FILES = ("scores.parquet", "scores.csv")
EFFECTS_FILES = ("effects.parquet", "effects.csv")
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
    """The default suite's experiments that are absent, the opt-in ones that were not asked for, and the
    figures that could not be drawn (with why)."""
    present = set(summary.get("experiments") or {})
    missing = [n for n in EXPERIMENT_NAMES if n not in present or not F.experiment(summary, n)]
    opt_in = [n for n in registry.experiment_names(opt_in=True) if n not in EXPERIMENT_NAMES and n not in present]
    known = set(registry.experiment_names(opt_in=True))
    unknown = sorted(present - known)
    parts = ["<h2 id=\"not-run\">Experiments not run</h2>"]
    if missing:
        parts.append("<ul>" + "".join(f"<li><code>{esc(n)}</code> — not run</li>" for n in missing) + "</ul>")
    else:
        parts.append("<p>Every experiment was run.</p>")
    if opt_in:
        parts.append("<p>Opt-in experiments (run only when named in <code>--experiments</code>): "
                     + ", ".join(f"<code>{esc(n)}</code>" for n in opt_in) + ".</p>")
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
<p>Verdict rules (thresholds are constants in <code>alignment_probe/report/verdicts.py</code>):</p>
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


def _generations(summary: Mapping[str, Any]) -> str:
    """E12's "What the models say": the run's few prompts decoded under each condition, side by side."""
    entry = F.experiment(summary, "generations")
    if not entry or not entry.get("rows"):
        return ""
    from alignment_probe.generation import table_html

    return ('<h2 id="section-generations">What the models say (E12)</h2><p class="muted">Greedy decoding of '
            f'{len({r["pair_id"] for r in entry["rows"]})} prompts of the run\'s data, '
            f'{esc(entry.get("max_new_tokens", ""))} new tokens, under conditions fixed in advance: '
            + ", ".join(f"<code>{esc(c)}</code>" for c in entry.get("conditions", []))
            + ". A patch decodes the tuned model in lockstep on the same prefix.</p>"
            + table_html(entry["rows"]))


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
        _generations(summary),
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

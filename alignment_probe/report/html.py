"""The self-contained HTML report of a run.

One file, opens offline: plotly.js is embedded once, inline, in ``<head>``; each figure is a ``<div>``
plus a small inline script. Sections: header (models, fingerprints, pairs, seed, date, versions),
headline numbers, findings vs the paper's claims (with verdicts by the rules below), the figures,
what was run (from the effects table, when given), what was not run, and a methods note.

Every string that comes from the user (model names, paths, config values, experiment names) is
passed through :func:`html.escape`; figures carry no user strings (plotly also escapes ``<`` in its
JSON).

Verdict rules: see :mod:`alignment_probe.experiments.verdicts` (the paper's claims, constants and rules). This module
is the page (its style, the order of its sections, reading and writing a run's files); the sections are
:mod:`.html_sections`, the tables :mod:`.html_tables`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

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
from alignment_probe.formatting import esc, fmt, fmt_ci, fmt_effect, fmt_layers, fmt_value  # noqa: F401  (kept importable here)
from alignment_probe.report import figures as F
from alignment_probe.report.html_sections import (
    _effects_overview,
    _figure_html,
    _generations,
    _header,
    _heading,
    _headline,
    _methods,
    _not_run,
    _token_examples,
)
from alignment_probe.report.html_tables import _findings_table, _peaks_selections_maps
from alignment_probe.runfiles import SUMMARY_FILE, RunFiles

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

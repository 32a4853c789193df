"""The report's sections, one function each: the header (models, fingerprints, pairs, seed, date, versions), the
headline numbers, each figure with its heading and caption, the per-token examples (E9), the generations (E12),
what was run, what was not run, and the methods note. The page that strings them together is :mod:`.html`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from alignment_probe import plotting as P
from alignment_probe.experiments import registry
from alignment_probe.experiments.registry import EXPERIMENT_NAMES
from alignment_probe.experiments.verdict_rules import (
    DEPTH_TOLERANCE,
    IDENTITY_TOLERANCE,
    LASSO_RARE,
    LASSO_STABLE,
    LOWRANK_K,
    PAPER_N_LAYERS,
    PAPER_PEAK_LAYER,
    PAPER_RELATIVE_DEPTH,
    RATIO_BAND,
    REVERSE_MAX_RATIO,
)
from alignment_probe.formatting import esc, fmt, fmt_ci, fmt_effect
from alignment_probe.formatting import num as _num
from alignment_probe.generation import table_html
from alignment_probe.report import figures as F
from alignment_probe.report.html_tables import _kv_table
from alignment_probe.tokenview import TOKEN_STYLE, token_table


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
    lo, hi = P.ci_pair(summary.get("gain_ci"))
    gain = _num(summary.get("gain_mean"))
    cards = [
        ("mean Δlogp, base", fmt(summary.get("base_delta_logp_mean"), 4, signed=True) + " nats", ""),
        ("mean Δlogp, tuned", fmt(summary.get("tuned_delta_logp_mean"), 4, signed=True) + " nats", ""),
        (
            "mean gain (tuned − base), summed over tokens",
            fmt(gain, 4, signed=True) + " nats",
            fmt_ci(lo, hi) if _num(lo) > 0 or _num(hi) < 0 else fmt_effect(gain, lo, hi, what="gain"),
        ),
    ]
    if "gain_per_token_mean" in summary:  # statistics.md: the per-token mean beside every sum-based headline
        plo, phi = P.ci_pair(summary.get("gain_per_token_ci"))
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

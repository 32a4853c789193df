"""The report's tables: key-value rows, the findings vs the paper's claims, and the peaks as sets, held-out
selections and maps found anywhere in a run's summary. Every user string passes through :func:`esc`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from alignment_probe import plotting as P
from alignment_probe.experiments.verdict_rules import AGREES, DIFFERS, INCONCLUSIVE, NOT_RUN, Finding, relative_depth
from alignment_probe.formatting import esc, fmt, fmt_effect, fmt_layers, fmt_value


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


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
    n_model = P.n_layers(summary)
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
            lo, hi = P.ci_pair(d.get("peak_layer_ci"))
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

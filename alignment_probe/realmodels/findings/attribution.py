"""The attribution findings tables: E10 (AtP, its exact confirmation and validation) and E11 (steering at c = 1)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from alignment_probe.realmodels.findings.cells import (
    as_float,
    cell_at_c,
    ci_or_bound,
    entry_ci,
    fraction_cell,
    md_table,
    ratio_cell,
    validation_cells,
)
from alignment_probe.report.format import ci_cell


def _band_cell(entry: dict[str, Any]) -> str:
    """An estimate with its per-cell CI and, where the run has it, its simultaneous (max-|t|) band."""
    if entry.get("band_low") is None or entry.get("band_high") is None:
        return entry_ci(entry)
    return f"{entry_ci(entry)}, band [{as_float(entry['band_low']):+.2f}, {as_float(entry['band_high']):+.2f}]"


def _map_note(maps: Sequence[dict[str, Any] | None], m: int, what: str, largest: str) -> str:
    """What the intervals over a map of m cells are: simultaneous bands (statistics.md) or per-cell CIs only."""
    given = [x for x in maps if x]
    if given and len(given) == len(maps):
        crit = ", ".join(f"{as_float(x['critical']):.2f}" for x in given)
        return (
            f"Bands: simultaneous 95 % max-|t| bootstrap bands over m = {m} {what} (critical |t| {crit}); a "
            f"{largest} is distinguished from another only where the bands separate"
        )
    return f'Per-cell CIs over a map of m = {m} {what}, not simultaneous: "the {largest}" needs max-|t| bands or held-out confirmation'


def render_attribution(found: dict[str, Any], runs: Sequence[str]) -> list[str]:
    """E10 (AtP: the map, its exact confirmation and validation) and E11 (steering at c = 1) as tables."""
    parts: list[str] = []
    for run in runs:
        atp = found[run].get("atp")
        if atp and atp.get("by_hook"):
            rows = []
            for hook, e in atp["by_hook"].items():
                top = sorted(e["per_layer"], key=lambda r: -abs(r["mean"]))[:3]
                rows.append(
                    [
                        hook,
                        len(e["per_layer"]),
                        "; ".join(f"{r['layer']}: {_band_cell(r)}" for r in top),
                        *validation_cells(e.get("validation")),
                    ]
                )
            m = sum(len(e["per_layer"]) for e in atp["by_hook"].values())
            parts += [
                f"### {run}: E10 attribution patching (tuned → base, every position), the three largest "
                f"estimates per hook, mean [95 % CI]; validation against exact rows of the same conditions. "
                + _map_note([atp.get("map")], m, "layer × hook cells", "largest cell"),
                md_table(
                    [
                        "hook",
                        "layers",
                        "largest estimates (layer: AtP)",
                        "Spearman ρ",
                        "top-3 recall",
                        "largest |AtP − exact|",
                    ],
                    rows,
                ),
            ]
        if atp and atp.get("confirmed"):
            sel = atp.get("selection") or {}
            how = (
                f"ranked on the explore half ({len(sel.get('explore_pair_ids') or [])} pairs), patched exactly on "
                f"the confirm half ({len(sel.get('confirm_pair_ids') or [])} pairs)"
                + (f", out of m = {sel['m']} conditions ranked" if sel.get("m") else "")
                if sel.get("confirm_pair_ids")
                else "in-sample: ranked by AtP and patched exactly on the same pairs"
            )
            parts += [
                f"### {run}: the conditions AtP ranks highest, patched exactly (--confirm): {how}; AtP / exact is "
                "a point ratio, undefined where the exact CI spans 0",
                md_table(
                    ["hook", "layer", "AtP", "exact", "AtP / exact (point)"],
                    [
                        [
                            c["hook"],
                            c["layer"],
                            ci_cell(c["atp"], [c["atp_ci_low"], c["atp_ci_high"]]),
                            ci_cell(c["exact"], [c["exact_ci_low"], c["exact_ci_high"]]),
                            ratio_cell(
                                c["atp"] / c["exact"] if c["exact"] else math.nan,
                                None,
                                denominator_ci=[c["exact_ci_low"], c["exact_ci_high"]],
                            ),
                        ]
                        for c in atp["confirmed"]
                    ],
                ),
            ]
        if atp and atp.get("by_head"):
            est = atp.get("head_estimator") or {}
            rows = []
            for hook, cells in atp["by_head"].items():
                top = sorted(cells, key=lambda c: -abs(c["mean"]))[:4]
                rows.append(
                    [
                        f"{hook} ({est.get(hook, 'atp')})",
                        len(cells),
                        "; ".join(f"L{c['layer']}h{c['head']} {_band_cell(c)}" for c in top),
                        *validation_cells((atp.get("head_validation") or {}).get(hook)),
                    ]
                )
            m = sum(len(cells) for cells in atp["by_head"].values())
            parts += [
                f"### {run}: E10 per head, the four largest estimates per hook, mean [95 % CI]; validation "
                f"against one-head exact patches where the run has them. "
                + _map_note(
                    [(atp.get("head_map") or {}).get(hook) for hook in atp["by_head"]],
                    m,
                    "head cells; each hook's band is simultaneous over that hook's own heads ("
                    + ", ".join(f"{h}: m = {len(c)}" for h, c in atp["by_head"].items())
                    + ")",
                    "largest head",
                ),
                md_table(
                    [
                        "hook (estimator)",
                        "heads",
                        "largest estimates",
                        "Spearman ρ",
                        "top-3 recall",
                        "largest |AtP − exact|",
                    ],
                    rows,
                ),
            ]
        st = found[run].get("steer")
        if st:
            gain = st.get("gain") or {}
            gain_ci = [gain.get("ci_low"), gain.get("ci_high")]
            # revised E11 picks the scale a on the fit half; the first definition had only c = 1
            c = float(st.get("scale") or 1.0)
            rows = [
                [
                    "v_ℓ (mean tuning shift)",
                    cell_at_c(st.get("by_c"), c),
                    fraction_cell(st.get("recovered_fraction"), st.get("by_c"), gain, c),
                ]
            ]
            for name, b in (st.get("baselines") or {}).items():
                label = f"{name} (one draw)" if name == "random" and not st.get("null") else name
                rows.append(
                    [
                        label,
                        cell_at_c(b.get("by_c"), c),
                        fraction_cell(b.get("recovered_fraction"), b.get("by_c"), gain, c),
                    ]
                )
            for name, b in (st.get("variants") or {}).items():
                rows.append(
                    [
                        f"v at the {name.replace('_', ' ')} position",
                        cell_at_c(b.get("by_c"), c),
                        fraction_cell(b.get("recovered_fraction"), b.get("by_c"), gain, c),
                    ]
                )
            rev = st.get("reverse") or {}
            if rev:
                rows.append(
                    [
                        "reverse: −v_ℓ on the tuned model (fraction lost)",
                        cell_at_c(rev.get("by_c"), c),
                        fraction_cell(rev.get("lost_fraction"), rev.get("by_c"), gain, c),
                    ]
                )
            parts += [
                f"### {run}: E11 steering at layer {st['layer']} ({st.get('layer_rule', '')}); held-out half, "
                f"c = {c:g}; gain there {ci_or_bound(gain.get('mean'), gain_ci, 'gain') if gain else ''}",
                md_table(["direction", "Δ(steered) − Δ(base)", "fraction of the gain"], rows),
            ]
            null = st.get("null") or {}
            if null:
                parts.append(
                    f"Null of {null.get('n')} random directions: v_ℓ's held-out effect sits at percentile "
                    f"{as_float(null.get('percentile')):.1f} (one-sided p = {as_float(null.get('p')):.3g})."
                )
            if st.get("by_layer"):
                parts += [
                    f"### {run}: E11 steering scan on the fit half (c = 1), mean [95 % CI]",
                    md_table(
                        ["layer", "v_ℓ", "random direction"],
                        [[r["layer"], entry_ci(r.get("v")), entry_ci(r.get("random"))] for r in st["by_layer"]],
                    ),
                ]
            tr = st.get("transfer")
            if tr:
                t_gain = tr.get("gain") or {}
                t_ci = [t_gain.get("ci_low"), t_gain.get("ci_high")]
                rnd = tr.get("random") or {}
                parts += [
                    f"### {run}: E11 transfer (v fitted on the run's data, evaluated on the other dataset's "
                    f"pairs; their gain {ci_or_bound(t_gain.get('mean'), t_ci, 'gain') if t_gain else ''}), c = {c:g}",
                    md_table(
                        ["direction", "Δ(steered) − Δ(base)", "fraction of the gain"],
                        [
                            [
                                "v_ℓ",
                                cell_at_c(tr.get("by_c"), c),
                                fraction_cell(tr.get("recovered_fraction"), tr.get("by_c"), t_gain, c),
                            ],
                            [
                                "random" if st.get("null") else "random (one draw)",
                                cell_at_c(rnd.get("by_c"), c),
                                fraction_cell(rnd.get("recovered_fraction"), rnd.get("by_c"), t_gain, c),
                            ],
                        ],
                    ),
                ]
    return parts

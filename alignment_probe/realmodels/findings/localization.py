"""The localization instruments' findings tables: E8 windows and the 2×2 design, E9 shift and per-token maps."""

from __future__ import annotations

from typing import Any, Sequence

from alignment_probe.realmodels.findings.cells import (
    HEADS,
    WINDOWS,
    chosen_cell,
    ci_or_bound,
    entry_ci,
    md_table,
    method_label,
    peak_set_cell,
    ratio_cell,
)
from alignment_probe.report.format import ci_cell


def render_localization(found: dict[str, Any], runs: Sequence[str]) -> list[str]:
    """The localization instruments' tables: E8 windows and the 2×2 design, E9 shift and per-token maps."""
    parts: list[str] = []
    for run in runs:
        present = [(key, found[run][key]) for key in WINDOWS if found[run].get(key)]
        if present:
            widths = sorted({r["width"] for _, w in present for r in w["by_window"]})
            cols = [(key, width) for key, _ in present for width in widths]
            starts = sorted({r["start"] for _, w in present for r in w["by_window"]})
            cell = {(key, r["width"], r["start"]): entry_ci(r) for key, w in present for r in w["by_window"]}
            gain = present[0][1].get("gain") or {}
            parts += [
                f"### {run}: weight transplants, gain carried by the window starting at each block, mean [95 % CI] "
                f"(transplant: Δ(hybrid) − Δ(base); revert: Δ(tuned) − Δ(hybrid); gain of these pairs "
                f"{ci_cell(gain.get('mean'), [gain.get('ci_low'), gain.get('ci_high')])})",
                md_table(
                    ["first block", *[f"{method_label(k)}, w = {w}" for k, w in cols]],
                    [[a, *[cell.get((k, w, a), "") for k, w in cols]] for a in starts],
                ),
            ]
            for key, w in present:
                chosen = chosen_cell(w, unit="block")
                if chosen:
                    n_cells = len(w.get("per_layer") or [])
                    parts.append(
                        f"{method_label(key)}, one block: argmax block {w['peak_layer']} {w['peak_layer_ci']}; peak "
                        f"set {peak_set_cell(w)}; {chosen}. The per-block CIs above are one block at a time, not "
                        f"simultaneous over the m = {n_cells} blocks: a claim about the largest block needs "
                        "max-|t| bands or the held-out choice."
                    )
                if w.get("every_block"):
                    e = w["every_block"]
                    parts.append(
                        f"Check, {method_label(key)} of every block (the tuned model itself): mean {e['mean']:+.4f} "
                        f"vs gain {e['gain_mean']:+.4f} (largest per-pair difference {e['max_abs_error']:.2g})."
                    )
        for key in HEADS:
            heads = found[run].get(key)
            if not heads:
                continue
            attn = {r["layer"]: r for r in heads.get("attn_out") or []}
            sums = {r["layer"]: r["sum"] for r in heads.get("sum_of_heads") or []}
            rows = []
            for layer in sorted({c["layer"] for c in heads["by_head"]}):
                cells = sorted((c for c in heads["by_head"] if c["layer"] == layer), key=lambda c: -abs(c["mean"]))
                a = attn.get(layer)
                rows.append(
                    [
                        layer,
                        entry_ci(a),
                        f"{sums.get(layer, 0):+.2f}",
                        "; ".join(f"h{c['head']} {entry_ci(c)}" for c in cells[:3]),
                    ]
                )
            m = len(heads["by_head"])
            layers_txt = ", ".join(str(v) for v in sorted({c["layer"] for c in heads["by_head"]}))
            picked = (
                f"; {chosen_cell(heads, unit='heads')}"
                if chosen_cell(heads)
                else "; the layers were picked by the windows run, in-sample if on the same pairs"
            )
            parts += [
                f"### {run}: {method_label(key)} (tuned → base, one head at a time, hook {heads['hook']}), mean [95 % CI]; "
                f"exact patches of m = {m} heads at layers {layers_txt} only{picked}; per-head CIs, not "
                "simultaneous over the m heads",
                md_table(["layer", "whole attn_out", "Σ heads (point)", "largest three heads"], rows),
            ]
        split_rows = found[run].get("cross_2x2")
        if split_rows:
            parts += [
                f"### {run}: 2×2 cross design per split s (early blocks < s × late blocks ≥ s), mean [95 % CI]",
                md_table(
                    [
                        "split",
                        "Δ(B,B)",
                        "Δ(T,T)",
                        "late on base Δ(B,T) − Δ(B,B)",
                        "late on tuned Δ(T,T) − Δ(T,B)",
                        "interaction (bound where its CI includes 0)",
                    ],
                    [
                        [
                            r["split"],
                            f"{r['bb']:+.2f}",
                            f"{r['tt']:+.2f}",
                            ci_cell(r["late_on_base"], r["late_on_base_ci"]),
                            ci_cell(r["late_on_tuned"], r["late_on_tuned_ci"]),
                            ci_or_bound(r["interaction"], r["interaction_ci"], "I"),
                        ]
                        for r in split_rows
                    ],
                ),
            ]
        shift = found[run].get("shift")
        if shift:
            bins = [b["first"] for b in shift["kl_by_bin"]]
            parts += [
                f"### {run}: distribution shift on the completions (no patching), mean [95 % CI]",
                md_table(
                    [
                        "positions",
                        "KL(tuned ‖ base), nats",
                        f"share with tuned's top token ranked > {shift['top_rank']} under base",
                    ],
                    [
                        [f"first {k}" if k != "rest" else "the rest", entry_ci(a), entry_ci(b)]
                        for k, a, b in zip(bins, shift["kl_by_bin"], shift["rank_gt3_by_bin"])
                    ],
                ),
            ]
        tmap = found[run].get("token_map")
        if tmap:
            rows = []
            for c in tmap["conditions"]:
                mine = {
                    b["first"]: b
                    for b in tmap["by_bin"]
                    if (b["hook"], b["layer"], b["width"]) == (c["hook"], c["layer"], c["width"])
                }
                rows.append(
                    [
                        c["label"],
                        entry_ci(c),
                        *[
                            ratio_cell(
                                mine[k]["share"],
                                mine[k]["share_ci"],
                                denominator_ci=[c["ci_low"], c["ci_high"]],
                                numerator=mine[k],
                                denominator=c,
                            )
                            for k in (1, 2, 4, 8, "rest")
                        ],
                    ]
                )
            parts += [
                f"### {run}: share of each effect carried by the first k completion tokens [95 % CI] (a ratio: "
                "undefined where the effect's CI spans 0; front-loading needs a share above those positions' "
                "share of all completion tokens, not above 0)",
                md_table(["condition", "effect", "first 1", "first 2", "first 4", "first 8", "the rest"], rows),
            ]
    return parts

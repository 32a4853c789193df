"""Every headline number of findings.json as Markdown (docs/findings-smollm2.md quotes these tables)."""

from __future__ import annotations

from typing import Any

from alignment_probe.realmodels.findings.attribution import render_attribution
from alignment_probe.realmodels.findings.cells import (
    CURVES,
    chosen_cell,
    ci_or_bound,
    md_table,
    method_label,
    peak_set_cell,
    ratio_cell,
)
from alignment_probe.realmodels.findings.localization import render_localization
from alignment_probe.realmodels.plan import RUNS
from alignment_probe.report.format import layer_ci_cell


def render_tables(found: dict[str, Any]) -> str:
    """Every headline number of ``findings.json`` as Markdown: gains, per-layer curves, peak/onset,
    LASSO, α and low rank. Means with 95 % bootstrap CIs, in nats of Δlogp."""
    runs = [r for r in RUNS if r in found]
    parts = [
        "### Gain (tuned Δlogp − base Δlogp), mean [95 % CI]; Δlogp is a sum over completion tokens, the per-token "
        "gain the difference of each completion's mean log-prob per token",
        md_table(
            ["run", "pairs", "base Δlogp", "tuned Δlogp", "gain (sum)", "gain per token"],
            [
                [
                    r,
                    found[r]["n_pairs"],
                    f"{found[r]['base_delta_logp_mean']:+.2f}",
                    f"{found[r]['tuned_delta_logp_mean']:+.2f}",
                    ci_or_bound(found[r]["gain_mean"], found[r]["gain_ci"]),
                    ci_or_bound(found[r]["gain_per_token_mean"], found[r]["gain_per_token_ci"], "gain")
                    if found[r].get("gain_per_token_ci")
                    else "— (not in this summary)",
                ]
                for r in runs
            ],
        ),
    ]
    curves = [(r, key, found[r][key]) for r in runs for key in CURVES if found[r].get(key)]
    curves += [
        (r, f"{method_label('patch_tuned_to_base')} @ {hook}", res)
        for r in runs
        for hook, res in (found[r].get("by_hook") or {}).items()
    ]
    peak_rows = []
    for run, key, res in curves:
        peak_rows.append(
            [
                run,
                method_label(key),
                peak_set_cell(res),
                f"{res['peak_layer']} {res['peak_layer_ci']}",
                f"{res['onset_layer']} {res['onset_layer_ci']}",
                chosen_cell(res),
            ]
        )
    parts += [
        "### Peaks as sets. Peak set: the swept layers whose effect is not significantly below the maximum "
        "(one-sided paired bootstrap, 95 %); argmax: the bootstrap's largest layer [95 % CI]; onset: the first "
        "layer holding half the maximum (on any steadily rising curve this is mid-depth by construction, so it "
        "is not evidence for a mid-network peak); held-out: the peak chosen on one half of the pairs, measured "
        "on the other",
        md_table(["run", "experiment", "peak set", "argmax [95 % CI]", "onset [95 % CI]", "held-out peak"], peak_rows),
    ]
    for run in runs:
        present = [(method_label(key), res) for r, key, res in curves if r == run]
        if not present:
            continue
        layers = sorted({row["layer"] for _, res in present for row in res["per_layer"]})
        rows = [[layer, *[layer_ci_cell(res["per_layer"], layer) for _, res in present]] for layer in layers]
        parts += [
            f"### {run}: per-layer effect, mean [95 % CI] (nats)",
            md_table(["layer", *[name for name, _ in present]], rows),
        ]
        if "identity_max_abs_mean" in found[run]:
            ident = found[run]["identity_max_abs_mean"]
            parts.append(
                "Identity patch (a check of the engine, not evidence about the twin): largest |mean| over "
                "layers "
                + (
                    "exactly 0 (the engine reuses the clean run for a bit-identical activation)."
                    if ident == 0
                    else f"{ident:.3g} nats."
                )
            )
    for run in runs:
        lasso = found[run].get("lasso")
        if lasso:
            nz = lasso["nonzero_layers"]
            freq = lasso.get("selection_frequency") or []
            top = sorted(range(len(freq)), key=lambda i: -freq[i])[:5]
            parts += [
                f"### {run}: LASSO of the gain on per-layer ‖h_tuned − h_base‖ (last prompt token)",
                f"Non-zero layers: {nz or 'none'} "
                f"(coefficients {[round(lasso['coefficients'][i], 3) for i in nz]}); regularisation α = "
                f"{lasso['alpha_']:.3g}. "
                + (
                    "Highest bootstrap selection frequencies: " + ", ".join(f"layer {i} {freq[i]:.2f}" for i in top)
                    if freq and max(freq) > 0
                    else "No layer was selected in any bootstrap refit"
                )
                + (
                    ". Selecting no layer is not evidence that no layer matters: the LASSO's power on these "
                    "pairs is not measured."
                    if not nz
                    else "."
                ),
            ]
    for run in runs:
        alpha = found[run].get("alpha")
        if alpha:
            alphas = [str(a) for a in alpha["by_alpha"]]
            layers = [row["layer"] for row in alpha["by_alpha"][alphas[0]]]
            rows = [
                [
                    layer,
                    *[layer_ci_cell(alpha["by_alpha"][a], layer) for a in alphas],
                    f"{alpha['spearman_rho'][str(layer)]:.2f}",
                ]
                for layer in layers
            ]
            parts += [
                f"### {run}: α interpolation h = (1−α)·h_base + α·h_tuned",
                md_table(["layer", *[f"α = {a}" for a in alphas], "Spearman ρ"], rows),
            ]
        for mode in ("lowrank_difference", "lowrank_reconstruct"):
            rows = found[run].get(mode)
            if rows:
                parts += [
                    f"### {run}: {mode.replace('_', ' ')} (effect ratio = low-rank effect / full-patch effect; "
                    "in-sample: the subspace is fitted on the pairs it is measured on; held-out: fitted on one "
                    f"half, measured on the other; a ratio only where its denominator's CI excludes 0)",
                    md_table(
                        [
                            "layer",
                            "k",
                            "effect ratio, in-sample [95 % CI]",
                            "variance explained",
                            "held-out ratio [95 % CI]",
                        ],
                        [
                            [
                                r["layer"],
                                r["k"],
                                ratio_cell(
                                    r["effect_ratio"],
                                    r["effect_ratio_ci"],
                                    numerator=r.get("effect_mean"),
                                    denominator=r.get("full_effect_mean"),
                                ),
                                f"{r['variance_explained']:.3f}",
                                ""
                                if r["heldout_effect_ratio"] is None
                                else ratio_cell(r["heldout_effect_ratio"], r.get("heldout_effect_ratio_ci")),
                            ]
                            for r in rows
                        ],
                    ),
                ]
    parts += render_localization(found, runs)
    parts += render_attribution(found, runs)
    return "\n\n".join(parts) + "\n"

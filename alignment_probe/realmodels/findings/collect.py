"""The headline numbers of every real-model run, gathered from their summaries into findings.json's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from alignment_probe import stats
from alignment_probe.realmodels.findings.cells import HEADS, WINDOWS
from alignment_probe.report.curves import select
from alignment_probe.rundir import load_run


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _curve(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (
        [] if entry is None else [{k: r[k] for k in ("layer", "mean", "ci_low", "ci_high")} for r in entry["per_layer"]]
    )


def _layer_result(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "peak_layer": entry["peak_layer"],
        "peak_layer_ci": entry["peak_layer_ci"],
        "onset_layer": entry["onset_layer"],
        "onset_layer_ci": entry["onset_layer_ci"],
        "heldout": entry.get("heldout"),
        "per_layer": _curve(entry),
        # statistics.md: the peak as a set, and which pairs chose and which confirmed (absent in older runs)
        **{k: entry[k] for k in ("peak_set", "layers_swept", "selection") if entry.get(k) is not None},
    }


def extra_hook_results(run_dir: Path, hooks: Sequence[str], *, seed: int, n_boot: int) -> dict[str, Any]:
    """E1 at the extra hook points (the summary reports the default hook only), from the run's effects
    table: per-layer means, CIs, peak, onset."""
    effects = load_run(run_dir).effects
    return {
        hook: _layer_result(
            stats.summarize_experiment(
                select(effects, experiment="patch_tuned_to_base", hook=hook, scope="all", split="all"),
                seed=seed,
                n_boot=n_boot,
            )
        )
        for hook in hooks
    }


def collect(
    summaries: dict[str, dict[str, Any]],
    *,
    n_layers: int,
    planted_layer: int,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The headline numbers of every run, in one JSON-ready dict (what the findings document quotes).
    ``extra[run]`` is merged into that run's entry (e.g. E1 at extra hook points)."""
    out: dict[str, Any] = {"n_layers": n_layers, "planted_layer": planted_layer}
    for name, s in summaries.items():
        ex = s["experiments"]
        entry: dict[str, Any] = {
            "n_pairs": s["n_pairs"],
            "gain_mean": s["gain_mean"],
            "gain_ci": s["gain_ci"],
            "base_delta_logp_mean": s["base_delta_logp_mean"],
            "tuned_delta_logp_mean": s["tuned_delta_logp_mean"],
            # Δlogp is a sum over completion tokens; the per-token mean goes beside it
            **{k: s[k] for k in ("gain_per_token_mean", "gain_per_token_ci") if k in s},
        }
        for key in (
            "patch_tuned_to_base",
            "patch_base_to_tuned",
            "random_noise",
            "random_direction",
            "source_chosen_only",
            "source_rejected_only",
            "vector_chosen",
            "vector_rejected",
            "vector_contrast",
        ):
            if key in ex:
                entry[key] = _layer_result(ex[key])
        if "identity" in ex:
            entry["identity_max_abs_mean"] = max(abs(r["mean"]) for r in ex["identity"]["per_layer"])
        if "lasso" in ex:
            lasso = ex["lasso"]
            coef = lasso["coefficients"]
            entry["lasso"] = {
                "nonzero_layers": [i for i, c in enumerate(coef) if c != 0],
                "coefficients": coef,
                "selection_frequency": lasso.get("selection_frequency"),
                "alpha_": lasso.get("alpha_"),
                **{k: lasso[k] for k in ("r2", "cv_r2", "probe_r2") if k in lasso},
            }
        if "alpha" in ex:
            entry["alpha"] = ex["alpha"]
        for mode in ("lowrank_difference", "lowrank_reconstruct"):
            if mode in ex:
                entry[mode] = [
                    {
                        k: r.get(k)
                        for k in (
                            "layer",
                            "k",
                            "effect_ratio",
                            "effect_ratio_ci",
                            "variance_explained",
                            "heldout_effect_ratio",
                            "heldout_effect_ratio_ci",
                            "effect_mean",
                            "full_effect_mean",
                        )
                    }
                    for r in ex[mode]["by_k"]
                ]
        for key in WINDOWS:  # E8: the gain each window carries (transplant: sufficiency; revert: necessity)
            if key in ex:
                w = ex[key]
                entry[key] = {
                    "by_window": w["by_window"],
                    "gain": w.get("gain"),
                    "every_block": w.get("every_block"),
                    **(_layer_result(w) if w.get("per_layer") else {}),
                }
        for key in HEADS:  # E7: one head at a time
            if key in ex:
                entry[key] = {
                    k: ex[key][k]
                    for k in ("hook", "by_head", "by_head_k", "attn_out", "sum_of_heads", "selection")
                    if k in ex[key]
                }
        if "cross_2x2" in ex:
            entry["cross_2x2"] = ex["cross_2x2"]["by_split"]
        if "shift" in ex:
            entry["shift"] = {
                k: ex["shift"][k] for k in ("kl_mean", "rank_gt3_mean", "kl_by_bin", "rank_gt3_by_bin", "top_rank")
            }
        if "token_map" in ex:
            entry["token_map"] = {"conditions": ex["token_map"]["conditions"], "by_bin": ex["token_map"]["by_bin"]}
        if "atp" in ex:  # E10: estimates at every condition, their exact confirmation and validation
            entry["atp"] = {
                k: ex["atp"][k]
                for k in (
                    "by_hook",
                    "confirmed",
                    "by_head",
                    "head_estimator",
                    "exact_by_head",
                    "head_validation",
                    "selection",
                    # statistics.md: simultaneous (max-|t|) bands over each map, with its size m
                    "map",
                    "head_map",
                    "peak_set",
                    "peak_set_hook",
                )
                if k in ex["atp"]
            }
        if "atp_confirm" in ex and not (entry.get("atp") or {}).get("confirmed"):
            entry.setdefault("atp", {})["confirmed"] = ex["atp_confirm"].get("confirmed")
        if (ex.get("atp_confirm") or {}).get("selection") and not (entry.get("atp") or {}).get("selection"):
            entry.setdefault("atp", {})["selection"] = ex["atp_confirm"]["selection"]
        if "steer" in ex:  # E11: the dose curves stay in the run's summary; the document quotes the chosen scale
            st = ex["steer"]
            entry["steer"] = {
                k: st[k]
                for k in (
                    "layer",
                    "scale",
                    "layer_rule",
                    "by_c",
                    "recovered_fraction",
                    "excess_over_random",
                    "baselines",
                    "variants",
                    "reverse",
                    "gain",
                    "transfer",
                    "null",
                    "selection",
                )
                if k in st
            }
            entry["steer"]["by_layer"] = (st.get("layer_choice") or {}).get("by_layer")
        out[name] = entry | (extra or {}).get(name, {})
    return out

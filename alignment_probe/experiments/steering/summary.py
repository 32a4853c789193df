"""E11's summaries, pure functions of the tables: the scan's landscape on the fit half and the chosen (ℓ, a)
(``steer_scan``), and everything ``steer`` reports on the held-out half (and the transfer pairs)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from alignment_probe import stats
from alignment_probe.experiments.registry import Tables
from alignment_probe.experiments.steering.common import (
    BASELINES,
    CLASS_ONLY,
    MAIN,
    RANDOM,
    REVERSE,
    REVERSE_RANDOM,
    RULE_SCALE,
    RULE_SCAN,
    SCAN,
    SCAN_RANDOM,
    TRANSFER,
)
from alignment_probe.experiments.steering.measures import (
    _curve,
    _fraction,
    _mean_ci,
    _per_pair,
    _per_token_effect,
    kl_summary,
    null_summary,
    ratio_difference,
)
from alignment_probe.stats.peaks import _peak_index


def _cell_index(means: Sequence[float], target: float, seed: int) -> int:
    """The cell whose mean is closest to ``target``; ties (to float rounding) broken at random, seeded."""
    dist = np.abs(np.asarray(means, dtype=np.float64) - float(target))
    return int(_peak_index(-dist[None, :], np.random.default_rng([int(seed), 11]))[0])


def scan_landscape(effects: pd.DataFrame, scores: pd.DataFrame, cfg: Any) -> dict[str, Any]:
    """The fit half's scan: per (ℓ, a) the mean effect of v_ℓ,c (bootstrap CI) and its recovered fraction
    (``grid``); per layer v at a = 1, the random direction at a = 1 and v at every scale (``by_layer``); the chosen
    (ℓ, a) (:data:`RULE_SCAN`). ``chosen`` is None without scan rows."""
    rows = effects[effects.experiment.isin((SCAN, SCAN_RANDOM))] if len(effects) else effects
    fit_ids, _ = stats.explore_confirm(scores.pair_id.tolist(), seed=cfg.seed)
    gain = scores.set_index("pair_id").gain.reindex(fit_ids)
    rule = RULE_SCALE if cfg.steer_layer is not None else RULE_SCAN
    grid, by_layer = [], []
    for layer in sorted({int(x) for x in rows.layer}) if len(rows) else []:
        at = rows[rows.layer == layer]
        cells = []
        for a in sorted({float(x) for x in at[at.experiment == SCAN].param}):
            values = _per_pair(at, SCAN, "fit", a)
            cells.append(
                {"layer": layer, "scale": a}
                | _mean_ci(values, cfg)
                | {"recovered_fraction": _fraction(values, gain, cfg)}
            )
        grid += cells
        entry: dict[str, Any] = {"layer": layer, "by_scale": cells}
        for key, name in (("v", SCAN), ("random", SCAN_RANDOM)):
            values = _per_pair(at, name, "fit", 1.0)
            entry[key] = _mean_ci(values, cfg) | {"recovered_fraction": _fraction(values, gain, cfg)}
        by_layer.append(entry)
    chosen = None
    if grid:
        best = grid[_cell_index([c["mean"] for c in grid], float(gain.mean()), cfg.seed)]
        chosen = {"layer": int(best["layer"]), "scale": float(best["scale"])}
    return {
        "rule": rule,
        "split": "fit",
        "scales": sorted({c["scale"] for c in grid}),
        "grid": grid,
        "by_layer": by_layer,
        "fit_gain": _mean_ci(gain, cfg) if len(gain) else None,
        "chosen": chosen,
        "chosen_layer": None if chosen is None else chosen["layer"],
        "chosen_scale": None if chosen is None else chosen["scale"],
    }


def summarize_scan(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer_scan": {rule, split, scales, grid, by_layer, fit_gain, chosen, chosen_layer, chosen_scale}}``."""
    return {SCAN: scan_landscape(tables.effects, tables.scores, tables.cfg)}


def summarize_steering(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer": {layer, scale, layer_rule, by_c, recovered_fraction, excess_over_random, null, selection,
    baselines, variants, per_token, reverse, kl, gain, layer_choice, fit, [transfer]}, "steer_scan": …}`` (the
    scan's entry, :func:`scan_landscape`, when it ran)."""
    cfg, effects, scores = tables.cfg, tables.effects, tables.scores
    record = tables.fits["steer"]
    scales = [float(a) for a in record.get("scales", record.get("cs"))]
    layer, scale = int(record["layer"]), float(record.get("scale", 1.0))
    fit_ids, held = stats.explore_confirm(scores.pair_id.tolist(), seed=cfg.seed)
    by_pair = scores.set_index("pair_id")
    gain, gain_pt = by_pair.gain.reindex(held), by_pair.gain_per_token.reindex(held)
    rule = record.get("layer_rule")
    scan = scan_landscape(effects, scores, cfg)
    main = _curve(effects, MAIN, "heldout", scales, gain, cfg, at=scale)
    v_held = _per_pair(effects, MAIN, "heldout", scale)
    null, null_by_pair = null_summary(effects, v_held, gain, cfg, layer=layer, scale=scale)
    in_sample = _per_pair(effects[effects.layer == layer] if len(effects) else effects, SCAN, "fit", scale)
    selection = stats.selection_record(
        fit_ids,
        held,
        {"layer": layer, "scale": scale},
        v_held.to_numpy(),
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        in_sample=in_sample.to_numpy() if len(in_sample) else None,
    ) | {"rule": rule}
    excess = (v_held - null_by_pair.reindex(v_held.index)).dropna() if len(null_by_pair) else pd.Series(dtype=float)
    out: dict[str, Any] = {
        "layer": layer,
        "scale": scale,
        "layer_rule": rule,
        **main,
        "excess_over_random": _fraction(excess, gain, cfg),
        "null": null,
        "selection": selection,
        "baselines": {
            key: _curve(effects, name, "heldout", scales, gain, cfg, at=scale) for key, name in BASELINES.items()
        },
        "variants": {
            cls: {
                "by_c": [{"c": scale} | _mean_ci(_per_pair(effects, name, "heldout", scale), cfg)],
                "recovered_fraction": _fraction(_per_pair(effects, name, "heldout", scale), gain, cfg),
            }
            for cls, name in CLASS_ONLY.items()
        },
        "per_token": {
            key: _fraction(_per_token_effect(effects, name, "heldout", scale, scores), gain_pt, cfg)
            for key, name in (("v", MAIN), ("random", RANDOM))
        }
        | {"gain": _mean_ci(gain_pt, cfg)},
        "reverse": _curve(effects, REVERSE, "heldout", scales, gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0)
        | {
            "random": _curve(
                effects, REVERSE_RANDOM, "heldout", scales, gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0
            )
        },
        "kl": kl_summary(record, cfg),
        "gain": _mean_ci(gain, cfg),
        "layer_choice": scan | {"rule": rule, "layer": layer, "scale": scale, "e1_layer": record.get("e1_layer")},
        "fit": {
            key: record.get(key)
            for key in (
                "hook",
                "scope",
                "first_k",
                "classes",
                "k",
                "centre",
                "norm",
                "mean_shift_norm",
                "positions",
                "pooled_norm",
                "lowrank_kept",
                "cosine_by_class",
                "fit_pairs",
                "heldout_pairs",
                "n_null",
            )
        },
    }
    if record.get("transfer_pairs"):
        base = _per_pair(effects, MAIN, TRANSFER, scale, "clean_delta_logp")
        tuned = _per_pair(effects, REVERSE, TRANSFER, scale, "clean_delta_logp")
        t_gain = (tuned - base.reindex(tuned.index)).sort_index()
        fwd, rnd = _per_pair(effects, MAIN, TRANSFER, scale), _per_pair(effects, RANDOM, TRANSFER, scale)
        out["transfer"] = _curve(effects, MAIN, TRANSFER, scales, t_gain, cfg, at=scale) | {
            "random": _curve(effects, RANDOM, TRANSFER, scales, t_gain, cfg, at=scale),
            "excess_over_random": _fraction((fwd - rnd.reindex(fwd.index)).dropna(), t_gain, cfg),
            "reverse": _curve(
                effects, REVERSE, TRANSFER, scales, t_gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0
            ),
            "gain": _mean_ci(t_gain, cfg),
            "n_pairs": int(record["transfer_pairs"]),
        }
        # transfer − held-out recovered fraction at the chosen scale (two independent pair sets)
        out["transfer"]["vs_heldout"] = ratio_difference(
            fwd.to_numpy(),
            t_gain.reindex(fwd.index).to_numpy(),
            v_held.to_numpy(),
            gain.reindex(v_held.index).to_numpy(),
            seed=cfg.seed,
            n_boot=cfg.n_boot,
        )
    # the scan ran for steer (it chose the layer and scale): its own entry too, as if named
    return {MAIN: out} | ({SCAN: scan} if scan["grid"] else {})

"""Shared by the per-layer experiments: which rows of the effects table an experiment's summary reads,
and the standard per-layer summary of them (a pure function of the table)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from alignment_probe import stats
from alignment_probe.experiments import heldout

if TYPE_CHECKING:  # types only (below the experiments)
    from alignment_probe.engine.spec import PatchSpec
    from alignment_probe.experiments.registry import Plan


def default_rows(effects: pd.DataFrame, experiment: str, cfg: Any) -> pd.DataFrame:
    """``experiment``'s rows at the run's default hook and scope (vector variants: the completion scope)."""
    rows = effects[(effects.experiment == experiment) & (effects.hook == cfg.hook) & (effects.split == "all")]
    if experiment.startswith("vector_"):
        return rows[rows.scope == "completion"]
    return rows[rows.scope == cfg.scope]


def summarize_per_layer(tables: Any) -> dict[str, dict[str, Any]]:
    """Per selected name: :func:`per_layer_entry` of its rows at the run's default hook and scope."""
    cfg = tables.cfg
    return {name: per_layer_entry(default_rows(tables.effects, name, cfg), tables) for name in tables.selected}


def per_layer_entry(rows: pd.DataFrame, tables: Any) -> dict[str, Any]:
    """statistics.md's per-layer summary: means with CIs, peak and onset (with CIs), the peak set, the peak chosen
    on the explore pairs and reported on the confirm pairs (``selection``); max-|t| bands over the layers
    (``band_low``/``band_high`` per layer, ``map``: {m, critical, rule}) for claims about the largest layer; the
    same per completion token (``per_token``, when the scores give the completion lengths) and ``basis``: which
    of the two the headline numbers are ("sum")."""
    cfg = tables.cfg
    entry = stats.summarize_experiment(rows, seed=cfg.seed, n_boot=cfg.n_boot)
    entry["map"] = heldout.banded(rows, ("layer",), entry["per_layer"], ("layer",), cfg)
    per_token = heldout.per_token_summary(rows, getattr(tables, "scores", None), cfg)
    if per_token is not None:
        entry["per_token"] = per_token
    entry["basis"] = "sum"
    entry["basis_note"] = heldout.BASIS_NOTE
    return entry


def swept_only(plan: Plan, specs: list[PatchSpec]) -> list[PatchSpec]:
    """Keep each experiment's conditions at the layers it sweeps (``--layers``, and a preset's coarse grid:
    ``SuiteConfig.layers_for``). Conditions are built for every layer and then filtered (random controls are
    seeded per layer), so a row of a subset run equals the same row of a full sweep."""
    keep: dict[str, set[int]] = {}
    for s in specs:
        if s.key.experiment not in keep:
            keep[s.key.experiment] = set(plan.cfg.layers_for(s.key.experiment, plan.n_layers))
    return [s for s in specs if s.key.layer in keep[s.key.experiment]]

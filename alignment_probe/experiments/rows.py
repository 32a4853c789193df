"""Shared by the per-layer experiments: which rows of the effects table an experiment's summary reads,
and the standard per-layer summary of them (a pure function of the table)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from alignment_probe import stats


def default_rows(effects: pd.DataFrame, experiment: str, cfg: Any) -> pd.DataFrame:
    """``experiment``'s rows at the run's default hook and scope (vector variants: the completion scope)."""
    rows = effects[(effects.experiment == experiment) & (effects.hook == cfg.hook) & (effects.split == "all")]
    if experiment.startswith("vector_"):
        return rows[rows.scope == "completion"]
    return rows[rows.scope == cfg.scope]


def summarize_per_layer(tables: Any) -> dict[str, dict[str, Any]]:
    """Per-layer means with CIs, peak and onset (with CIs) and the held-out peak, per selected name."""
    cfg = tables.cfg
    return {name: stats.summarize_experiment(default_rows(tables.effects, name, cfg), seed=cfg.seed, n_boot=cfg.n_boot)
            for name in tables.selected}


def swept_only(plan: Any, specs: list[Any]) -> list[Any]:
    """Keep the conditions at the swept layers (``--layers``). Conditions are built for every layer and
    then filtered (random controls are seeded per layer), so a row of a subset run equals the same row
    of a full sweep."""
    keep = set(plan.cfg.swept_layers(plan.n_layers))
    return [s for s in specs if s.key.layer in keep]

"""Any slice of the effects table as per-layer curves, and one figure of them.

A *condition* is one value of each of the table's condition columns (experiment, target, source,
hook, scope, sides, param, split). :func:`curves` gives, per condition and layer, the mean effect over
pairs with its seeded bootstrap CI (the same numbers the summary reports for the run's default
condition); :func:`plot` draws one line with a CI band per condition, so several hooks, scopes or α
values share one figure. Both read only the effects table.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.experiments.registry import color, label

CONDITION = ["experiment", "target", "source", "hook", "scope", "sides", "param", "split"]
CURVE_COLUMNS = [
    "experiment",
    "hook",
    "scope",
    "param",
    "layer",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "target",
    "source",
    "sides",
    "split",
]


def select(effects: pd.DataFrame, **where: Any) -> pd.DataFrame:
    """Rows whose columns take the given value (or any of a list of values): ``select(eff, hook="mlp_out")``."""
    unknown = sorted(set(where) - set(effects.columns))
    if unknown:
        raise KeyError(f"the effects table has no column(s) {unknown}; its columns are {list(effects.columns)}")
    mask = pd.Series(True, index=effects.index)
    for column, value in where.items():
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        mask &= effects[column].isin(list(values))
    return effects[mask]


def curves(effects: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95) -> pd.DataFrame:
    """One row per (condition, layer): ``experiment, hook, scope, param, layer, mean, ci_low, ci_high, n``
    (then target, source, sides, split). CIs resample pairs jointly across a condition's layers."""
    rows = []
    if len(effects):
        for key, group in effects.groupby(CONDITION, sort=True, dropna=False):
            condition = dict(zip(CONDITION, key))
            for r in stats.per_layer_summary(group, seed=seed, n_boot=n_boot, level=level):
                rows.append(condition | r)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def condition_label(row: Any, varying: list[str]) -> str:
    """A curve's legend entry: the experiment's registered label, then what else varies between curves."""
    parts = [label(row["experiment"])]
    for column in varying:
        if column in ("experiment", "target", "source"):  # implied by the experiment
            continue
        value = row[column]
        if column == "param":
            if pd.notna(value):
                parts.append(f"param {value:g}")
        else:
            parts.append(str(value))
    return " · ".join(parts)


def plot(
    effects_or_curves: pd.DataFrame, *, title: str = "Per-layer effect by condition", seed: int = 0, n_boot: int = 2000
) -> Any:
    """A plotly Figure with one line (and its 95% CI band) per condition of an effects table (or of
    :func:`curves`' output)."""
    import plotly.graph_objects as go

    frame = effects_or_curves
    if "mean" not in frame.columns:
        frame = curves(frame, seed=seed, n_boot=n_boot)
    if frame.empty:
        raise ValueError("nothing to plot: the slice of the effects table is empty")
    varying = [c for c in CONDITION if frame[c].nunique(dropna=False) > 1]
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    groups = list(frame.groupby(CONDITION, sort=False, dropna=False))
    # An experiment's own colour only when it is drawn once; otherwise one palette colour per curve.
    own_colours = len({dict(zip(CONDITION, k))["experiment"] for k, _ in groups}) == len(groups)
    for i, (key, group) in enumerate(groups):
        row = dict(zip(CONDITION, key))
        c = (color(row["experiment"]) if own_colours else None) or palette[i % len(palette)]
        P.add_curve(fig, group.sort_values("layer"), name=condition_label(row, varying), color=c, group=str(key))
    P.zero_line(fig)
    P.layer_ticks(fig, frame["layer"].tolist())
    return P.layout(fig, title)

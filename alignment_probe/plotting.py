"""Plotting primitives and summary readers, below the experiments and the report (no experiment knowledge).

Experiments draw their own figures with these; :mod:`alignment_probe.report.figures` draws the paper's with the
same ones. Per-layer numbers are drawn as the mean with its 95% bootstrap CI as a shaded band; effects are in nats
of Δlogp. A figure whose inputs are all missing raises :class:`MissingExperimentError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from alignment_probe.formatting import num

EFFECT_AXIS = "Δlogp effect (nats)"
LAYER_AXIS = "layer"
HEIGHT = 460

# the two directions of the whole-layer patch (experiment names every figure of a direction reads)
MAIN = "patch_tuned_to_base"
REVERSE = "patch_base_to_tuned"


class MissingExperimentError(LookupError):
    """None of the experiments a figure needs is in the summary (they were not run)."""

    def __init__(self, figure: str, missing: Iterable[str]):
        self.figure = figure
        self.missing = tuple(missing)
        super().__init__(f"{figure}: not run: {', '.join(self.missing)}")


# --------------------------------------------------------------------------------------------------
# reading the summary


def experiment(summary: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The summary entry of experiment ``name``, or None when it was not run (absent or empty)."""
    entry = (summary.get("experiments") or {}).get(name)
    if not entry or not isinstance(entry, Mapping):
        return None
    return dict(entry)


def has_per_layer(summary: Mapping[str, Any], name: str) -> bool:
    entry = experiment(summary, name)
    return bool(entry and entry.get("per_layer"))


def per_layer_frame(rows: Sequence[Mapping[str, Any]] | None) -> pd.DataFrame:
    """``[{"layer","mean","ci_low","ci_high"}, ...]`` → a frame sorted by layer (NaN for missing CIs)."""
    frame = pd.DataFrame(
        [
            {
                "layer": int(r["layer"]),
                "mean": num(r.get("mean")),
                "ci_low": num(r.get("ci_low")),
                "ci_high": num(r.get("ci_high")),
            }
            for r in (rows or [])
        ],
        columns=["layer", "mean", "ci_low", "ci_high"],
    )
    return frame.sort_values("layer", kind="stable").reset_index(drop=True)


def n_layers(summary: Mapping[str, Any]) -> int | None:
    """Number of layers: ``summary["n_layers"]``, else one more than the largest layer seen."""
    if summary.get("n_layers"):
        return int(summary["n_layers"])
    seen: list[int] = []
    for entry in (summary.get("experiments") or {}).values():
        if isinstance(entry, Mapping):
            seen += [int(r["layer"]) for r in entry.get("per_layer") or [] if "layer" in r]
            seen += [int(v) for v in entry.get("layers") or []]
            if entry.get("coefficients"):
                seen.append(len(entry["coefficients"]) - 1)
    return max(seen) + 1 if seen else None


def ci_pair(ci: Any) -> tuple[float, float]:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return num(ci[0]), num(ci[1])
    return math.nan, math.nan


# --------------------------------------------------------------------------------------------------
# drawing helpers


def rgba(hex_color: str, alpha: float) -> str:
    if hex_color.startswith("rgb"):
        nums = hex_color[hex_color.index("(") + 1 : hex_color.index(")")].split(",")[:3]
        return f"rgba({','.join(n.strip() for n in nums)},{alpha})"
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def band(
    x: Sequence[float],
    lo: Sequence[float],
    hi: Sequence[float],
    *,
    name: str,
    color: str,
    group: str,
    opacity: float = 0.2,
) -> go.Scatter | None:
    """A shaded CI band: one closed polygon (upper edge forward, lower edge back)."""
    x, lo, hi = np.asarray(x, float), np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return None
    x, lo, hi = x[ok], lo[ok], hi[ok]
    return go.Scatter(
        x=np.concatenate([x, x[::-1]]),
        y=np.concatenate([hi, lo[::-1]]),
        mode="lines",
        fill="toself",
        fillcolor=rgba(color, opacity),
        line={"width": 0, "color": rgba(color, 0)},
        hoverinfo="skip",
        name=f"{name} (95% CI)",
        legendgroup=group,
        showlegend=False,
    )


def mean_trace(
    frame: pd.DataFrame,
    *,
    name: str,
    color: str,
    group: str,
    x: str = "layer",
    x_label: str = "Layer",
    dash: str | None = None,
) -> go.Scatter:
    custom = frame[["ci_low", "ci_high"]].to_numpy()
    return go.Scatter(
        x=frame[x].tolist(),
        y=frame["mean"].tolist(),
        mode="lines+markers",
        name=name,
        legendgroup=group,
        line={"color": color, "width": 2, "dash": dash},
        marker={"size": 6},
        customdata=custom,
        hovertemplate=(
            f"<b>{name}</b><br>{x_label} %{{x}}<br>effect %{{y:.4g}} nats"
            "<br>95% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>"
        ),
    )


def add_curve(
    fig: go.Figure,
    frame: pd.DataFrame,
    *,
    name: str,
    color: str,
    group: str | None = None,
    row: int | None = None,
    col: int | None = None,
    x: str = "layer",
    x_label: str = "Layer",
    dash: str | None = None,
    band_opacity: float = 0.2,
) -> None:
    group = group or name
    where = {"row": row, "col": col} if row is not None else {}
    shade = band(frame[x], frame["ci_low"], frame["ci_high"], name=name, color=color, group=group, opacity=band_opacity)
    if shade is not None:
        fig.add_trace(shade, **where)
    fig.add_trace(mean_trace(frame, name=name, color=color, group=group, x=x, x_label=x_label, dash=dash), **where)


def value_at(frame: pd.DataFrame, layer: int) -> float:
    hit = frame.loc[frame["layer"] == layer, "mean"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def add_layer_marker(
    fig: go.Figure,
    entry: Mapping[str, Any],
    frame: pd.DataFrame,
    *,
    which: str,
    name: str,
    color: str,
    group: str,
    row: int | None = None,
    col: int | None = None,
) -> None:
    """A marker at the ``peak``/``onset`` layer, with its bootstrap CI as a horizontal error bar."""
    layer = entry.get(f"{which}_layer")
    if layer is None or (isinstance(layer, float) and math.isnan(layer)):
        return
    layer = int(layer)
    y = value_at(frame, layer)
    lo, hi = ci_pair(entry.get(f"{which}_layer_ci"))
    error_x = None
    ci_text = ""
    if math.isfinite(lo) and math.isfinite(hi):
        error_x = {
            "type": "data",
            "symmetric": False,
            "array": [max(hi - layer, 0)],
            "arrayminus": [max(layer - lo, 0)],
            "color": color,
            "thickness": 1.5,
            "width": 6,
        }
        ci_text = f"<br>95% CI layers [{lo:g}, {hi:g}]"
    symbol = "star" if which == "peak" else "diamond"
    where = {"row": row, "col": col} if row is not None else {}
    fig.add_trace(
        go.Scatter(
            x=[layer],
            y=[y],
            mode="markers",
            name=f"{name} {which}",
            legendgroup=group,
            marker={
                "symbol": symbol,
                "size": 15 if which == "peak" else 12,
                "color": color,
                "line": {"width": 1.5, "color": "white"},
            },
            error_x=error_x,
            hovertemplate=f"<b>{name} {which}</b><br>layer {layer}<br>effect %{{y:.4g}} nats{ci_text}<extra></extra>",
        ),
        **where,
    )


def add_peak_set(
    fig: go.Figure,
    entry: Mapping[str, Any],
    frame: pd.DataFrame,
    *,
    name: str,
    color: str,
    group: str,
    row: int | None = None,
    col: int | None = None,
) -> None:
    """Open rings on the layers of the peak set (every layer not significantly below the maximum), when the
    summary has one: the peak is a set, the argmax (★) only one of its members."""
    members = entry.get("peak_set")
    if not members:
        return
    layers = [int(v) for v in members]
    swept = entry.get("layers_swept")
    where = {"row": row, "col": col} if row is not None else {}
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[value_at(frame, v) for v in layers],
            mode="markers",
            name=f"{name} peak set",
            legendgroup=group,
            marker={"symbol": "circle-open", "size": 17, "color": color, "line": {"width": 2}},
            hovertemplate=(
                f"<b>{name} peak set</b> ({len(layers)} layer{'s' if len(layers) != 1 else ''}"
                + (f" of {swept} swept" if swept else "")
                + ")<br>layer %{x}<br>effect %{y:.4g} nats"
                "<extra></extra>"
            ),
        ),
        **where,
    )


def layer_ticks(fig: go.Figure, layers: Iterable[int], **where: Any) -> None:
    layers = sorted({int(v) for v in layers})
    if not layers:
        return
    step = max(1, math.ceil(len(range(layers[0], layers[-1] + 1)) / 24))
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=step, tickformat="d", **where)


def zero_line(fig: go.Figure, **where: Any) -> None:
    fig.add_hline(y=0, line={"dash": "dash", "color": "#444", "width": 1}, **where)


def note_missing(fig: go.Figure, missing: Sequence[str]) -> None:
    if missing:
        fig.add_annotation(
            text="not run: " + ", ".join(missing),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.2,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            font={"size": 11, "color": "#a33"},
        )


def layout(
    fig: go.Figure,
    title: str,
    *,
    height: int = HEIGHT,
    x_title: str | None = LAYER_AXIS,
    y_title: str | None = EFFECT_AXIS,
) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        height=height,
        hovermode="closest",
        margin={"l": 70, "r": 30, "t": 70, "b": 90},
        legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1},
    )
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


def lowrank_frame(entry: Mapping[str, Any]) -> pd.DataFrame:
    """``lowrank_*`` summary → frame (layer, k, effect_ratio, ci_low, ci_high, variance_explained, heldout)."""
    rows = []
    for r in entry.get("by_k") or []:
        lo, hi = ci_pair(r.get("effect_ratio_ci"))
        rows.append(
            {
                "layer": int(r["layer"]),
                "k": int(r["k"]),
                "effect_ratio": num(r.get("effect_ratio")),
                "ci_low": lo,
                "ci_high": hi,
                "variance_explained": num(r.get("variance_explained")),
                "heldout_effect_ratio": num(r.get("heldout_effect_ratio")),
            }
        )
    cols = ["layer", "k", "effect_ratio", "ci_low", "ci_high", "variance_explained", "heldout_effect_ratio"]
    return pd.DataFrame(rows, columns=cols).sort_values(["layer", "k"], kind="stable").reset_index(drop=True)


def gain_histogram(scores: pd.DataFrame | None, *, nbins: int | None = None) -> go.Figure:
    """Distribution of the per-pair gain Δlogp_tuned − Δlogp_base, with its mean and 0 marked."""
    if scores is None or len(scores) == 0:
        raise MissingExperimentError("gain_histogram", ["per-pair scores"])
    if "gain" in scores:
        gain = pd.to_numeric(scores["gain"], errors="coerce")
    elif {"base_delta_logp", "tuned_delta_logp"} <= set(scores.columns):
        gain = scores["tuned_delta_logp"] - scores["base_delta_logp"]
    else:
        raise MissingExperimentError("gain_histogram", ["gain column"])
    gain = gain.dropna()
    if gain.empty:
        raise MissingExperimentError("gain_histogram", ["finite gains"])
    fig = go.Figure(
        go.Histogram(
            x=gain.tolist(),
            nbinsx=nbins or min(60, max(10, int(math.sqrt(len(gain))) * 2)),
            name="pairs",
            marker={"color": "#1f77b4", "line": {"color": "white", "width": 0.5}},
            hovertemplate="gain %{x}<br>%{y} pairs<extra></extra>",
        )
    )
    fig.add_vline(x=0, line={"dash": "dash", "color": "#444", "width": 1})
    mean = float(gain.mean())
    fig.add_vline(
        x=mean,
        line={"color": "#d62728", "width": 2},
        annotation_text=f"mean {mean:+.3g} nats",
        annotation_position="top right",
    )
    frac = float((gain > 0).mean())
    return layout(
        fig,
        f"Per-pair gain (n = {len(gain)}; {frac:.0%} of pairs > 0)",
        x_title="gain = Δlogp_tuned − Δlogp_base (nats)",
        y_title="pairs",
    )

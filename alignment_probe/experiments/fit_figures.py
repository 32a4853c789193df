"""The figures of the experiments that fit on all pairs: E6's low rank (Fig. 4, Table 2) and E2's LASSO
(Fig. 2, Table 1), drawn from a run's summary like the rest of the paper's figures (:mod:`.figures`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from alignment_probe import plotting as P
from alignment_probe.experiments.figures import _color
from alignment_probe.vocab import LOWRANK_MODES

# The paper's reference values (Llama-3.2-1B, 16 layers), drawn as grey markers for comparison.
PAPER_LOWRANK = {"k": 4, "effect_ratio": 0.986, "variance_explained": 0.15, "layer": 9}


def lowrank(summary: Mapping[str, Any], *, show_paper: bool = True) -> go.Figure:
    """Paper Fig. 4 / Table 2 (method E6): per mode present (``reconstruct`` = the paper's literal reading,
    ``difference`` = patch h_base + P_k(h_tuned − h_base)), the effect ratio (low-rank / full effect) vs k on a
    log2 axis with CI band and the held-out ratio (dotted), and the variance explained vs k. Grey ✕: the
    paper's value (k = 4: ratio 0.986, ≈15% variance, layer 9 of Llama-3.2-1B)."""
    modes = [(name, P.lowrank_frame(P.experiment(summary, name) or {})) for name in LOWRANK_MODES]
    modes = [(name, frame) for name, frame in modes if not frame.empty]
    if not modes:
        raise P.MissingExperimentError("lowrank", list(LOWRANK_MODES))
    titles = []
    for name, _ in modes:
        titles += [f"{LOWRANK_MODES[name]}: effect ratio", f"{LOWRANK_MODES[name]}: variance explained"]
    fig = make_subplots(
        rows=len(modes),
        cols=2,
        subplot_titles=titles,
        horizontal_spacing=0.12,
        vertical_spacing=0.18 if len(modes) > 1 else 0.1,
    )
    all_k: set[int] = set()
    for row, (name, frame) in enumerate(modes, start=1):
        layers = sorted(frame["layer"].unique().tolist())
        base_color = _color(name)
        colors = (
            [base_color]
            if len(layers) == 1
            else sample_colorscale("Viridis", [i / (len(layers) - 1) * 0.9 for i in range(len(layers))])
        )
        for layer, color in zip(layers, colors):
            sub = frame[frame["layer"] == layer]
            all_k |= set(sub["k"].tolist())
            label = f"{LOWRANK_MODES[name]}, layer {layer}"
            group = f"{name}-{layer}"
            curve = sub.rename(columns={"effect_ratio": "mean"})
            band = P.band(curve["k"], curve["ci_low"], curve["ci_high"], name=label, color=color, group=group)
            if band is not None:
                fig.add_trace(band, row=row, col=1)
            fig.add_trace(
                go.Scatter(
                    x=curve["k"].tolist(),
                    y=curve["mean"].tolist(),
                    mode="lines+markers",
                    name=label,
                    legendgroup=group,
                    line={"color": color, "width": 2},
                    customdata=curve[["ci_low", "ci_high", "variance_explained"]].to_numpy(),
                    hovertemplate=(
                        f"<b>{label}</b><br>k = %{{x}}<br>effect ratio %{{y:.3f}}"
                        "<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                        "<br>variance explained %{customdata[2]:.1%}<extra></extra>"
                    ),
                ),
                row=row,
                col=1,
            )
            if sub["heldout_effect_ratio"].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=sub["k"].tolist(),
                        y=sub["heldout_effect_ratio"].tolist(),
                        mode="lines+markers",
                        name=f"{label} (held-out)",
                        legendgroup=group,
                        line={"color": color, "width": 1.5, "dash": "dot"},
                        marker={"symbol": "circle-open", "size": 7},
                        hovertemplate=(
                            f"<b>{label}, held-out</b><br>k = %{{x}}<br>effect ratio %{{y:.3f}}<extra></extra>"
                        ),
                    ),
                    row=row,
                    col=1,
                )
            fig.add_trace(
                go.Scatter(
                    x=sub["k"].tolist(),
                    y=sub["variance_explained"].tolist(),
                    mode="lines+markers",
                    name=f"{label}: variance explained",
                    legendgroup=group,
                    showlegend=False,
                    line={"color": color, "width": 2},
                    hovertemplate=(f"<b>{label}</b><br>k = %{{x}}<br>variance explained %{{y:.1%}}<extra></extra>"),
                ),
                row=row,
                col=2,
            )
        fig.add_hline(y=1, line={"dash": "dash", "color": "#444", "width": 1}, row=row, col=1)
        if show_paper:
            p = PAPER_LOWRANK
            for col, key in ((1, "effect_ratio"), (2, "variance_explained")):
                fig.add_trace(
                    go.Scatter(
                        x=[p["k"]],
                        y=[p[key]],
                        mode="markers",
                        name="paper (k = 4, layer 9)",
                        legendgroup="paper",
                        showlegend=(row == 1 and col == 1),
                        marker={"symbol": "x", "size": 11, "color": "#777"},
                        hovertemplate=f"<b>paper</b><br>k = 4<br>{key.replace('_', ' ')} {p[key]:g}<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
        fig.update_yaxes(title_text="effect ratio (low-rank / full)", row=row, col=1)
        fig.update_yaxes(title_text="variance explained", tickformat=".0%", rangemode="tozero", row=row, col=2)
    ks = sorted(all_k | ({PAPER_LOWRANK["k"]} if show_paper else set()))
    fig.update_xaxes(
        type="log", tickmode="array", tickvals=ks, ticktext=[str(k) for k in ks], title_text="k (rank, log₂ scale)"
    )
    return P.layout(
        fig,
        "Low-rank patching: effect ratio and variance explained vs k (Fig. 4)",
        height=P.HEIGHT if len(modes) == 1 else 2 * P.HEIGHT - 60,
        x_title=None,
        y_title=None,
    )


def lasso_coefficients(summary: Mapping[str, Any]) -> go.Figure:
    """Paper Fig. 2 / Table 1 (method E2): LASSO coefficient per layer (bars; features are z-scored
    ‖h_tuned − h_base‖₂ per layer, target the centred gain in nats), with the bootstrap selection frequency
    and the per-layer probe R² on a second axis."""
    entry = P.experiment(summary, "lasso")
    coefs = [P.num(c) for c in (entry or {}).get("coefficients") or []]
    if not coefs:
        raise P.MissingExperimentError("lasso_coefficients", ["lasso"])
    layers = list(range(len(coefs)))
    nonzero = {int(v) for v in entry.get("nonzero_layers") or [i for i, c in enumerate(coefs) if c != 0]}
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Bar(
            x=layers,
            y=coefs,
            name="LASSO coefficient",
            marker={"color": ["#1f77b4" if i in nonzero else "#c7c7c7" for i in layers]},
            hovertemplate="<b>LASSO</b><br>layer %{x}<br>coefficient %{y:.4g}<extra></extra>",
        ),
        secondary_y=False,
    )
    for key, name, color, symbol in (
        ("selection_frequency", "selection frequency", "#ff7f0e", "circle"),
        ("probe_r2", "probe R² (CV)", "#2ca02c", "square"),
    ):
        values = [P.num(v) for v in entry.get(key) or []]
        if values:
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(values))),
                    y=values,
                    mode="lines+markers",
                    name=name,
                    line={"color": color, "width": 1.5},
                    marker={"symbol": symbol, "size": 7},
                    hovertemplate=f"<b>{name}</b><br>layer %{{x}}<br>%{{y:.3f}}<extra></extra>",
                ),
                secondary_y=True,
            )
    alpha = P.num(entry.get("alpha_"))
    title = "LASSO: activation distance → gain, coefficient per layer (Fig. 2)"
    if math.isfinite(alpha):
        title += f"  ·  α* = {alpha:.3g}"
    P.zero_line(fig)
    P.layer_ticks(fig, layers)
    fig.update_yaxes(title_text="coefficient (nats of gain per SD of ‖Δh‖)", secondary_y=False)
    fig.update_yaxes(title_text="selection frequency / probe R²", secondary_y=True, showgrid=False)
    return P.layout(fig, title, y_title=None)

"""E11's figures, drawn from the summary: the dose curves on the held-out half and the scan on the fit half."""

from __future__ import annotations

import math
from typing import Any, Mapping

from alignment_probe import plotting as P
from alignment_probe.experiments.steering.common import (
    BASELINES,
    CLASS_ONLY,
    COLORS,
    LABELS,
    MAIN,
    NULL,
    POOLED,
    REVERSE,
    REVERSE_RANDOM,
    SCAN,
    SCAN_RANDOM,
)

# --------------------------------------------------------------------------------------------------
# the figures and the verdicts (drawn from the summary)


def figure(summary: Mapping[str, Any]) -> Any:
    """Dose curves (effect vs a, 95% CI bands) of v_ℓ,c, the baselines and the reverse on the held-out half; at the
    chosen a the null (5–95 % of its draws' mean effects) and the class parts; the held-out gain dotted."""
    import plotly.graph_objects as go

    entry = P.experiment(summary, MAIN)
    if not entry or not entry.get("by_c"):
        raise P.MissingExperimentError("steer", [MAIN])
    rev = entry.get("reverse") or {}
    curves = [(MAIN, entry)] + [(BASELINES[k], v) for k, v in (entry.get("baselines") or {}).items()]
    curves += [(REVERSE, rev), (REVERSE_RANDOM, rev.get("random") or {})]
    fig = go.Figure()
    for name, data in curves:
        rows = data.get("by_c") or []
        if not rows:
            continue
        x = [float(r["c"]) for r in rows]
        color, label = COLORS[name], LABELS[name]
        band = P.band(
            x,
            [P.num(r.get("ci_low")) for r in rows],
            [P.num(r.get("ci_high")) for r in rows],
            name=label,
            color=color,
            group=name,
        )
        if band is not None:
            fig.add_trace(band)
        dash = "dash" if name in (REVERSE, REVERSE_RANDOM) else "dot" if name == POOLED else "solid"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[P.num(r.get("mean")) for r in rows],
                mode="lines+markers",
                name=label,
                legendgroup=name,
                line={"color": color, "width": 2, "dash": dash},
                hovertemplate=f"<b>{label}</b><br>a = %{{x}}<br>effect %{{y:.3f}} nats<extra></extra>",
            )
        )
    scale = P.num(entry.get("scale"))
    null = entry.get("null") or {}
    q = null.get("quantiles") or {}
    if null.get("n") and math.isfinite(scale):
        mid, lo, hi = (P.num(q.get(k)) for k in ("0.5", "0.05", "0.95"))
        fig.add_trace(
            go.Scatter(
                x=[scale],
                y=[mid],
                mode="markers",
                name=f"{LABELS[NULL]} (n = {null['n']}, 5–95 %)",
                marker={"color": COLORS[NULL], "size": 10, "symbol": "diamond"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [hi - mid],
                    "arrayminus": [mid - lo],
                    "color": COLORS[NULL],
                },
            )
        )
    for cls, name in CLASS_ONLY.items():
        rows = ((entry.get("variants") or {}).get(cls) or {}).get("by_c") or []
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[float(rows[0]["c"])],
                    y=[P.num(rows[0].get("mean"))],
                    mode="markers",
                    name=LABELS[name],
                    marker={"color": COLORS[name], "size": 9, "symbol": "x"},
                )
            )
    gain = P.num((entry.get("gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line={"dash": "dot", "color": "#444", "width": 1.5},
            annotation_text=f"held-out gain {gain:+.3f}",
            annotation_position="top left",
        )
        fig.add_hline(y=-gain, line={"dash": "dot", "color": "#9467bd", "width": 1})
    fig.add_hline(y=0, line={"color": "#bbb", "width": 1})
    fig.update_layout(
        title=f"Steering at layer {entry.get('layer')}, chosen a = {entry.get('scale')} (held-out pairs)",
        height=P.HEIGHT,
        xaxis_title="a (multiples of the per-class mean shift v_ℓ,c)",
        yaxis_title="effect on Δlogp (nats)",
        template="plotly_white",
    )
    return fig


def scan_figure(summary: Mapping[str, Any]) -> Any:
    """The scan on the fit half: per layer, the mean effect (95% CI) of v_ℓ,c at every scale and of the random
    direction at a = 1; the chosen (ℓ, a) and E1's fit-half peak marked."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    entry = P.experiment(summary, MAIN)
    choice = (entry or {}).get("layer_choice") or {}
    rows = choice.get("by_layer") or []
    if not rows:
        raise P.MissingExperimentError("steer_layers", [f"{SCAN} (the layer and scale were given: --steer-layer)"])
    fig = go.Figure()
    scales = choice.get("scales") or []
    colors = sample_colorscale("Reds", [0.4 + 0.6 * i / max(len(scales) - 1, 1) for i in range(len(scales))])
    for a, color in zip(scales, colors):
        cells = [
            {"layer": c["layer"], **{k: c[k] for k in ("mean", "ci_low", "ci_high", "n")}}
            for r in rows
            for c in r.get("by_scale") or []
            if abs(float(c["scale"]) - float(a)) < 1e-12
        ]
        if cells:
            P.add_curve(
                fig, P.per_layer_frame(cells), name=f"{LABELS[SCAN]}, a = {a:g}", color=color, group=f"{SCAN}-{a:g}"
            )
    frame = P.per_layer_frame([{"layer": r["layer"], **r["random"]} for r in rows])
    P.add_curve(fig, frame, name=LABELS[SCAN_RANDOM], color=COLORS[SCAN_RANDOM], group=SCAN_RANDOM)
    if choice.get("layer") is not None:
        fig.add_vline(
            x=int(choice["layer"]),
            line={"dash": "dot", "color": COLORS[MAIN]},
            annotation_text=f"chosen: layer {choice['layer']}, a = {choice.get('scale')}",
            annotation_position="top left",
        )
    if choice.get("e1_layer") is not None:
        fig.add_vline(
            x=int(choice["e1_layer"]),
            line={"dash": "dot", "color": "#1f77b4", "width": 1},
            annotation_text=f"E1 fit-half peak {choice['e1_layer']}",
            annotation_position="bottom right",
        )
    gain = P.num((choice.get("fit_gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line={"dash": "dot", "color": "#444", "width": 1},
            annotation_text=f"fit-half gain {gain:+.3f}",
            annotation_position="top right",
        )
    P.zero_line(fig)
    P.layer_ticks(fig, [int(r["layer"]) for r in rows])
    return P.layout(fig, "Steering scan: v_ℓ,c at every scale a, fit half (E11)")

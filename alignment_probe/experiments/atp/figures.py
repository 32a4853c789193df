"""E10's figures, drawn from a run's summary: AtP against exact patching per layer and for the confirmed
conditions, the map of every (hook, layer) condition (and the head maps), and AtP per head against one-head exact
patches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alignment_probe import plotting as P
from alignment_probe.experiments.atp.conditions import ATP_HEADS, HEAD_ESTIMATOR
from alignment_probe.vocab import HEAD_HOOKS

# --------------------------------------------------------------------------------------------------
# the figure

PALETTE = {
    "resid_pre": "#8c564b",
    "resid_mid": "#9467bd",
    "resid_post": "#1f77b4",
    "attn_out": "#ff7f0e",
    "mlp_out": "#2ca02c",
}


def atp_figure(summary: Mapping[str, Any]) -> Any:
    """AtP per-layer mean (y) against the exact per-layer mean (x), one colour per hook, with y = x;
    the ``--confirm`` conditions as open diamonds."""
    entry = P.experiment(summary, "atp") or {}
    by_hook = {h: e for h, e in (entry.get("by_hook") or {}).items() if e.get("exact_per_layer")}
    conf = [c for c in entry.get("confirmed") or [] if "atp" in c]
    if not by_hook and not conf:
        raise P.MissingExperimentError(
            "atp_vs_exact",
            [
                (
                    "patch_tuned_to_base at AtP's hooks (--experiments "
                    "atp,patch_tuned_to_base --extra-hooks …) or --confirm K"
                )
            ],
        )
    import plotly.graph_objects as go

    fig = go.Figure()
    values: list[float] = []
    for hook, e in by_hook.items():
        est = {int(r["layer"]): r for r in e["per_layer"]}
        ex = [r for r in e["exact_per_layer"] if int(r["layer"]) in est]
        xs, ys = [P.num(r["mean"]) for r in ex], [P.num(est[int(r["layer"])]["mean"]) for r in ex]
        rho = (e.get("validation") or {}).get("spearman")
        name = f"{hook} (ρ = {rho:.2f})" if isinstance(rho, float) and math.isfinite(rho) else hook
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name=name,
                text=[str(r["layer"]) for r in ex],
                textposition="top center",
                marker={"color": PALETTE.get(hook, "#7f7f7f"), "size": 9},
                hovertemplate="layer %{text}<br>exact %{x:.3f}<br>AtP %{y:.3f}<extra>" + hook + "</extra>",
            )
        )
        values += xs + ys
    if conf:
        xs, ys = [P.num(c["exact"]) for c in conf], [P.num(c["atp"]) for c in conf]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="confirmed (--confirm)",
                text=[f"{c['hook']} {c['layer']}" for c in conf],
                marker={"symbol": "diamond-open", "size": 14, "color": "#222"},
                hovertemplate="%{text}<br>exact %{x:.3f}<br>AtP %{y:.3f}<extra></extra>",
            )
        )
        values += xs + ys
    finite = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}, hoverinfo="skip"
        )
    )
    return P.layout(
        fig,
        "Attribution patching vs exact (E10)",
        x_title="exact effect (nats, mean over pairs)",
        y_title="AtP estimate (nats, mean over pairs)",
    )


def atp_map_figure(summary: Mapping[str, Any]) -> Any:
    """The AtP map: per-layer estimates with CIs, one line per hook (left), and the query heads' estimates as a
    layer × head heatmap (right, when the run estimated heads)."""
    entry = P.experiment(summary, "atp") or {}
    by_hook = entry.get("by_hook") or {}
    if not by_hook:
        raise P.MissingExperimentError("atp_map", ["atp"])
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    z_cells = (entry.get("by_head") or {}).get("z") or []
    fig = make_subplots(
        rows=1,
        cols=2 if z_cells else 1,
        column_widths=[0.6, 0.4] if z_cells else None,
        horizontal_spacing=0.12,
        subplot_titles=("per layer, every hook", "per query head (z)") if z_cells else None,
    )
    for hook, e in by_hook.items():
        P.add_curve(
            fig, P.per_layer_frame(e["per_layer"]), name=f"AtP {hook}", color=PALETTE.get(hook, "#7f7f7f"), row=1, col=1
        )
    P.zero_line(fig, row=1, col=1)
    P.layer_ticks(fig, [r["layer"] for e in by_hook.values() for r in e["per_layer"]], row=1, col=1)
    fig.update_xaxes(title_text=P.LAYER_AXIS, row=1, col=1)
    fig.update_yaxes(title_text="AtP estimate (nats, mean over pairs)", row=1, col=1)
    if z_cells:
        layers = sorted({c["layer"] for c in z_cells})
        heads = sorted({c["head"] for c in z_cells})
        cell = {(c["layer"], c["head"]): c for c in z_cells}
        grid = [[P.num(cell[(ly, h)]["mean"]) if (ly, h) in cell else None for h in heads] for ly in layers]
        text = [
            [
                (
                    f"layer {ly} head {h}<br>AtP {P.num(cell[(ly, h)]['mean']):+.3f} "
                    f"[{P.num(cell[(ly, h)]['ci_low']):+.3f}, {P.num(cell[(ly, h)]['ci_high']):+.3f}]"
                )
                if (ly, h) in cell
                else ""
                for h in heads
            ]
            for ly in layers
        ]
        top = max((abs(v) for row in grid for v in row if v is not None and math.isfinite(v)), default=1.0) or 1.0
        fig.add_trace(
            go.Heatmap(
                z=grid,
                x=heads,
                y=layers,
                text=text,
                hoverinfo="text",
                colorscale="RdBu",
                reversescale=True,
                zmin=-top,
                zmax=top,
                colorbar={"title": "nats", "x": 1.0},
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=2)
        fig.update_yaxes(title_text="layer", row=1, col=2)
    P.layout(fig, "Attribution patching map, tuned → base (E10)", x_title=None, y_title=None)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.18, "xanchor": "left"})
    return fig


HEAD_MARKERS = {"z": ("#9467bd", "circle"), "v": ("#8c564b", "square"), "k": ("#17becf", "diamond")}


def atp_heads_figure(summary: Mapping[str, Any]) -> Any:
    """AtP per-(layer, head) mean (y) against the exact head patch's mean (x): query heads (z), value heads
    (v) and key heads (k, AtP* with the QK fix; open diamonds: plain AtP without it), with y = x."""
    entry = P.experiment(summary, "atp") or {}
    exact = entry.get("exact_by_head") or {}
    if not exact:
        raise P.MissingExperimentError(
            "atp_heads_vs_exact",
            [f"{ATP_HEADS} with head_patch or kv_head_patch (--experiments {ATP_HEADS},head_patch,kv_head_patch)"],
        )
    import plotly.graph_objects as go

    fig = go.Figure()
    values: list[float] = []
    checks = entry.get("head_validation") or {}
    series = [
        (hook, entry["by_head"][hook], exact[hook], HEAD_ESTIMATOR[hook], checks.get(hook) or {}, False)
        for hook in HEAD_HOOKS
        if hook in exact and hook in (entry.get("by_head") or {})
    ]
    plain = entry.get("k_without_qk_fix") or {}
    if "k" in exact and plain.get("by_head"):
        series.append(("k", plain["by_head"], exact["k"], "atp", plain.get("validation") or {}, True))
    for hook, est_cells, ex_cells, estimator, check, hollow in series:
        est = {(c["layer"], c["head"]): c for c in est_cells}
        ex = [c for c in ex_cells if (c["layer"], c["head"]) in est]
        xs, ys = [P.num(c["mean"]) for c in ex], [P.num(est[(c["layer"], c["head"])]["mean"]) for c in ex]
        rho = check.get("spearman")
        name = f"{hook} ({estimator}" + (f", ρ = {rho:.2f})" if isinstance(rho, float) and math.isfinite(rho) else ")")
        color, symbol = HEAD_MARKERS[hook]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=name,
                text=[f"layer {c['layer']} head {c['head']}" for c in ex],
                marker={"color": color, "size": 9, "symbol": symbol + ("-open" if hollow else "")},
                hovertemplate="%{text}<br>exact %{x:.3f}<br>" + estimator + " %{y:.3f}<extra>" + hook + "</extra>",
            )
        )
        values += xs + ys
    finite = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}, hoverinfo="skip"
        )
    )
    return P.layout(
        fig,
        "Attribution patching vs exact, per head (E10)",
        x_title="exact effect of one head's patch (nats, mean over pairs)",
        y_title="AtP estimate (nats, mean over pairs)",
    )

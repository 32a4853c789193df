"""The paper's figures (E1–E6 and the appendix) as plotly figures, drawn from a run's ``summary`` (the dict of
summary.json). The experiments name them in their registry entries; :mod:`alignment_probe.report.figures` draws
them (and keeps every name importable).

Every function takes the summary (or the per-pair scores table) and returns a
``plotly.graph_objects.Figure``; none runs a model or recomputes a statistic. Per-layer numbers are
drawn as the mean with its 95% bootstrap CI as a shaded band. Effects are in nats of Δlogp
(log p(y+|x) − log p(y−|x)).

Any experiment may be missing from a summary (a run can do a subset). A figure whose experiments
are *all* missing raises :class:`MissingExperimentError`; one with only some missing draws what it
has and notes the rest ("not run: …") under the plot. :func:`all_figures` returns the figures that
can be drawn.

Trace naming, relied on by the report and the tests: the mean curve of an experiment is named by
its label (``LABELS``); its band is ``"<label> (95% CI)"``; the peak and onset markers are
``"<label> peak"`` and ``"<label> onset"``; the rings on the peak set's layers (when the summary has
``peak_set``) ``"<label> peak set"``.

=========================  ======================================  ==============================
function                   paper                                   summary keys read
=========================  ======================================  ==============================
``layer_curve``            Fig. 1                                  ``patch_tuned_to_base``
``lasso_coefficients``     Fig. 2, Table 1 (fit_figures.py)        ``lasso``
``source_variants``        Fig. 3 (both families of method E5)     ``source_*``, ``vector_*``
``lowrank``                Fig. 4, Table 2 (fit_figures.py)        ``lowrank_reconstruct/difference``
``directionality``         Fig. 5 (A1)                             ``patch_*``
``controls``               Fig. 6 (A2)                             ``identity``, ``random_*``
``alpha_dose_response``    Fig. 7 (A3)                             ``alpha``
``gain_histogram``         — (per-pair gain, ours)                 per-pair scores table
=========================  ======================================  ==============================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from alignment_probe import plotting
from alignment_probe.experiments import registry
from alignment_probe.plotting import EFFECT_AXIS as EFFECT_AXIS  # the primitives; kept importable here
from alignment_probe.plotting import HEIGHT as HEIGHT
from alignment_probe.plotting import LAYER_AXIS as LAYER_AXIS
from alignment_probe.plotting import MAIN as MAIN
from alignment_probe.plotting import REVERSE as REVERSE
from alignment_probe.plotting import MissingExperimentError as MissingExperimentError
from alignment_probe.plotting import experiment as experiment
from alignment_probe.plotting import gain_histogram as gain_histogram
from alignment_probe.plotting import has_per_layer as has_per_layer
from alignment_probe.plotting import lowrank_frame as lowrank_frame
from alignment_probe.plotting import n_layers as n_layers
from alignment_probe.plotting import per_layer_frame as per_layer_frame

CONTROL_EXPERIMENTS = ("identity", "random_noise", "random_direction")
DECOMPOSITION_EXPERIMENTS = ("source_chosen_only", "source_rejected_only")
VECTOR_EXPERIMENTS = ("vector_chosen", "vector_rejected", "vector_contrast")


class _FromRegistry(Mapping):
    """A read-only view of the experiment registry (labels, colours, figures), built on first use."""

    def __init__(self, build: Any):
        self._build = build

    def _data(self) -> dict[str, Any]:
        return self._build()

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def _names() -> list[Any]:
    return [n for e in registry.experiments() for n in e.names]


LABELS: Mapping[str, str] = _FromRegistry(lambda: {n.name: n.label for n in _names()})
COLORS: Mapping[str, str] = _FromRegistry(lambda: {n.name: n.color for n in _names()})


# --------------------------------------------------------------------------------------------------
# reading the summary


# --------------------------------------------------------------------------------------------------
# drawing helpers


def _label(name: str) -> str:
    return LABELS.get(name, name)


def _color(name: str, i: int = 0) -> str:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    return COLORS.get(name, palette[i % len(palette)])


def _draw_layer_experiments(
    fig: go.Figure,
    summary: Mapping[str, Any],
    names: Sequence[str],
    *,
    markers: bool = True,
    row: int | None = None,
    col: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[int]:
    """Draw each present experiment's per-layer curve (+ band, + peak/onset markers); return the layers."""
    layers: list[int] = []
    for i, name in enumerate(names):
        entry = experiment(summary, name)
        if not entry or not entry.get("per_layer"):
            continue
        frame = per_layer_frame(entry["per_layer"])
        label, color = (labels or {}).get(name, _label(name)), _color(name, i)
        plotting.add_curve(fig, frame, name=label, color=color, group=name, row=row, col=col)
        if markers:
            plotting.add_peak_set(fig, entry, frame, name=label, color=color, group=name, row=row, col=col)
            for which in ("peak", "onset"):
                plotting.add_layer_marker(
                    fig, entry, frame, which=which, name=label, color=color, group=name, row=row, col=col
                )
        layers += frame["layer"].tolist()
    return layers


def _require(figure: str, summary: Mapping[str, Any], names: Sequence[str]) -> tuple[list[str], list[str]]:
    present = [n for n in names if has_per_layer(summary, n)]
    missing = [n for n in names if n not in present]
    if not present:
        raise MissingExperimentError(figure, missing)
    return present, missing


# --------------------------------------------------------------------------------------------------
# the figures


def layer_curve(
    summary: Mapping[str, Any],
    experiments: Sequence[str] = (MAIN,),
    title: str = "Per-layer causal effect of patching (tuned → base)",
    *,
    markers: bool = True,
    show_gain: bool = True,
) -> go.Figure:
    """Paper Fig. 1: mean effect per layer with 95% CI bands, a dashed zero line, peak (★) and onset (◆)
    markers with their bootstrap CIs as horizontal bars, rings on the peak set's layers, and the mean gain as a dotted reference (for
    tuned → base, patching the whole model would reproduce the gain)."""
    present, missing = _require("layer_curve", summary, list(experiments))
    fig = go.Figure()
    layers = _draw_layer_experiments(fig, summary, present, markers=markers)
    plotting.zero_line(fig)
    gain = plotting.num(summary.get("gain_mean"))
    if show_gain and MAIN in present and math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line={"dash": "dot", "color": "#2ca02c", "width": 1},
            annotation_text=f"mean gain {gain:+.3g} nats",
            annotation_position="top left",
        )
    plotting.layer_ticks(fig, layers)
    plotting.note_missing(fig, missing)
    return plotting.layout(fig, title)


def directionality(summary: Mapping[str, Any]) -> go.Figure:
    """Paper Fig. 5 (A1): tuned → base (effect relative to the base's Δlogp) against base → tuned (relative
    to the tuned model's Δlogp), with ±mean gain as dotted references."""
    present, missing = _require("directionality", summary, [MAIN, REVERSE])
    fig = go.Figure()
    layers = _draw_layer_experiments(fig, summary, present)
    plotting.zero_line(fig)
    gain = plotting.num(summary.get("gain_mean"))
    if math.isfinite(gain):
        for sign, text in ((1, "+gain"), (-1, "−gain")):
            fig.add_hline(
                y=sign * gain,
                line={"dash": "dot", "color": "#999", "width": 1},
                annotation_text=f"{text} ({sign * gain:+.3g})",
                annotation_position="top left",
            )
    plotting.layer_ticks(fig, layers)
    plotting.note_missing(fig, missing)
    return plotting.layout(fig, "Directionality: tuned → base vs base → tuned (A1)")


def controls(summary: Mapping[str, Any]) -> go.Figure:
    """Paper Fig. 6 (A2): identity (must be exactly 0), Gaussian-noise and random-direction controls beside
    the main tuned → base curve."""
    _require("controls", summary, CONTROL_EXPERIMENTS)
    names = [MAIN, *CONTROL_EXPERIMENTS]
    present = [n for n in names if has_per_layer(summary, n)]
    missing = [n for n in names if n not in present]
    fig = go.Figure()
    layers = _draw_layer_experiments(fig, summary, present, markers=False)
    plotting.zero_line(fig)
    plotting.layer_ticks(fig, layers)
    plotting.note_missing(fig, missing)
    return plotting.layout(fig, "Controls: identity and random patches vs tuned → base (A2)")


def _rho(rhos: Mapping[Any, Any] | None, layer: int) -> float:
    if not rhos:
        return math.nan
    for key in (layer, str(layer), float(layer)):
        if key in rhos:
            return plotting.num(rhos[key])
    return math.nan


def alpha_frame(entry: Mapping[str, Any]) -> pd.DataFrame:
    """``alpha`` summary → long frame (alpha, layer, mean, ci_low, ci_high), sorted by layer then α."""
    rows = []
    for key, per_layer in (entry.get("by_alpha") or {}).items():
        for r in per_layer or []:
            rows.append(
                {
                    "alpha": float(key),
                    "layer": int(r["layer"]),
                    "mean": plotting.num(r.get("mean")),
                    "ci_low": plotting.num(r.get("ci_low")),
                    "ci_high": plotting.num(r.get("ci_high")),
                }
            )
    frame = pd.DataFrame(rows, columns=["alpha", "layer", "mean", "ci_low", "ci_high"])
    return frame.sort_values(["layer", "alpha"], kind="stable").reset_index(drop=True)


def alpha_dose_response(summary: Mapping[str, Any]) -> go.Figure:
    """Paper Fig. 7 (A3): effect vs α (h = h_base + α(h_tuned − h_base)), one line per layer with its CI
    band; the legend gives each layer's Spearman ρ (monotonicity). α > 1 is extrapolation (shaded)."""
    entry = experiment(summary, "alpha")
    frame = alpha_frame(entry) if entry else pd.DataFrame()
    if frame.empty:
        raise MissingExperimentError("alpha_dose_response", ["alpha"])
    layers = sorted(frame["layer"].unique().tolist())
    colors = sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) * 0.9 for i in range(len(layers))])
    fig = go.Figure()
    for layer, color in zip(layers, colors):
        rho = _rho(entry.get("spearman_rho"), layer)
        name = f"layer {layer} (ρ = {rho:+.2f})" if math.isfinite(rho) else f"layer {layer}"
        plotting.add_curve(
            fig,
            frame[frame["layer"] == layer],
            name=name,
            color=color,
            group=f"layer{layer}",
            x="alpha",
            x_label="α",
            band_opacity=0.12,
        )
    plotting.zero_line(fig)
    if frame["alpha"].max() > 1:
        fig.add_vrect(
            x0=1,
            x1=float(frame["alpha"].max()),
            fillcolor="#eee",
            opacity=0.5,
            line_width=0,
            annotation_text="extrapolation",
            annotation_position="top left",
        )
    alphas = sorted(frame["alpha"].unique().tolist())
    fig.update_xaxes(tickmode="array", tickvals=alphas, ticktext=[f"{a:g}" for a in alphas])
    return plotting.layout(fig, "Dose-response: effect vs patch strength α (A3)", x_title="α (patch strength)")


def source_variants(summary: Mapping[str, Any]) -> go.Figure:
    """Paper Fig. 3 (method E5): left, the per-sequence decomposition (tuned activations patched into the
    base's chosen run only, rejected run only, or both = tuned → base; the dotted sum chosen + rejected should
    lie on "both"); right, the vector variants v+, v−, v± added to the base residual. A family with nothing
    run is left out."""
    decomposition = [n for n in DECOMPOSITION_EXPERIMENTS if has_per_layer(summary, n)]
    vectors = [n for n in VECTOR_EXPERIMENTS if has_per_layer(summary, n)]
    if not decomposition and not vectors:
        raise MissingExperimentError("source_variants", [*DECOMPOSITION_EXPERIMENTS, *VECTOR_EXPERIMENTS])
    panels = []
    if decomposition:
        panels.append(("Per-sequence decomposition", [*DECOMPOSITION_EXPERIMENTS, MAIN]))
    if vectors:
        panels.append(("Vector variants (added to base)", list(VECTOR_EXPERIMENTS)))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.1)
    missing: list[str] = []
    for col, (_, names) in enumerate(panels, start=1):
        present = [n for n in names if has_per_layer(summary, n)]
        missing += [n for n in names if n not in present]
        labels = {MAIN: "both (= tuned → base)"}
        layers = _draw_layer_experiments(fig, summary, present, markers=False, row=1, col=col, labels=labels)
        if names[0] == DECOMPOSITION_EXPERIMENTS[0] and all(n in present for n in DECOMPOSITION_EXPERIMENTS):
            a = per_layer_frame(experiment(summary, "source_chosen_only")["per_layer"]).set_index("layer")["mean"]
            b = per_layer_frame(experiment(summary, "source_rejected_only")["per_layer"]).set_index("layer")["mean"]
            total = (a + b).dropna()
            fig.add_trace(
                go.Scatter(
                    x=total.index.tolist(),
                    y=total.tolist(),
                    mode="lines",
                    name="chosen-only + rejected-only",
                    line={"dash": "dot", "color": "#333", "width": 1.5},
                    hovertemplate="<b>chosen + rejected</b><br>Layer %{x}<br>sum %{y:.4g} nats<extra></extra>",
                ),
                row=1,
                col=col,
            )
        plotting.zero_line(fig, row=1, col=col)
        plotting.layer_ticks(fig, layers, row=1, col=col)
        fig.update_xaxes(title_text=LAYER_AXIS, row=1, col=col)
        fig.update_yaxes(title_text=EFFECT_AXIS, row=1, col=col)
    if not decomposition:
        missing = [*DECOMPOSITION_EXPERIMENTS, *missing]
    if not vectors:
        missing += list(VECTOR_EXPERIMENTS)
    plotting.note_missing(fig, missing)
    return plotting.layout(fig, "Source variants (Fig. 3)", x_title=None, y_title=None)

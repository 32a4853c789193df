"""E0 — where the weights changed: ‖ΔW‖ per block and module, no pairs and no forwards.

Activation patching says where an effect is *carried*, transplants (E8) where the changed weights *act*;
neither says where the weights *changed*. For every block and module (q, k, v, o, MLP in/gate/out, the norms;
the embedding, the unembedding and the final norm apart, with ``layer`` None) this reads ΔW = W_tuned − W_base
and reports

* ``frob`` = ‖ΔW‖_F over the module's parameters (weights and biases), ``rel`` = ‖ΔW‖_F / ‖W_base‖_F,
* ``share`` = ‖ΔW‖²_F / Σ over all modules of ‖ΔW‖²_F (the shares add up to 1),
* the top singular values of the module's weight matrix's ΔW (in Hugging Face's ``[in, out]`` orientation:
  query/key/value heads side by side, the output projection's heads stacked) and its **stable rank**
  ‖ΔW‖²_F / σ₁² (1 for a rank-one change; None where ΔW is 0 or a vector).

A twin given as a peft LoRA adapter is read from the adapter itself, ΔW = scale · B · A per adapted module
(scale = lora_alpha / r, or / √r with rsLoRA), without the merged weights; its singular values come from the
r × r core, exact and cheap at any model size. Adapters this cannot read (other adapter types, fused modules
it does not map, ``modules_to_save``) fall back to the merged weights, and the record says which was used.

The computation is a whole-data step of the suite (``compute``): its record (``fits.json``) is the table
``by_module``; the summary and the figure are pure functions of it. Known answers (tests): a planted twin has
its whole ΔW in its planted module and exactly 0 elsewhere; the adapter path equals the merged path.

The package: this module registers E0 (summary, figure); :mod:`.delta` computes ΔW from the weights or the adapter.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from alignment_probe import plotting as P
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, Tables, register
from alignment_probe.experiments.weight_diff.delta import (
    EXACT_SVD_MAX,
    MODULE_ORDER,
    TOP_K,
    as_matrix,
    module_of,
    weight_diff,
    weight_diff_from_adapter,
    weight_diff_from_models,
)

__all__ = [
    "EXACT_SVD_MAX",
    "MODULE_ORDER",
    "NAME",
    "TOP_K",
    "as_matrix",
    "module_of",
    "summarize_weight_diff",
    "weight_diff",
    "weight_diff_figure",
    "weight_diff_from_adapter",
    "weight_diff_from_models",
]

NAME = "weight_diff"


def _compute(plan: Plan) -> dict[str, Any]:
    return weight_diff(plan.twins)


def _blocks(rows: list[Mapping[str, Any]], n_layers: int) -> list[dict[str, Any]]:
    out = []
    for layer in range(n_layers):
        mine = [r for r in rows if r["layer"] == layer]
        out.append(
            {
                "layer": layer,
                "frob": math.sqrt(sum(r["frob"] ** 2 for r in mine)),
                "share": float(sum(r["share"] for r in mine)),
            }
        )
    return out


def summarize_weight_diff(tables: Tables) -> dict[str, dict[str, Any]]:
    """By module (the record), by block (modules summed), the total, and the modules that changed most."""
    record = tables.fits[NAME]
    rows = record["by_module"]
    total = math.sqrt(sum(r["frob"] ** 2 for r in rows))
    top = sorted((r for r in rows if r["share"] > 0), key=lambda r: -r["share"])[:5]
    outside = [r for r in rows if r["layer"] is None]
    return {
        NAME: {
            "source": record["source"],
            "adapter": record.get("adapter"),
            "by_module": rows,
            "by_block": _blocks(rows, tables.n_layers),
            "total_frob": total,
            "outside_blocks_share": float(sum(r["share"] for r in outside)),
            "n_changed_modules": sum(1 for r in rows if r["frob"] > 0),
            "top_modules": [{k: r[k] for k in ("layer", "module", "share", "stable_rank")} for r in top],
        }
    }


def _stacked_modules(entry: Mapping[str, Any]) -> Iterator[tuple[str, list[int], list[float]]]:
    rows = [r for r in entry["by_module"] if r["layer"] is not None]
    modules = sorted({r["module"] for r in rows}, key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else 99, m))
    for module in modules:
        mine = {r["layer"]: r["share"] for r in rows if r["module"] == module}
        layers = sorted(mine)
        yield module, layers, [mine[layer] for layer in layers]


_MODULE_COLORS = {
    "q": "#1f77b4",
    "k": "#aec7e8",
    "v": "#17becf",
    "o": "#9edae5",
    "mlp_in": "#d62728",
    "mlp_gate": "#ff9896",
    "mlp_out": "#e377c2",
    "ln1": "#7f7f7f",
    "ln2": "#c7c7c7",
}


def weight_diff_figure(summary: Mapping[str, Any]) -> Any:
    """Top: each block's share of Σ‖ΔW‖², stacked by module. Bottom, when the run has them: the one-block window
    transplants' effect per block (E8), so "changed here, acts there" reads off one column."""
    from plotly.subplots import make_subplots

    entry = P.experiment(summary, NAME)
    if not entry or not entry.get("by_module"):
        raise P.MissingExperimentError("weight_diff", [NAME])
    windows = P.experiment(summary, "window_transplant")
    has_windows = bool(windows and windows.get("per_layer"))
    fig = make_subplots(
        rows=2 if has_windows else 1,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=["where the weights changed: share of Σ‖ΔW‖²_F per block (E0)"]
        + (
            ["where the changed weights act: one-block transplant of the tuned block (E8), nats"] if has_windows else []
        ),
    )
    import plotly.graph_objects as go

    for module, layers, shares in _stacked_modules(entry):
        fig.add_trace(
            go.Bar(
                x=layers,
                y=shares,
                name=module,
                marker_color=_MODULE_COLORS.get(module, "#bcbd22"),
                legendgroup="modules",
                hovertemplate=f"block %{{x}} {module}: %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="share of ‖ΔW‖²", row=1, col=1)
    if has_windows:
        frame = P.per_layer_frame(windows["per_layer"])
        P.add_curve(fig, frame, name="window transplant (w = 1)", color="#2ca02c", group="windows", row=2, col=1)
        P.zero_line(fig, row=2, col=1)
        fig.update_yaxes(title_text="effect (nats)", row=2, col=1)
    outside = entry.get("outside_blocks_share", 0.0)
    title = (
        f"Where the weights changed (E0): {entry['n_changed_modules']} modules changed; "
        f"embedding, final norm and unembedding hold {outside:.1%} of ‖ΔW‖² (read from the "
        f"{'adapter' if entry.get('source') == 'adapter' else 'weights'})"
    )
    return P.layout(fig, title, height=520 if has_windows else 380)


register(
    Experiment(
        key=NAME,
        method="E0",
        order=5,
        names=(
            Name(
                NAME,
                "weight diff",
                "#8c564b",
                "Per block and module, ‖ΔW‖_F, ‖ΔW‖/‖W‖, its share of Σ‖ΔW‖² and ΔW's top singular values and "
                "stable rank (no pairs, no forwards; a LoRA twin is read from its adapter).",
                per_layer=False,
            ),
        ),
        compute=_compute,
        summarize=summarize_weight_diff,
        figures=(
            Figure(
                "weight_diff",
                "alignment_probe.experiments.weight_diff:weight_diff_figure",
                "Where the weights changed (E0), beside where they act (E8)",
                "E0. Each block's share of the total squared change of the weights, ‖ΔW‖²_F, stacked by "
                "module (the embedding and unembedding are counted apart, in the title). Below, when the run "
                "has them, the one-block window transplants (E8): a block can change without acting, and act "
                "through what it reads.",
                needs=(NAME,),
                order=8,
            ),
        ),
    )
)

"""E7 — attention heads: which query heads, and which key/value heads, carry the tuning.

Tuned → base, one head at a time (../shared/docs/localization.md, E7):

* ``head_patch``: ``blocks.ℓ.attn.hook_z`` is [pos, n_heads, d_head]; patching query head h replaces
  ``z[:, h]`` only (rows: hook ``z``, ``param`` = h);
* ``kv_head_patch``: ``hook_v`` (and ``hook_k``) are [pos, n_key_value_heads, d_head] *before* they are
  repeated to the query heads, so patching KV head g moves every query head that reads it (grouped-query
  models: Llama-3.2-1B has 4 query heads per KV head). Rows: hook ``v`` (the value head, the main entry)
  and hook ``k`` (its key head, ``by_head_k``), ``param`` = g.

Beside the head map, each summary has the whole-layer ``attn_out`` patch and the sum of the head
effects per layer: the output projection is linear in z, but the rest of the network is not, so the
heads' effects need not add up to the layer's. Opt-in (``--experiments head_patch,kv_head_patch``):
a head map costs n_heads conditions per layer. Layers: the swept layers (``--layers``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import heldout
from alignment_probe.experiments.registry import (
    Experiment,
    Figure,
    Name,
    Plan,
    Tables,
    register,
)
from alignment_probe.interventions import Replace, ReplaceHead

HEADS = "head_patch"
KV_HEADS = "kv_head_patch"


def _n_heads(plan: Plan, hook: str) -> int:
    return plan.twins.backends()["base"].heads_at(hook)


def head_specs(plan: Plan) -> list[PatchSpec]:
    """One condition per (layer, head) at each head hook of the selected names, and the whole layer's attn_out."""
    layers = plan.cfg.swept_layers(plan.n_layers)
    specs: list[PatchSpec] = []
    for name, hooks in ((HEADS, ("z",)), (KV_HEADS, ("v", "k"))):
        if name not in plan.selected:
            continue
        for layer in layers:
            for hook in hooks:
                specs += [
                    PatchSpec(
                        RowKey(name, "base", "tuned", hook, "all", "both", layer, float(h), "all"), ReplaceHead(h)
                    )
                    for h in range(_n_heads(plan, hook))
                ]
            specs.append(
                PatchSpec(RowKey(name, "base", "tuned", "attn_out", "all", "both", layer, math.nan, "all"), Replace())
            )
    return specs


def _cells(rows: Any, cfg: Any) -> list[dict[str, Any]]:
    out = []
    for (layer, head), group in rows.groupby(["layer", "param"], sort=True):
        mean, lo, hi = stats.bootstrap_mean_ci(group.effect.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
        out.append(
            {"layer": int(layer), "head": int(head), "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(group))}
        )
    return out


def _top_heads(rows: Any, hook: str, cfg: Any, explore: list[int], confirm: list[int]) -> dict[str, Any] | None:
    """The head with the largest explore-pair mean effect and the explore ranking's top heads, each reported on the
    confirm pairs (``heldout.choose``; ``chosen`` = {layer, head, hook})."""
    if not len(rows):
        return None
    matrix, pair_ids, cells = heldout.cell_matrix(rows, ("layer", "param"))
    return heldout.choose(
        matrix,
        pair_ids,
        [{"layer": la, "head": h, "hook": hook} for la, h in cells],
        cfg,
        explore=explore,
        confirm=confirm,
        what="head",
    )


def summarize_heads(tables: Tables) -> dict[str, dict[str, Any]]:
    """``by_head``: one cell per (layer, head) with its CI and its max-|t| band over the map (``band_low``,
    ``band_high``; ``map``: {m, critical, rule}); ``selection``: the top head chosen on the explore pairs and the
    explore ranking's top heads, reported on the confirm pairs (for kv_head_patch also ``map_k``/``selection_k``
    for the key heads); ``attn_out``: the whole-layer patch per layer, with its ``peak_set``; ``sum_of_heads``:
    per layer, the sum of the head means (to set beside ``attn_out``)."""
    cfg, effects, out = tables.cfg, tables.effects, {}
    for name in tables.selected:
        rows = effects[effects.experiment == name]
        main_hook = "z" if name == HEADS else "v"
        by_head = _cells(rows[rows.hook == main_hook], cfg)
        entry: dict[str, Any] = {"hook": main_hook, "by_head": by_head}
        ids = heldout.run_pair_ids(tables, rows)
        explore, confirm = heldout.split(cfg, ids)
        entry["map"] = heldout.banded(rows[rows.hook == main_hook], ("layer", "param"), by_head, ("layer", "head"), cfg)
        entry["selection"] = _top_heads(rows[rows.hook == main_hook], main_hook, cfg, explore, confirm)
        if name == KV_HEADS:
            entry["by_head_k"] = _cells(rows[rows.hook == "k"], cfg)
            entry["map_k"] = heldout.banded(
                rows[rows.hook == "k"], ("layer", "param"), entry["by_head_k"], ("layer", "head"), cfg
            )
            entry["selection_k"] = _top_heads(rows[rows.hook == "k"], "k", cfg, explore, confirm)
        layer_rows = rows[rows.hook == "attn_out"]
        entry["attn_out"] = (
            stats.per_layer_summary(layer_rows, seed=cfg.seed, n_boot=cfg.n_boot) if len(layer_rows) else []
        )
        if len(layer_rows):  # the whole-layer patch is a per-layer curve: its peak set
            matrix, _, layers = stats.effect_matrix(layer_rows)
            entry.update(stats.peak_set(matrix, layers, seed=cfg.seed, n_boot=cfg.n_boot))
            entry["peak_set_of"] = "attn_out (the whole-layer patch)"
        entry["sum_of_heads"] = [
            {"layer": layer, "sum": float(np.sum([c["mean"] for c in by_head if c["layer"] == layer]))}
            for layer in sorted({c["layer"] for c in by_head})
        ]
        out[name] = entry
    return out


def heads_figure(summary: Mapping[str, Any]) -> Any:
    """Layer × head heatmaps of the mean effect (hover: the CI of each cell), one per head experiment run,
    with the whole-layer attn_out effect and the sum of the heads beside each layer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    present = [(n, P.experiment(summary, n)) for n in (HEADS, KV_HEADS)]
    present = [(n, e) for n, e in present if e and e.get("by_head")]
    if not present:
        raise P.MissingExperimentError("heads", [HEADS, KV_HEADS])
    titles = [f"{'query heads (z)' if n == HEADS else 'key/value heads (v)'}: tuned → base" for n, _ in present]
    # One panel under the other: the row labels are long, and side by side they ran into the other panel.
    n = len(present)
    fig = make_subplots(rows=n, cols=1, subplot_titles=titles, vertical_spacing=0.3 / n)
    n_rows = 0
    for row, (_name, entry) in enumerate(present, start=1):
        cells = entry["by_head"]
        layers = sorted({c["layer"] for c in cells})
        heads = sorted({c["head"] for c in cells})
        z = [
            [next((c["mean"] for c in cells if c["layer"] == la and c["head"] == h), None) for h in heads]
            for la in layers
        ]
        text = [
            [
                next(
                    (
                        f"{c['mean']:+.3g} [{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]"
                        for c in cells
                        if c["layer"] == la and c["head"] == h
                    ),
                    "",
                )
                for h in heads
            ]
            for la in layers
        ]
        attn = {r["layer"]: r["mean"] for r in entry.get("attn_out") or []}
        sums = {r["layer"]: r["sum"] for r in entry.get("sum_of_heads") or []}
        ylabels = [
            f"layer {la} · attn_out {attn.get(la, math.nan):+.3g} · Σ heads {sums.get(la, math.nan):+.3g}"
            for la in layers
        ]
        span = max((abs(v) for line in z for v in line if v is not None), default=1.0) or 1.0
        n_rows += len(layers)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[f"head {h}" for h in heads],
                y=ylabels,
                text=text,
                zmid=0,
                zmin=-span,
                zmax=span,
                colorscale="RdBu_r",
                colorbar={"title": "nats", "y": 1 - (row - 0.5) / n, "len": 0.8 / n},
                hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>",
            ),
            row=row,
            col=1,
        )
    return P.layout(
        fig,
        "Attention heads: mean effect of patching one head, tuned → base (E7)",
        height=max(P.HEIGHT, 120 * n + 28 * n_rows),
        x_title=None,
        y_title=None,
    )


register(
    Experiment(
        key="heads",
        method="E7",
        order=15,
        batch_order=48,
        default=False,
        names=(
            Name(
                HEADS,
                "query heads (z)",
                "#9467bd",
                "Patch one query head's z (attn.hook_z) at a time, tuned → base: a layer × head map.",
                per_layer=False,
            ),
            Name(
                KV_HEADS,
                "key/value heads (v, k)",
                "#8c564b",
                "Patch one key/value head (hook_v, hook_k, before they are repeated to the query heads) at a time.",
                per_layer=False,
            ),
        ),
        specs=head_specs,
        summarize=summarize_heads,
        figures=(
            Figure(
                "heads",
                "alignment_probe.experiments.heads:heads_figure",
                "Attention heads (E7)",
                "E7. Each cell: the mean effect of patching one head's activation from the tuned model into the "
                "base (query heads: attn.hook_z; key/value heads: hook_v before it is shared by its query "
                "heads); hover for the 95% bootstrap CI. Row labels give the whole-layer attn_out patch and the "
                "sum of that layer's head effects: they need not agree (the network after the heads is not "
                "linear).",
                needs=(HEADS, KV_HEADS),
                order=17,
            ),
        ),
    )
)

"""E1 — layer-wise activation patching (paper Fig. 1).

For every layer ℓ, run the *target* model with its activation at ``blocks.ℓ.hook_{hook}`` replaced by
the *source* model's activation on the same tokens. The change in Δlogp is the layer's **effect**.
The main direction is tuned→base: does the tuned model's layer-ℓ state, dropped into the base
model, make the base prefer the chosen completion more?

With ``scope="all"`` and ``resid_post`` the last layer hands the base (almost) the tuned model's
final state, so the curve tends to rise with depth; that is why the suite reports both the peak
(argmax) and the onset (first layer reaching half of the maximum).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

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
from alignment_probe.experiments.rows import summarize_per_layer, swept_only
from alignment_probe.interventions import Intervention, Replace
from alignment_probe.vocab import HOOKS

DIRECTIONS = {"patch_tuned_to_base": ("base", "tuned"), "patch_base_to_tuned": ("tuned", "base")}


def layer_sweep(
    experiment: str,
    *,
    target: str,
    source: str,
    layers: Iterable[int],
    hooks: Sequence[str] = ("resid_post",),
    scopes: Sequence[str] = ("all",),
    sides: str = "both",
    intervention: Intervention | None = None,
    param: float = float("nan"),
    split: str = "all",
    pair_ids: frozenset[int] | None = None,
) -> list[PatchSpec]:
    """One condition per (hook, scope, layer): the building block of every per-layer experiment."""
    intervention = intervention or Replace()
    return [
        PatchSpec(RowKey(experiment, target, source, hook, scope, sides, layer, param, split), intervention, pair_ids)
        for hook in hooks
        for scope in scopes
        for layer in layers
    ]


def patching_specs(
    n_layers: int,
    *,
    hooks: Sequence[str] = ("resid_post",),
    scopes: Sequence[str] = ("all",),
    experiments: Sequence[str] = ("patch_tuned_to_base",),
) -> list[PatchSpec]:
    """E1 tuned→base (and, when asked, the reverse direction of E3) over all layers."""
    specs: list[PatchSpec] = []
    for name in experiments:
        target, source = DIRECTIONS[name]
        specs += layer_sweep(name, target=target, source=source, layers=range(n_layers), hooks=hooks, scopes=scopes)
    return specs


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    names = [e for e in DIRECTIONS if e in plan.selected]
    extras = [e for e in names if cfg.reverse_extras or e == "patch_tuned_to_base"]
    specs = patching_specs(
        plan.n_layers, hooks=(cfg.hook, *cfg.extra_hooks), scopes=(cfg.scope, *cfg.extra_scopes), experiments=extras
    )
    if len(extras) < len(names):  # the reverse direction at the main hook and scope only (SuiteConfig.reverse_extras)
        specs += patching_specs(
            plan.n_layers, hooks=(cfg.hook,), scopes=(cfg.scope,), experiments=["patch_base_to_tuned"]
        )
    return swept_only(plan, specs)


def summarize_patching(tables: Tables) -> dict[str, dict[str, Any]]:
    """The per-layer summary at the default hook; with extra hooks (``--extra-hooks``), also ``by_hook``:
    hook → the per-layer list at the default scope, so components share one figure (E7), each cell with its
    max-|t| band over the layers × hooks map (``band_low``/``band_high``; ``by_hook_map``: {m, critical, rule}),
    and ``by_hook_peak_set``: hook → its peak set."""
    out = summarize_per_layer(tables)
    cfg = tables.cfg
    for name, entry in out.items():
        rows = tables.effects[
            (tables.effects.experiment == name) & (tables.effects.scope == cfg.scope) & (tables.effects.split == "all")
        ]
        hooks = [h for h in HOOKS if h in set(rows.hook)]
        if len(hooks) > 1:
            entry["by_hook"] = {
                h: stats.per_layer_summary(rows[rows.hook == h], seed=cfg.seed, n_boot=cfg.n_boot) for h in hooks
            }
            entry["by_hook_peak_set"] = {
                h: stats.peak_set(*_matrix(rows[rows.hook == h]), seed=cfg.seed, n_boot=cfg.n_boot)["peak_set"]
                for h in hooks
            }
            cells = [dict(r, hook=h) for h in hooks for r in entry["by_hook"][h]]
            entry["by_hook_map"] = heldout.banded(
                rows[rows.hook.isin(hooks)], ("hook", "layer"), cells, ("hook", "layer"), cfg
            )
            for cell in cells:  # the bands back into by_hook's rows (which keep their keys)
                row = next(r for r in entry["by_hook"][cell["hook"]] if r["layer"] == cell["layer"])
                row["band_low"], row["band_high"] = cell["band_low"], cell["band_high"]
    return out


def _matrix(rows: Any) -> tuple[Any, list[int]]:
    matrix, _, layers = stats.effect_matrix(rows)
    return matrix, layers


def components_figure(summary: Mapping[str, Any]) -> Any:
    """E7 components: tuned → base patched at each hook point run (``resid_post``, ``attn_out``, ``mlp_out``
    …), one line with its CI band per hook, on one figure."""
    entry = P.experiment(summary, "patch_tuned_to_base")
    by_hook = (entry or {}).get("by_hook")
    if not by_hook:
        raise P.MissingExperimentError("components", ["patch_tuned_to_base at more than one hook (--extra-hooks)"])
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = {
        "resid_post": "#1f77b4",
        "attn_out": "#ff7f0e",
        "mlp_out": "#2ca02c",
        "resid_mid": "#9467bd",
        "resid_pre": "#8c564b",
    }
    layers: list[int] = []
    for hook, rows in by_hook.items():
        frame = P.per_layer_frame(rows)
        P.add_curve(fig, frame, name=f"tuned → base @ {hook}", color=palette.get(hook, "#7f7f7f"), group=hook)
        layers += frame["layer"].tolist()
    P.zero_line(fig)
    P.layer_ticks(fig, layers)
    return P.layout(fig, "Components: tuned → base at each hook point (E7)")


register(
    Experiment(
        key="patching",
        method="E1",
        order=10,
        names=(
            Name(
                "patch_tuned_to_base",
                "tuned → base",
                "#1f77b4",
                "Patch the tuned model's activation at one layer into the base (paper Fig. 1).",
            ),
            Name(
                "patch_base_to_tuned",
                "base → tuned",
                "#d62728",
                "The reverse direction: base activations into the tuned model (control A1).",
                method="E3",
            ),
        ),
        specs=_specs,
        summarize=summarize_patching,
        figures=(
            Figure(
                "layer_curve",
                "alignment_probe.experiments.figures:layer_curve",
                "Per-layer effect, tuned → base (paper Fig. 1)",
                "Paper Fig. 1. Mean effect of patching the tuned model's activations into the base at each "
                "layer, with 95% bootstrap CI. ★ peak layer (argmax of the mean), ◆ onset layer (first layer "
                "reaching half the maximum); horizontal bars are their bootstrap CIs.",
                needs=("patch_tuned_to_base",),
                order=10,
            ),
            Figure(
                "directionality",
                "alignment_probe.experiments.figures:directionality",
                "Directionality (paper A1, Fig. 5)",
                "Paper Fig. 5 (A1). Both directions; base → tuned is measured against the tuned model's own "
                "Δlogp, so removing the tuning shows as a negative effect.",
                needs=("patch_tuned_to_base", "patch_base_to_tuned"),
                order=20,
            ),
            Figure(
                "components",
                "alignment_probe.experiments.patching:components_figure",
                "Components: attention, MLP and residual stream (E7)",
                "E7. The tuned → base patch at each hook point of each block: the residual stream after the block "
                "(resid_post) and the outputs of its attention (attn_out) and MLP (mlp_out), with 95% bootstrap "
                "CIs. A block whose MLP output alone carries the effect is where that part of the tuning sits.",
                needs=("patch_tuned_to_base",),
                order=15,
            ),
        ),
    )
)

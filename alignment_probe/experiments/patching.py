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

from typing import Iterable, Sequence

from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, register
from alignment_probe.experiments.rows import summarize_per_layer, swept_only
from alignment_probe.interventions import Intervention, Replace

DIRECTIONS = {"patch_tuned_to_base": ("base", "tuned"), "patch_base_to_tuned": ("tuned", "base")}


def layer_sweep(experiment: str, *, target: str, source: str, layers: Iterable[int], hooks: Sequence[str] = ("resid_post",),
                scopes: Sequence[str] = ("all",), sides: str = "both", intervention: Intervention | None = None,
                param: float = float("nan"), split: str = "all", pair_ids: frozenset[int] | None = None) -> list[PatchSpec]:
    """One condition per (hook, scope, layer): the building block of every per-layer experiment."""
    intervention = intervention or Replace()
    return [PatchSpec(RowKey(experiment, target, source, hook, scope, sides, layer, param, split), intervention, pair_ids)
            for hook in hooks for scope in scopes for layer in layers]


def patching_specs(n_layers: int, *, hooks: Sequence[str] = ("resid_post",), scopes: Sequence[str] = ("all",),
                   experiments: Sequence[str] = ("patch_tuned_to_base",)) -> list[PatchSpec]:
    """E1 tuned→base (and, when asked, the reverse direction of E3) over all layers."""
    specs: list[PatchSpec] = []
    for name in experiments:
        target, source = DIRECTIONS[name]
        specs += layer_sweep(name, target=target, source=source, layers=range(n_layers), hooks=hooks, scopes=scopes)
    return specs


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    return swept_only(plan, patching_specs(plan.n_layers, hooks=(cfg.hook, *cfg.extra_hooks),
                                           scopes=(cfg.scope, *cfg.extra_scopes),
                                           experiments=[e for e in DIRECTIONS if e in plan.selected]))


register(Experiment(
    key="patching", method="E1", order=10,
    names=(Name("patch_tuned_to_base", "tuned → base", "#1f77b4",
                "Patch the tuned model's activation at one layer into the base (paper Fig. 1)."),
           Name("patch_base_to_tuned", "base → tuned", "#d62728",
                "The reverse direction: base activations into the tuned model (control A1).", method="E3")),
    specs=_specs, summarize=summarize_per_layer,
    figures=(
        Figure("layer_curve", "alignment_probe.report.figures:layer_curve",
               "Per-layer effect, tuned → base (paper Fig. 1)",
               "Paper Fig. 1. Mean effect of patching the tuned model's activations into the base at each "
               "layer, with 95% bootstrap CI. ★ peak layer (argmax of the mean), ◆ onset layer (first layer "
               "reaching half the maximum); horizontal bars are their bootstrap CIs.",
               needs=("patch_tuned_to_base",), order=10),
        Figure("directionality", "alignment_probe.report.figures:directionality",
               "Directionality (paper A1, Fig. 5)",
               "Paper Fig. 5 (A1). Both directions; base → tuned is measured against the tuned model's own "
               "Δlogp, so removing the tuning shows as a negative effect.",
               needs=("patch_tuned_to_base", "patch_base_to_tuned"), order=20),
    ),
))

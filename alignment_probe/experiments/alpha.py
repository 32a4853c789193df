"""E4 — α-interpolation, the dose-response of a patch (appendix A3).

h = h_base + α (h_tuned − h_base) at layer ℓ: α = 0 is the base model, α = 1 is full tuned→base
patching, α > 1 extrapolates past the tuned state. A layer that really carries the tuning should
give a smooth, monotone curve; the suite reports Spearman ρ between α and the mean effect.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from alignment_probe import stats
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, Tables, register
from alignment_probe.experiments.rows import default_rows
from alignment_probe.interventions import Interpolate

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5)


def alpha_specs(layers: Iterable[int], *, alphas: Sequence[float] = DEFAULT_ALPHAS, hook: str = "resid_post",
                scope: str = "all") -> list[PatchSpec]:
    layers = list(layers)
    return [spec for a in alphas for spec in layer_sweep("alpha", target="base", source="tuned", layers=layers,
                                                         hooks=(hook,), scopes=(scope,), intervention=Interpolate(a),
                                                         param=float(a))]


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    layers = cfg.alpha_layers if cfg.alpha_layers is not None else cfg.swept_layers(plan.n_layers)
    return alpha_specs(layers, alphas=cfg.alphas, hook=cfg.hook, scope=cfg.scope)


def summarize_alpha(tables: Tables) -> dict[str, dict[str, Any]]:
    """Per α the per-layer curve; at α = 1 (else the largest α) the usual per-layer summary; Spearman ρ
    between α and the mean effect at every layer (the dose-response's monotonicity)."""
    cfg = tables.cfg
    rows = default_rows(tables.effects, "alpha", cfg)
    alphas = sorted(rows.param.unique().tolist())
    by_alpha = {repr(a): stats.per_layer_summary(rows[rows.param == a], seed=cfg.seed, n_boot=cfg.n_boot) for a in alphas}
    reference = 1.0 if 1.0 in alphas else max(alphas)
    out = stats.summarize_experiment(rows[rows.param == reference], seed=cfg.seed, n_boot=cfg.n_boot)
    rho = {}
    for layer in sorted(rows.layer.unique()):
        means = [float(rows[(rows.param == a) & (rows.layer == layer)].effect.mean()) for a in alphas]
        rho[int(layer)] = stats.spearman_monotonicity(alphas, means)
    return {"alpha": out | {"alphas": alphas, "per_layer_alpha": reference, "by_alpha": by_alpha, "spearman_rho": rho}}


register(Experiment(
    key="alpha", method="E4", order=30, batch_order=45,
    names=(Name("alpha", "α-interpolation", "#8c564b",
                "h_base + α (h_tuned − h_base) at each layer: the dose-response of a patch (A3)."),),
    specs=_specs, summarize=summarize_alpha,
    figures=(Figure("alpha_dose_response", "alignment_probe.report.figures:alpha_dose_response",
                    "α dose-response (paper A3, Fig. 7)",
                    "Paper Fig. 7 (A3). h = h_base + α (h_tuned − h_base); Spearman ρ in the legend.",
                    needs=("alpha",), order=40),),
))

"""E4 — α-interpolation, the dose-response of a patch (appendix A3).

h = h_base + α (h_tuned − h_base) at layer ℓ: α = 0 is the base model, α = 1 is full tuned→base
patching, α > 1 extrapolates past the tuned state. A layer that really carries the tuning should
give a smooth, monotone curve; the suite reports Spearman ρ between α and the mean effect.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from alignment_probe import stats
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import heldout
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, Plan, Tables, register
from alignment_probe.experiments.rows import default_rows
from alignment_probe.interventions import Interpolate

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5)


def alpha_specs(
    layers: Iterable[int], *, alphas: Sequence[float] = DEFAULT_ALPHAS, hook: str = "resid_post", scope: str = "all"
) -> list[PatchSpec]:
    layers = list(layers)
    return [
        spec
        for a in alphas
        for spec in layer_sweep(
            "alpha",
            target="base",
            source="tuned",
            layers=layers,
            hooks=(hook,),
            scopes=(scope,),
            intervention=Interpolate(a),
            param=float(a),
        )
    ]


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    layers = cfg.alpha_layers if cfg.alpha_layers is not None else cfg.layers_for("alpha", plan.n_layers)
    return alpha_specs(layers, alphas=cfg.alphas, hook=cfg.hook, scope=cfg.scope)


def summarize_alpha(tables: Tables) -> dict[str, dict[str, Any]]:
    """Per α the per-layer curve; at α = 1 (else the largest α) the usual per-layer summary; Spearman ρ
    between α and the mean effect at every layer (the dose-response's monotonicity)."""
    cfg = tables.cfg
    rows = default_rows(tables.effects, "alpha", cfg)
    alphas = sorted(rows.param.unique().tolist())
    by_alpha = {
        repr(a): stats.per_layer_summary(rows[rows.param == a], seed=cfg.seed, n_boot=cfg.n_boot) for a in alphas
    }
    reference = 1.0 if 1.0 in alphas else max(alphas)
    out = stats.summarize_experiment(rows[rows.param == reference], seed=cfg.seed, n_boot=cfg.n_boot)
    rho = {}
    for layer in sorted(rows.layer.unique()):
        means = [float(rows[(rows.param == a) & (rows.layer == layer)].effect.mean()) for a in alphas]
        rho[int(layer)] = stats.spearman_monotonicity(alphas, means)
    out = out | {"alphas": alphas, "per_layer_alpha": reference, "by_alpha": by_alpha, "spearman_rho": rho}
    at = at_chosen_layer(rows, alphas, reference, tables)
    if at is not None:
        out["selection"] = at.pop("selection")
        out["at_chosen_layer"] = at
    return {"alpha": out}


def at_chosen_layer(rows: Any, alphas: Sequence[float], reference: float, tables: Tables) -> dict[str, Any] | None:
    """The dose-response at the layer handed to α, chosen on the explore pairs and reported on the confirm pairs
    (statistics.md): E1's explore-half peak when E1's rows are in the table, else α's own explore-half peak at the
    reference α. Returns ``{"layer", "chosen_by", "by_alpha": [{alpha, mean, ci_low, ci_high, n}] (confirm pairs),
    "spearman_rho" (confirm means), "selection"}`` (``selection.confirm``: the reference α's effect at that layer
    on the confirm pairs), or None (fewer than two pairs, or the layer was not swept by α)."""

    cfg = tables.cfg
    ids = heldout.run_pair_ids(tables, rows)
    explore, confirm = heldout.split(cfg, ids)
    e1 = default_rows(tables.effects, "patch_tuned_to_base", cfg)
    source = e1 if len(e1) and e1.pair_id.nunique() >= 2 else rows[rows.param == reference]
    chosen_by = (
        "patch_tuned_to_base: its peak chosen on the explore pairs"
        if source is e1
        else f"alpha: its own peak at α = {reference:g} chosen on the explore pairs"
    )
    matrix, pair_ids, layers = stats.effect_matrix(source)
    pick = heldout.choose(matrix, pair_ids, layers, cfg, explore=explore, confirm=confirm, top=0, what="layer")
    if pick is None or pick["chosen"] not in set(int(v) for v in rows.layer):
        return None
    layer = int(pick["chosen"])
    at = rows[rows.layer == layer]
    by_alpha = []
    for a in alphas:
        values = at[(at.param == a) & at.pair_id.isin(confirm)].sort_values("pair_id").effect.to_numpy()
        mean, lo, hi = stats.bootstrap_mean_ci(values, seed=cfg.seed, n_boot=cfg.n_boot)
        by_alpha.append({"alpha": a, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(values))})
    ref = at[(at.param == reference)].set_index("pair_id").effect
    selection = stats.selection_record(
        pick["explore_pair_ids"],
        pick["confirm_pair_ids"],
        layer,
        ref.reindex(pick["confirm_pair_ids"]).to_numpy(),
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        in_sample=ref.reindex(pick["explore_pair_ids"]).to_numpy(),
    )
    selection |= {"chosen_by": chosen_by, "quantity": f"effect at α = {reference:g}"}
    return {
        "layer": layer,
        "chosen_by": chosen_by,
        "pairs": "confirm",
        "by_alpha": by_alpha,
        "spearman_rho": stats.spearman_monotonicity(alphas, [r["mean"] for r in by_alpha]),
        "selection": selection,
    }


register(
    Experiment(
        key="alpha",
        options=(
            Option(
                "alphas", "floats", DEFAULT_ALPHAS, "alpha (E4): the fractions α of the tuned activation patched in"
            ),
            Option("alpha_layers", "layers", None, "layers for the α sweep (default: every swept layer)"),
        ),
        method="E4",
        order=30,
        batch_order=45,
        names=(
            Name(
                "alpha",
                "α-interpolation",
                "#8c564b",
                "h_base + α (h_tuned − h_base) at each layer: the dose-response of a patch (A3).",
            ),
        ),
        specs=_specs,
        summarize=summarize_alpha,
        figures=(
            Figure(
                "alpha_dose_response",
                "alignment_probe.experiments.figures:alpha_dose_response",
                "α dose-response (paper A3, Fig. 7)",
                "Paper Fig. 7 (A3). h = h_base + α (h_tuned − h_base); Spearman ρ in the legend.",
                needs=("alpha",),
                order=40,
            ),
        ),
    )
)

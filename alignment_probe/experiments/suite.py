"""The whole paper, end to end: score, patch (E1, E3, E4, E5), low rank (E6), LASSO (E2), statistics.

:func:`run_suite` is the one place that decides the order, in three stages whose results are kept
as *parts* (see :class:`~alignment_probe.tables.PartStore`), so an interrupted run resumes where it
stopped and ends with the same numbers as an uninterrupted one:

1. per group of ``pairs_per_part`` pairs (in pair-id order): the scores (``scores-<first>-<last>``)
   and every per-layer condition (``stage1-<first>-<last>``, one engine call, so they share batches);
2. low rank at the layer(s) E1 points to (needs all of stage 1): the subspaces are fitted on all
   pairs (``stage2-fit``, the variance explained), then patched per group (``stage2-<first>-<last>``);
3. the LASSO on per-layer activation distances (``lasso``).

The summary is then computed from the concatenated parts, always read back from their stored form,
so it cannot depend on which parts were computed in this process. The groups are a function of the
pair list and ``pairs_per_part`` only, so every run of the same configuration batches the same
sequences together. run.py writes the result to disk and report/ draws it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from alignment_probe import stats
from alignment_probe.effects import EXPERIMENT_NAMES, KEY_COLUMNS
from alignment_probe.engine.spec import HOOKS, Engine, PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.alpha import DEFAULT_ALPHAS, alpha_specs
from alignment_probe.experiments.controls import control_specs
from alignment_probe.experiments.lowrank import (DEFAULT_KS, MODES, fit_for_mode, full_patch_specs, ks_for,
                                                 lowrank_specs, rows_of, stacked_activations)
from alignment_probe.experiments.patching import DIRECTIONS, patching_specs
from alignment_probe.experiments.sources import PER_SEQUENCE, VECTORS, source_specs
from alignment_probe.interventions import SCOPES
from alignment_probe.numerics import check_scores
from alignment_probe.pair import Twins
from alignment_probe.scoring import score_pairs
from alignment_probe.tables import PartStore
from alignment_probe.tokens import TokenizedPair

PER_LAYER = ("patch_tuned_to_base", "patch_base_to_tuned", "identity", "random_noise", "random_direction",
             "source_chosen_only", "source_rejected_only", "vector_chosen", "vector_rejected", "vector_contrast")


@dataclass
class SuiteConfig:
    """Every knob of the suite. Defaults follow docs/method.md; the manifest records all of them."""

    experiments: tuple[str, ...] = EXPERIMENT_NAMES
    hook: str = "resid_post"  # the default hook point every experiment reports on
    scope: str = "all"  # the default position scope
    extra_hooks: tuple[str, ...] = ()  # E1 tuned→base also at these hook points
    extra_scopes: tuple[str, ...] = ()  # ... and these position scopes
    layers: tuple[int, ...] | None = None  # layers the per-layer experiments sweep; None: every layer
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha_layers: tuple[int, ...] | None = None  # None: every swept layer
    vector_scale: float = 1.0
    lowrank_ks: tuple[int, ...] = DEFAULT_KS
    lowrank_layers: tuple[int, ...] | None = None  # None: the peak layer of E1
    lowrank_centre: bool = True
    lowrank_exclude_bos: bool = True
    lasso_position: str = "last_prompt"
    seed: int = 0
    n_boot: int = 2000

    def validate(self, n_layers: int | None = None) -> None:
        """Check names and ranges; ``n_layers=None`` checks what is known before a model loads."""
        unknown = [e for e in self.experiments if e not in EXPERIMENT_NAMES]
        if unknown:
            raise ConfigError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENT_NAMES)}.")
        for h in (self.hook, *self.extra_hooks):
            if h not in HOOKS:
                raise ConfigError(f"unknown hook point {h!r}; choose from {', '.join(HOOKS)}.")
        for s in (self.scope, *self.extra_scopes):
            if s not in SCOPES:
                raise ConfigError(f"unknown position scope {s!r}; choose from {', '.join(SCOPES)}.")
        for layer in (*(self.layers or ()), *(self.alpha_layers or ()), *(self.lowrank_layers or ())):
            if layer < 0 or (n_layers is not None and layer >= n_layers):
                raise ConfigError(f"layer {layer} is out of range: the model has layers 0..{(n_layers or 1) - 1}.")
        if self.layers is not None and len(self.layers) == 0:
            raise ConfigError("--layers is empty; give at least one layer, e.g. --layers 0,4,8, or leave it out to "
                              "sweep every layer.")

    def swept_layers(self, n_layers: int) -> list[int]:
        """The layers every per-layer experiment visits, ascending."""
        return sorted(set(self.layers)) if self.layers is not None else list(range(n_layers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SuiteResult:
    scores: pd.DataFrame
    effects: pd.DataFrame
    summary: dict[str, Any]
    lasso: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def per_layer_specs(cfg: SuiteConfig, n_layers: int) -> list[PatchSpec]:
    """Every condition that sweeps layers, for one shared engine call.

    ``cfg.layers`` keeps a subset of the layers. The conditions are built for every layer and then
    filtered (random controls are seeded per layer), so a row of a subset run equals the same row of
    a full sweep: a coarse sweep of a large model can be refined later without changing a number.
    """
    wanted = set(cfg.experiments)
    if wanted & set(MODES):
        wanted.add("patch_tuned_to_base")  # low rank needs E1's peak layer
    specs = patching_specs(n_layers, hooks=(cfg.hook, *cfg.extra_hooks), scopes=(cfg.scope, *cfg.extra_scopes),
                           experiments=[e for e in DIRECTIONS if e in wanted])
    specs += control_specs(n_layers, experiments=sorted(wanted), seed=cfg.seed, hook=cfg.hook, scope=cfg.scope)
    specs += source_specs(n_layers, experiments=[e for e in (*PER_SEQUENCE, *VECTORS) if e in wanted], hook=cfg.hook,
                          scope=cfg.scope, vector_scale=cfg.vector_scale)
    keep = set(cfg.swept_layers(n_layers))
    specs = [s for s in specs if s.key.layer in keep]
    if "alpha" in wanted:
        layers = cfg.alpha_layers if cfg.alpha_layers is not None else sorted(keep)
        specs += alpha_specs(layers, alphas=cfg.alphas, hook=cfg.hook, scope=cfg.scope)
    return specs


def default_rows(effects: pd.DataFrame, experiment: str, cfg: SuiteConfig) -> pd.DataFrame:
    rows = effects[(effects.experiment == experiment) & (effects.hook == cfg.hook) & (effects.split == "all")]
    if experiment.startswith("vector_"):
        return rows[rows.scope == "completion"]
    return rows[rows.scope == cfg.scope]


def summarize_alpha(effects: pd.DataFrame, cfg: SuiteConfig) -> dict[str, Any]:
    rows = default_rows(effects, "alpha", cfg)
    alphas = sorted(rows.param.unique().tolist())
    by_alpha = {repr(a): stats.per_layer_summary(rows[rows.param == a], seed=cfg.seed, n_boot=cfg.n_boot) for a in alphas}
    reference = 1.0 if 1.0 in alphas else max(alphas)
    out = stats.summarize_experiment(rows[rows.param == reference], seed=cfg.seed, n_boot=cfg.n_boot)
    rho = {}
    for layer in sorted(rows.layer.unique()):
        means = [float(rows[(rows.param == a) & (rows.layer == layer)].effect.mean()) for a in alphas]
        rho[int(layer)] = stats.spearman_monotonicity(alphas, means)
    return out | {"alphas": alphas, "per_layer_alpha": reference, "by_alpha": by_alpha, "spearman_rho": rho}


def ratio_of_means(num: np.ndarray, den: np.ndarray, *, seed: int, n_boot: int) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a paired percentile bootstrap over pairs."""
    point = float(num.mean() / den.mean()) if den.mean() != 0 else math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = num[idx].mean(1) / den[idx].mean(1)
    boots = boots[np.isfinite(boots)]
    if len(boots) == 0:
        return point, math.nan, math.nan
    return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


@dataclass
class LowRankFit:
    """What E6 fitted at ``layers``: the conditions to patch, and the variance explained per (mode, layer, k)."""

    specs: list[PatchSpec]
    variance: dict[tuple[str, int, int], float]


def lowrank_context(pair: Twins, tokenized: Sequence[TokenizedPair], cfg: SuiteConfig) -> dict[str, Any]:
    """Modes, position scope, ks and the fit/held-out halves of E6 (cheap; no forward pass)."""
    ids = [t.pair_id for t in tokenized]
    fit_ids, heldout_ids = stats.split_halves(ids, seed=cfg.seed)
    return {"modes": [m for m in MODES if m in cfg.experiments],
            "scope": "all_but_bos" if cfg.lowrank_exclude_bos and cfg.scope == "all" else cfg.scope,
            "ks": ks_for(pair.d_model, cfg.lowrank_ks), "fit_ids": fit_ids, "heldout_ids": heldout_ids}


def fit_lowrank(pair: Twins, tokenized: Sequence[TokenizedPair], cfg: SuiteConfig,
                layers: Sequence[int]) -> LowRankFit:
    """E6's subspaces at ``layers``, fitted on all pairs and on the fit half, as patch conditions."""
    ctx = lowrank_context(pair, tokenized, cfg)
    modes, scope, ks = ctx["modes"], ctx["scope"], ctx["ks"]
    specs: list[PatchSpec] = full_patch_specs(layers, hook=cfg.hook, scope=scope)
    variance: dict[tuple[str, int, int], float] = {}
    for layer in layers:
        acts_all = stacked_activations(pair, tokenized, layer=layer, hook=cfg.hook, exclude_bos=cfg.lowrank_exclude_bos)
        acts_fit = rows_of(acts_all, ctx["fit_ids"])
        for name in modes:
            sub_all = fit_for_mode(MODES[name], acts_all, centre=cfg.lowrank_centre)
            sub_fit = fit_for_mode(MODES[name], acts_fit, centre=cfg.lowrank_centre)
            specs += lowrank_specs(name, sub_all, layer=layer, ks=ks, hook=cfg.hook, scope=scope)
            specs += lowrank_specs(name, sub_fit, layer=layer, ks=ks, hook=cfg.hook, scope=scope, split="heldout",
                                   pair_ids=frozenset(ctx["heldout_ids"]))
            for k in ks:
                variance[(name, layer, k)] = sub_all.variance_explained(k)
    return LowRankFit(specs, variance)


def summarize_lowrank(effects: pd.DataFrame, ctx: dict[str, Any], variance: dict[tuple[str, int, int], float],
                      cfg: SuiteConfig, layers: Sequence[int]) -> dict[str, Any]:
    """E6's effect ratios (low-rank effect / full-patch effect) per mode, layer and k, with CIs."""
    ks = ctx["ks"]
    full = effects[effects.experiment == "lowrank_full"]
    out: dict[str, Any] = {}
    for name in ctx["modes"]:
        rows, by_k = effects[effects.experiment == name], []
        for layer in layers:
            den = full[full.layer == layer].set_index("pair_id").effect
            for k in ks:
                sel = rows[(rows.layer == layer) & (rows.param == k)]
                num_all = sel[sel.split == "all"].set_index("pair_id").effect.reindex(den.index)
                num_held = sel[sel.split == "heldout"].set_index("pair_id").effect
                r, lo, hi = ratio_of_means(num_all.to_numpy(), den.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
                hr, hlo, hhi = ratio_of_means(num_held.to_numpy(), den.reindex(num_held.index).to_numpy(),
                                              seed=cfg.seed, n_boot=cfg.n_boot)
                by_k.append({"layer": int(layer), "k": int(k), "effect_mean": float(num_all.mean()),
                             "full_effect_mean": float(den.mean()), "effect_ratio": r, "effect_ratio_ci": [lo, hi],
                             "heldout_effect_ratio": hr, "heldout_effect_ratio_ci": [hlo, hhi],
                             "variance_explained": variance[(name, int(layer), int(k))]})
        k_ref = 4 if 4 in ks else ks[0]
        per_layer_rows = rows[(rows.split == "all") & (rows.param == k_ref)]
        summary = stats.summarize_experiment(per_layer_rows, seed=cfg.seed, n_boot=cfg.n_boot)
        out[name] = summary | {"layers": [int(x) for x in layers], "ks": ks, "per_layer_k": k_ref, "by_k": by_k,
                               "scope": ctx["scope"], "centre": cfg.lowrank_centre, "fit_pairs": len(ctx["fit_ids"]),
                               "heldout_pairs": len(ctx["heldout_ids"])}
    return out


def run_lowrank(pair: Twins, tokenized: Sequence[TokenizedPair], engine: Engine, cfg: SuiteConfig,
                layers: Sequence[int], *, progress: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """E6 at ``layers`` in one go (no parts): fit on all pairs and on the fit half, patch, summarise."""
    fit = fit_lowrank(pair, tokenized, cfg, layers)
    effects = engine.run(pair, tokenized, fit.specs, progress=progress)
    return effects, summarize_lowrank(effects, lowrank_context(pair, tokenized, cfg), fit.variance, cfg, layers)


def gain_summary(scores: pd.DataFrame, cfg: SuiteConfig) -> dict[str, Any]:
    mean, lo, hi = stats.bootstrap_mean_ci(scores.gain.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    pt_mean, pt_lo, pt_hi = stats.bootstrap_mean_ci(scores.gain_per_token.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    return {"n_pairs": int(len(scores)), "base_delta_logp_mean": float(scores.base_delta_logp.mean()),
            "tuned_delta_logp_mean": float(scores.tuned_delta_logp.mean()), "gain_mean": mean, "gain_ci": [lo, hi],
            "gain_per_token_mean": pt_mean, "gain_per_token_ci": [pt_lo, pt_hi]}


DEFAULT_PAIRS_PER_PART = 8


def pair_groups(tokenized: Sequence[TokenizedPair], pairs_per_part: int | None) -> list[list[TokenizedPair]]:
    """Consecutive groups of ``pairs_per_part`` pairs in pair-id order (one group if None)."""
    if pairs_per_part is not None and pairs_per_part < 1:
        raise ConfigError(f"--pairs-per-part must be at least 1, got {pairs_per_part}.")
    ordered = sorted(tokenized, key=lambda t: t.pair_id)
    size = pairs_per_part or max(len(ordered), 1)
    return [ordered[i: i + size] for i in range(0, len(ordered), size)]


def group_tag(group: Sequence[TokenizedPair]) -> str:
    return f"{group[0].pair_id:06d}-{group[-1].pair_id:06d}"


def canonical_effects(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of an effects table → one table in the canonical row order (that of ``to_frame``)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)


def run_suite(pair: Twins, tokenized: Sequence[TokenizedPair], engine: Engine, cfg: SuiteConfig | None = None, *,
              progress: bool = False, log: Callable[[str], None] = lambda s: None, store: PartStore | None = None,
              pairs_per_part: int | None = DEFAULT_PAIRS_PER_PART) -> SuiteResult:
    """Run the chosen experiments on a loaded pair and tokenised pairs.

    ``store`` keeps each stage's parts (a folder for a resumable run; in memory by default):
    parts it already holds are loaded, not recomputed.
    """
    cfg = cfg or SuiteConfig()
    cfg.validate(pair.n_layers)
    store = store if store is not None else PartStore()
    tokenized = sorted(tokenized, key=lambda t: t.pair_id)
    groups = pair_groups(tokenized, pairs_per_part)
    specs = per_layer_specs(cfg, pair.n_layers)

    # Stage 1: scores and every per-layer condition, one group of pairs at a time.
    log(f"stage 1: scoring and {len(specs)} per-layer conditions × {len(tokenized)} pairs in {len(groups)} "
        f"part(s) ({engine.name} engine)")
    score_parts, effect_parts = [], []
    for n, group in enumerate(groups, 1):
        tag = group_tag(group)
        done = store.has(f"scores-{tag}.parquet") and (not specs or store.has(f"stage1-{tag}.parquet"))

        def score(group: list[TokenizedPair] = group) -> pd.DataFrame:
            table = score_pairs(pair, group, progress=False)
            check_scores(pair, table, group)  # NaN/inf: names the pair, model and layer
            return table

        score_parts.append(store.table(f"scores-{tag}", score))
        if specs:
            effect_parts.append(store.table(f"stage1-{tag}", lambda g=group: engine.run(pair, g, specs,
                                                                                       progress=progress)))
        log(f"stage 1: part {n}/{len(groups)} (pair_id {group[0].pair_id}–{group[-1].pair_id}) "
            f"{'already done' if done else 'done'}")
    scores = pd.concat(score_parts, ignore_index=True).sort_values("pair_id", kind="stable").reset_index(drop=True)
    summary: dict[str, Any] = {"n_layers": pair.n_layers} | gain_summary(scores, cfg) | {"experiments": {}}
    tables = []
    if specs:
        effects = canonical_effects(effect_parts)
        tables.append(effects)
        for name in PER_LAYER:
            if name in cfg.experiments:
                summary["experiments"][name] = stats.summarize_experiment(default_rows(effects, name, cfg),
                                                                          seed=cfg.seed, n_boot=cfg.n_boot)
        if "alpha" in cfg.experiments:
            summary["experiments"]["alpha"] = summarize_alpha(effects, cfg)

    # Stage 2: low rank at E1's peak layer (or the layers asked for).
    if set(MODES) & set(cfg.experiments):
        e1 = summary["experiments"].get("patch_tuned_to_base") or stats.summarize_experiment(
            default_rows(tables[0], "patch_tuned_to_base", cfg), seed=cfg.seed, n_boot=cfg.n_boot)
        layers = [int(x) for x in (cfg.lowrank_layers if cfg.lowrank_layers is not None else [e1["peak_layer"]])]
        ctx = lowrank_context(pair, tokenized, cfg)
        names = [f"stage2-{group_tag(g)}.parquet" for g in groups]
        fitted: list[LowRankFit] = []

        def fit() -> LowRankFit:
            if not fitted:
                log(f"stage 2: fitting low-rank subspaces at layer(s) {layers}")
                fitted.append(fit_lowrank(pair, tokenized, cfg, layers))
            return fitted[0]

        if not (store.has("stage2-fit.json") and all(store.has(n) for n in names)):
            fit()  # some part is missing: its conditions need the subspaces
        saved = store.json("stage2-fit", lambda: {"layers": layers, "variance": [
            [name, layer, k, v] for (name, layer, k), v in sorted(fit().variance.items())]})
        variance = {(name, int(layer), int(k)): float(v) for name, layer, k, v in saved["variance"]}
        lr_parts = []
        for n, (group, name) in enumerate(zip(groups, names), 1):
            done = store.has(name)
            lr_parts.append(store.table(name.removesuffix(".parquet"),
                                        lambda g=group: engine.run(pair, g, fit().specs, progress=progress)))
            log(f"stage 2: part {n}/{len(groups)} (pair_id {group[0].pair_id}–{group[-1].pair_id}) "
                f"{'already done' if done else 'done'}")
        lr_effects = canonical_effects(lr_parts)
        tables.append(lr_effects)
        summary["experiments"].update(summarize_lowrank(lr_effects, ctx, variance, cfg, layers))

    # Stage 3: the LASSO (needs every pair at once).
    lasso = None
    if "lasso" in cfg.experiments:
        from alignment_probe.experiments.lasso import run_lasso

        def fit_lasso() -> dict[str, Any]:
            log("stage 3: LASSO on per-layer activation distances")
            return run_lasso(pair, tokenized, target=scores.gain.to_numpy(), seed=cfg.seed)

        lasso = store.json("lasso", fit_lasso)
        summary["experiments"]["lasso"] = lasso
    effects = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return SuiteResult(scores=scores, effects=effects, summary=summary, lasso=lasso)

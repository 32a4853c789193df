"""E6 — low-rank reconstruction (appendix A5, Table 2).

Stack the tuned model's activations at one layer over all tokens of all pairs into H (N·T × d)
and find its principal directions (SVD). Then patch only what lives in the top-k directions:

* ``reconstruct`` (the paper's literal reading): the base sees the rank-k reconstruction of the
  tuned activation, ``(h_tuned − μ) V_k V_kᵀ + μ``.
* ``difference``: the directions are those of D = H_tuned − H_base, and the base moves by the part
  of the tuning shift inside them, ``h_base + P_k (h_tuned − h_base)``.

The **effect ratio** is the mean low-rank effect divided by the mean effect of the full patch at
the same layer and scope (``lowrank_full`` rows); the **variance explained** is the share of
squared singular values in the top k. The BOS position is left out of the fit and of the patch by
default (its norm dominates residual streams). The subspace is fitted on all pairs, and also on the explore
half with the effect measured on the confirm half (``split = "heldout"`` rows): the summary's headline,
``selection.confirm``, is that held-out ratio; the all-pairs ratio is in-sample. The layer is E1's peak chosen
on the explore pairs (``--lowrank-layers`` overrides it).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.experiments import heldout
from alignment_probe.experiments.registry import Experiment, Figure, Fitted, Name, Option, Plan, Tables, register
from alignment_probe.experiments.rows import default_rows
from alignment_probe.experiments.subspace import Stacked, Subspace, fit_for_mode, rows_of
from alignment_probe.interventions import Project, Replace
from alignment_probe.pair import Twins
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences
from alignment_probe.vocab import LOWRANK_MODES, Hook, Role, check

MODES = LOWRANK_MODES  # experiment name → low-rank mode (defined once, in alignment_probe.vocab)
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@torch.inference_mode()
def stacked_activations(
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    *,
    layer: int,
    hook: Hook = "resid_post",
    models: Iterable[Role] = ("base", "tuned"),
    exclude_bos: bool = True,
    pairs_per_batch: int = 8,
    clean: Mapping[str, Mapping[str, Mapping[Any, Tensor]]] | None = None,
) -> Stacked:
    """Real-token activations of each model at one hook point, stacked over all sequences: [N·T, d].

    The extra key ``"pair_id"`` holds, for every row, the pair it came from (to select a subset).
    ``clean``: the clean activations of a clean pass already made (the suite's, ``Plan.clean``; model → hook
    name → (pair_id, side) → [length, d_model]); then no model runs here."""
    name = hook_name(layer, hook)
    out: dict[str, list[Tensor]] = {m: [] for m in models}
    owner: list[Tensor] = []
    first = 1 if exclude_bos else 0
    for lo in range(0, len(tokenized), pairs_per_batch):
        seqs = pair_sequences(tokenized[lo : lo + pairs_per_batch])
        owner += [torch.full((s.length - first,), s.pair_id, dtype=torch.long) for s in seqs]
        if clean is not None:
            for m in out:
                out[m] += [clean[m][name][(s.pair_id, s.side)][first : s.length].float().cpu() for s in seqs]
            continue
        batch = make_batch(seqs)
        for m in out:
            _, cache = pair.backends()[m].run(batch.tokens, capture=[name], stop_at_layer=layer + 1)
            acts = cache[name].float().cpu()
            out[m] += [acts[i, first : s.length] for i, s in enumerate(seqs)]
    return {m: torch.cat(v) for m, v in out.items()} | {"pair_id": torch.cat(owner)}


def ks_for(d_model: int, ks: Sequence[int]) -> list[int]:
    return sorted({k for k in ks if k <= d_model} | {d_model})


def lowrank_specs(
    experiment: str,
    subspace: Subspace,
    *,
    layer: int,
    ks: Sequence[int],
    hook: Hook,
    scope: str,
    split: str = "all",
    pair_ids: frozenset[int] | None = None,
) -> list[PatchSpec]:
    mode = MODES[check(experiment, MODES, "low-rank experiment")]
    centre = subspace.centre if mode == "reconstruct" else None
    return [
        PatchSpec(
            RowKey(experiment, "base", "tuned", hook, scope, "both", layer, float(k), split),
            Project(mode, subspace.top(k), centre),
            pair_ids,
        )
        for k in ks
    ]


def full_patch_specs(layers: Iterable[int], *, hook: Hook, scope: str) -> list[PatchSpec]:
    """The denominator of the effect ratio: the full tuned→base patch at the same layer and scope."""
    return [
        PatchSpec(RowKey("lowrank_full", "base", "tuned", hook, scope, "both", layer, math.nan, "all"), Replace())
        for layer in layers
    ]


# --------------------------------------------------------------------------------------------------
# the registered experiment: fitted at E1's explore-half peak layer (or --lowrank-layers), then patched per pair


def ratio_of_means(num: np.ndarray, den: np.ndarray, *, seed: int, n_boot: int) -> tuple[float, float, float]:
    """mean(num) / mean(den) with its paired bootstrap CI, under statistics.md's ratio rule
    (:func:`stats.ratio_ci`): NaNs when the denominator's CI spans 0, no resample dropped otherwise."""
    out = stats.ratio_ci(num, den, seed=seed, n_boot=n_boot)
    return out["ratio"], out["ci_low"], out["ci_high"]


def lowrank_context(cfg: Any, d_model: int, pair_ids: Sequence[int]) -> dict[str, Any]:
    """Modes, position scope, ks and the fit/held-out halves of E6 (cheap; no forward pass)."""
    fit_ids, heldout_ids = stats.split_halves(list(pair_ids), seed=cfg.seed)
    return {
        "modes": [m for m in MODES if m in cfg.experiments],
        "scope": "all_but_bos" if cfg.lowrank_exclude_bos and cfg.scope == "all" else cfg.scope,
        "ks": ks_for(d_model, cfg.lowrank_ks),
        "fit_ids": fit_ids,
        "heldout_ids": heldout_ids,
    }


def lowrank_layers(plan: Plan) -> list[int]:
    """--lowrank-layers, else E1's peak layer chosen on the explore pairs (statistics.md: a data-chosen layer is
    chosen on the explore half; E6's held-out ratio is then measured on the confirm half)."""
    cfg = plan.cfg
    if cfg.lowrank_layers is not None:
        return [int(x) for x in cfg.lowrank_layers]
    return [e1_chosen_layer(plan.upstream["patch_tuned_to_base"])]


def e1_chosen_layer(e1: Mapping[str, Any]) -> int:
    """E1's explore-half peak (its ``selection["chosen"]``); its all-pairs peak only when it could not split (fewer
    than two pairs)."""
    sel = e1.get("selection")
    return int(sel["chosen"]) if sel else int(e1["peak_layer"])


def fit_lowrank(plan: Plan) -> Fitted:
    """E6's subspaces at its layers, fitted on all pairs and on the fit half, as patch conditions."""
    cfg, layers = plan.cfg, lowrank_layers(plan)
    ctx = lowrank_context(cfg, plan.d_model, [t.pair_id for t in plan.tokenized])
    modes, scope, ks = ctx["modes"], ctx["scope"], ctx["ks"]
    specs: list[PatchSpec] = full_patch_specs(layers, hook=cfg.hook, scope=scope)
    variance: dict[tuple[str, int, int], float] = {}
    for layer in layers:
        acts_all = stacked_activations(
            plan.twins,
            plan.tokenized,
            layer=layer,
            hook=cfg.hook,
            exclude_bos=cfg.lowrank_exclude_bos,
            clean=plan.clean() if plan.clean is not None else None,
        )
        acts_fit = rows_of(acts_all, ctx["fit_ids"])
        for name in modes:
            sub_all = fit_for_mode(MODES[name], acts_all, centre=cfg.lowrank_centre)
            sub_fit = fit_for_mode(MODES[name], acts_fit, centre=cfg.lowrank_centre)
            specs += lowrank_specs(name, sub_all, layer=layer, ks=ks, hook=cfg.hook, scope=scope)
            specs += lowrank_specs(
                name,
                sub_fit,
                layer=layer,
                ks=ks,
                hook=cfg.hook,
                scope=scope,
                split="heldout",
                pair_ids=frozenset(ctx["heldout_ids"]),
            )
            for k in ks:
                variance[(name, layer, k)] = sub_all.variance_explained(k)
    chosen_by = (
        "--lowrank-layers"
        if cfg.lowrank_layers is not None
        else "patch_tuned_to_base: its peak chosen on the explore pairs"
    )
    return Fitted(
        specs,
        {
            "layers": layers,
            "variance": [[name, layer, k, v] for (name, layer, k), v in sorted(variance.items())],
            "layers_chosen_by": chosen_by,
        },
    )


def _clean_hooks(plan: Plan) -> dict[str, set[str]]:
    """The fit's activations: the default hook at --lowrank-layers, else at every swept layer (E1's peak, where
    the fit happens, is known only after stage 1)."""
    cfg = plan.cfg
    layers = cfg.lowrank_layers if cfg.lowrank_layers is not None else cfg.swept_layers(plan.n_layers)
    names = {hook_name(int(layer), cfg.hook) for layer in layers}
    return {"base": names, "tuned": set(names)}


def summarize_lowrank(tables: Tables) -> dict[str, dict[str, Any]]:
    """E6's effect ratios (low-rank effect / full-patch effect) per mode, layer and k, with CIs."""
    cfg, effects = tables.cfg, tables.effects
    record = tables.fits["lowrank"]
    layers = [int(x) for x in record["layers"]]
    variance = {(name, int(layer), int(k)): float(v) for name, layer, k, v in record["variance"]}
    ctx = lowrank_context(cfg, tables.d_model, tables.scores.pair_id.tolist())
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
                hr, hlo, hhi = ratio_of_means(
                    num_held.to_numpy(), den.reindex(num_held.index).to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot
                )
                by_k.append(
                    {
                        "layer": int(layer),
                        "k": int(k),
                        "effect_mean": float(num_all.mean()),
                        "full_effect_mean": float(den.mean()),
                        "effect_ratio": r,
                        "effect_ratio_ci": [lo, hi],
                        "heldout_effect_ratio": hr,
                        "heldout_effect_ratio_ci": [hlo, hhi],
                        "variance_explained": variance[(name, int(layer), int(k))],
                    }
                )
        k_ref = 4 if 4 in ks else ks[0]
        per_layer_rows = rows[(rows.split == "all") & (rows.param == k_ref)]
        summary = stats.summarize_experiment(per_layer_rows, seed=cfg.seed, n_boot=cfg.n_boot)
        by_layer = {str(layer): _headline(rows, full, layer, k_ref, ctx, record, cfg) for layer in layers}
        head = _headline_layer(layers, effects, cfg)
        out[name] = summary | {
            "layers": [int(x) for x in layers],
            "ks": ks,
            "per_layer_k": k_ref,
            "by_k": by_k,
            "scope": ctx["scope"],
            "centre": cfg.lowrank_centre,
            "fit_pairs": len(ctx["fit_ids"]),
            "heldout_pairs": len(ctx["heldout_ids"]),
            "selection": by_layer.get(str(head)),
            "selection_by_layer": by_layer,
            "effect_ratio_labels": RATIO_LABELS,
        }
    return out


RATIO_LABELS = {
    "effect_ratio": "in-sample: the subspace is fitted on all pairs and the ratio measured on the same pairs",
    "heldout_effect_ratio": (
        "held out: the subspace is fitted on the explore pairs (split 'heldout' rows) and the "
        "ratio measured on the disjoint confirm pairs; the headline (selection.confirm)"
    ),
}


def _headline_layer(layers: Sequence[int], effects: Any, cfg: Any) -> int:
    """The layer E6's headline reports: the only one, else E1's explore-half peak when E1's rows are in the table and
    that layer was fitted, else the first."""
    if len(layers) > 1:
        e1 = default_rows(effects, "patch_tuned_to_base", cfg)
        if len(e1) and e1.pair_id.nunique() >= 2:
            matrix, ids, e1_layers = stats.effect_matrix(e1)
            explore, confirm = heldout.split(cfg, ids)
            pick = heldout.choose(matrix, ids, e1_layers, cfg, explore=explore, confirm=confirm, top=0)
            if pick is not None and pick["chosen"] in layers:
                return int(pick["chosen"])
    return int(layers[0])


def _headline(
    rows: Any, full: Any, layer: int, k: int, ctx: Mapping[str, Any], record: Mapping[str, Any], cfg: Any
) -> dict[str, Any] | None:
    """E6's headline at one layer as a ``selection`` record: the subspace (and, unless --lowrank-layers, the layer)
    chosen on the explore pairs, the ratio at ``k`` measured on the confirm pairs (``confirm``: the ratio, its
    CI under the ratio rule, and numerator and denominator in nats); ``in_sample``: the all-pairs ratio."""
    den = full[full.layer == layer].set_index("pair_id").effect
    sel = rows[(rows.layer == layer) & (rows.param == k)]
    held = sel[sel.split == "heldout"].set_index("pair_id").effect.sort_index()
    every = sel[sel.split == "all"].set_index("pair_id").effect.reindex(den.index)
    if not len(held) or not len(den) or not set(held.index) <= set(den.index):
        return None
    chosen = {
        "layer": int(layer),
        "k": int(k),
        "subspace": "fitted on the explore pairs",
        "layer_chosen_by": record.get("layers_chosen_by", "unrecorded (a run made before this key)"),
    }
    out = stats.selection_record(
        ctx["fit_ids"], ctx["heldout_ids"], chosen, held.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot
    )

    def ratio(num: Any, d: Any, pairs: str) -> dict[str, Any]:
        r = stats.ratio_ci(num, d, seed=cfg.seed, n_boot=cfg.n_boot)
        return {
            "mean": r["ratio"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
            "n": r["n"],
            "defined": r["defined"],
            "numerator": r["numerator"],
            "denominator": r["denominator"],
            "text": r["text"],
            "rule": r["rule"],
            "quantity": f"effect ratio at k = {k} (low-rank effect / full-patch effect)",
            "pairs": pairs,
        }

    out["confirm"] = ratio(held.to_numpy(), den.reindex(held.index).to_numpy(), "confirm")
    if every.notna().all():
        out["in_sample"] = ratio(every.to_numpy(), den.to_numpy(), "all (in-sample: subspace fitted on them)")
    return out


register(
    Experiment(
        key="lowrank",
        options=(
            Option("lowrank_ks", "ints", DEFAULT_KS, "lowrank_* (E6): the ranks k of the subspaces patched"),
            Option("lowrank_layers", "layers", None, "layers for low rank (default: E1's peak layer)"),
            Option("lowrank_centre", "bool", True, "lowrank_*: subtract the mean before the SVD (default: yes)"),
            Option("lowrank_exclude_bos", "bool", True, "lowrank_*: leave BOS out of the fit (default: yes)"),
        ),
        method="E6",
        order=50,
        needs=("patch_tuned_to_base",),
        emits=("lowrank_full",),
        names=(
            Name(
                "lowrank_reconstruct",
                "low-rank: reconstruct",
                "#1f77b4",
                "The base sees a rank-k reconstruction of the tuned activation (the paper's literal reading).",
            ),
            Name(
                "lowrank_difference",
                "low-rank: difference",
                "#ff7f0e",
                "The base moves by the part of the tuning shift inside its top-k directions.",
            ),
        ),
        fit=fit_lowrank,
        clean_hooks=_clean_hooks,
        specs=lambda plan: plan.fitted.specs,
        summarize=summarize_lowrank,
        figures=(
            Figure(
                "lowrank",
                "alignment_probe.experiments.fit_figures:lowrank",
                "Low-rank patching (paper Fig. 4, Table 2)",
                "Paper Fig. 4 / Table 2. Effect of patching a rank-k version of the activations, as a fraction "
                "of the full effect, and the variance the k directions explain; dotted: subspace fitted on one "
                "half of the pairs, evaluated on the other.",
                needs=tuple(MODES),
                order=60,
            ),
        ),
    )
)

"""E11 — steering with the localized direction, as revised on 2026-12-07 (../shared/docs/localization.md, E11;
docs/method.md).

**Positions.** A sequence's *predicting positions* are its last prompt token through its second-to-last
completion token: the positions whose next-token distributions score the completion. They fall in three
classes (``interventions.predicting_classes``): LP, the last prompt token; F, the first K = 8 predicting
completion positions; R, the rest. BOS, the earlier prompt and the last completion token are never steered.

**Halves.** ``stats.explore_confirm`` (= ``stats.split_halves``, the split E1 and E6 use) splits the pairs into a
*fit* (explore) half and a *held-out* (confirm) half. Every vector, the layer ℓ and the scale a come from the fit
half; every number reported as a result is measured once on the held-out half.

**The tuning shift** at layer ℓ (``--hook``, default ``resid_post``) and class c: v_ℓ,c = the mean over the fit
pairs, both runs, of h_T − h_B at the class-c positions. **Steering** the base at ℓ with scale a adds a·v_ℓ,c at
exactly the class-c positions (``AddByClass``, scope ``predicting``); a = 1 adds the mean shift itself.
Effect = Δ(steered B) − Δ(B); recovered fraction = mean effect / mean gain (``stats.ratio_ci``: undefined, NaN,
when the gain's CI spans 0).

**Selection** (``steer_scan``, run before ``steer`` on the fit half): v_ℓ at every swept layer and every scale
of ``--steer-c`` (default 0.5, 1, 2, 4; a = 1 is always included); the chosen (ℓ, a) is the cell whose fit-half
mean effect comes closest to the fit-half mean gain (steering is to reproduce the tuned model's preference; an
overshoot past it is not more of it), ties broken at random (seeded). ``--steer-layer`` fixes ℓ (the scan then
chooses only a; with a single scale there is nothing to choose and no scan). The summary records it as
``selection`` (``stats.selection_record``: the pair ids of both halves, chosen = {layer, scale}, the held-out
value and the fit half's in-sample value beside it).

**Null.** :data:`N_NULL` (100) random directions with the same per-class norms (‖a·v_ℓ,c‖ per class, a Gaussian
direction per class, seeded by (seed, ℓ, draw)) steer the held-out half at the chosen (ℓ, a) (rows
``steer_null``, ``param`` = the draw's index). The summary locates v's held-out mean effect in that null
(``null``: n, percentile, one-sided p = (1 + #draws at or above it)/(n + 1), the null's quantiles). Verdict
"steers" iff the held-out recovered fraction's CI excludes 0 and the effect exceeds the null's 95th percentile.
Each null condition is one forward per sequence from block ℓ + 1 (the fast engine starts at the patched layer).

**Conditions on the held-out half** at the chosen ℓ (``split = "heldout"``, ``param`` = a, every scale of the
grid, scope ``predicting``): ``steer`` (a·v_ℓ,c), and at equal per-class norms ``steer_random`` (draw 0 of the
null), ``steer_contrast`` (E5's v± — the tuned model's mean chosen-completion activation minus its mean
rejected-completion activation — scaled to ‖a·v_ℓ,c‖ per class) and ``steer_lowrank`` (v_ℓ,c projected onto the
top-k principal directions of the fit half's H_T − H_B at the predicting positions, E6's ``difference`` subspace,
renormalised per class); ``steer_pooled``: one vector a·v_ℓ (the shift pooled over all predicting positions) at
every predicting position — what a single vector does; ``steer_reverse`` / ``steer_reverse_random``: the tuned
model with a·v_ℓ,c (the random draw) *subtracted*. At the chosen a only: the class parts ``steer_last_prompt``,
``steer_first``, ``steer_rest`` (v_ℓ,c at one class's positions, nothing elsewhere) and the null.
**Transfer** (``--transfer-data``): ``steer``, ``steer_random``, ``steer_reverse`` with the same vectors on the
other data's pairs (``split = "transfer"``; their gain is tuned − base clean Δlogp read from the rows).
**KL** (computed with the fit, read by the summary): on the held-out half, the mean over predicting positions of
KL(T ‖ B) and KL(T ‖ steered B) at the chosen (ℓ, a); the fraction of KL(T ‖ B) closed = 1 − ratio of the means.

Opt-in (``default=False``): name it, e.g. ``--experiments patch_tuned_to_base,steer`` (``steer`` brings
``steer_scan`` and E1 with it; E1's fit-half peak is recorded for comparison, not used: for tuned → base
``resid_post`` at every position it is the last layer by construction).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.lowrank import fit_subspace
from alignment_probe.experiments.registry import Experiment, Figure, Fitted, Name, Plan, Tables, register
from alignment_probe.experiments.verdicts import AGREES, DIFFERS, INCONCLUSIVE, Finding
from alignment_probe.formatting import fmt
from alignment_probe.formatting import num as _num
from alignment_probe.interventions import POSITION_CLASSES, AddByClass, predicting_classes
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences
from alignment_probe.vocab import HOOKS

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_CS = DEFAULT_SCALES  # the old name of the grid (--steer-c)
DEFAULT_K = 4  # rank of the low-rank baseline (--steer-k)
FIRST_K = 8  # class F: the first K predicting completion positions (localization.md's K = 8)
N_NULL = 100  # random directions in the null (statistics.md: at least 100)
SCOPE = "predicting"
SIDES = "both"

MAIN, RANDOM, CONTRAST, LOWRANK, POOLED = "steer", "steer_random", "steer_contrast", "steer_lowrank", "steer_pooled"
REVERSE, REVERSE_RANDOM, NULL = "steer_reverse", "steer_reverse_random", "steer_null"
SCAN, SCAN_RANDOM = "steer_scan", "steer_scan_random"
LAST_PROMPT, FIRST, REST = "steer_last_prompt", "steer_first", "steer_rest"
CLASS_ONLY = dict(zip(POSITION_CLASSES, (LAST_PROMPT, FIRST, REST)))  # class → its condition
BASELINES = {"random": RANDOM, "contrast": CONTRAST, "lowrank": LOWRANK, "pooled": POOLED}
CURVES = (MAIN, RANDOM, CONTRAST, LOWRANK, POOLED, REVERSE, REVERSE_RANDOM)  # every scale of the grid
TRANSFER = "transfer"  # the extra pair set (and split) of the transfer rows
TRANSFER_CONDITIONS = (MAIN, RANDOM, REVERSE)
TARGET = {REVERSE: "tuned", REVERSE_RANDOM: "tuned"}  # every other condition steers the base

COLORS = {
    MAIN: "#d62728",
    LOWRANK: "#ff7f0e",
    CONTRAST: "#17becf",
    RANDOM: "#7f7f7f",
    POOLED: "#8c564b",
    REVERSE: "#9467bd",
    REVERSE_RANDOM: "#c5b0d5",
    LAST_PROMPT: "#2ca02c",
    FIRST: "#bcbd22",
    REST: "#e377c2",
    NULL: "#aaaaaa",
    SCAN: "#d62728",
    SCAN_RANDOM: "#7f7f7f",
}
LABELS = {
    MAIN: "v_ℓ,c (per-class tuning shift)",
    LOWRANK: "rank-k (E6)",
    CONTRAST: "v± (E5)",
    RANDOM: "random direction (null draw 0)",
    POOLED: "pooled v_ℓ (one vector)",
    REVERSE: "tuned − a·v_ℓ,c",
    REVERSE_RANDOM: "tuned − a·random",
    LAST_PROMPT: "v_ℓ,LP at the last prompt token only",
    FIRST: "v_ℓ,F at the first K positions only",
    REST: "v_ℓ,R at the rest only",
    NULL: "null: random directions",
    SCAN: "v_ℓ,c (fit half)",
    SCAN_RANDOM: "random direction (fit half, a = 1)",
}
RULE_SCAN = (
    "(ℓ, a) whose fit-half mean effect is closest to the fit-half mean gain over the swept layers and "
    "scales (ties at random), reported on the held-out half"
)
RULE_SCALE = "--steer-layer; a whose fit-half mean effect is closest to the fit-half mean gain"
RULE_OVERRIDE = "--steer-layer (one scale: nothing chosen)"


def steer_scales(cfg: Any) -> list[float]:
    """The scale grid a: ``--steer-c`` (default 0.5, 1, 2, 4), always with a = 1 (the mean shift itself)."""
    scales = {float(a) for a in (cfg.steer_cs if cfg.steer_cs is not None else DEFAULT_SCALES)} | {1.0}
    bad = [a for a in scales if not math.isfinite(a) or a < 0]
    if bad:
        raise ConfigError(
            f"--steer-c: the scales a must be finite and ≥ 0 (the reverse is steer_reverse), got "
            f"{', '.join(map(str, sorted(bad)))}; e.g. --steer-c 0.5,1,2,4."
        )
    return sorted(scales)


steer_cs = steer_scales  # the old name


def steer_k(cfg: Any) -> int:
    return int(cfg.steer_k) if cfg.steer_k is not None else DEFAULT_K


def _check_hook(hook: str) -> None:
    if hook not in HOOKS:
        raise ConfigError(
            f"steer adds [d_model] vectors to a residual-shaped hook point ({', '.join(HOOKS)}); got --hook {hook!r}."
        )


def e1_layer(upstream: Mapping[str, Any]) -> int | None:
    """E1's peak chosen on the fit half (recorded beside the steering layer, not used to choose it)."""
    e1 = upstream.get("patch_tuned_to_base") or {}
    if e1.get("heldout"):
        return int(e1["heldout"]["chosen_layer"])
    return int(e1["peak_layer"]) if e1.get("peak_layer") is not None else None


def halves(cfg: Any, pair_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fit (explore) and held-out (confirm) halves: E1's and E6's split of the same pairs, same seed."""
    fit, held = stats.explore_confirm(list(pair_ids), seed=cfg.seed)
    if not fit or not held:
        raise ConfigError(
            f"steer needs at least 2 pairs (a fit half and a held-out half); got {len(pair_ids)}. Raise --n-pairs."
        )
    return fit, held


# --------------------------------------------------------------------------------------------------
# the tuning shift per position class


@dataclass
class Shift:
    """The fit half's shift at one layer: ``v`` [3, d] (per class, float64), ``count`` [3] positions per class,
    ``norm`` [3] the mean ‖h_T − h_B‖ per class, ``pooled`` [d] the mean over every predicting position; at the
    steering layer also ``diff`` [rows, d] (h_T − h_B at every predicting position) and ``contrast`` [d] (E5's v±
    of the tuned model over the completion positions)."""

    v: Tensor
    count: Tensor
    norm: Tensor
    pooled: Tensor
    diff: Tensor | None = None
    contrast: Tensor | None = None


def predicting_batches(
    tokenized: Sequence[TokenizedPair], first_k: int, pairs_per_batch: int
) -> Iterator[tuple[list[Any], Any, Tensor, Tensor]]:
    """Batches of both runs of ``pairs_per_batch`` pairs with each position's class (:func:`predicting_classes`,
    −1 where not a predicting position) and the mask of predicting positions: ``(seqs, batch, cls, at)``."""
    for lo in range(0, len(tokenized), pairs_per_batch):
        seqs = pair_sequences(tokenized[lo : lo + pairs_per_batch])
        batch = make_batch(seqs)
        width = batch.tokens.shape[1]
        cls = torch.stack([predicting_classes(s.completion_start, s.length, first_k, width) for s in seqs])
        yield seqs, batch, cls, cls >= 0


@torch.inference_mode()
def class_shifts(
    twins: Twins,
    tokenized: Sequence[TokenizedPair],
    *,
    layers: Sequence[int],
    hook: str = "resid_post",
    first_k: int = FIRST_K,
    keep: int | None = None,
    pairs_per_batch: int = 4,
) -> dict[int, Shift]:
    """:class:`Shift` at every layer of ``layers`` from both models' clean runs of ``tokenized`` (both runs of
    every pair), one forward per model and batch; ``keep``: the layer whose per-position shifts and v± are kept.
    Sums are float64; the caches stay in the models' dtype and device, one layer is widened at a time."""
    names = {hook_name(layer, hook): layer for layer in layers}
    stop = max(layers) + 1
    d = twins.d_model
    acc = {
        layer: {
            "sum": torch.zeros(3, d, dtype=torch.float64),
            "count": torch.zeros(3, dtype=torch.float64),
            "norm": torch.zeros(3, dtype=torch.float64),
        }
        for layer in layers
    }
    diffs: list[Tensor] = []
    tuned_sum = {s: torch.zeros(d, dtype=torch.float64) for s in ("chosen", "rejected")}
    tuned_n = {"chosen": 0, "rejected": 0}
    for seqs, batch, cls, at in predicting_batches(tokenized, first_k, pairs_per_batch):
        owner = cls[at]
        caches = {}
        for m in ("base", "tuned"):
            _, caches[m] = twins.backends()[m].run(batch.tokens, capture=list(names), stop_at_layer=stop)
        for name, layer in names.items():
            tuned = caches["tuned"][name]
            rows = (tuned[at.to(tuned.device)].double() - caches["base"][name][at.to(tuned.device)].double()).cpu()
            a = acc[layer]
            a["sum"].index_add_(0, owner, rows)
            a["count"] += torch.bincount(owner, minlength=3).double()
            a["norm"].index_add_(0, owner, rows.norm(dim=-1))
            if layer == keep:
                diffs.append(rows.float())
                for i, s in enumerate(seqs):  # E5's v±: the tuned model's completion positions, by side
                    tuned_sum[s.side] += tuned[i, s.completion_start : s.length].double().sum(0).cpu()
                    tuned_n[s.side] += s.length - s.completion_start
        del caches
    out = {}
    for layer, a in acc.items():
        n = a["count"].clamp_min(1.0)
        pooled = a["sum"].sum(0) / a["count"].sum().clamp_min(1.0)
        out[layer] = Shift(v=a["sum"] / n[:, None], count=a["count"].long(), norm=a["norm"] / n, pooled=pooled)
    if keep is not None:
        out[keep].diff = torch.cat(diffs) if diffs else torch.zeros(0, d)
        out[keep].contrast = tuned_sum["chosen"] / max(tuned_n["chosen"], 1) - tuned_sum["rejected"] / max(
            tuned_n["rejected"], 1
        )
    return out


def _unit(v: Tensor) -> Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, v / n.clamp_min(1e-300), torch.zeros_like(v))


def random_units(d_model: int, *, seed: int, layer: int, draw: int) -> Tensor:
    """Draw ``draw`` of the null at one layer: a Gaussian unit direction per class, [3, d_model] float64, seeded
    by (seed, layer, draw) (the scan's a = 1 control at ℓ is draw 0, the same as ``steer_random``)."""
    digest = hashlib.sha256(f"steer|{int(seed)}|{int(layer)}|{int(draw)}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return _unit(torch.randn(3, d_model, generator=gen, dtype=torch.float64))


def directions(
    shift: Shift, *, k: int, centre: bool, seed: int, layer: int
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The per-class vectors at a = 1 ([3, d], float64) of every condition, from the fit half's :class:`Shift` at
    the steering layer, and a JSON record of their norms and cosines. The baselines have v's per-class norms."""
    v = shift.v
    norms = v.norm(dim=-1, keepdim=True)  # ‖v_ℓ,c‖: the per-class norms every baseline matches
    d = v.shape[1]
    if shift.diff is not None and shift.diff.shape[0] > 0:
        basis = fit_subspace(shift.diff, centre=centre).top(min(k, d)).double()
        projected = (v @ basis) @ basis.T
    else:
        projected = torch.zeros_like(v)
    contrast = shift.contrast if shift.contrast is not None else torch.zeros(d, dtype=torch.float64)
    vectors = {
        MAIN: v,
        RANDOM: norms * random_units(d, seed=seed, layer=layer, draw=0),
        CONTRAST: norms * _unit(contrast.double())[None, :].expand_as(v),
        LOWRANK: norms * _unit(projected),
        POOLED: shift.pooled.double()[None, :].expand_as(v).clone(),
    }
    unit = {name: _unit(x) for name, x in vectors.items()}
    cosine = {
        f"{a}~{b}": [float(x) for x in (unit[a] * unit[b]).sum(-1)]
        for i, a in enumerate(unit)
        for b in list(unit)[i + 1 :]
    }
    record = {
        "classes": list(POSITION_CLASSES),
        "first_k": FIRST_K,
        "norm": [float(x) for x in norms[:, 0]],  # ‖v_ℓ,c‖
        "mean_shift_norm": [float(x) for x in shift.norm],  # mean ‖h_T − h_B‖ per class
        "positions": [int(x) for x in shift.count],
        "pooled_norm": float(shift.pooled.norm()),
        "lowrank_kept": [float(x) for x in (projected.norm(dim=-1) / norms[:, 0].clamp_min(1e-300))],
        "cosine_by_class": cosine,
    }
    return vectors, record


def class_spec(
    name: str, vectors: Tensor, *, layer: int, hook: str, param: float, split: str, pair_ids: Sequence[int]
) -> PatchSpec:
    """One steering condition: ``vectors`` [3, d] added (by class) to the target's activation at the predicting
    positions (the reverse conditions' vectors are already negated)."""
    target = TARGET.get(name, "base")
    source = "base" if target == "tuned" else "tuned"
    return PatchSpec(
        RowKey(name, target, source, hook, SCOPE, SIDES, layer, float(param), split),
        AddByClass(vectors.float(), FIRST_K),
        frozenset(int(p) for p in pair_ids),
    )


def _sign(name: str) -> float:
    return -1.0 if name in (REVERSE, REVERSE_RANDOM) else 1.0


def _base_vectors(vectors: Mapping[str, Tensor], name: str) -> Tensor:
    return vectors[{REVERSE: MAIN, REVERSE_RANDOM: RANDOM}.get(name, name)]


def curve_specs(
    vectors: Mapping[str, Tensor],
    names: Sequence[str],
    *,
    layer: int,
    hook: str,
    scales: Sequence[float],
    pair_ids: Sequence[int],
    split: str,
) -> list[PatchSpec]:
    """Each condition of ``names`` at every scale: ±a · its per-class vectors."""
    return [
        class_spec(
            name,
            _sign(name) * float(a) * _base_vectors(vectors, name),
            layer=layer,
            hook=hook,
            param=a,
            split=split,
            pair_ids=pair_ids,
        )
        for name in names
        for a in scales
    ]


def null_specs(
    norms: Tensor, d_model: int, *, n: int, scale: float, seed: int, layer: int, hook: str, pair_ids: Sequence[int]
) -> list[PatchSpec]:
    """The null: ``n`` random directions with per-class norms a·‖v_ℓ,c‖ (``norms`` [3]), ``param`` = the draw."""
    return [
        class_spec(
            NULL,
            float(scale) * (norms[:, None] * random_units(d_model, seed=seed, layer=layer, draw=j)),
            layer=layer,
            hook=hook,
            param=float(j),
            split="heldout",
            pair_ids=pair_ids,
        )
        for j in range(n)
    ]


# --------------------------------------------------------------------------------------------------
# the scan: v_ℓ at every swept layer and scale, on the fit half (chooses ℓ and a)


def scan_layers(cfg: Any, n_layers: int) -> list[int]:
    return [int(cfg.steer_layer)] if cfg.steer_layer is not None else [int(x) for x in cfg.swept_layers(n_layers)]


def fit_scan(plan: Plan) -> Fitted:
    """v_ℓ,c at every swept layer (``--steer-layer``: that layer only) from the fit half, as conditions on the fit
    half at every scale (``steer_scan``) and a random direction at a = 1 (``steer_scan_random``, the null's draw 0
    at that layer). With ``--steer-layer`` and a single scale there is nothing to choose: no conditions."""
    cfg = plan.cfg
    _check_hook(cfg.hook)
    scales = steer_scales(cfg)
    if cfg.steer_layer is not None and len(scales) == 1:
        return Fitted([], {"layers": [], "scales": scales, "skipped": RULE_OVERRIDE})
    fit_ids, _ = halves(cfg, [t.pair_id for t in plan.tokenized])
    fit_pairs = [t for t in plan.tokenized if t.pair_id in set(fit_ids)]
    layers = scan_layers(cfg, plan.n_layers)
    shifts = class_shifts(plan.twins, fit_pairs, layers=layers, hook=cfg.hook)
    specs: list[PatchSpec] = []
    for layer in layers:
        v = shifts[layer].v
        specs += [
            class_spec(SCAN, float(a) * v, layer=layer, hook=cfg.hook, param=a, split="fit", pair_ids=fit_ids)
            for a in scales
        ]
        rnd = v.norm(dim=-1, keepdim=True) * random_units(v.shape[1], seed=cfg.seed, layer=layer, draw=0)
        specs.append(
            class_spec(SCAN_RANDOM, 1.0 * rnd, layer=layer, hook=cfg.hook, param=1.0, split="fit", pair_ids=fit_ids)
        )
    return Fitted(
        specs,
        {
            "layers": layers,
            "scales": scales,
            "fit_pairs": len(fit_ids),
            "first_k": FIRST_K,
            "norm": {str(x): [float(n) for n in shifts[x].v.norm(dim=-1)] for x in layers},
            "positions": {str(x): [int(n) for n in shifts[x].count] for x in layers},
        },
    )


def _cell_index(means: Sequence[float], target: float, seed: int) -> int:
    """The cell whose mean is closest to ``target``; ties (to float rounding) broken at random, seeded."""
    dist = np.abs(np.asarray(means, dtype=np.float64) - float(target))
    return int(stats._peak_index(-dist[None, :], np.random.default_rng([int(seed), 11]))[0])


def scan_landscape(effects: pd.DataFrame, scores: pd.DataFrame, cfg: Any) -> dict[str, Any]:
    """The fit half's scan: per (ℓ, a) the mean effect of v_ℓ,c (bootstrap CI) and its recovered fraction
    (``grid``); per layer v at a = 1, the random direction at a = 1 and v at every scale (``by_layer``); the chosen
    (ℓ, a) (:data:`RULE_SCAN`). ``chosen`` is None without scan rows."""
    rows = effects[effects.experiment.isin((SCAN, SCAN_RANDOM))] if len(effects) else effects
    fit_ids, _ = stats.explore_confirm(scores.pair_id.tolist(), seed=cfg.seed)
    gain = scores.set_index("pair_id").gain.reindex(fit_ids)
    rule = RULE_SCALE if cfg.steer_layer is not None else RULE_SCAN
    grid, by_layer = [], []
    for layer in sorted({int(x) for x in rows.layer}) if len(rows) else []:
        at = rows[rows.layer == layer]
        cells = []
        for a in sorted({float(x) for x in at[at.experiment == SCAN].param}):
            values = _per_pair(at, SCAN, "fit", a)
            cells.append(
                {"layer": layer, "scale": a}
                | _mean_ci(values, cfg)
                | {"recovered_fraction": _fraction(values, gain, cfg)}
            )
        grid += cells
        entry: dict[str, Any] = {"layer": layer, "by_scale": cells}
        for key, name in (("v", SCAN), ("random", SCAN_RANDOM)):
            values = _per_pair(at, name, "fit", 1.0)
            entry[key] = _mean_ci(values, cfg) | {"recovered_fraction": _fraction(values, gain, cfg)}
        by_layer.append(entry)
    chosen = None
    if grid:
        best = grid[_cell_index([c["mean"] for c in grid], float(gain.mean()), cfg.seed)]
        chosen = {"layer": int(best["layer"]), "scale": float(best["scale"])}
    return {
        "rule": rule,
        "split": "fit",
        "scales": sorted({c["scale"] for c in grid}),
        "grid": grid,
        "by_layer": by_layer,
        "fit_gain": _mean_ci(gain, cfg) if len(gain) else None,
        "chosen": chosen,
        "chosen_layer": None if chosen is None else chosen["layer"],
        "chosen_scale": None if chosen is None else chosen["scale"],
    }


def summarize_scan(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer_scan": {rule, split, scales, grid, by_layer, fit_gain, chosen, chosen_layer, chosen_scale}}``."""
    return {SCAN: scan_landscape(tables.effects, tables.scores, tables.cfg)}


# --------------------------------------------------------------------------------------------------
# steering at the chosen (ℓ, a), on the held-out half (and the transfer pairs)


def steer_choice(plan: Plan) -> tuple[int, float, str]:
    """The steering layer, scale and the rule that chose them: the scan's choice on the fit half, else (no scan:
    ``--steer-layer`` with one scale) the given layer and the only scale."""
    cfg = plan.cfg
    scan = plan.upstream.get(SCAN) or {}
    if scan.get("chosen"):
        return int(scan["chosen"]["layer"]), float(scan["chosen"]["scale"]), str(scan["rule"])
    scales = steer_scales(cfg)
    if cfg.steer_layer is not None and len(scales) == 1:
        return int(cfg.steer_layer), scales[0], RULE_OVERRIDE
    raise ConfigError(
        "steer: no steering layer and scale: the steering scan (steer_scan) has no rows; pass "
        "--steer-layer with one --steer-c scale, or let steer_scan run."
    )


@torch.inference_mode()
def kl_to_tuned(
    twins: Twins,
    tokenized: Sequence[TokenizedPair],
    steered: Sequence[Tensor],
    *,
    layer: int,
    hook: str,
    first_k: int = FIRST_K,
    pairs_per_batch: int = 2,
) -> dict[str, Any]:
    """Per pair, the mean over the predicting positions of both runs of KL(T ‖ B) and, for each of ``steered``
    ([3, d] per-class vectors added at ``blocks.{layer}.hook_{hook}``), KL(T ‖ B steered), of the next-token
    distributions (nats): ``{"pair_id": [...], "base": [...], "steered": [[...] per vectors]}``."""
    name = hook_name(layer, hook)
    base, tuned = twins.backends()["base"], twins.backends()["tuned"]
    sums: dict[int, list[float]] = {}
    for seqs, batch, cls, at in predicting_batches(tokenized, first_k, pairs_per_batch):
        tokens = batch.tokens.to(base.device)

        def scored(logits: Tensor) -> Tensor:  # log-probs at the predicting positions only [rows, vocab]
            return torch.log_softmax(logits.double()[at.to(logits.device)], dim=-1)

        def adder(vectors: Tensor) -> Any:
            def steer(act: Tensor, hook: Any = None) -> Tensor:
                where = at.to(act.device)
                out = act.clone()
                out[where] = act[where] + vectors.to(act.device, act.dtype)[cls[at].to(act.device)]
                return out

            return steer

        lt = scored(tuned.run(tokens)[0])
        p_t = lt.exp()
        kls = [(p_t * (lt - scored(base.run(tokens)[0]))).sum(-1).cpu()]
        kls += [(p_t * (lt - scored(base.run(tokens, hooks=[(name, adder(v))])[0]))).sum(-1).cpu() for v in steered]
        owner = torch.tensor([s.pair_id for s in seqs])[:, None].expand_as(cls)[at]
        for pid in torch.unique(owner).tolist():
            rows = owner == pid
            acc = sums.setdefault(int(pid), [0.0] * (len(kls) + 1))
            for i, kl in enumerate(kls):
                acc[i] += float(kl[rows].sum())
            acc[-1] += float(rows.sum())
    ids = sorted(sums)
    return {
        "pair_id": ids,
        "base": [sums[p][0] / sums[p][-1] for p in ids],
        "steered": [[sums[p][1 + i] / sums[p][-1] for p in ids] for i in range(len(steered))],
    }


def fit_steering(plan: Plan) -> Fitted:
    """v_ℓ,c and the baselines at the chosen (ℓ, a) from the fit half; conditions on the held-out half (and on
    the transfer pairs, when given); the held-out KL record."""
    cfg = plan.cfg
    _check_hook(cfg.hook)
    layer, scale, rule = steer_choice(plan)
    scales, k = steer_scales(cfg), steer_k(cfg)
    fit_ids, held_ids = halves(cfg, [t.pair_id for t in plan.tokenized])
    fit = [t for t in plan.tokenized if t.pair_id in set(fit_ids)]
    held = [t for t in plan.tokenized if t.pair_id in set(held_ids)]
    shift = class_shifts(plan.twins, fit, layers=[layer], hook=cfg.hook, keep=layer)[layer]
    vectors, record = directions(shift, k=k, centre=cfg.lowrank_centre, seed=cfg.seed, layer=layer)
    v = vectors[MAIN]
    specs = curve_specs(vectors, CURVES, layer=layer, hook=cfg.hook, scales=scales, pair_ids=held_ids, split="heldout")
    for i, cls in enumerate(POSITION_CLASSES):  # one class's positions only, at the chosen scale
        only = torch.zeros_like(v)
        only[i] = v[i]
        specs.append(
            class_spec(
                CLASS_ONLY[cls],
                float(scale) * only,
                layer=layer,
                hook=cfg.hook,
                param=scale,
                split="heldout",
                pair_ids=held_ids,
            )
        )
    specs += null_specs(
        v.norm(dim=-1), v.shape[1], n=N_NULL, scale=scale, seed=cfg.seed, layer=layer, hook=cfg.hook, pair_ids=held_ids
    )
    transfer = list(plan.extra_pairs.get(TRANSFER, ()))
    if transfer:
        specs += curve_specs(
            vectors,
            TRANSFER_CONDITIONS,
            layer=layer,
            hook=cfg.hook,
            scales=scales,
            pair_ids=[t.pair_id for t in transfer],
            split=TRANSFER,
        )
    kl = kl_to_tuned(plan.twins, held, [float(a) * v for a in scales], layer=layer, hook=cfg.hook) | {"scales": scales}
    return Fitted(
        specs,
        {
            "layer": layer,
            "scale": scale,
            "layer_rule": rule,
            "e1_layer": e1_layer(plan.upstream),
            "hook": cfg.hook,
            "scope": SCOPE,
            "cs": scales,
            "scales": scales,
            "k": k,
            "centre": bool(cfg.lowrank_centre),
            "n_null": N_NULL,
            "fit_pairs": len(fit_ids),
            "heldout_pairs": len(held_ids),
            "transfer_pairs": len(transfer),
            "kl": kl,
            **record,
        },
    )


# --------------------------------------------------------------------------------------------------
# the summary: a pure function of the effects, the scores and the fit record


def _per_pair(effects: pd.DataFrame, name: str, split: str, param: float, column: str = "effect") -> pd.Series:
    if not len(effects):
        return pd.Series(dtype=np.float64)
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, param)]
    return rows.set_index("pair_id")[column].sort_index()


def _per_token_effect(effects: pd.DataFrame, name: str, split: str, param: float, scores: pd.DataFrame) -> pd.Series:
    """The effect on per-token Δlogp: each side's log-prob change divided by its completion length."""
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, param)]
    rows = rows.set_index("pair_id").sort_index()
    n = scores.set_index("pair_id").reindex(rows.index)
    return (rows.patched_logp_chosen - rows.clean_logp_chosen) / n.n_chosen_tokens - (
        rows.patched_logp_rejected - rows.clean_logp_rejected
    ) / n.n_rejected_tokens


def _mean_ci(values: pd.Series | np.ndarray, cfg: Any) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, lo, hi = stats.bootstrap_mean_ci(v, seed=cfg.seed, n_boot=cfg.n_boot)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size)}


def _fraction(num: pd.Series, gain: pd.Series, cfg: Any, sign: float = 1.0) -> dict[str, Any]:
    """sign · mean(num) / mean(gain) over the pairs of ``num`` under the ratio rule (``stats.ratio_ci``)."""
    if len(num) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "defined": False, "text": "not run"}
    r = stats.ratio_ci(
        sign * num.to_numpy(dtype=np.float64),
        gain.reindex(num.index).to_numpy(dtype=np.float64),
        seed=cfg.seed,
        n_boot=cfg.n_boot,
    )
    return {
        "mean": r["ratio"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "defined": r["defined"],
        "text": r["text"],
    }


def _curve(
    effects: pd.DataFrame,
    name: str,
    split: str,
    scales: Sequence[float],
    gain: pd.Series,
    cfg: Any,
    *,
    at: float,
    fraction: str = "recovered_fraction",
    sign: float = 1.0,
) -> dict[str, Any]:
    """``by_c`` (per scale a, key ``c``: the mean effect and its CI) and the fraction at the chosen scale ``at``."""
    by_c = [{"c": float(a)} | _mean_ci(_per_pair(effects, name, split, a), cfg) for a in scales]
    return {"by_c": by_c, fraction: _fraction(_per_pair(effects, name, split, at), gain, cfg, sign)}


def null_location(effect: float, null_means: Sequence[float], gain_sign: float = 1.0) -> dict[str, Any]:
    """Where ``effect`` falls in the null's effects (both oriented along the gain's sign): ``percentile`` (share
    of draws below it, ties half, ×100), one-sided ``p`` = (1 + #draws at or above it)/(n + 1), ``q95`` (the
    null's 95th percentile in that direction, in nats) and ``exceeds_q95``."""
    m = np.asarray(null_means, dtype=np.float64)
    n = int(m.size)
    if n == 0 or not math.isfinite(effect):
        return {"n": n, "percentile": math.nan, "p": math.nan, "q95": math.nan, "exceeds_q95": False}
    s = 1.0 if gain_sign >= 0 else -1.0
    o, e = s * m, s * float(effect)
    q95 = float(np.quantile(o, 0.95))
    return {
        "n": n,
        "percentile": float(100.0 * ((o < e).sum() + 0.5 * (o == e).sum()) / n),
        "p": float((1 + (o >= e).sum()) / (n + 1)),
        "q95": s * q95,
        "exceeds_q95": bool(e > q95),
    }


def null_summary(
    effects: pd.DataFrame, v_effects: pd.Series, gain: pd.Series, cfg: Any, *, layer: int, scale: float
) -> tuple[dict[str, Any], pd.Series]:
    """The null at the chosen (ℓ, a) on the held-out half: :func:`null_location` of v's mean effect, the null's
    quantiles (nats and fractions of the gain) and every draw's mean; and the per-pair mean over the draws."""
    rows = effects[(effects.experiment == NULL) & (effects.split == "heldout")] if len(effects) else effects
    rule = (
        f"{N_NULL} random directions with v's per-class norms (a·‖v_ℓ,c‖), held-out half; p one-sided "
        "(1 + #draws at or above v)/(n + 1)"
    )
    if not len(rows):
        return {"n": 0, "percentile": math.nan, "p": math.nan, "layer": layer, "scale": scale, "rule": rule}, pd.Series(
            dtype=np.float64
        )
    table = rows.pivot(index="pair_id", columns="param", values="effect").sort_index()
    means = table.mean(axis=0).to_numpy()
    g = float(gain.reindex(table.index).mean())
    effect = float(v_effects.mean()) if len(v_effects) else math.nan
    quant = (0.05, 0.5, 0.95)
    out = null_location(effect, means, 1.0 if g >= 0 else -1.0) | {
        "effect": effect,
        "quantiles": {str(q): float(np.quantile(means, q)) for q in quant},
        "recovered_fraction_quantiles": {str(q): float(np.quantile(means, q) / g) if g else math.nan for q in quant},
        "means": [float(x) for x in means],
        "layer": layer,
        "scale": scale,
        "rule": rule,
    }
    return out, table.mean(axis=1)


def kl_summary(record: Mapping[str, Any], cfg: Any) -> dict[str, Any] | None:
    """KL(T ‖ B) and KL(T ‖ steered B) at the predicting positions (held-out half, per pair) and the fraction of
    KL(T ‖ B) closed, 1 − mean KL(T ‖ steered) / mean KL(T ‖ B) (the ratio rule): at the chosen scale and per
    scale (``by_c``)."""
    kl = record.get("kl")
    if not kl or not kl.get("pair_id"):
        return None
    ids = pd.Index(kl["pair_id"], name="pair_id")
    base = pd.Series(kl["base"], index=ids, dtype=np.float64)
    by_c = []
    for a, values in zip(kl["scales"], kl["steered"]):
        steered = pd.Series(values, index=ids, dtype=np.float64)
        by_c.append(
            {"c": float(a), "steered": _mean_ci(steered, cfg), "fraction_closed": _fraction(base - steered, base, cfg)}
        )
    at = next(r for r in by_c if abs(r["c"] - float(record["scale"])) < 1e-12)
    return {
        "positions": SCOPE,
        "layer": record.get("layer"),
        "scale": record.get("scale"),
        "base": _mean_ci(base, cfg),
        "steered": at["steered"],
        "fraction_closed": at["fraction_closed"],
        "by_c": by_c,
    }


def ratio_difference(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    *,
    seed: int,
    n_boot: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """mean(num_a)/mean(den_a) − mean(num_b)/mean(den_b) for two *independent* pair sets (e.g. the transfer pairs
    and the held-out half), with a percentile bootstrap CI that resamples each set on its own; defined only when
    both ratios are (statistics.md's ratio rule). No resample is dropped: an infinite one sits in a tail."""
    a, b = (stats.ratio_ci(n, d, seed=seed, n_boot=n_boot, level=level) for n, d in ((num_a, den_a), (num_b, den_b)))
    if not (a["defined"] and b["defined"]):
        return {
            "mean": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "defined": False,
            "text": "undefined (a denominator CI spans 0)",
        }
    boots = [
        stats.bootstrap_means(
            np.stack([np.asarray(n, np.float64), np.asarray(d, np.float64)], 1), seed=s, n_boot=n_boot
        )
        for (n, d), s in (((num_a, den_a), seed), ((num_b, den_b), seed + 1))
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = boots[0][:, 0] / boots[0][:, 1] - boots[1][:, 0] / boots[1][:, 1]
    diff = np.sort(np.where(np.isnan(diff), np.inf, diff))
    tail = (1 - level) / 2 * 100
    lo, hi = float(np.percentile(diff, tail, method="lower")), float(np.percentile(diff, 100 - tail, method="higher"))
    point = float(a["ratio"] - b["ratio"])
    return {"mean": point, "ci_low": lo, "ci_high": hi, "defined": True, "text": f"{point:+.3g} [{lo:+.3g}, {hi:+.3g}]"}


def summarize_steering(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer": {layer, scale, layer_rule, by_c, recovered_fraction, excess_over_random, null, selection,
    baselines, variants, per_token, reverse, kl, gain, layer_choice, fit, [transfer]}, "steer_scan": …}`` (the
    scan's entry, :func:`scan_landscape`, when it ran)."""
    cfg, effects, scores = tables.cfg, tables.effects, tables.scores
    record = tables.fits["steer"]
    scales = [float(a) for a in record.get("scales", record.get("cs"))]
    layer, scale = int(record["layer"]), float(record.get("scale", 1.0))
    fit_ids, held = stats.explore_confirm(scores.pair_id.tolist(), seed=cfg.seed)
    by_pair = scores.set_index("pair_id")
    gain, gain_pt = by_pair.gain.reindex(held), by_pair.gain_per_token.reindex(held)
    rule = record.get("layer_rule")
    scan = scan_landscape(effects, scores, cfg)
    main = _curve(effects, MAIN, "heldout", scales, gain, cfg, at=scale)
    v_held = _per_pair(effects, MAIN, "heldout", scale)
    null, null_by_pair = null_summary(effects, v_held, gain, cfg, layer=layer, scale=scale)
    in_sample = _per_pair(effects[effects.layer == layer] if len(effects) else effects, SCAN, "fit", scale)
    selection = stats.selection_record(
        fit_ids,
        held,
        {"layer": layer, "scale": scale},
        v_held.to_numpy(),
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        in_sample=in_sample.to_numpy() if len(in_sample) else None,
    ) | {"rule": rule}
    excess = (v_held - null_by_pair.reindex(v_held.index)).dropna() if len(null_by_pair) else pd.Series(dtype=float)
    out: dict[str, Any] = {
        "layer": layer,
        "scale": scale,
        "layer_rule": rule,
        **main,
        "excess_over_random": _fraction(excess, gain, cfg),
        "null": null,
        "selection": selection,
        "baselines": {
            key: _curve(effects, name, "heldout", scales, gain, cfg, at=scale) for key, name in BASELINES.items()
        },
        "variants": {
            cls: {
                "by_c": [{"c": scale} | _mean_ci(_per_pair(effects, name, "heldout", scale), cfg)],
                "recovered_fraction": _fraction(_per_pair(effects, name, "heldout", scale), gain, cfg),
            }
            for cls, name in CLASS_ONLY.items()
        },
        "per_token": {
            key: _fraction(_per_token_effect(effects, name, "heldout", scale, scores), gain_pt, cfg)
            for key, name in (("v", MAIN), ("random", RANDOM))
        }
        | {"gain": _mean_ci(gain_pt, cfg)},
        "reverse": _curve(effects, REVERSE, "heldout", scales, gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0)
        | {
            "random": _curve(
                effects, REVERSE_RANDOM, "heldout", scales, gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0
            )
        },
        "kl": kl_summary(record, cfg),
        "gain": _mean_ci(gain, cfg),
        "layer_choice": scan | {"rule": rule, "layer": layer, "scale": scale, "e1_layer": record.get("e1_layer")},
        "fit": {
            key: record.get(key)
            for key in (
                "hook",
                "scope",
                "first_k",
                "classes",
                "k",
                "centre",
                "norm",
                "mean_shift_norm",
                "positions",
                "pooled_norm",
                "lowrank_kept",
                "cosine_by_class",
                "fit_pairs",
                "heldout_pairs",
                "n_null",
            )
        },
    }
    if record.get("transfer_pairs"):
        base = _per_pair(effects, MAIN, TRANSFER, scale, "clean_delta_logp")
        tuned = _per_pair(effects, REVERSE, TRANSFER, scale, "clean_delta_logp")
        t_gain = (tuned - base.reindex(tuned.index)).sort_index()
        fwd, rnd = _per_pair(effects, MAIN, TRANSFER, scale), _per_pair(effects, RANDOM, TRANSFER, scale)
        out["transfer"] = _curve(effects, MAIN, TRANSFER, scales, t_gain, cfg, at=scale) | {
            "random": _curve(effects, RANDOM, TRANSFER, scales, t_gain, cfg, at=scale),
            "excess_over_random": _fraction((fwd - rnd.reindex(fwd.index)).dropna(), t_gain, cfg),
            "reverse": _curve(
                effects, REVERSE, TRANSFER, scales, t_gain, cfg, at=scale, fraction="lost_fraction", sign=-1.0
            ),
            "gain": _mean_ci(t_gain, cfg),
            "n_pairs": int(record["transfer_pairs"]),
        }
        # transfer − held-out recovered fraction at the chosen scale (two independent pair sets)
        out["transfer"]["vs_heldout"] = ratio_difference(
            fwd.to_numpy(),
            t_gain.reindex(fwd.index).to_numpy(),
            v_held.to_numpy(),
            gain.reindex(v_held.index).to_numpy(),
            seed=cfg.seed,
            n_boot=cfg.n_boot,
        )
    # the scan ran for steer (it chose the layer and scale): its own entry too, as if named
    return {MAIN: out} | ({SCAN: scan} if scan["grid"] else {})


# --------------------------------------------------------------------------------------------------
# the figures and the verdicts (drawn from the summary)


def figure(summary: Mapping[str, Any]) -> Any:
    """Dose curves (effect vs a, 95% CI bands) of v_ℓ,c, the baselines and the reverse on the held-out half; at the
    chosen a the null (5–95 % of its draws' mean effects) and the class parts; the held-out gain dotted."""
    import plotly.graph_objects as go

    entry = P.experiment(summary, MAIN)
    if not entry or not entry.get("by_c"):
        raise P.MissingExperimentError("steer", [MAIN])
    rev = entry.get("reverse") or {}
    curves = [(MAIN, entry)] + [(BASELINES[k], v) for k, v in (entry.get("baselines") or {}).items()]
    curves += [(REVERSE, rev), (REVERSE_RANDOM, rev.get("random") or {})]
    fig = go.Figure()
    for name, data in curves:
        rows = data.get("by_c") or []
        if not rows:
            continue
        x = [float(r["c"]) for r in rows]
        color, label = COLORS[name], LABELS[name]
        band = P.band(
            x,
            [P.num(r.get("ci_low")) for r in rows],
            [P.num(r.get("ci_high")) for r in rows],
            name=label,
            color=color,
            group=name,
        )
        if band is not None:
            fig.add_trace(band)
        dash = "dash" if name in (REVERSE, REVERSE_RANDOM) else "dot" if name == POOLED else "solid"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[P.num(r.get("mean")) for r in rows],
                mode="lines+markers",
                name=label,
                legendgroup=name,
                line={"color": color, "width": 2, "dash": dash},
                hovertemplate=f"<b>{label}</b><br>a = %{{x}}<br>effect %{{y:.3f}} nats<extra></extra>",
            )
        )
    scale = P.num(entry.get("scale"))
    null = entry.get("null") or {}
    q = null.get("quantiles") or {}
    if null.get("n") and math.isfinite(scale):
        mid, lo, hi = (P.num(q.get(k)) for k in ("0.5", "0.05", "0.95"))
        fig.add_trace(
            go.Scatter(
                x=[scale],
                y=[mid],
                mode="markers",
                name=f"{LABELS[NULL]} (n = {null['n']}, 5–95 %)",
                marker={"color": COLORS[NULL], "size": 10, "symbol": "diamond"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [hi - mid],
                    "arrayminus": [mid - lo],
                    "color": COLORS[NULL],
                },
            )
        )
    for cls, name in CLASS_ONLY.items():
        rows = ((entry.get("variants") or {}).get(cls) or {}).get("by_c") or []
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[float(rows[0]["c"])],
                    y=[P.num(rows[0].get("mean"))],
                    mode="markers",
                    name=LABELS[name],
                    marker={"color": COLORS[name], "size": 9, "symbol": "x"},
                )
            )
    gain = P.num((entry.get("gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line={"dash": "dot", "color": "#444", "width": 1.5},
            annotation_text=f"held-out gain {gain:+.3f}",
            annotation_position="top left",
        )
        fig.add_hline(y=-gain, line={"dash": "dot", "color": "#9467bd", "width": 1})
    fig.add_hline(y=0, line={"color": "#bbb", "width": 1})
    fig.update_layout(
        title=f"Steering at layer {entry.get('layer')}, chosen a = {entry.get('scale')} (held-out pairs)",
        height=P.HEIGHT,
        xaxis_title="a (multiples of the per-class mean shift v_ℓ,c)",
        yaxis_title="effect on Δlogp (nats)",
        template="plotly_white",
    )
    return fig


def scan_figure(summary: Mapping[str, Any]) -> Any:
    """The scan on the fit half: per layer, the mean effect (95% CI) of v_ℓ,c at every scale and of the random
    direction at a = 1; the chosen (ℓ, a) and E1's fit-half peak marked."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    entry = P.experiment(summary, MAIN)
    choice = (entry or {}).get("layer_choice") or {}
    rows = choice.get("by_layer") or []
    if not rows:
        raise P.MissingExperimentError("steer_layers", [f"{SCAN} (the layer and scale were given: --steer-layer)"])
    fig = go.Figure()
    scales = choice.get("scales") or []
    colors = sample_colorscale("Reds", [0.4 + 0.6 * i / max(len(scales) - 1, 1) for i in range(len(scales))])
    for a, color in zip(scales, colors):
        cells = [
            {"layer": c["layer"], **{k: c[k] for k in ("mean", "ci_low", "ci_high", "n")}}
            for r in rows
            for c in r.get("by_scale") or []
            if abs(float(c["scale"]) - float(a)) < 1e-12
        ]
        if cells:
            P.add_curve(
                fig, P.per_layer_frame(cells), name=f"{LABELS[SCAN]}, a = {a:g}", color=color, group=f"{SCAN}-{a:g}"
            )
    frame = P.per_layer_frame([{"layer": r["layer"], **r["random"]} for r in rows])
    P.add_curve(fig, frame, name=LABELS[SCAN_RANDOM], color=COLORS[SCAN_RANDOM], group=SCAN_RANDOM)
    if choice.get("layer") is not None:
        fig.add_vline(
            x=int(choice["layer"]),
            line={"dash": "dot", "color": COLORS[MAIN]},
            annotation_text=f"chosen: layer {choice['layer']}, a = {choice.get('scale')}",
            annotation_position="top left",
        )
    if choice.get("e1_layer") is not None:
        fig.add_vline(
            x=int(choice["e1_layer"]),
            line={"dash": "dot", "color": "#1f77b4", "width": 1},
            annotation_text=f"E1 fit-half peak {choice['e1_layer']}",
            annotation_position="bottom right",
        )
    gain = P.num((choice.get("fit_gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line={"dash": "dot", "color": "#444", "width": 1},
            annotation_text=f"fit-half gain {gain:+.3f}",
            annotation_position="top right",
        )
    P.zero_line(fig)
    P.layer_ticks(fig, [int(r["layer"]) for r in rows])
    return P.layout(fig, "Steering scan: v_ℓ,c at every scale a, fit half (E11)")


def _ci_text(d: Mapping[str, Any] | None) -> str:
    d = d or {}
    return f"{fmt(d.get('mean'))} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def steer_numbers(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers :func:`verdict` uses, by name (JSON-able)."""
    rec, null, gain = entry.get("recovered_fraction") or {}, entry.get("null") or {}, entry.get("gain") or {}
    at: Mapping[str, Any] = next(
        (r for r in entry.get("by_c") or [] if abs(_num(r.get("c")) - _num(entry.get("scale"))) < 1e-12), {}
    )
    return {
        "layer": entry.get("layer"),
        "scale": entry.get("scale"),
        "recovered_fraction": _num(rec.get("mean")),
        "recovered_ci_low": _num(rec.get("ci_low")),
        "recovered_ci_high": _num(rec.get("ci_high")),
        "recovered_defined": bool(rec.get("defined", False)),
        "effect": _num(at.get("mean")),
        "effect_ci_low": _num(at.get("ci_low")),
        "effect_ci_high": _num(at.get("ci_high")),
        "gain": _num(gain.get("mean")),
        "gain_ci_low": _num(gain.get("ci_low")),
        "gain_ci_high": _num(gain.get("ci_high")),
        "null_n": int(null.get("n") or 0),
        "null_q95": _num(null.get("q95")),
        "null_percentile": _num(null.get("percentile")),
        "null_p": _num(null.get("p")),
    }


def steer_outcome(n: Mapping[str, Any]) -> str:
    """The three-way rule on :func:`steer_numbers` (orientation: the gain's sign, so "above" means "towards the
    tuned model"). agrees iff the recovered fraction is defined, its CI lies above 0 and the effect exceeds the
    null's 95th percentile; differs iff it is defined and its CI lies below 0, or the effect's whole CI lies at or
    below that percentile (v is no better than random directions of its per-class norms); else inconclusive
    (the gain's CI spans 0, no null, or a CI that straddles)."""
    finite = all(
        math.isfinite(float(n[k]))
        for k in ("recovered_ci_low", "recovered_ci_high", "effect", "effect_ci_low", "effect_ci_high", "null_q95")
    )
    if not n["recovered_defined"] or n["null_n"] < 1 or not finite:
        return INCONCLUSIVE
    s = 1.0 if n["gain"] >= 0 else -1.0
    q95 = s * n["null_q95"]
    e, e_hi = s * n["effect"], max(s * n["effect_ci_low"], s * n["effect_ci_high"])
    if n["recovered_ci_low"] > 0 and e > q95:
        return AGREES
    if n["recovered_ci_high"] < 0 or e_hi <= q95:
        return DIFFERS
    return INCONCLUSIVE


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The localized direction steers the base" (E11, revised): three-way, :func:`steer_outcome`."""

    entry = P.experiment(summary, MAIN)
    if not entry:
        return None
    n = steer_numbers(entry)
    rec = entry.get("recovered_fraction") or {}
    ours = (
        f"layer {n['layer']}, a = {fmt(n['scale'])} ({entry.get('layer_rule') or 'rule not recorded'}), "
        f"held-out: recovered fraction {rec.get('text') or _ci_text(rec)}; effect {_ci_text({'mean': n['effect'], 'ci_low': n['effect_ci_low'], 'ci_high': n['effect_ci_high']})} nats "
        f"at the {fmt(n['null_percentile'])}th percentile of {n['null_n']} random directions "
        f"(their 95th: {fmt(n['null_q95'])} nats; p = {fmt(n['null_p'])})"
    )
    rule = (
        f"agrees iff the held-out recovered fraction's 95% CI excludes 0 from above "
        f"(here [{fmt(n['recovered_ci_low'])}, {fmt(n['recovered_ci_high'])}]) and the effect "
        f"({fmt(n['effect'])} nats) exceeds the null's 95th percentile ({fmt(n['null_q95'])} nats, n = "
        f"{n['null_n']} random directions with v's per-class norms); differs iff that CI lies below 0 or the "
        f"effect's CI high ({fmt(n['effect_ci_high'])}) is at or below that percentile; else inconclusive "
        f"(including a gain whose CI spans 0: [{fmt(n['gain_ci_low'])}, {fmt(n['gain_ci_high'])}] nats)"
    )
    return Finding(
        "steer",
        "The localized tuning shift steers the base towards the tuned model (E11)",
        "not in the paper (the localization spec's E11, revised 2026-12-07)",
        ours,
        steer_outcome(n),
        rule,
        numbers=n,
    )


def transfer_numbers(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    tr = entry.get("transfer")
    if not tr:
        return None
    rec, here, gain = tr.get("recovered_fraction") or {}, entry.get("recovered_fraction") or {}, tr.get("gain") or {}
    diff = tr.get("vs_heldout") or {}
    return {
        "layer": entry.get("layer"),
        "scale": entry.get("scale"),
        "n_pairs": tr.get("n_pairs"),
        "transfer_fraction": _num(rec.get("mean")),
        "transfer_ci_low": _num(rec.get("ci_low")),
        "transfer_ci_high": _num(rec.get("ci_high")),
        "transfer_defined": bool(rec.get("defined", False)),
        "heldout_fraction": _num(here.get("mean")),
        "heldout_defined": bool(here.get("defined", False)),
        "difference": _num(diff.get("mean")),
        "difference_ci_low": _num(diff.get("ci_low")),
        "difference_ci_high": _num(diff.get("ci_high")),
        "transfer_gain": _num(gain.get("mean")),
        "transfer_gain_ci_low": _num(gain.get("ci_low")),
        "transfer_gain_ci_high": _num(gain.get("ci_high")),
    }


def transfer_outcome(n: Mapping[str, Any]) -> str:
    """On the recovered fractions at the chosen (ℓ, a): agrees (transfers) iff both are defined, the transfer
    fraction's CI lies above 0 and the CI of (transfer − held-out) reaches 0 or above; differs (does not transfer
    as well) iff that difference's CI lies below 0 (statistics.md: "does not transfer" needs a CI that excludes
    the transferred value); else inconclusive."""
    vals = [float(n[k]) for k in ("transfer_ci_low", "difference_ci_low", "difference_ci_high")]
    if not (n["transfer_defined"] and n["heldout_defined"]) or not all(map(math.isfinite, vals)):
        return INCONCLUSIVE
    lo, _, d_hi = vals
    if d_hi < 0:
        return DIFFERS
    if lo > 0:
        return AGREES
    return INCONCLUSIVE


def verdict_transfer(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The vector fitted on one dataset steers another as well": three-way, :func:`transfer_outcome` (no row
    without ``--transfer-data``)."""

    entry = P.experiment(summary, MAIN)
    n = transfer_numbers(entry or {})
    if n is None:
        return None
    tr = entry["transfer"]
    ours = (
        f"layer {n['layer']}, a = {fmt(n['scale'])}: on {n['n_pairs']} pairs of the other dataset "
        f"(gain {_ci_text(tr.get('gain'))} nats) the vector recovers "
        f"{(tr.get('recovered_fraction') or {}).get('text') or _ci_text(tr.get('recovered_fraction'))} of the gain; "
        f"held-out half of the run's data {fmt(n['heldout_fraction'])}; transfer − held-out "
        f"{(tr.get('vs_heldout') or {}).get('text', '—')}"
    )
    rule = (
        f"agrees iff the transfer fraction's 95% CI [{fmt(n['transfer_ci_low'])}, {fmt(n['transfer_ci_high'])}] "
        f"lies above 0 and the CI of transfer − held-out fraction [{fmt(n['difference_ci_low'])}, "
        f"{fmt(n['difference_ci_high'])}] (independent bootstraps of the two pair sets) reaches 0; differs iff "
        "that CI lies below 0; else inconclusive (including an undefined ratio: a gain whose CI spans 0)"
    )
    return Finding(
        "steer_transfer",
        "The steering vector transfers to another dataset (E11)",
        "not in the paper (the localization spec's E11)",
        ours,
        transfer_outcome(n),
        rule,
        numbers=n,
    )


# --------------------------------------------------------------------------------------------------
# the shift for other readers: E12's steer@ conditions and the exported vectors


def fit_steer_shifts(
    twins: Twins, conditions: Sequence[str] | str, pairs: Sequence[TokenizedPair] | None, hook: str = "resid_post"
) -> dict[int, dict[str, Tensor]] | None:
    """E11's per-class shifts (LP, F, R) at every ``steer@`` condition's layer (E12, generation.py), fitted on
    ``pairs`` (both runs of each, :func:`class_shifts`); None when no condition steers."""
    from alignment_probe.generation import parse_conditions

    layers = sorted(
        {c.layer for c in parse_conditions(conditions, twins.n_layers) if c.kind == "steer" and c.layer is not None}
    )
    if not layers:
        return None
    if not pairs:
        raise ConfigError(
            "steer@LAYER conditions need pairs to fit E11's tuning shift on (steer_pairs=, or "
            "--steer-pairs N on the command line); keep them apart from the prompts."
        )
    fitted = class_shifts(twins, list(pairs), layers=layers, hook=hook)
    return {layer: {"LP": s.v[0].float(), "F": s.v[1].float(), "R": s.v[2].float()} for layer, s in fitted.items()}


@torch.inference_mode()
def export_steering_vectors(
    twins: Twins, pairs: Sequence[TokenizedPair], out: str | Path, *, layers: Sequence[int], hook: str = "resid_post"
) -> dict[str, Path]:
    """E11's tuning shift fitted on ``pairs`` at ``layers`` (:func:`class_shifts`), written by
    :func:`alignment_probe.exports.export_shift_vectors`: ``layer.<ℓ>`` the mean over every predicting position
    (what a control vector adds everywhere) and ``layer.<ℓ>.last_prompt|first|rest`` the per-class vectors E11
    steers with; a ``.gguf`` control vector beside it when ``gguf`` is installed."""
    import json

    from alignment_probe.exports import export_shift_vectors

    fitted = class_shifts(twins, list(pairs), layers=[int(x) for x in layers], hook=hook)
    pooled = {layer: s.pooled.float() for layer, s in fitted.items()}
    by_class = {layer: {c: s.v[i].float() for i, c in enumerate(POSITION_CLASSES)} for layer, s in fitted.items()}
    meta = {
        "hook": hook,
        "pairs": json.dumps(sorted(int(p.pair_id) for p in pairs)),
        "base": str(twins.base_source),
        "tuned": str(twins.tuned_source),
    }
    return export_shift_vectors(
        pooled, out, model_hint=twins.backends()["base"].facts.architecture, metadata=meta, by_class=by_class
    )


register(
    Experiment(
        key="steer_scan",
        method="E11",
        order=105,
        needs=("patch_tuned_to_base",),
        default=False,
        emits=(SCAN_RANDOM,),
        names=(
            Name(
                SCAN,
                "steering scan: v_ℓ,c per layer and scale (fit half)",
                COLORS[SCAN],
                "Add a·v_ℓ,c (the per-class mean tuning shift) at the predicting positions at every swept layer and "
                "scale to the base on the fit half, beside a random direction at a = 1; chooses steer's (ℓ, a) (the "
                "cell closest to the fit-half gain). Run by steer.",
                per_layer=False,
            ),
        ),
        fit=fit_scan,
        specs=lambda plan: plan.fitted.specs,
        summarize=summarize_scan,
    )
)

register(
    Experiment(
        key="steer",
        method="E11",
        order=110,
        needs=("patch_tuned_to_base", SCAN),
        default=False,
        emits=(RANDOM, CONTRAST, LOWRANK, POOLED, REVERSE, REVERSE_RANDOM, NULL, LAST_PROMPT, FIRST, REST),
        names=(
            Name(
                MAIN,
                "steering: v_ℓ,c",
                COLORS[MAIN],
                "Add a·v_ℓ,c (the mean tuning shift per position class — last prompt token, first 8, rest — at the "
                "layer and scale chosen on one half) at the predicting positions of the base on the other half; "
                "located in a null of 100 random directions with the same per-class norms; baselines: rank-k (E6), "
                "v± (E5), one pooled vector; reverse: subtract it from the tuned model.",
                per_layer=False,
            ),
        ),
        fit=fit_steering,
        specs=lambda plan: plan.fitted.specs,
        summarize=summarize_steering,
        figures=(
            Figure(
                "steer",
                "alignment_probe.experiments.steering:figure",
                "Steering with the localized direction (E11)",
                "E11. Effect on Δlogp of adding a·v_ℓ,c (v_ℓ,c: the fit half's mean tuning shift at the steering "
                "layer over the positions of class c — the last prompt token, the first 8 predicting completion "
                "positions, the rest) to the base at exactly the predicting positions, on the held-out half, "
                "against a; the rank-k and v± directions and one random direction at the same per-class norms, "
                "and the pooled shift as one vector; dashed: the tuned model with a·v_ℓ,c (or the random "
                "direction) subtracted. At the chosen a: the null of 100 random directions (median, 5–95 %) and "
                "each class's vector alone (×). Dotted: the held-out gain (and its negative).",
                needs=(MAIN,),
                order=110,
            ),
            Figure(
                "steer_layers",
                "alignment_probe.experiments.steering:scan_figure",
                "Steering layer and scale scan (E11)",
                "E11. The steering layer ℓ and scale a are chosen on the fit half: at every layer and scale, the "
                "effect on Δlogp of adding a·v_ℓ,c to the base at the predicting positions (and of a random "
                "direction at a = 1), with 95% bootstrap CIs over the fit-half pairs. The cell whose mean is "
                "closest to the fit-half gain (dotted) is evaluated once on the held-out half (the figure above). "
                "E1's fit-half peak is marked for comparison.",
                needs=(MAIN,),
                order=111,
            ),
        ),
        verdicts=(
            "alignment_probe.experiments.steering:verdict",
            "alignment_probe.experiments.steering:verdict_transfer",
        ),
    )
)

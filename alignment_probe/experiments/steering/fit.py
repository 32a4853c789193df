"""E11's fits: the scan on the fit half (v_ℓ,c at every swept layer and scale, which chooses ℓ and a) and the
steering conditions at the chosen (ℓ, a) on the held-out half, with the held-out KL record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.registry import Fitted, Plan
from alignment_probe.experiments.steering.common import (
    CLASS_ONLY,
    CURVES,
    FIRST_K,
    MAIN,
    N_NULL,
    RULE_OVERRIDE,
    SCAN,
    SCAN_RANDOM,
    SCOPE,
    TRANSFER,
    TRANSFER_CONDITIONS,
    _check_hook,
    e1_layer,
    halves,
    steer_k,
    steer_scales,
)
from alignment_probe.experiments.steering.shift import (
    class_shifts,
    class_spec,
    curve_specs,
    directions,
    null_specs,
    predicting_batches,
    random_units,
)
from alignment_probe.interventions import POSITION_CLASSES
from alignment_probe.tokens import TokenizedPair

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins


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

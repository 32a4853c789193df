"""E11's tuning shift: per position class from both models' clean runs of the fit half (:func:`class_shifts`), the
directions it is compared with at the same per-class norms (:func:`directions`), the steering conditions built
from them, and the shift for other readers (E12's ``steer@`` conditions, the exported vectors)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.steering.common import (
    CONTRAST,
    FIRST_K,
    LOWRANK,
    MAIN,
    NULL,
    POOLED,
    RANDOM,
    REVERSE,
    REVERSE_RANDOM,
    SCOPE,
    SIDES,
    TARGET,
)
from alignment_probe.experiments.subspace import fit_subspace
from alignment_probe.exports import export_shift_vectors
from alignment_probe.generation import parse_conditions
from alignment_probe.interventions import POSITION_CLASSES, AddByClass, predicting_classes
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins


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
# the shift for other readers: E12's steer@ conditions and the exported vectors


def fit_steer_shifts(
    twins: Twins, conditions: Sequence[str] | str, pairs: Sequence[TokenizedPair] | None, hook: str = "resid_post"
) -> dict[int, dict[str, Tensor]] | None:
    """E11's per-class shifts (LP, F, R) at every ``steer@`` condition's layer (E12, generation.py), fitted on
    ``pairs`` (both runs of each, :func:`class_shifts`); None when no condition steers."""

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

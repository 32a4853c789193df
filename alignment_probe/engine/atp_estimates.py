"""How attribution patching estimates each patch (:mod:`~alignment_probe.engine.attribution`, E10): the estimator
(plain AtP, or AtP* with the QK fix at the keys), the multiple of (a′ − a) a patch moves, its head, and the checks
that refuse what cannot be estimated, before any compute."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import Backend
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.interventions import Interpolate, Replace, ReplaceHead
from alignment_probe.vocab import HEAD_HOOKS

ESTIMATOR = "atp"
QK_ESTIMATOR = "atp*"  # AtP* with the QK fix: the attention pattern recomputed exactly
QK_HOOKS: tuple[str, ...] = ("k",)  # per-head hooks that act through the softmax (the QK fix applies)


@dataclasses.dataclass(frozen=True)
class QKFix:
    """One AtP* recomputation: KV head ``group`` (None: every KV head) of ``blocks.{layer}.attn.hook_k``
    moved ``factor`` of the way to the source's keys (1: replaced by them) at the ``scope`` positions."""

    layer: int
    scope: str
    factor: float
    group: int | None


# Contributions per sequence: (pair_id, side) → hook name → float64 terms, [length] for the residual hooks,
# [length, heads] for the per-head hooks; and → QKFix → [length] (AtP* terms per query position).
Contributions = dict[tuple[int, str], dict[Any, Tensor]]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """How the engine estimates one spec: its ``estimator``, the multiple ``factor`` of (a′ − a) it moves,
    the ``head`` of a per-head hook it patches (None: the whole activation) and, for AtP*, its ``qk`` fix."""

    estimator: str
    factor: float
    head: int | None = None
    qk: QKFix | None = None


def linear_factor(spec: PatchSpec) -> float:
    """How much of (a′ − a) the spec's intervention moves the activation: 1 for Replace and ReplaceHead,
    α for Interpolate(α). Any other intervention is not a fixed multiple of (a′ − a): refused."""
    iv = spec.intervention
    if isinstance(iv, (Replace, ReplaceHead)):
        return 1.0
    if isinstance(iv, Interpolate):
        return float(iv.alpha)
    raise ConfigError(
        f"attribution patching estimates Replace and Interpolate patches (and ReplaceHead at the "
        f"per-head hooks {', '.join(HEAD_HOOKS)}) only; {spec.key.experiment} at layer {spec.key.layer} "
        f"uses {type(iv).__name__}. Run it with an exact engine (--engine fast or reference)."
    )


def estimate_of(spec: PatchSpec) -> Estimate:
    """How ``spec`` is estimated (refusing what cannot be): the spec's own ``key.estimator`` when it names
    one, else AtP* at the keys (:data:`QK_HOOKS`) and plain AtP everywhere else."""
    factor = linear_factor(spec)
    hook, iv = spec.key.hook, spec.intervention
    head = iv.head if isinstance(iv, ReplaceHead) else None
    if head is not None and hook not in HEAD_HOOKS:
        raise ConfigError(
            f"{spec.key.experiment}: ReplaceHead({head}) at {hook} — a head patch needs a per-head "
            f"hook ({', '.join(HEAD_HOOKS)}); use Replace at {hook}."
        )
    asked = spec.key.estimator
    estimator = asked if asked != "exact" else (QK_ESTIMATOR if hook in QK_HOOKS else ESTIMATOR)
    if estimator == QK_ESTIMATOR and hook not in QK_HOOKS:
        raise ConfigError(
            f"{spec.key.experiment}: estimator 'atp*' (the QK fix) applies to the keys "
            f"({', '.join(QK_HOOKS)}) only; at {hook} there is no softmax to recompute: use 'atp'."
        )
    qk = QKFix(spec.key.layer, spec.key.scope, factor, head) if estimator == QK_ESTIMATOR else None
    return Estimate(estimator, factor, head, qk)


def n_heads_at(model: Backend | Any, hook: str) -> int:
    """Heads of a per-head hook: query heads at ``z``; key/value heads at ``k``/``v`` (as the hook presents
    them: all query heads when the backend ungroups grouped-query attention)."""
    return backend_of(model).heads_at(hook)


def check_head(spec: PatchSpec, est: Estimate, model: Backend) -> None:
    if est.head is not None and not 0 <= est.head < n_heads_at(model, spec.key.hook):
        raise ConfigError(
            f"{spec.key.experiment}: ReplaceHead({est.head}) at {spec.key.hook} of layer "
            f"{spec.key.layer}, but the model has {n_heads_at(model, spec.key.hook)} heads there "
            f"({'query' if spec.key.hook == 'z' else 'key/value'} heads); use a head below that."
        )

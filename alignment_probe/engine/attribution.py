r"""Attribution patching (AtP, E10): a first-order *estimate* of every activation patch at once.

For a target model M, an activation a at ``blocks.ℓ.hook_{hook}`` (one vector per position) and the
source model's value a′ there on the same tokens, the exact patch changes log p(y|x) by

    logp(y | x; a ← a′) − logp(y | x)  ≈  Σ_p (a′_p − a_p) · ∂logp(y|x)/∂a_p ,

the gradient taken on M's own clean run of the sequence. An α-interpolation (a ← a + α (a′ − a))
is estimated by α times the same sum. Summed over the positions of a patch's scope, and taken as
chosen minus rejected, it estimates the condition's effect on Δlogp. One forward with gradients
and one backward per sequence give the estimate at every hook, layer, position and head; the source
model needs one plain forward. Sequences are batched right-padded (tokens.make_batch): sequences
are independent, so the gradient of the *sum* of a batch's log-probs holds each sequence's own
gradient at its own positions.

**Heads** (E7's conditions). The per-head hooks are ``blocks.ℓ.attn.hook_z`` [batch, pos, n_heads,
d_head] (one query head's output) and ``hook_k``/``hook_v`` [batch, pos, n_key_value_heads, d_head]
(one key/value head, *before* grouped-query attention repeats it to its query heads). A
``ReplaceHead(h)`` patch is estimated by the same sum restricted to head h's slice:
Σ_p (a′_{p,h} − a_{p,h}) · ∂logp/∂a_{p,h}; every head of every layer comes from the same backward.

* ``z`` rows are plain AtP (``estimator = "atp"``): the patched value is the source's exact z, and the
  only linearisation is the rest of the network's (as for ``attn_out``).
* ``v`` rows are plain AtP too: z = A·v with the pattern A independent of v, so the first-order term
  through v *equals* Σ (z(v′) − z) · ∂logp/∂z — nothing is linearised at the head itself.
* ``k`` rows use **AtP\*'s QK fix** (Kramár et al. 2024, arXiv 2403.00745; ``estimator = "atp*"``): keys
  act through a softmax, whose linearisation fails where the pattern saturates (a key that takes all of
  a query's attention, or none, has ∂/∂key ≈ 0 whatever a patch would do). So the pattern is recomputed
  *exactly* with the patched keys — scores q·k′/scale with everything TransformerLens does between
  ``hook_k`` and the softmax (:func:`attention_z`), masked, soft-capped, softmaxed — times the clean
  values, giving z′ of every query head that reads the patched KV head; only what follows z is
  linearised: Σ_{p, h reads g} (z′_{p,h} − z_{p,h}) · ∂logp/∂z_{p,h}. A spec whose key names
  ``estimator = "atp"`` at ``k`` gets plain AtP instead (the linearisation through the softmax; what the
  α → 0 derivative of the exact patch is), for comparison.

:class:`AttributionEngine` has the :class:`~alignment_probe.engine.spec.Engine` interface: it takes
the same :class:`PatchSpec` s as the exact engines (``Replace`` or ``Interpolate`` at any of
``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``, ``z``, ``k``, ``v``; ``ReplaceHead``
at ``z``, ``k``, ``v``; any scope and sides) and returns rows of the same effects table, marked
``estimator = "atp"`` (or ``"atp*"``); their ``patched_*`` columns are the clean log-probs plus the
estimate, so ``effect`` is the estimated change of Δlogp. :meth:`AttributionEngine.contributions` gives
the per-position terms themselves.

Exactness where it holds: a position (or head) where the source's activation equals the target's
contributes exactly 0 (e.g. every block below the one a planted twin changed); a patch that is linear
to the loss is estimated exactly; the plain estimate is the derivative of the exact α-interpolated
effect at α = 0, and the AtP* estimate is the derivative at 0 of the exact effect of moving z towards
z′ (tests/integration/test_atp.py, tests/integration/test_atp_heads.py check these).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from alignment_probe.backends.base import Backend
from alignment_probe.effects import make_row, to_frame
from alignment_probe.engine import atp_backward
from alignment_probe.engine.atp_estimates import (
    ESTIMATOR,
    QK_ESTIMATOR,
    QK_HOOKS,
    Contributions,
    Estimate,
    QKFix,
    check_head,
    estimate_of,
    linear_factor,
    n_heads_at,
)
from alignment_probe.engine.atp_qk import (
    FULL_VECTOR_QK_NORM,
    attention_z,
    attn_hook,
    check_qk_fix_supported,
    patched_keys,
    qk_fix_terms,
)
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError, NumericalError
from alignment_probe.interventions import scope_mask
from alignment_probe.tokens import SIDES, ScoredSequence, TokenizedPair, pair_sequences

if TYPE_CHECKING:
    import pandas as pd

    from alignment_probe.pair import Twins


class AttributionEngine:
    """Estimates patched conditions by attribution patching (module docstring); rows ``estimator="atp"``
    (``"atp*"`` for keys, with the QK fix)."""

    name = ESTIMATOR

    def __init__(self, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size

    # ----------------------------------------------------------------------------------------------
    # the one forward + backward (engine/atp_backward.py)

    def contributions(
        self,
        target: Backend | Any,
        source: Backend | Any,
        sequences: Sequence[ScoredSequence],
        names: Sequence[str],
        qk_fixes: Sequence[QKFix] = (),
    ) -> tuple[Contributions, dict[tuple[int, str], float]]:
        """Per-position AtP terms ``(a′_p − a_p) · ∂logp(y|x)/∂a_p`` for every hook name in ``names``
        (``blocks.ℓ.hook_…``, ``blocks.ℓ.attn.hook_{z,k,v}``: summed over d_model, or per head over d_head)
        and the AtP* terms of every ``qk_fixes`` entry (per query position) on every sequence, and the
        target's clean log p(y|x) of each sequence."""
        return atp_backward.contributions(target, source, sequences, names, qk_fixes, batch_size=self.batch_size)

    # ----------------------------------------------------------------------------------------------
    # the Engine interface

    def run(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *, progress: bool = False
    ) -> pd.DataFrame:
        from tqdm.auto import tqdm

        estimates = [estimate_of(s) for s in specs]  # refuses what cannot be estimated, before any compute
        models = pair.backends()
        for s, e in zip(specs, estimates):
            check_head(s, e, models[s.key.target])
        by_models: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, s in enumerate(specs):
            by_models[(s.key.target, s.key.source)].append(i)
        rows = []
        for (target, source), idx in tqdm(
            sorted(by_models.items()), desc="attribution patching", disable=not progress, unit="direction"
        ):
            wanted = [t for t in tokenized if any(specs[i].applies_to(t.pair_id) for i in idx)]
            if not wanted:
                continue
            terms, clean = self.contributions(
                models[target],
                models[source],
                pair_sequences(wanted),
                [specs[i].name for i in idx if estimates[i].qk is None],
                [estimates[i].qk for i in idx if estimates[i].qk is not None],
            )
            for (pid, side), value in clean.items():
                if not math.isfinite(value):
                    raise NumericalError(
                        f"The {target} model produced NaN/inf on pair_id {pid}, {side} sequence, "
                        "without any patch; attribution patching needs a finite clean run."
                    )
            for i in idx:
                spec, est = specs[i], estimates[i]
                key = dataclasses.replace(spec.key, estimator=est.estimator)
                for t in wanted:
                    if not spec.applies_to(t.pair_id):
                        continue
                    before = tuple(clean[(t.pair_id, s)] for s in SIDES)
                    after = tuple(
                        clean[(t.pair_id, s)]
                        + (self._estimate(terms[(t.pair_id, s)], spec, est, t, s) if spec.patches(s) else 0.0)
                        for s in SIDES
                    )
                    rows.append(make_row(key, t.pair_id, before, after))
        return to_frame(rows)

    @staticmethod
    def _estimate(terms: Mapping[Any, Tensor], spec: PatchSpec, est: Estimate, t: TokenizedPair, side: str) -> float:
        """One sequence's estimate: AtP* terms summed over query positions (the scope chose the patched keys);
        plain terms summed over the scope's positions (and the patched head), times the factor."""
        if est.qk is not None:
            return float(terms[est.qk].sum())
        return est.factor * AttributionEngine._scoped(terms[spec.name], spec, t, side, est.head)

    @staticmethod
    def _scoped(terms: Tensor, spec: PatchSpec, t: TokenizedPair, side: str, head: int | None = None) -> float:
        seq = t.sequence(side)
        mask = scope_mask(spec.key.scope, seq.completion_start, seq.length, seq.length)
        picked = terms[mask]  # [n, heads] at a per-head hook
        if head is not None:
            picked = picked[:, head]
        return float(picked.sum())


def position_terms(
    engine: AttributionEngine,
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    *,
    target: str = "base",
    source: str = "tuned",
    hooks: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
) -> Mapping[tuple[int, str], dict[str, Tensor]]:
    """The full-resolution AtP map: per (pair_id, side), per hook name, the estimate at each position
    ([length]; per-head hooks ``z``, ``k``, ``v``: [length, heads], plain AtP) — ``Σ`` over a scope's
    positions of these is that scope's estimate for one sequence."""
    models = pair.backends()
    layers = range(pair.n_layers) if layers is None else layers
    names = [hook_name(layer, hook) for hook in hooks for layer in layers]
    terms, _ = engine.contributions(models[target], models[source], pair_sequences(tokenized), names)
    return terms


__all__ = [
    "ESTIMATOR",
    "FULL_VECTOR_QK_NORM",
    "QK_ESTIMATOR",
    "QK_HOOKS",
    "AttributionEngine",
    "Contributions",
    "Estimate",
    "QKFix",
    "attention_z",
    "attn_hook",
    "check_qk_fix_supported",
    "estimate_of",
    "linear_factor",
    "n_heads_at",
    "patched_keys",
    "position_terms",
    "qk_fix_terms",
]

"""Attribution patching (AtP, E10): a first-order *estimate* of every activation patch at once.

For a target model M, an activation a at ``blocks.ℓ.hook_{hook}`` (one vector per position) and the
source model's value a′ there on the same tokens, the exact patch changes log p(y|x) by

    logp(y | x; a ← a′) − logp(y | x)  ≈  Σ_p (a′_p − a_p) · ∂logp(y|x)/∂a_p ,

the gradient taken on M's own clean run of the sequence. An α-interpolation (a ← a + α (a′ − a))
is estimated by α times the same sum. Summed over the positions of a patch's scope, and taken as
chosen minus rejected, it estimates the condition's effect on Δlogp. One forward with gradients
and one backward per sequence give the estimate at every hook, layer and position; the source
model needs one plain forward. Sequences are batched right-padded (tokens.make_batch): sequences
are independent, so the gradient of the *sum* of a batch's log-probs holds each sequence's own
gradient at its own positions.

:class:`AttributionEngine` has the :class:`~alignment_probe.engine.spec.Engine` interface: it takes
the same :class:`PatchSpec` s as the exact engines (``Replace`` or ``Interpolate``, at any of
``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``, any scope and sides) and
returns rows of the same effects table, marked ``estimator = "atp"``; their ``patched_*`` columns
are the clean log-probs plus the estimate, so ``effect`` is the estimated change of Δlogp.
:meth:`AttributionEngine.contributions` gives the per-position terms (a′_p − a_p)·g_p themselves.

Exactness where it holds: a position where the source's activation equals the target's contributes
exactly 0 (e.g. every block below the one a planted twin changed); a patch that is linear to the
loss is estimated exactly; the estimate is the derivative of the exact α-interpolated effect at
α = 0 (tests/integration/test_atp.py checks all three).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignment_probe.effects import make_row, to_frame
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError, NumericalError
from alignment_probe.interventions import Interpolate, Replace, scope_mask
from alignment_probe.scoring import UNEMBED_CHUNK
from alignment_probe.tokens import (
    SIDES,
    ScoredSequence,
    TokenizedPair,
    batches_by_length,
    make_batch,
    pair_sequences,
)

if TYPE_CHECKING:
    import pandas as pd
    from transformer_lens import HookedTransformer

    from alignment_probe.pair import Twins

ESTIMATOR = "atp"
# Contributions per sequence: (pair_id, side) → hook name → float64 [length] (one term per position).
Contributions = dict[tuple[int, str], dict[str, Tensor]]


def linear_factor(spec: PatchSpec) -> float:
    """How much of (a′ − a) the spec's intervention moves the activation: 1 for Replace, α for
    Interpolate(α). Any other intervention is not a fixed multiple of (a′ − a): refused."""
    iv = spec.intervention
    if isinstance(iv, Replace):
        return 1.0
    if isinstance(iv, Interpolate):
        return float(iv.alpha)
    raise ConfigError(f"attribution patching estimates Replace and Interpolate patches only; "
                      f"{spec.key.experiment} at layer {spec.key.layer} uses {type(iv).__name__}. Run it with an exact "
                      "engine (--engine fast or reference).")


def _logits_dtype(model: HookedTransformer) -> torch.dtype:
    """log-softmax in the model's dtype when it is float32/float64, else in float32 (as scoring does)."""
    dtype = model.cfg.dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Weights that do not require gradients while AtP's forward runs (restored after): autograd then keeps
    only what the activations' gradients need (a hooked activation becomes a leaf, see ``keep``)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AttributionEngine:
    """Estimates patched conditions by attribution patching (module docstring); rows ``estimator="atp"``."""

    name = ESTIMATOR

    def __init__(self, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size

    # ----------------------------------------------------------------------------------------------
    # the one forward + backward

    def contributions(self, target: HookedTransformer, source: HookedTransformer, sequences: Sequence[ScoredSequence],
                      names: Sequence[str]) -> tuple[Contributions, dict[tuple[int, str], float]]:
        """Per-position AtP terms ``(a′_p − a_p) · ∂logp(y|x)/∂a_p`` for every hook name in ``names``
        (``blocks.ℓ.hook_…``) on every sequence, and the target's clean log p(y|x) of each sequence."""
        names = sorted(set(names))
        wanted = set(names)
        top = max(int(n.split(".")[1]) for n in names) + 1
        n_layers = target.cfg.n_layers
        out: Contributions = {}
        clean: dict[tuple[int, str], float] = {}
        for group in batches_by_length(sequences, self.batch_size):
            batch = make_batch(group)
            tokens = batch.tokens.to(target.cfg.device)
            with torch.no_grad():  # the source's activations: one plain forward
                _, cache = source.run_with_cache(tokens, names_filter=lambda n: n in wanted, stop_at_layer=top)
            acts: dict[str, Tensor] = {}

            def keep(act: Tensor, hook: Any, acts: dict[str, Tensor] = acts) -> Tensor:
                if not act.requires_grad:  # frozen weights and nothing upstream kept: a leaf of its own
                    act = act.detach().requires_grad_(True)
                acts[hook.name] = act
                return act

            with torch.enable_grad(), _frozen(target):  # gradients for activations only, none for weights
                resid = target.run_with_hooks(tokens, stop_at_layer=n_layers,
                                              fwd_hooks=[(lambda n: n in wanted, keep)])
                rows, pos, targets = (t.to(resid.device) for t in batch.completion_index())
                lp = torch.empty(rows.shape[0], dtype=_logits_dtype(target), device=resid.device)
                picked = resid[rows, pos]
                for lo in range(0, picked.shape[0], UNEMBED_CHUNK):
                    hi = lo + UNEMBED_CHUNK
                    logits = target.unembed(target.ln_final(picked[lo:hi].unsqueeze(0)))[0].to(lp.dtype)
                    lp[lo:hi] = logits.log_softmax(-1).gather(-1, targets[lo:hi, None])[:, 0]
                unique = list({id(a): a for a in acts.values()}.values())  # resid_pre ℓ+1 is resid_post ℓ
                grads = dict(zip(map(id, unique), torch.autograd.grad(lp.sum(), unique, allow_unused=True)))
            per_seq = torch.zeros(batch.size, dtype=torch.float64, device=lp.device).index_add_(
                0, rows, lp.detach().double()).cpu()
            for name in names:
                act, grad = acts[name], grads[id(acts[name])]
                if grad is None:
                    grad = torch.zeros_like(act)
                terms = ((cache[name].double() - act.detach().double()) * grad.double()).sum(-1).cpu()  # [batch, pos]
                for i, seq in enumerate(group):
                    out.setdefault((seq.pair_id, seq.side), {})[name] = terms[i, : seq.length]
            for i, seq in enumerate(group):
                clean[(seq.pair_id, seq.side)] = float(per_seq[i])
        return out, clean

    # ----------------------------------------------------------------------------------------------
    # the Engine interface

    def run(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *,
            progress: bool = False) -> pd.DataFrame:
        from tqdm.auto import tqdm

        factors = [linear_factor(s) for s in specs]  # refuses what cannot be estimated, before any compute
        models = pair.models()
        by_models: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, s in enumerate(specs):
            by_models[(s.key.target, s.key.source)].append(i)
        rows = []
        for (target, source), idx in tqdm(sorted(by_models.items()), desc="attribution patching",
                                          disable=not progress, unit="direction"):
            wanted = [t for t in tokenized if any(specs[i].applies_to(t.pair_id) for i in idx)]
            if not wanted:
                continue
            terms, clean = self.contributions(models[target], models[source], pair_sequences(wanted),
                                              [specs[i].name for i in idx])
            for (pid, side), value in clean.items():
                if not math.isfinite(value):
                    raise NumericalError(f"The {target} model produced NaN/inf on pair_id {pid}, {side} sequence, "
                                         "without any patch; attribution patching needs a finite clean run.")
            for i in idx:
                spec = specs[i]
                key = dataclasses.replace(spec.key, estimator=ESTIMATOR)
                for t in wanted:
                    if not spec.applies_to(t.pair_id):
                        continue
                    before = tuple(clean[(t.pair_id, s)] for s in SIDES)
                    after = tuple(clean[(t.pair_id, s)] + (factors[i] * self._scoped(terms[(t.pair_id, s)][spec.name],
                                                                                      spec, t, s)
                                                           if spec.patches(s) else 0.0) for s in SIDES)
                    rows.append(make_row(key, t.pair_id, before, after))  # type: ignore[arg-type]
        return to_frame(rows)

    @staticmethod
    def _scoped(terms: Tensor, spec: PatchSpec, t: TokenizedPair, side: str) -> float:
        seq = t.sequence(side)
        mask = scope_mask(spec.key.scope, seq.completion_start, seq.length, seq.length)
        return float(terms[mask].sum())


def position_terms(engine: AttributionEngine, pair: Twins, tokenized: Sequence[TokenizedPair], *, target: str = "base",
                   source: str = "tuned", hooks: Sequence[str] = ("resid_post",),
                   layers: Sequence[int] | None = None) -> Mapping[tuple[int, str], dict[str, Tensor]]:
    """The full-resolution AtP map: per (pair_id, side), per hook name, the estimate at each position
    (``Σ`` over a scope's positions of these is that scope's estimate for one sequence)."""
    models = pair.models()
    layers = range(pair.n_layers) if layers is None else layers
    names = [hook_name(layer, hook) for hook in hooks for layer in layers]
    terms, _ = engine.contributions(models[target], models[source], pair_sequences(tokenized), names)
    return terms

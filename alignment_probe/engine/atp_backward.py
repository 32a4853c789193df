"""Attribution patching's one forward and one backward (:mod:`~alignment_probe.engine.attribution`, E10): the
per-position AtP terms of every hook, and the AtP* terms of every QK fix, on batches of sequences."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import Backend
from alignment_probe.engine.atp_estimates import Contributions, QKFix
from alignment_probe.engine.atp_qk import attn_hook, check_qk_fix_supported, qk_fix_terms
from alignment_probe.engine.spec import hook_name
from alignment_probe.interventions import scope_mask
from alignment_probe.scoring import UNEMBED_CHUNK
from alignment_probe.tokens import ScoredSequence, batches_by_length, make_batch


def _logits_dtype(model: Backend) -> torch.dtype:
    """log-softmax in the model's dtype when it is float32/float64, else in float32 (as scoring does)."""
    dtype = model.dtype
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


def contributions(
    target: Backend | Any,
    source: Backend | Any,
    sequences: Sequence[ScoredSequence],
    names: Sequence[str],
    qk_fixes: Sequence[QKFix] = (),
    *,
    batch_size: int,
) -> tuple[Contributions, dict[tuple[int, str], float]]:
    """Per-position AtP terms ``(a′_p − a_p) · ∂logp(y|x)/∂a_p`` for every hook name in ``names``
    (``blocks.ℓ.hook_…``, ``blocks.ℓ.attn.hook_{z,k,v}``: summed over d_model, or per head over d_head)
    and the AtP* terms of every ``qk_fixes`` entry (per query position) on every sequence, and the
    target's clean log p(y|x) of each sequence; ``batch_size`` sequences at a time."""
    target, source = backend_of(target), backend_of(source)
    names = sorted(set(names))
    fixes = sorted(set(qk_fixes), key=lambda f: (f.layer, f.scope, f.factor, -1 if f.group is None else f.group))
    for layer in sorted({f.layer for f in fixes}):
        check_qk_fix_supported(target.attention(layer))
    qkv = {attn_hook(f.layer, h) for f in fixes for h in ("q", "k", "v")}
    with_grad = set(names) | {hook_name(f.layer, "z") for f in fixes}  # the z gradient AtP* reads
    from_source = set(names) | {hook_name(f.layer, "k") for f in fixes}
    hooked = with_grad | qkv
    top = max(int(n.split(".")[1]) for n in hooked) + 1
    n_layers = target.n_layers
    out: Contributions = {}
    clean: dict[tuple[int, str], float] = {}
    for group in batches_by_length(sequences, batch_size):
        batch = make_batch(group)
        tokens = batch.tokens.to(target.device)
        with torch.no_grad():  # the source's activations: one plain forward
            _, cache = source.run(tokens, capture=from_source, stop_at_layer=top)
        acts: dict[str, Tensor] = {}
        seen: dict[str, Tensor] = {}  # q, k, v as the target computed them (AtP*'s inputs)

        def keep(act: Tensor, hook: Any, acts: dict[str, Tensor] = acts, seen: dict[str, Tensor] = seen) -> Tensor:
            if hook.name in with_grad:
                if not act.requires_grad:  # frozen weights and nothing upstream kept: a leaf of its own
                    act = act.detach().requires_grad_(True)
                acts[hook.name] = act
            if hook.name in qkv:
                seen[hook.name] = act.detach()
            return act

        with torch.enable_grad(), _frozen(target.model):  # gradients for activations only, none for weights
            resid, _ = target.run(tokens, stop_at_layer=n_layers, hooks=[(lambda n: n in hooked, keep)])
            rows, pos, targets = (t.to(resid.device) for t in batch.completion_index())
            lp = torch.empty(rows.shape[0], dtype=_logits_dtype(target), device=resid.device)
            picked = resid[rows, pos]
            for lo in range(0, picked.shape[0], UNEMBED_CHUNK):
                hi = lo + UNEMBED_CHUNK
                logits = target.unembed(picked[lo:hi]).to(lp.dtype)
                lp[lo:hi] = logits.log_softmax(-1).gather(-1, targets[lo:hi, None])[:, 0]
            unique = list({id(a): a for a in acts.values()}.values())  # resid_pre ℓ+1 is resid_post ℓ
            grads = dict(zip(map(id, unique), torch.autograd.grad(lp.sum(), unique, allow_unused=True)))
        per_seq = (
            torch.zeros(batch.size, dtype=torch.float64, device=lp.device)
            .index_add_(0, rows, lp.detach().double())
            .cpu()
        )

        def grad_of(name: str) -> Tensor:
            grad = grads[id(acts[name])]
            return torch.zeros_like(acts[name]) if grad is None else grad

        terms: dict[Any, Tensor] = {}
        for name in names:  # [batch, pos] (residual hooks) or [batch, pos, heads] (per-head hooks)
            terms[name] = ((cache[name].double() - acts[name].detach().double()) * grad_of(name).double()).sum(-1).cpu()
        width = tokens.shape[1]
        for fix in fixes:
            mask = torch.stack([scope_mask(fix.scope, s.completion_start, s.length, width) for s in group])
            attn = target.attention(fix.layer)
            q, k, v = (seen[attn_hook(fix.layer, h)] for h in ("q", "k", "v"))
            terms[fix] = qk_fix_terms(
                attn,
                q,
                k,
                v,
                cache[hook_name(fix.layer, "k")],
                grad_of(hook_name(fix.layer, "z")),
                mask,
                fix.factor,
                fix.group,
            ).cpu()
        for i, seq in enumerate(group):
            mine = out.setdefault((seq.pair_id, seq.side), {})
            for key, value in terms.items():
                mine[key] = value[i, : seq.length]
            clean[(seq.pair_id, seq.side)] = float(per_seq[i])
    return out, clean

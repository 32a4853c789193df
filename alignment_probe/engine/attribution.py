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

import contextlib
import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import Backend
from alignment_probe.effects import make_row, to_frame
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.errors import ConfigError, NumericalError
from alignment_probe.interventions import Interpolate, Replace, ReplaceHead, scope_mask
from alignment_probe.scoring import UNEMBED_CHUNK
from alignment_probe.tokens import (
    SIDES,
    ScoredSequence,
    TokenizedPair,
    batches_by_length,
    make_batch,
    pair_sequences,
)
from alignment_probe.vocab import HEAD_HOOKS

if TYPE_CHECKING:
    import pandas as pd
    from transformer_lens.components import AbstractAttention

    from alignment_probe.pair import Twins

ESTIMATOR = "atp"
QK_ESTIMATOR = "atp*"  # AtP* with the QK fix: the attention pattern recomputed exactly
QK_HOOKS: tuple[str, ...] = ("k",)  # per-head hooks that act through the softmax (the QK fix applies)
# Architectures whose QK norm runs over the whole projected vector (all heads at once), as in TransformerLens.
FULL_VECTOR_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


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


def _check_head(spec: PatchSpec, est: Estimate, model: Backend) -> None:
    if est.head is not None and not 0 <= est.head < n_heads_at(model, spec.key.hook):
        raise ConfigError(
            f"{spec.key.experiment}: ReplaceHead({est.head}) at {spec.key.hook} of layer "
            f"{spec.key.layer}, but the model has {n_heads_at(model, spec.key.hook)} heads there "
            f"({'query' if spec.key.hook == 'z' else 'key/value'} heads); use a head below that."
        )


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


# --------------------------------------------------------------------------------------------------
# the QK fix: one head's attention recomputed from its queries, keys and values


def attn_hook(layer: int, hook: str) -> str:
    """``blocks.{layer}.attn.hook_{hook}`` for any of the attention's hooks (``q`` too, which no patch names)."""
    return f"blocks.{layer}.attn.hook_{hook}"


def check_qk_fix_supported(attn: AbstractAttention) -> None:
    """Refuse, naming the fix, an attention whose scores :func:`attention_z` does not reproduce."""
    cfg = attn.cfg
    if cfg.positional_embedding_type == "relative_positional_bias":
        raise ConfigError(
            "AtP*'s QK fix recomputes attention from hook_q/hook_k/hook_v and does not model T5's "
            "relative position bias; estimate the k rows with plain AtP (estimator 'atp') or patch "
            "them exactly (kv_head_patch)."
        )


def _qk_normed(attn: AbstractAttention, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """TransformerLens's QK norms: per head on d_head (``use_qk_norm``: Gemma-3, Qwen3), or over the whole
    projected vector (OLMo-2/3, OLMoE: then one head's keys change every head's normalised keys)."""
    cfg = attn.cfg
    if cfg.use_qk_norm:
        q, k = attn._apply_qk_norm(q, attn.q_norm), attn._apply_qk_norm(k, attn.k_norm)
    if cfg.original_architecture in FULL_VECTOR_QK_NORM:
        q = attn.q_norm(q.flatten(-2)).unflatten(-1, q.shape[-2:])
        k = attn.k_norm(k.flatten(-2)).unflatten(-1, k.shape[-2:])
    return q, k


def attention_z(
    attn: AbstractAttention,
    q: Float[Tensor, "batch pos n_heads d_head"],
    k: Float[Tensor, "batch pos n_kv_heads d_head"],
    v: Float[Tensor, "batch pos n_kv_heads d_head"],
    heads: Sequence[int] | None = None,
) -> Float[Tensor, "batch pos heads d_head"]:
    """z of the query heads ``heads`` (None: all) from the values at ``hook_q``, ``hook_k`` and ``hook_v``,
    computed the way TransformerLens's attention does after those hooks (abstract_attention.py, 3.9):
    QK norm, clipping, rotary (applied *after* ``hook_k``, at positions 0 … pos − 1: right-padded batches
    need no offsets), log-n query scaling, scores q·k/attn_scale (grouped-query: KV head g serves query
    heads g·r … g·r + r − 1, r = n_heads / n_kv_heads), soft-capping, ALiBi, the causal (and sliding
    window) mask, attention sinks, softmax, pattern × v. Real positions match the model's own ``hook_z``
    to float rounding (tests/integration/test_atp_heads.py checks it across architectures)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    cfg = attn.cfg
    check_qk_fix_supported(attn)
    q, k = _qk_normed(attn, q, k)
    if cfg.clip_qkv is not None:
        q, k, v = (t.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv) for t in (q, k, v))
    if cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q, 0, None), attn.apply_rotary(k, 0, None)
    if getattr(cfg, "use_logn_attn", False) and not attn.training:
        q = attn._apply_logn_scaling(q, 0)
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    heads = list(range(q.shape[2])) if heads is None else list(heads)
    q, k, v = q[:, :, heads], k[:, :, heads], v[:, :, heads]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / attn.attn_scale
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
    if cfg.positional_embedding_type == "alibi":
        slopes = attn.create_alibi_bias(cfg.n_heads, scores.shape[-1], scores.device)[heads]
        scores = scores + slopes.to(scores.dtype)
    if (attn._attention_dir_override or cfg.attention_dir) == "causal":
        scores = attn.apply_causal_mask(scores, 0, None)
    if cfg.use_attention_sinks:
        sink = attn.sinks[heads].reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[-2], -1)
        combined = torch.cat([scores, sink.to(scores.dtype)], dim=-1)
        pattern = (combined - combined.max(dim=-1, keepdim=True).values).softmax(-1)[..., :-1]
    else:
        pattern = scores.softmax(-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern).to(v.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def patched_keys(
    k: Float[Tensor, "batch pos n_kv_heads d_head"],
    k_src: Float[Tensor, "batch pos n_kv_heads d_head"],
    mask: Bool[Tensor, "batch pos"],
    factor: float,
    group: int | None,
) -> Float[Tensor, "batch pos n_kv_heads d_head"]:
    """The target's keys with KV head ``group`` (None: all) moved ``factor`` of the way to the source's at
    the masked positions — what the exact engines write (Replace: the source's keys themselves)."""
    new = k_src if factor == 1.0 else k + factor * (k_src - k)
    where = mask[:, :, None, None].to(k.device)
    if group is not None:
        where = where & (torch.arange(k.shape[2], device=k.device) == group)[None, None, :, None]
    return torch.where(where, new.to(k.dtype), k)


def qk_fix_terms(
    attn: AbstractAttention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_src: Tensor,
    grad_z: Float[Tensor, "batch pos n_heads d_head"],
    mask: Bool[Tensor, "batch pos"],
    factor: float,
    group: int | None,
) -> Float[Tensor, "batch pos"]:
    """AtP* terms per query position: Σ_h (z′ − z)·∂logp/∂z over the query heads whose z the patched keys
    move, z′ from :func:`attention_z` with :func:`patched_keys`, z from the same function with the clean
    keys (so the difference holds no recomputation rounding: unchanged keys give exactly 0)."""
    new_k = patched_keys(k, k_src, mask, factor, group)
    if torch.equal(new_k, k):
        return torch.zeros(grad_z.shape[:2], dtype=torch.float64, device=grad_z.device)
    rep = q.shape[2] // k.shape[2]
    heads_mix = attn.cfg.original_architecture in FULL_VECTOR_QK_NORM  # one head's keys renormalise them all
    heads = None if group is None or heads_mix else range(group * rep, (group + 1) * rep)
    with torch.no_grad():
        dz = attention_z(attn, q, new_k, v, heads).double() - attention_z(attn, q, k, v, heads).double()
    g = grad_z if heads is None else grad_z[:, :, list(heads)]
    return (dz * g.double()).sum((-1, -2))


# --------------------------------------------------------------------------------------------------


class AttributionEngine:
    """Estimates patched conditions by attribution patching (module docstring); rows ``estimator="atp"``
    (``"atp*"`` for keys, with the QK fix)."""

    name = ESTIMATOR

    def __init__(self, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size

    # ----------------------------------------------------------------------------------------------
    # the one forward + backward

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
        for group in batches_by_length(sequences, self.batch_size):
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
                terms[name] = (
                    ((cache[name].double() - acts[name].detach().double()) * grad_of(name).double()).sum(-1).cpu()
                )
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

    # ----------------------------------------------------------------------------------------------
    # the Engine interface

    def run(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *, progress: bool = False
    ) -> pd.DataFrame:
        from tqdm.auto import tqdm

        estimates = [estimate_of(s) for s in specs]  # refuses what cannot be estimated, before any compute
        models = pair.backends()
        for s, e in zip(specs, estimates):
            _check_head(s, e, models[s.key.target])
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

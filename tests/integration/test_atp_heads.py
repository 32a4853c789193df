"""E10 attribution patching of attention heads (``atp_heads``): known answers on tiny models.

(a) :func:`attention_z` — the QK fix's recomputation — reproduces TransformerLens's own ``hook_z`` after a
    patch of ``hook_k``, on every attention variant TransformerLens has (rotary before/after, partial and
    adjacent-pair rotary, grouped-query, QK norm per head and over the whole vector, soft-cap, sliding
    window, ALiBi, sinks, clipping, log-n scaling, ungrouped GQA), float64.
(b) Plain AtP of a head is the α → 0 derivative of the exact α-interpolated head patch (z per query head,
    v and k per KV head; error linear in α, float64).
(c) AtP* of a key head is the α → 0 derivative of the exact patch that moves z towards the z the patched
    keys give (taken from an exact k-patched forward, not from the engine's recomputation); at α = 1 that
    z patch *is* the k patch.
(d) AtP* is exact where the network after z is linear: values scaled by ε make z's change O(ε), so
    atp*/exact − 1 = O(ε), while plain AtP through a sharp softmax stays off by a constant factor.
(e) The rows fit the effects table; identities (v = Σ of the z of the query heads reading it; identity
    patch = 0); refusals; the suite's ``atp_heads`` summary and figure beside an unchanged ``atp``.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BUNDLED_PAIRS

from alignment_probe.data import load_pairs
from alignment_probe.effects import KEY_COLUMNS, RowKey
from alignment_probe.engine import FastEngine
from alignment_probe.engine.attribution import AttributionEngine, attention_z, patched_keys
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.atp import ATP_HEADS, atp_head_specs, atp_heads_figure
from alignment_probe.experiments.suite import SuiteConfig, run_suite
from alignment_probe.interventions import Interpolate, ReplaceHead, scope_mask
from alignment_probe.pair import Twins, load_twins
from alignment_probe.tables import PartStore
from alignment_probe.tokens import sample_and_tokenize
from tests.helpers.checkpoints import llama_config, random_llama, save_checkpoint, train_tokenizer

ALPHAS = (0.02, 0.01, 0.005, 0.0025)

# --------------------------------------------------------------------------------------------------
# (a) the recomputation against TransformerLens itself

TL_BASE = dict(
    n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=40, act_fn="gelu", dtype=torch.float64, seed=0
)
ROPE = dict(positional_embedding_type="rotary", rotary_dim=8)
ATTENTIONS = {
    "standard (GPT-2)": dict(normalization_type="LN"),
    "rotary, grouped-query (Llama)": dict(ROPE, normalization_type="RMS", n_key_value_heads=2),
    "partial rotary, halves (NeoX)": dict(ROPE, rotary_dim=4, rotary_adjacent_pairs=False),
    "partial rotary, adjacent pairs (GPT-J)": dict(ROPE, rotary_dim=4, rotary_adjacent_pairs=True),
    "soft-cap, sliding window, attn scale (Gemma-2)": dict(
        ROPE,
        n_key_value_heads=2,
        attn_scores_soft_cap=2.0,
        attn_types=["local", "global"],
        window_size=5,
        attn_scale=3.0,
    ),
    "QK norm per head (Gemma-3, Qwen3)": dict(ROPE, normalization_type="RMS", n_key_value_heads=2, use_qk_norm=True),
    "QK norm over all heads (OLMo-2)": dict(ROPE, normalization_type="RMS", original_architecture="Olmo2ForCausalLM"),
    "ALiBi": dict(positional_embedding_type="alibi"),
    "sinks and clipped QKV": dict(ROPE, n_key_value_heads=2, use_attention_sinks=True, clip_qkv=0.5),
    "log-n query scaling (Qwen-1)": dict(ROPE, use_logn_attn=True, train_seq_length=6),
    "ungrouped grouped-query": dict(ROPE, n_key_value_heads=2, ungroup_grouped_query_attention=True),
}


def _tl_model(overrides: dict) -> object:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**(TL_BASE | overrides))).eval()  # eval: log-n scaling runs
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # 1-D parameters start at 0 or 1: randomise them, so a dropped norm or sink shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize("overrides", ATTENTIONS.values(), ids=ATTENTIONS.keys())
def test_attention_z_reproduces_transformer_lens(overrides):
    model = _tl_model(overrides)
    layer, names = 1, [f"blocks.1.attn.hook_{h}" for h in "qkvz"]
    tokens = torch.randint(0, TL_BASE["d_vocab"], (2, 12), generator=torch.Generator().manual_seed(2))
    seen: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        seen[hook.name] = act.detach().clone()
        return act

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, grab) for n in names])
    q, k, v, z = (seen[n] for n in names)
    attn = model.blocks[layer].attn
    torch.testing.assert_close(attention_z(attn, q, k, v), z, rtol=0, atol=1e-12)
    # one KV head's keys patched at some positions, by a forward hook: the model's z against ours
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, 3:9], mask[1, 5:] = True, True
    group = k.shape[2] - 1
    new_k = patched_keys(
        k, k + torch.randn(k.shape, generator=torch.Generator().manual_seed(3), dtype=k.dtype), mask, 1.0, group
    )
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(names[1], lambda act, hook: new_k), (names[3], grab)])
    assert (seen[names[3]] - z).abs().max() > 1e-3  # the patch moves z
    torch.testing.assert_close(attention_z(attn, q, new_k, v), seen[names[3]], rtol=0, atol=1e-12)
    # only the query heads reading that KV head moved (unless the QK norm mixes every head)
    rep = q.shape[2] // k.shape[2]
    others = [h for h in range(q.shape[2]) if h // rep != group]
    moved = (seen[names[3]][:, :, others] - z[:, :, others]).abs().max()
    assert moved > 0 if overrides.get("original_architecture") == "Olmo2ForCausalLM" else moved == 0


# Each feature attention_z models, switched off in the config after the forward: the match must break
# (so the check above is not passing because a feature never mattered).
FEATURES_OFF = {
    "rotary, grouped-query (Llama)": ("positional_embedding_type", "standard"),
    "partial rotary, halves (NeoX)": ("rotary_adjacent_pairs", True),
    "soft-cap, sliding window, attn scale (Gemma-2)": ("attn_scores_soft_cap", -1.0),
    "QK norm per head (Gemma-3, Qwen3)": ("use_qk_norm", False),
    "QK norm over all heads (OLMo-2)": ("original_architecture", None),
    "ALiBi": ("positional_embedding_type", "standard"),
    "sinks and clipped QKV": ("use_attention_sinks", False),
    "log-n query scaling (Qwen-1)": ("use_logn_attn", False),
}


@pytest.mark.parametrize("variant", FEATURES_OFF)
def test_attention_z_needs_each_feature_it_models(variant):
    model = _tl_model(ATTENTIONS[variant])
    names = [f"blocks.1.attn.hook_{h}" for h in "qkvz"]
    tokens = torch.randint(0, TL_BASE["d_vocab"], (2, 12), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    q, k, v, z = (cache[n] for n in names)
    attr, value = FEATURES_OFF[variant]
    setattr(model.cfg, attr, value)
    assert (attention_z(model.blocks[1].attn, q, k, v) - z).abs().max() > 1e-3


def test_patched_keys_is_what_the_exact_engines_write():
    k, src = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(2, 5, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = patched_keys(k, src, mask, 1.0, 1)
    assert torch.equal(out[:, :, [0, 2]], k[:, :, [0, 2]])  # other KV heads untouched
    assert torch.equal(out[:, :, 1][mask], src[:, :, 1][mask]) and torch.equal(out[:, :, 1][~mask], k[:, :, 1][~mask])
    half = patched_keys(k, src, mask, 0.5, None)  # Interpolate: every head, α of the way
    torch.testing.assert_close(half[mask], (k + 0.5 * (src - k))[mask], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# (b), (c): derivatives, float64


@pytest.fixture(scope="module")
def pair64(tiny):
    return load_twins(tiny.base, tiny.tuned, device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def tok64(pair64):
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    return sample_and_tokenize(pairs, pair64.tokenizer, n_pairs=2, seed=3, max_length=96)


def _completion_logprob64(model, tokens: torch.Tensor, seq, fwd_hooks=()) -> float:
    with torch.inference_mode():
        logp = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[0].double().log_softmax(-1)
    idx = torch.arange(seq.completion_start, seq.length)
    return float(logp[idx - 1, tokens[0, idx]].sum())


def _exact64(pair: Twins, tok, conditions, write) -> pd.Series:
    """Exact effect on Δlogp (float64 log-softmax) per (condition index, pair_id) of the forward hook
    ``write(condition, seq, scope mask, target act, source act) -> new act`` at the condition's hook."""
    out = {}
    for t in tok:
        for ci, (hook, layer, head, scope) in enumerate(conditions):
            name = f"blocks.{layer}.attn.hook_{hook}"
            delta = {}
            for side in ("chosen", "rejected"):
                seq = t.sequence(side)
                tokens = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
                _, cache = pair.tuned.run_with_cache(tokens, names_filter=name)
                mask = scope_mask(scope, seq.completion_start, seq.length, seq.length)

                def hook_fn(act, hook, c=(hook, layer, head, scope), seq=seq, mask=mask, src=cache[name]):
                    return write(c, seq, mask, act, src)

                delta[side] = _completion_logprob64(pair.base, tokens, seq, [(name, hook_fn)]) - _completion_logprob64(
                    pair.base, tokens, seq
                )
            out[(ci, t.pair_id)] = delta["chosen"] - delta["rejected"]
    return pd.Series(out)


def _atp(pair, tok, conditions, estimator) -> pd.Series:
    specs = [
        PatchSpec(
            RowKey("atp_check", "base", "tuned", hook, scope, "both", layer, float(head), estimator=estimator),
            ReplaceHead(head),
        )
        for hook, layer, head, scope in conditions
    ]
    rows = AttributionEngine().run(pair, tok, specs)
    assert set(rows.estimator) == {estimator}
    index = {(hook, layer, float(head), scope): ci for ci, (hook, layer, head, scope) in enumerate(conditions)}
    return pd.Series({(index[(r.hook, r.layer, r.param, r.scope)], r.pair_id): r.effect for r in rows.itertuples()})


def _assert_derivative(atp: pd.Series, exact_of_alpha, alphas=ALPHAS) -> None:
    """exact(α)/α − AtP = α·c + O(α²): close at the smallest α, the error halving with α. (The α grid must keep
    α·c far above the float64 rounding of the effects, ~1e-13 nats / α.)"""
    assert atp.abs().min() > 1e-4, atp  # the conditions do something
    errors = np.stack([(exact_of_alpha(a).reindex(atp.index) / a - atp).abs().to_numpy() for a in alphas], axis=1)
    rel = errors / np.maximum(atp.abs().to_numpy()[:, None], 1e-3)
    assert (rel[:, -1] < 0.05).all(), rel
    ratios = errors[:, :-1] / errors[:, 1:]
    assert np.all(ratios > 1.5), ratios.tolist()
    assert np.all(np.abs(ratios[:, -1] - 2) < 0.2), ratios.tolist()


def test_head_atp_is_the_derivative_of_the_exact_head_patch(pair64, tok64):
    """Per head: z of one query head, v and k of one key/value head (k by plain AtP, the linearisation
    through the softmax, which is what the derivative is); scopes all, completion and the last prompt token."""
    conditions = [
        ("z", 1, 2, "all"),
        ("z", 3, 0, "completion"),
        ("v", 2, 1, "all"),
        ("v", 0, 0, "last_prompt"),
        ("k", 0, 0, "all"),
        ("k", 2, 1, "completion"),
    ]

    def interpolate_head(alpha):
        def write(c, seq, mask, act, src):
            new = act.clone()
            new[0, mask, c[2]] = act[0, mask, c[2]] + alpha * (src[0, mask, c[2]] - act[0, mask, c[2]])
            return new

        return _exact64(pair64, tok64, conditions, write)

    _assert_derivative(_atp(pair64, tok64, conditions, "atp"), interpolate_head)


def _z_after_key_patch(pair: Twins, tokens, seq, layer: int, group: int, scope: str) -> torch.Tensor:
    """The base model's z at ``layer`` when one KV head's keys are the tuned model's at the scope's positions,
    read from an exact forward (not from the AtP* recomputation under test)."""
    k_name, z_name = f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_z"
    _, cache = pair.tuned.run_with_cache(tokens, names_filter=k_name)
    mask = scope_mask(scope, seq.completion_start, seq.length, seq.length)
    seen = {}

    def put_k(act, hook):
        new = act.clone()
        new[0, mask, group] = cache[k_name][0, mask, group]
        return new

    def grab(act, hook):
        seen["z"] = act.detach().clone()
        return act

    with torch.inference_mode():
        pair.base.run_with_hooks(tokens, fwd_hooks=[(k_name, put_k), (z_name, grab)])
    return seen["z"]


def test_qk_fix_is_the_derivative_along_the_exact_z_shift(pair64, tok64):
    """AtP* = Σ (z′ − z)·∂logp/∂z, z′ the z of the key-patched model. So it is the α → 0 derivative of the
    exact effect of z ← z + α (z′ − z); and at α = 1 that z patch is the key patch itself (keys reach nothing
    but z)."""
    conditions = [("k", 1, 1, "all"), ("k", 2, 0, "completion"), ("k", 0, 1, "prompt")]
    targets = {}
    for t in tok64:
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            tokens = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            for ci, (_, layer, group, scope) in enumerate(conditions):
                targets[(ci, seq.pair_id, seq.side)] = _z_after_key_patch(pair64, tokens, seq, layer, group, scope)

    def move_z(alpha):
        def write(c, seq, mask, act, src):
            return act + alpha * (targets[(conditions.index(c), seq.pair_id, seq.side)] - act)

        zc = [("z", layer, group, scope) for _, layer, group, scope in conditions]
        out = _exact64(pair64, tok64, zc, lambda c, *a: write(conditions[zc.index(c)], *a))
        return out

    star = _atp(pair64, tok64, conditions, "atp*")
    # z moves along a straight line, so exact(α) is nearly linear in α (its α·c term is ~1e-6 of the effect at
    # α = 0.02): a larger α grid keeps that term above float64 rounding and still in the linear regime
    _assert_derivative(star, move_z, (0.32, 0.16, 0.08, 0.04))

    def replace_keys(c, seq, mask, act, src):
        new = act.clone()
        new[0, mask, c[2]] = src[0, mask, c[2]]
        return new

    key_patch = _exact64(pair64, tok64, conditions, replace_keys)
    np.testing.assert_allclose(move_z(1.0).reindex(key_patch.index), key_patch, rtol=0, atol=1e-10)
    # AtP* is not plain AtP, which linearises through the softmax (on these mild random keys they differ by ~1 %)
    plain = _atp(pair64, tok64, conditions, "atp")
    assert ((plain - star).abs() / star.abs()).max() > 1e-3


# --------------------------------------------------------------------------------------------------
# (d) exact where the network after z is linear


def _exact_key_patch64(pair: Twins, tok, layer: int, group: int) -> np.ndarray:
    def replace_keys(c, seq, mask, act, src):
        new = act.clone()
        new[0, :, group] = src[0, :, group]
        return new

    return _exact64(pair, tok, [("k", layer, group, "all")], replace_keys).sort_index().to_numpy()


def test_qk_fix_is_exact_when_the_rest_of_the_network_is_linear(tmp_path):
    """A twin whose layer-0 keys of KV head 0 differ; both models' layer-0 queries ×30 (a sharp pattern) and
    values ×ε. Patching the keys moves the pattern by O(1) and z by O(ε), so everything after z is linear to
    O(ε²): AtP*, which recomputes the pattern exactly, has atp*/exact − 1 = O(ε), shrinking tenfold per
    decade of ε; plain AtP linearises the softmax itself, an error ε does not touch."""
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tokenizer = train_tokenizer([p.prompt + p.chosen for p in pairs[:200]], vocab_size=400)
    model = random_llama(llama_config(tokenizer, num_hidden_layers=2), seed=0)
    path = save_checkpoint(model, tokenizer, tmp_path / "m")
    loaded = load_twins(path, path, dtype="float64")
    tok = sample_and_tokenize(pairs, loaded.tokenizer, n_pairs=3, seed=1, max_length=96)
    layer, group = 0, 0

    def twins(eps: float) -> Twins:
        base, tuned = copy.deepcopy(loaded.base), copy.deepcopy(loaded.base)
        with torch.no_grad():
            for model in (base, tuned):
                model.blocks[layer].attn.W_Q.mul_(30.0)
                model.blocks[layer].attn._W_V.mul_(eps)
            w_k = tuned.blocks[layer].attn._W_K
            w_k[group] = (
                torch.randn(w_k[group].shape, generator=torch.Generator().manual_seed(7), dtype=w_k.dtype)
                * w_k[group].std()
            )
        return Twins(base, tuned, loaded.tokenizer, "base", "tuned", "", "")

    star_err, plain_err = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        pair = twins(eps)
        exact = _exact_key_patch64(pair, tok, layer, group)
        assert np.abs(exact).min() > 1e-6 * eps  # the keys do move Δlogp
        specs = [
            PatchSpec(
                RowKey("q", "base", "tuned", "k", "all", "both", layer, float(group), estimator=e), ReplaceHead(group)
            )
            for e in ("atp*", "atp")
        ]
        rows = AttributionEngine().run(pair, tok, specs).sort_values("pair_id")
        star_err.append(np.abs(rows[rows.estimator == "atp*"].effect.to_numpy() / exact - 1))
        plain_err.append(np.abs(rows[rows.estimator == "atp"].effect.to_numpy() / exact - 1))
    star_err, plain_err = np.array(star_err), np.array(plain_err)  # [ε, pair]
    np.testing.assert_allclose(star_err[:-1] / star_err[1:], 10.0, rtol=0.1)  # O(ε): tenfold per decade
    assert (star_err[-1] < 1e-3).all(), star_err
    assert (plain_err > 0.1).all(), plain_err  # plain AtP does not converge
    np.testing.assert_allclose(plain_err[-1], plain_err[-2], rtol=0.05)  # ... it stays where it is


# --------------------------------------------------------------------------------------------------
# (e) rows, identities, refusals, the suite


def test_head_rows_fit_the_effects_table_and_obey_identities(tiny_pair, tiny):
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=5, max_length=64)
    specs = atp_head_specs(range(tiny_pair.n_layers), n_heads=4, n_kv_heads=2)
    est = AttributionEngine(batch_size=2).run(tiny_pair, tok, specs)
    exact = FastEngine().run(tiny_pair, tok, [s for s in specs if s.key.estimator == "exact"])
    assert list(est.columns) == list(exact.columns)
    keys = [c for c in KEY_COLUMNS if c != "estimator"]
    fixed = est[~((est.hook == "k") & (est.estimator == "atp"))]
    pd.testing.assert_frame_equal(fixed[keys].reset_index(drop=True), exact[keys].reset_index(drop=True))
    assert dict(fixed.groupby("hook").estimator.unique().map(tuple)) == {"z": ("atp",), "v": ("atp",), "k": ("atp*",)}
    # a whole per-head hook (every head at once): plain AtP adds up over heads, and Interpolate(α) is α times it
    whole = [
        PatchSpec(RowKey("w", "base", "tuned", h, "all", "both", 1, a), Interpolate(a))
        for h in ("z", "v")
        for a in (1.0, 0.5)
    ]
    w = AttributionEngine().run(tiny_pair, tok, whole).set_index(["hook", "param", "pair_id"]).effect
    per_head = est[(est.layer == 1) & (est.estimator == "atp")].groupby(["hook", "pair_id"]).effect.sum()
    for (hook, pid), total in per_head.items():
        if hook in ("z", "v"):
            assert w[(hook, 1.0, pid)] == pytest.approx(total, abs=1e-6)
            assert w[(hook, 0.5, pid)] == pytest.approx(0.5 * w[(hook, 1.0, pid)], abs=1e-9)
    # identity (source = target) is exactly 0, AtP* included
    ident = [PatchSpec(dataclasses.replace(s.key, source="base"), s.intervention) for s in specs]
    assert (AttributionEngine().run(tiny_pair, tok, ident).effect == 0.0).all()


@pytest.fixture(scope="module")
def value_twin(tmp_path_factory):
    """A base and a twin that differs from it only in layer 1's v_proj (both KV heads)."""
    from tests.helpers.checkpoints import perturbed_copy

    root = tmp_path_factory.mktemp("value-twin")
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tokenizer = train_tokenizer([p.prompt + p.chosen for p in pairs[:200]], vocab_size=400)
    base = random_llama(llama_config(tokenizer, num_hidden_layers=3), seed=5)
    twin = perturbed_copy(base, seed=6, scale=0.5, only="layers.1.self_attn.v_proj")
    pair = load_twins(save_checkpoint(base, tokenizer, root / "base"), save_checkpoint(twin, tokenizer, root / "twin"))
    return pair, sample_and_tokenize(pairs, pair.tokenizer, n_pairs=3, seed=2, max_length=64)


def test_value_twin_known_answers(value_twin):
    """Only layer 1's values differ. Below it every head estimate is exactly 0, and so are layer 1's keys; and
    there, with the pattern the same in both models, z′ − z = A (v′ − v): the estimate at KV head g is exactly
    the sum of the estimates of the query heads that read it (GQA: heads 2g and 2g + 1)."""
    pair, tok = value_twin
    est = AttributionEngine().run(pair, tok, atp_head_specs(range(3), n_heads=4, n_kv_heads=2))
    assert (est[est.layer == 0].effect == 0.0).all() and (est[(est.layer == 1) & (est.hook == "k")].effect == 0.0).all()
    cells = est.set_index(["hook", "estimator", "layer", "param", "pair_id"]).effect
    for g in range(2):
        for pid in est.pair_id.unique():
            v = cells[("v", "atp", 1, float(g), pid)]
            z_sum = sum(cells[("z", "atp", 1, float(h), pid)] for h in (2 * g, 2 * g + 1))
            assert abs(v) > 1e-4 and v == pytest.approx(z_sum, rel=1e-5, abs=1e-7)


def test_refusals_name_the_problem(tiny_pair):
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=1, seed=5, max_length=64)
    bad = {
        "a per-head hook": PatchSpec(RowKey("b", "base", "tuned", "resid_post", "all", "both", 0), ReplaceHead(0)),
        "keys .* only": PatchSpec(
            RowKey("b", "base", "tuned", "v", "all", "both", 0, estimator="atp*"), ReplaceHead(0)
        ),
        "has 2 heads there": PatchSpec(RowKey("b", "base", "tuned", "k", "all", "both", 0), ReplaceHead(2)),
        "has 4 heads there": PatchSpec(RowKey("b", "base", "tuned", "z", "all", "both", 0), ReplaceHead(4)),
    }
    for message, spec in bad.items():
        with pytest.raises(ConfigError, match=message):
            AttributionEngine().run(tiny_pair, tok, [spec])


def test_suite_atp_heads_beside_an_unchanged_atp(tiny_pair):
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=11, max_length=64)
    common = {"extra_hooks": ("mlp_out",), "n_boot": 100, "layers": (1, 2, 3)}
    alone = run_suite(tiny_pair, tok, FastEngine(), SuiteConfig(experiments=("atp", "patch_tuned_to_base"), **common))
    store = PartStore()
    both = run_suite(
        tiny_pair,
        tok,
        FastEngine(),
        SuiteConfig(experiments=("atp", ATP_HEADS, "patch_tuned_to_base", "head_patch", "kv_head_patch"), **common),
        store=store,
        pairs_per_part=2,
    )
    s, s0 = both.summary["experiments"]["atp"], alone.summary["experiments"]["atp"]
    for key, value in s0.items():  # every existing entry exactly as without the heads
        assert s[key] == value, key
    eff = both.effects
    pd.testing.assert_frame_equal(
        eff[eff.experiment == "atp"].reset_index(drop=True),
        alone.effects[alone.effects.experiment == "atp"].reset_index(drop=True),
    )
    heads = eff[eff.experiment == ATP_HEADS]
    assert set(heads.layer) == {1, 2, 3} and set(zip(heads.hook, heads.estimator)) == {
        ("z", "atp"),
        ("v", "atp"),
        ("k", "atp*"),
        ("k", "atp"),
    }
    assert sum(n.startswith("stage1-atp-") for n in store.computed) == 2, store.computed  # routed to AtP, in parts
    assert s["head_estimator"] == {"z": "atp", "k": "atp*", "v": "atp"}
    assert {c["layer"] for c in s["by_head"]["z"]} == {1, 2, 3} and len(s["by_head"]["z"]) == 12
    assert len(s["by_head"]["k"]) == len(s["by_head"]["v"]) == 6
    # each cell: its mean and CI, and its max-|t| band over the hook's layer × head map (statistics.md)
    assert set(s["by_head"]["z"][0]) == {"layer", "head", "mean", "ci_low", "ci_high", "n", "band_low", "band_high"}
    assert s["head_map"]["z"]["m"] == 12 and s["head_map"]["v"]["m"] == s["head_map"]["k"]["m"] == 6
    for hook, n in (("z", 12), ("v", 6), ("k", 6)):
        assert s["head_validation"][hook]["n_conditions"] == n
        assert set(s["head_validation"][hook]) >= {"spearman", "topk_recall", "max_abs_error", "n_conditions"}
        # the exact cells are the head experiments' own
        ex = eff[(eff.experiment == ("head_patch" if hook == "z" else "kv_head_patch")) & (eff.hook == hook)]
        for c in s["exact_by_head"][hook]:
            mean = ex[(ex.layer == c["layer"]) & (ex.param == c["head"])].effect.mean()
            assert c["mean"] == pytest.approx(mean, abs=1e-12)
        est = heads[(heads.hook == hook) & (heads.estimator == s["head_estimator"][hook])]
        errors = [
            abs(c["mean"] - est[(est.layer == c["layer"]) & (est.param == c["head"])].effect.mean())
            for c in s["exact_by_head"][hook]
        ]
        assert s["head_validation"][hook]["max_abs_error"] == pytest.approx(max(errors), abs=1e-12)
    assert s["head_validation"]["pooled"]["n_conditions"] == 24
    assert s["k_without_qk_fix"]["estimator"] == "atp" and s["k_without_qk_fix"]["validation"]["n_conditions"] == 6
    json.dumps(both.summary)
    assert "per head" in atp_heads_figure(both.summary).layout.title.text
    # atp_heads alone: the head entries only, and the per-layer figure says what is missing
    only = run_suite(tiny_pair, tok, FastEngine(), SuiteConfig(experiments=(ATP_HEADS,), **common))
    entry = only.summary["experiments"]["atp"]
    assert "by_head" in entry and "by_hook" not in entry and "head_validation" not in entry
    from alignment_probe.report.figures import MissingExperimentError

    with pytest.raises(MissingExperimentError):
        atp_heads_figure(only.summary)


def test_atp_heads_is_opt_in():
    assert ATP_HEADS not in SuiteConfig().experiments


def test_cli_atp_heads_report(tiny, tmp_path):
    from conftest import PAIRS_DATA

    from alignment_probe.cli import main

    out = tmp_path / "heads"
    args = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        "--n-pairs",
        "2",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "50",
        "--out",
        str(out),
        "--layers",
        "2,3",
        "--experiments",
        f"{ATP_HEADS},head_patch,kv_head_patch",
    ]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())["experiments"]
    assert set(s["atp"]["head_validation"]) == {"z", "v", "k", "pooled"}
    assert "Attribution patching vs exact, per head (E10)" in (out / "report.html").read_text()
    eff = pd.read_parquet(out / "effects.parquet")
    assert set(eff[eff.experiment == ATP_HEADS].estimator) == {"atp", "atp*"}

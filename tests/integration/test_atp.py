"""E10 attribution patching: known answers on tiny twins, and the suite/CLI around it.

(a) AtP is the derivative of the exact effect: exact Interpolate(α) effect / α → the AtP estimate as α → 0,
    with an error that shrinks linearly in α (float64 models).
(b) On a planted twin (only one MLP differs) AtP's estimate below the planted block is exactly 0, and the
    planted block's mlp_out ranks first among the MLPs.
The suite routes ``atp`` to the attribution engine in parts of its own and leaves the exact rows as they were.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import BUNDLED_PAIRS, PAIRS_DATA

from alignment_probe.data import load_pairs
from alignment_probe.effects import KEY_COLUMNS, RowKey
from alignment_probe.engine import FastEngine, ReferenceEngine
from alignment_probe.engine.attribution import AttributionEngine, position_terms
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.atp import topk_recall, validation
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.suite import SuiteConfig, run_suite
from alignment_probe.interventions import AddVector, Interpolate
from alignment_probe.pair import load_twins
from alignment_probe.tables import PartStore
from alignment_probe.tokens import sample_and_tokenize

HOOKS4 = ("resid_pre", "resid_post", "attn_out", "mlp_out")


@pytest.fixture(scope="module")
def tokenized(any_pairs, tiny_pair):
    pairs, _ = any_pairs
    return sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=11, max_length=64)


@pytest.fixture(scope="module")
def pair64(tiny):
    return load_twins(tiny.base, tiny.tuned, device="cpu", dtype="float64")


def _exact64(pair, tok, specs):
    """The reference engine's procedure (run_with_hooks with the patch written in scope), with the
    log-softmax in float64: the reference engine scores in float32, whose rounding (~1e-6 per sequence)
    would swamp exact(α)/α at small α."""
    import torch

    from alignment_probe.interventions import SequenceContext, apply_in_scope

    out = {}
    models = pair.models()
    for t in tok:
        seqs = {s: t.sequence(s) for s in ("chosen", "rejected")}
        for spec in specs:
            target, source = models[spec.key.target], models[spec.key.source]
            lp = {}
            for side, seq in seqs.items():
                tokens = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
                _, cache = source.run_with_cache(tokens, names_filter=spec.name)

                def hook(act, hook, seq=seq, side=side, src=cache[spec.name][0], spec=spec, t=t):
                    ctx = SequenceContext(
                        pair_id=t.pair_id,
                        side=side,
                        layer=spec.key.layer,
                        target=act[0],
                        source=src,
                        prompt_len=seq.completion_start,
                        length=seq.length,
                    )
                    return apply_in_scope(spec.intervention, ctx, spec.key.scope)[None]

                with torch.inference_mode():
                    clean = target(tokens)[0].double().log_softmax(-1)
                    patched = target.run_with_hooks(tokens, fwd_hooks=[(spec.name, hook)])[0].double().log_softmax(-1)
                idx = torch.arange(seq.completion_start, seq.length)
                targets = tokens[0, idx]
                lp[side] = float((patched[idx - 1, targets] - clean[idx - 1, targets]).sum())
            out[(spec.key.hook, spec.key.layer, t.pair_id)] = lp["chosen"] - lp["rejected"]
    return pd.Series(out)


def test_atp_is_the_derivative_of_the_exact_effect(pair64):
    """exact(α)/α − AtP = α·c + O(α²): the error halves with α, and AtP is the α → 0 limit (float64).
    On the bundled pairs, so the data is the same with and without the real HH-RLHF files; α small enough
    that the O(α²) term does not blur the halving."""
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = sample_and_tokenize(pairs, pair64.tokenizer, n_pairs=2, seed=3, max_length=96)
    conditions = [
        ("mlp_out", 1, "all"),
        ("resid_post", 2, "all"),
        ("attn_out", 0, "completion"),
        ("resid_pre", 3, "last_prompt"),
    ]
    alphas = (0.02, 0.01, 0.005, 0.0025)

    def specs(alpha):
        return [
            PatchSpec(RowKey("atp_check", "base", "tuned", h, scope, "both", layer, alpha), Interpolate(alpha))
            for h, layer, scope in conditions
        ]

    atp = AttributionEngine().run(pair64, tok, specs(1.0)).set_index(["hook", "layer", "pair_id"]).effect
    assert atp.abs().min() > 1e-4  # the conditions do something
    errors = []
    for alpha in alphas:
        exact = _exact64(pair64, tok, specs(alpha)).reindex(atp.index)
        errors.append((exact / alpha - atp).abs())
    errors = pd.concat(errors, axis=1).to_numpy()  # [condition × pair, α]
    rel = errors / np.maximum(atp.abs().to_numpy()[:, None], 1e-3)
    assert (rel[:, -1] < 0.05).all(), rel  # close at the smallest α ...
    ratios = errors[:, :-1] / errors[:, 1:]  # ... and the error halves when α halves (linear in α):
    assert np.all(ratios > 1.5), ratios.tolist()  # it shrinks at every step,
    assert np.all(np.abs(ratios[:, -1] - 2) < 0.2), ratios.tolist()  # at rate → 2 (an O(α²) term fades)
    # The reference engine agrees with the float64 exact path (to its float32 scoring) at α = 0.1.
    ref = ReferenceEngine().run(pair64, tok, specs(0.1)).set_index(["hook", "layer", "pair_id"]).effect
    np.testing.assert_allclose(
        ref.to_numpy(), _exact64(pair64, tok, specs(0.1)).reindex(ref.index).to_numpy(), atol=1e-4
    )
    # Interpolate(α) is estimated as α times the Replace estimate.
    half = AttributionEngine().run(pair64, tok, specs(0.5)).set_index(["hook", "layer", "pair_id"]).effect
    # (to float64 rounding of the stored log-probs: effect = patched − clean with |log p| ~ 1e2, so ~1e-13 absolute)
    np.testing.assert_allclose(half.to_numpy(), 0.5 * atp.to_numpy(), rtol=1e-12, atol=1e-12)


def test_rows_fit_the_effects_table(tiny_pair, tokenized):
    specs = layer_sweep(
        "atp",
        target="base",
        source="tuned",
        layers=range(tiny_pair.n_layers),
        hooks=HOOKS4,
        scopes=("all", "completion"),
        sides="both",
    )
    specs += layer_sweep("atp", target="base", source="tuned", layers=(1,), hooks=("mlp_out",), sides="chosen")
    est = AttributionEngine(batch_size=3).run(tiny_pair, tokenized, specs)
    exact = FastEngine().run(tiny_pair, tokenized, specs)
    assert list(est.columns) == list(exact.columns) and list(est.columns)[: len(KEY_COLUMNS)] == KEY_COLUMNS
    assert (est.estimator == "atp").all() and (exact.estimator == "exact").all()
    keys = [c for c in KEY_COLUMNS if c != "estimator"]
    pd.testing.assert_frame_equal(est[keys], exact[keys])
    np.testing.assert_allclose(est.clean_delta_logp, exact.clean_delta_logp, atol=1e-4)
    np.testing.assert_allclose(est.effect, est.patched_delta_logp - est.clean_delta_logp, atol=1e-9)
    # chosen-only rows leave the rejected log-prob at its clean value
    chosen = est[est.sides == "chosen"]
    assert (chosen.patched_logp_rejected == chosen.clean_logp_rejected).all()
    # the per-position terms sum to the `all` estimate
    terms = position_terms(AttributionEngine(), tiny_pair, tokenized, hooks=("mlp_out",), layers=(2,))
    t = tokenized[0]
    by = est.set_index(["hook", "scope", "sides", "layer", "pair_id"]).effect
    total = float(
        terms[(t.pair_id, "chosen")]["blocks.2.hook_mlp_out"].sum()
        - terms[(t.pair_id, "rejected")]["blocks.2.hook_mlp_out"].sum()
    )
    assert total == pytest.approx(by[("mlp_out", "all", "both", 2, t.pair_id)], abs=1e-9)
    # identity (source = target) is estimated as exactly 0; non-linear interventions are refused
    ident = layer_sweep("identity", target="base", source="base", layers=range(tiny_pair.n_layers), hooks=HOOKS4)
    assert (AttributionEngine().run(tiny_pair, tokenized, ident).effect == 0.0).all()
    with pytest.raises(ConfigError, match="Replace and Interpolate"):
        AttributionEngine().run(
            tiny_pair,
            tokenized,
            layer_sweep("v", target="base", source="tuned", layers=(0,), intervention=AddVector("chosen")),
        )


def test_planted_twin_known_answer(planted):
    """Below the planted block the twins' activations are identical, so every estimate there is exactly 0.
    (That the planted block's mlp_out ranks first is checked on the bundled planted organisms, whose tuning
    is DPO, in tests/acceptance/test_atp_organisms.py; on this random twin a first-order estimate of a later
    block can outrank it, depending on the pairs.)"""
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = sample_and_tokenize(pairs, planted.tokenizer, n_pairs=4, seed=2, max_length=64)
    specs = layer_sweep("atp", target="base", source="tuned", layers=range(5), hooks=HOOKS4)
    est = AttributionEngine().run(planted, tok, specs)
    below = est[(est.layer < 2) | ((est.layer == 2) & est.hook.isin(["resid_pre", "attn_out"]))]
    assert len(below) and (below.effect == 0.0).all()  # a′ − a = 0 exactly there
    mlp = est[est.hook == "mlp_out"].groupby("layer").effect.mean()
    assert abs(mlp[2]) > 1e-4 and (mlp[mlp.index < 2] == 0.0).all()


def test_validation_statistics():
    assert topk_recall([5, 4, 3, 0.1, 0.0], [3, 2, 9, 0.0, 1.0], 3) == 1.0
    assert topk_recall([5, 4, 3, 0.1, 0.0], [0, 0, 9, 8, 7], 3) == pytest.approx(1 / 3)
    v = validation([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.9, 10.0])
    assert v["spearman"] == pytest.approx(1.0) and v["max_abs_error"] == pytest.approx(6.0)
    assert v["n_conditions"] == 4 and v["topk_k"] == {"3": 3, "10%": 1} and v["topk_recall"]["10%"] == 1.0


def test_suite_routes_atp_and_keeps_exact_rows(tiny_pair, tokenized):
    base_cfg = {"extra_hooks": ("mlp_out", "attn_out"), "n_boot": 100}
    plain_store = PartStore()
    plain = run_suite(
        tiny_pair,
        tokenized,
        FastEngine(),
        SuiteConfig(experiments=("patch_tuned_to_base",), **base_cfg),
        store=plain_store,
        pairs_per_part=2,
    )
    store = PartStore()
    both = run_suite(
        tiny_pair,
        tokenized,
        FastEngine(),
        SuiteConfig(experiments=("patch_tuned_to_base", "atp", "atp_confirm"), atp_confirm_k=2, **base_cfg),
        store=store,
        pairs_per_part=2,
    )
    exact = both.effects[both.effects.experiment == "patch_tuned_to_base"].reset_index(drop=True)
    pd.testing.assert_frame_equal(exact, plain.effects.reset_index(drop=True))
    assert plain.summary["experiments"]["patch_tuned_to_base"] == both.summary["experiments"]["patch_tuned_to_base"]
    atp = both.effects[both.effects.experiment == "atp"]
    assert (atp.estimator == "atp").all() and set(atp.hook) == set(HOOKS4)
    assert atp.layer.nunique() == tiny_pair.n_layers
    assert sum(n.startswith("stage1-atp-") for n in store.computed) == 2, store.computed  # 3 pairs, 2 per part
    assert not any(n.startswith("stage1-atp") for n in [*plain_store.computed]) and set(plain_store.computed) <= set(
        store.computed
    )  # the exact parts keep their names
    s = both.summary["experiments"]["atp"]
    for hook in HOOKS4:
        entry = s["by_hook"][hook]
        assert {"layer", "mean", "ci_low", "ci_high", "n"} <= set(entry["per_layer"][0])
        if hook in ("resid_post", "mlp_out", "attn_out"):
            assert set(entry["validation"]) >= {"spearman", "topk_recall", "max_abs_error", "n_conditions"}
            assert entry["validation"]["n_conditions"] == tiny_pair.n_layers
        else:
            assert "validation" not in entry
    conf = s["confirmed"]
    assert len(conf) == 2 and {"hook", "layer", "atp", "exact", "exact_ci_low", "exact_ci_high"} <= set(conf[0])
    # statistics.md: AtP ranks on the explore pairs, exact patching confirms on the disjoint confirm pairs only.
    # The confirmed conditions are AtP's two largest |explore means| among distinct patches (resid_pre of block ℓ
    # is resid_post of block ℓ − 1: confirmed once, as resid_post) and their exact values equal E1's rows there.
    explore, confirm = s["selection"]["explore_pair_ids"], s["selection"]["confirm_pair_ids"]
    assert set(explore).isdisjoint(confirm) and sorted(explore + confirm) == sorted(t.pair_id for t in tokenized)
    ranked_on = atp[atp.pair_id.isin(explore)].groupby(["hook", "layer"]).effect.mean()
    ranked = sorted(
        ((h, layer, abs(v)) for (h, layer), v in ranked_on.items() if not (h == "resid_pre" and layer > 0)),
        key=lambda x: -x[2],
    )[:2]
    assert {(c["hook"], c["layer"]) for c in conf} == {(h, layer) for h, layer, _ in ranked}
    measured = both.effects[both.effects.experiment == "atp_confirm"]
    assert set(measured.pair_id) == set(confirm)  # never on the pairs that ranked them
    for c in conf:
        assert c["n"] == len(confirm) and c["pairs"] == "confirm"
        if c["hook"] in ("resid_post", "mlp_out", "attn_out"):
            same = (exact.hook == c["hook"]) & (exact.layer == c["layer"]) & exact.pair_id.isin(confirm)
            e1 = exact[same].effect.mean()
            assert c["exact"] == pytest.approx(e1, abs=1e-9)
    json.dumps(both.summary)  # JSON-able
    from alignment_probe.experiments.atp import atp_figure

    fig = atp_figure(both.summary)
    assert "Attribution patching vs exact (E10)" in fig.layout.title.text


def test_cli_atp_with_confirm(tiny, tmp_path):
    from alignment_probe.cli import main

    out = tmp_path / "atp"
    args = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        "--n-pairs",
        "3",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "100",
        "--out",
        str(out),
        "--experiments",
        "atp,patch_tuned_to_base",
        "--extra-hooks",
        "mlp_out",
        "--confirm",
        "2",
    ]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())["experiments"]
    assert set(s) >= {"atp", "patch_tuned_to_base", "atp_confirm"}
    assert "validation" in s["atp"]["by_hook"]["mlp_out"] and len(s["atp"]["confirmed"]) == 2
    html = (out / "report.html").read_text()
    assert "Attribution patching vs exact (E10)" in html
    eff = pd.read_parquet(out / "effects.parquet")
    assert set(eff.estimator) == {"exact", "atp"}
    assert "Attribution patching map (E10)" in html  # the map: per-layer estimates, one line per hook
    # The real-model findings quote the run's own numbers: the map, the validation and the confirmed rows.
    from alignment_probe.experiments.atp import atp_map_figure
    from alignment_probe.realmodels.findings import collect, render_tables

    assert len(atp_map_figure({"experiments": s}).data) >= 2 * len(s["atp"]["by_hook"])  # a band and a line each
    found = collect({"atp": json.loads((out / "summary.json").read_text())}, n_layers=4, planted_layer=2)
    assert found["atp"]["atp"]["by_hook"] == s["atp"]["by_hook"]
    assert found["atp"]["atp"]["confirmed"] == s["atp"]["confirmed"]
    tables = render_tables(found)
    v = s["atp"]["by_hook"]["mlp_out"]["validation"]
    assert "E10 attribution patching" in tables and f"| {v['spearman']:.2f} |" in tables
    assert tables.count("| mlp_out |") >= 1 and "patched exactly (--confirm)" in tables


def test_atp_is_not_in_the_default_suite():
    assert "atp" not in SuiteConfig().experiments and "atp_confirm" not in SuiteConfig().experiments

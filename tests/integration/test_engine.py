"""The patching engines: exact identities, known answers, TransformerLens's own patching, and the
fast engine against the reference engine on every experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from alignment_probe.engine import FastEngine, ReferenceEngine
from alignment_probe.experiments.lowrank import lowrank_specs, stacked_activations
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import EXPERIMENT_NAMES
from alignment_probe.experiments.subspace import fit_for_mode
from alignment_probe.experiments.suite import SuiteConfig, per_layer_specs
from alignment_probe.tokens import sample_and_tokenize


@pytest.fixture(scope="module")
def tokenized(hh_pairs, tiny_pair):
    pairs, _ = hh_pairs
    return sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=11, max_length=80)


def _suite_specs(pair, tokenized):
    cfg = SuiteConfig(
        experiments=EXPERIMENT_NAMES,
        alphas=(0.5, 1.5),
        extra_hooks=("resid_pre", "resid_mid", "attn_out", "mlp_out"),
        extra_scopes=("last_prompt",),
    )
    specs = per_layer_specs(cfg, pair.n_layers)
    acts = stacked_activations(pair, tokenized, layer=2)
    for name, mode in (("lowrank_reconstruct", "reconstruct"), ("lowrank_difference", "difference")):
        specs += lowrank_specs(
            name, fit_for_mode(mode, acts, centre=True), layer=2, ks=(1, 4, 64), hook="resid_post", scope="all_but_bos"
        )
    return specs


def test_fast_engine_equals_reference_on_every_experiment(tiny_pair, tokenized):
    tokenized = tokenized[:2]
    specs = _suite_specs(tiny_pair, tokenized)
    experiments = {s.key.experiment for s in specs}
    patching = {
        "patch_tuned_to_base",
        "patch_base_to_tuned",
        "identity",
        "random_noise",
        "random_direction",
        "alpha",
        "source_chosen_only",
        "source_rejected_only",
        "vector_chosen",
        "vector_rejected",
        "vector_contrast",
        "lowrank_reconstruct",
        "lowrank_difference",
        "window_transplant",
        "window_revert",
        "cross_2x2",
    }  # the experiments that patch (lasso, shift measure)
    assert experiments >= patching
    ref = ReferenceEngine().run(tiny_pair, tokenized, specs)
    fast = FastEngine(batch_size=7, memory_budget_gb=0.0001).run(
        tiny_pair, tokenized, specs
    )  # tiny budget: 1 pair/chunk
    assert len(ref) == len(fast) == len(specs) * len(tokenized)
    keys = ["experiment", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
    pd.testing.assert_frame_equal(ref[keys], fast[keys])
    for col in ("clean_delta_logp", "patched_logp_chosen", "patched_logp_rejected", "effect"):
        assert np.abs(ref[col].to_numpy() - fast[col].to_numpy()).max() <= 1e-4, col
    # Not a vacuous comparison: the conditions do move Δlogp.
    assert fast[fast.experiment == "patch_tuned_to_base"].effect.abs().max() > 1e-3


def test_identity_patch_is_exactly_zero(tiny_pair, tokenized):
    specs = layer_sweep(
        "identity",
        target="base",
        source="base",
        layers=range(tiny_pair.n_layers),
        hooks=("resid_pre", "resid_post", "mlp_out", "attn_out", "resid_mid"),
    )
    for engine in (FastEngine(batch_size=5), ReferenceEngine()):
        effects = engine.run(tiny_pair, tokenized, specs)
        assert (effects.effect == 0.0).all(), engine.name


def test_per_sequence_effects_add_up(tiny_pair, tokenized):
    specs = [
        s
        for s in per_layer_specs(
            SuiteConfig(
                experiments=("patch_tuned_to_base", "source_chosen_only", "source_rejected_only"), extra_hooks=()
            ),
            tiny_pair.n_layers,
        )
    ]
    e = FastEngine().run(tiny_pair, tokenized, specs).set_index(["experiment", "layer", "pair_id"]).effect
    both, chosen, rejected = e["patch_tuned_to_base"], e["source_chosen_only"], e["source_rejected_only"]
    np.testing.assert_allclose((chosen + rejected).to_numpy(), both.to_numpy(), atol=1e-9, rtol=0)


def test_runs_with_the_same_inputs_run_once(tiny_pair, tokenized):
    # E8's resid_pre at l + 1 starts from E1's resid_post at l, a one-sided source patch is one side of E1's
    # run, and alpha = 1 writes the source as E1 does: the fast engine runs each once, so adding them costs no
    # work and their rows agree exactly.
    n = tiny_pair.n_layers
    e1 = per_layer_specs(SuiteConfig(experiments=("patch_tuned_to_base", "patch_base_to_tuned"), extra_hooks=()), n)
    repeats = per_layer_specs(
        SuiteConfig(
            experiments=("cross_2x2", "source_chosen_only", "source_rejected_only", "alpha"),
            alphas=(1.0,),
            extra_hooks=(),
        ),
        n,
    )
    alone, both = FastEngine(), FastEngine()
    alone.run(tiny_pair, tokenized, e1)
    e = both.run(tiny_pair, tokenized, e1 + repeats)
    assert both.work_by_stage["patched"].computed == alone.work_by_stage["patched"].computed
    assert both.work_by_stage["patched"].floor == alone.work_by_stage["patched"].floor
    on_base = e[e.target == "base"].set_index(["experiment", "layer", "pair_id"])
    cross = on_base.loc["cross_2x2"].rename(index=lambda layer: layer - 1, level="layer")
    e1_rows = on_base.loc["patch_tuned_to_base"].loc[cross.index]
    assert (cross.patched_logp_chosen == e1_rows.patched_logp_chosen).all()
    assert (cross.patched_logp_rejected == e1_rows.patched_logp_rejected).all()
    chosen = on_base.loc["source_chosen_only"]
    assert (chosen.patched_logp_chosen == on_base.loc["patch_tuned_to_base"].patched_logp_chosen).all()
    assert (on_base.loc["alpha"].effect == on_base.loc["patch_tuned_to_base"].effect).all()


def test_matches_transformer_lens_patching_utilities(tiny_pair, tokenized):
    """E1 tuned→base equals TransformerLens's own `patching` functions applied across models."""
    base, tuned = tiny_pair.base, tiny_pair.tuned
    specs = layer_sweep(
        "patch_tuned_to_base",
        target="base",
        source="tuned",
        layers=range(base.cfg.n_layers),
        hooks=("resid_pre",),
        scopes=("all", "last_prompt"),
    )
    ours = FastEngine().run(tiny_pair, tokenized, specs).set_index(["scope", "layer", "pair_id"])
    for t in tokenized:
        deltas_all, deltas_last, clean = {}, {}, {}
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            tokens = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            start = seq.completion_start

            def metric(logits, tokens=tokens, start=start):
                logp = logits[0].double().log_softmax(-1)  # float64 sum, as our scoring does
                return sum(logp[p - 1, tokens[0, p]] for p in range(start, tokens.shape[1]))

            _, src_cache = tuned.run_with_cache(tokens)
            clean[side] = metric(base(tokens)).item()
            # All positions at once, per layer: the generic patcher with a whole-activation setter.
            deltas_all[side] = tl_patching.generic_activation_patch(
                base,
                tokens,
                src_cache,
                metric,
                lambda corrupted, index, clean_act: clean_act,
                "resid_pre",
                index_axis_names=("layer",),
            )
            # One position, every layer: TransformerLens's own (layer, pos) patch setter at the last prompt token.
            index_df = pd.DataFrame({"layer": range(base.cfg.n_layers), "pos": start - 1})
            deltas_last[side] = tl_patching.generic_activation_patch(
                base, tokens, src_cache, metric, tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index_df
            )
        clean_delta = clean["chosen"] - clean["rejected"]
        for layer in range(base.cfg.n_layers):
            tl_all = (deltas_all["chosen"][layer] - deltas_all["rejected"][layer]).item() - clean_delta
            tl_last = (deltas_last["chosen"][layer] - deltas_last["rejected"][layer]).item() - clean_delta
            assert abs(ours.loc[("all", layer, t.pair_id), "effect"] - tl_all) <= 1e-4
            assert abs(ours.loc[("last_prompt", layer, t.pair_id), "effect"] - tl_last) <= 1e-4


def test_known_answer_on_a_planted_twin(planted, hh_pairs):
    pairs, _ = hh_pairs
    tokenized = sample_and_tokenize(pairs, planted.tokenizer, n_pairs=4, seed=2, max_length=64)
    specs = layer_sweep(
        "patch_tuned_to_base", target="base", source="tuned", layers=range(5), hooks=("resid_post", "mlp_out")
    )
    e = FastEngine().run(planted, tokenized, specs).set_index(["hook", "layer", "pair_id"]).effect
    from alignment_probe.scoring import score_pairs

    gain = score_pairs(planted, tokenized).set_index("pair_id").gain
    assert gain.abs().max() > 1e-3
    for layer in range(5):
        mlp = e.xs(("mlp_out", layer), level=["hook", "layer"])
        resid = e.xs(("resid_post", layer), level=["hook", "layer"])
        if layer < 2:  # nothing differs before the planted layer
            assert (resid == 0).all() and (mlp == 0).all()
        elif layer == 2:  # the planted MLP's output carries the whole gain
            np.testing.assert_allclose(mlp.to_numpy(), gain.loc[mlp.index].to_numpy(), atol=1e-4)
        if layer >= 2:  # from the planted layer on, the residual stream carries the whole gain
            np.testing.assert_allclose(resid.to_numpy(), gain.loc[resid.index].to_numpy(), atol=1e-4)

"""Shared prompts (the prompt run once per pair, both completions continued from its keys and
values) give the same numbers as full sequences, on every kind of condition, and as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_probe.engine import FastEngine, ReferenceEngine
from alignment_probe.engine.batching import plan_batches, plan_cost
from alignment_probe.engine.fast import same_on_both_prompts
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.interventions import AddVector, GaussianNoise, Replace
from alignment_probe.scoring import score_pairs
from alignment_probe.tokens import sample_and_tokenize
from tests.integration.test_engine import _suite_specs

KEYS = ["experiment", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
VALUES = ("clean_logp_chosen", "clean_logp_rejected", "patched_logp_chosen", "patched_logp_rejected", "effect")


@pytest.fixture(scope="module")
def tokenized(hh_pairs, tiny_pair):
    pairs, _ = hh_pairs
    return sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=11, max_length=80)


def _close(a, b, tol):
    assert a[KEYS].equals(b[KEYS])
    for col in VALUES:
        d = np.abs(a[col].to_numpy() - b[col].to_numpy()).max()
        assert d <= tol, (col, d)


def test_sharing_on_equals_off_and_reference_on_every_experiment(tiny_pair, tokenized):
    specs = _suite_specs(tiny_pair, tokenized[:2])
    families = {(s.key.experiment, s.key.hook, s.key.scope, s.key.sides) for s in specs}
    assert {h for _, h, _, _ in families} >= {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
    assert {sc for _, _, sc, _ in families} >= {"all", "last_prompt", "all_but_bos"}
    on = FastEngine(batch_size=5, share_prompts=True, overhead_tokens=0)  # no padding is worth a forward
    off = FastEngine(batch_size=5, share_prompts=False)
    a, b = on.run(tiny_pair, tokenized, specs), off.run(tiny_pair, tokenized, specs)
    _close(a, b, 1e-5)
    ref = ReferenceEngine().run(tiny_pair, tokenized[:1], specs)
    _close(a[a.pair_id == tokenized[0].pair_id].reset_index(drop=True), ref, 1e-4)
    # Sharing did happen and saved work: the unpadded shared run is exactly at the floor.
    assert on.work.floor == off.work.floor
    assert on.work.computed < off.work.computed
    for stage in ("clean", "patched"):
        assert on.work_by_stage[stage].ratio == 1.0, stage
    # Exact zeros stay exact.
    assert (a[a.experiment == "identity"].effect == 0.0).all()
    assert (a[(a.experiment == "alpha") & (a.param == 0.0)].effect == 0.0).all()


def test_a_patch_that_leaves_the_prompt_continues_the_clean_prompt(tiny_pair, tokenized):
    # The v+ vector is added on the completions only: the patched runs' prompts are the clean runs' prompts, so
    # both completions continue the clean prompt's keys and values and only completion tokens are computed.
    specs = layer_sweep(
        "vector_chosen",
        target="base",
        source="tuned",
        layers=(0, 2),
        hooks=("resid_post",),
        scopes=("completion",),
        intervention=AddVector("chosen", 1.0),
    )
    on = FastEngine(batch_size=5, share_prompts=True, overhead_tokens=0)  # no padding is worth a forward
    a = on.run(tiny_pair, tokenized, specs)
    blocks = sum(tiny_pair.n_layers - (s.key.layer + 1) for s in specs)  # resid_post at l: from block l + 1
    completions = sum(len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    assert on.work_by_stage["patched"].computed == on.work_by_stage["patched"].floor == blocks * completions
    _close(a, FastEngine(batch_size=5, share_prompts=False).run(tiny_pair, tokenized, specs), 1e-5)
    assert a.effect.abs().max() > 1e-4


@pytest.mark.parametrize("scope", ["all", "prompt", "completion", "last_prompt", "all_but_bos"])
def test_every_scope_and_hook(tiny_pair, tokenized, scope):
    specs = layer_sweep(
        "patch_tuned_to_base",
        target="base",
        source="tuned",
        layers=(0, 2, 3),
        hooks=("resid_pre", "resid_post", "attn_out", "mlp_out", "resid_mid"),
        scopes=(scope,),
    )
    specs += layer_sweep(
        "random_noise",
        target="base",
        source="tuned",
        layers=(1,),
        hooks=("resid_post",),
        scopes=(scope,),
        intervention=GaussianNoise(seed=3),
    )
    a = FastEngine(batch_size=4, share_prompts=True, overhead_tokens=20).run(tiny_pair, tokenized, specs)
    b = FastEngine(batch_size=4, share_prompts=False).run(tiny_pair, tokenized, specs)
    _close(a, b, 1e-5)
    assert a.effect.abs().max() > 1e-4


def test_clean_scores_equal_score_pairs(tiny_pair, tokenized):
    engine = FastEngine()
    specs = layer_sweep("patch_tuned_to_base", target="base", source="tuned", layers=(1,))
    engine.run(tiny_pair, tokenized, specs)
    forwards = engine.work.forwards
    from_engine = engine.clean_scores(tiny_pair, tokenized)
    assert engine.work.forwards == forwards  # no forward of its own
    separate = score_pairs(tiny_pair, tokenized)
    assert list(from_engine.columns) == list(separate.columns)
    for col in separate.columns:
        np.testing.assert_allclose(from_engine[col].to_numpy(), separate[col].to_numpy(), atol=1e-5, rtol=0)
    fresh = FastEngine().clean_scores(tiny_pair, tokenized)  # without a run first: one clean pass
    np.testing.assert_allclose(fresh.gain.to_numpy(), separate.gain.to_numpy(), atol=1e-5, rtol=0)


def test_declarations():
    assert same_on_both_prompts(Replace()) is True
    assert same_on_both_prompts(GaussianNoise()) is False


def test_batch_planner_cuts_where_padding_costs_more_than_a_forward():
    lengths = [10, 300, 12, 310, 11]
    assert plan_batches(lengths, batch_size=32, overhead_tokens=20) == [[0, 4, 2], [1, 3]]
    assert plan_batches(lengths, batch_size=32, overhead_tokens=1e6) == [[0, 4, 2, 1, 3]]
    assert max(len(b) for b in plan_batches(lengths, batch_size=2, overhead_tokens=1e6)) == 2


def test_batch_planner_prices_attention_over_padded_prompt_keys():
    # Four continuations of equal length: two of short prompts, two of long ones. Without the attention term
    # one forward is cheapest; with it, padding the short prompts' keys to the long ones costs more than a forward.
    completions, prompts = [20, 20, 20, 20], [10, 300, 12, 310]
    assert plan_batches(completions, 32, 20, context=prompts) == [[0, 2, 1, 3]]
    assert plan_batches(completions, 32, 20, context=prompts, attention_tokens=230) == [[0, 2], [1, 3]]
    assert plan_cost(completions, 32, 20, context=prompts, attention_tokens=230) > plan_cost(
        completions, 32, 20, context=prompts
    )

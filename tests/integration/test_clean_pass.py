"""One clean pass per model and sequence (issue 15): the suite's fits and whole-data computations (low rank's
stacks, the LASSO's distances, E9's distributions) and its later stages read the clean activations the fast
engine kept from stage 1, and give what their own forwards give."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe.engine import FastEngine
from alignment_probe.experiments.suite import SuiteConfig, run_suite

CFG = SuiteConfig(
    experiments=("patch_tuned_to_base", "lowrank_difference", "lasso", "shift"), n_boot=20, lowrank_ks=(1, 4)
)


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return ap.load_pairs(BUNDLED_PAIRS, n=6, seed=2, tokenizer=tiny_pair.tokenizer, max_length=72)


@pytest.fixture
def count_forwards_from_tokens(tiny_pair):
    """Record every forward of either model that starts from token ids (a clean run or a copy of one): a call of
    its token embedding. On both backends a run from a residual (start at layer) never embeds tokens, and the
    Bridge's own forward is not what the seam calls, so the embedding is the one place both lines share."""
    seen: list[str] = []
    handles = [
        model.embed.register_forward_pre_hook(lambda module, args, _role=role: seen.append(_role))
        for role, model in tiny_pair.models().items()
    ]
    yield seen
    for h in handles:
        h.remove()


def test_no_model_runs_from_tokens_but_the_engines_clean_pass(tiny_pair, pairs, count_forwards_from_tokens):
    seen = count_forwards_from_tokens
    engine = FastEngine()
    run_suite(tiny_pair, pairs, engine, CFG, pairs_per_part=3)
    assert seen and len(seen) == engine.work_by_stage["clean"].forwards
    assert engine.kept == {} and engine.keep == {}  # released with the run


def test_kept_activations_give_what_own_forwards_give(tiny_pair, pairs):
    kept = run_suite(tiny_pair, pairs, FastEngine(), CFG, pairs_per_part=3)
    own = run_suite(
        tiny_pair, pairs, FastEngine(keep_budget_gb=0.0), CFG, pairs_per_part=3
    )  # nothing fits: own forwards
    np.testing.assert_allclose(kept.effects.effect, own.effects.effect, atol=1e-5, rtol=0)
    assert kept.effects.effect.abs().max() > 1e-3  # not a vacuous comparison
    for key in ("coefficients", "probe_r2"):
        np.testing.assert_allclose(kept.fits["lasso"][key], own.fits["lasso"][key], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        [v[-1] for v in kept.fits["lowrank"]["variance"]], [v[-1] for v in own.fits["lowrank"]["variance"]], atol=1e-6
    )
    for a, b in zip(kept.fits["shift"]["pairs"], own.fits["shift"]["pairs"]):
        for side in ("chosen", "rejected"):
            np.testing.assert_allclose(a[side]["kl"], b[side]["kl"], atol=1e-5)
            assert a[side]["rank"] == b[side]["rank"]


def test_a_kept_chunk_is_not_run_again(tiny_pair, pairs):
    engine = FastEngine()
    names = {"blocks.1.hook_resid_post"}
    engine.keep_activations({"base": names, "tuned": set(names)})
    engine.clean_pass(tiny_pair, pairs)
    ran = engine.work_by_stage["clean"].forwards
    engine.clean_pass(tiny_pair, pairs)  # held: nothing runs
    kept = engine.clean_activations(tiny_pair, [pairs[:3], pairs[3:]])  # held too: nothing runs
    assert ran > 0 and engine.work_by_stage["clean"].forwards == ran
    assert set(kept["tuned"]["blocks.1.hook_resid_post"]) == {
        (t.pair_id, s) for t in pairs for s in ("chosen", "rejected")
    }
    engine.release_activations()
    assert engine.kept == {}
    engine.keep_activations({"base": names})
    kept = engine.clean_activations(tiny_pair, [pairs[:3], pairs[3:]])  # released: the clean passes run again
    assert engine.work_by_stage["clean"].forwards > ran and set(kept) == {"base"}

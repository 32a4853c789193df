"""E8's 2×2 cross design against twins with a known answer: tuning planted in one block (interaction 0) or
in two blocks (an interaction between them)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe.engine import make_engine
from alignment_probe.experiments import cross
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig
from tests.helpers.checkpoints import planted_mlp_checkpoints


@pytest.fixture(scope="module")
def block_twins(tiny, tmp_path_factory):
    """(one-block twin, two-block twin) of the tiny base: MLP of block 1 tuned; MLPs of blocks 1 and 2 tuned."""
    one, two = planted_mlp_checkpoints(tiny.base, tmp_path_factory.mktemp("block-twins"), [(1, 5), (2, 6)])
    return ap.load_twins(tiny.base, one), ap.load_twins(tiny.base, two)


def _run(twins, engine="fast"):
    pairs = ap.load_pairs(BUNDLED_PAIRS, n=6, seed=0, tokenizer=twins.tokenizer, max_length=80)
    cfg = SuiteConfig(experiments=("cross_2x2",), n_boot=200)
    plan = Plan(cfg=cfg, n_layers=twins.n_layers, d_model=twins.d_model, selected=("cross_2x2",))
    effects = make_engine(engine).run(twins, list(pairs), cross.cross_specs(plan))
    scores = ap.score(twins, pairs)
    summary = cross.summarize_cross(
        Tables(effects, scores, {}, cfg, twins.n_layers, twins.d_model, selected=("cross_2x2",))
    )["cross_2x2"]
    return effects, scores, summary


def test_cells_are_the_models_and_their_hybrids(block_twins):
    twins = block_twins[1]
    effects, scores, summary = _run(twins)
    assert [e["split"] for e in summary["by_split"]] == list(range(1, twins.n_layers))
    by_pair = scores.set_index("pair_id").sort_index()
    for _s, c in cross.cells(effects).items():
        np.testing.assert_allclose(c["bb"], by_pair.base_delta_logp, atol=1e-4)
        np.testing.assert_allclose(c["tt"], by_pair.tuned_delta_logp, atol=1e-4)
    # Split 1: the early block 0 is identical in both models, so each hybrid is its late model exactly.
    c1 = cross.cells(effects)[1]
    assert np.array_equal(c1["tb"], c1["bb"]) and np.array_equal(c1["bt"], c1["tt"])


def test_one_block_twin_has_no_interaction(block_twins):
    _, _, summary = _run(block_twins[0])
    for entry in summary["by_split"]:
        assert abs(entry["interaction"]) < 1e-4, entry
        # Below the tuned block (split ≤ 1) the late blocks carry the whole gain on either upstream state;
        # above it (split ≥ 2) they carry nothing.
        gain = entry["tt"] - entry["bb"]
        expected = gain if entry["split"] <= 1 else 0.0
        assert entry["late_on_base"] == pytest.approx(expected, abs=1e-4)
        assert entry["late_on_tuned"] == pytest.approx(expected, abs=1e-4)


def test_two_block_twin_interacts_between_its_blocks(block_twins):
    _, _, summary = _run(block_twins[1])
    by_split = {e["split"]: e for e in summary["by_split"]}
    assert abs(by_split[1]["interaction"]) < 1e-4 and abs(by_split[3]["interaction"]) < 1e-4
    between = by_split[2]  # early = blocks 0–1 (one tuned block), late = blocks 2–3 (the other)
    assert abs(between["interaction"]) > 1e-3
    lo, hi = between["interaction_ci"]
    assert lo <= between["interaction"] <= hi


def test_engines_agree(block_twins):
    fast, _, _ = _run(block_twins[1], "fast")
    ref, _, _ = _run(block_twins[1], "reference")
    np.testing.assert_allclose(fast.effect, ref.effect, atol=1e-4)

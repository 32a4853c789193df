"""E11 (revised) without models: the position classes, the per-class intervention, the null's location and the
three-way verdict rules on synthetic numbers (clearly on each side and on the boundaries)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignment_probe.errors import ConfigError
from alignment_probe.experiments import steering
from alignment_probe.experiments.steering.summary import _cell_index
from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.interventions import AddByClass, SequenceContext, predicting_classes, scope_mask
from alignment_probe.report.verdicts import AGREES, DIFFERS, INCONCLUSIVE


def _ctx(prompt_len: int, length: int, width: int, d: int = 4) -> SequenceContext:
    target = torch.arange(width * d, dtype=torch.float32).reshape(width, d)
    return SequenceContext(
        pair_id=0,
        side="chosen",
        layer=0,
        target=target,
        source=torch.zeros(width, d),
        prompt_len=prompt_len,
        length=length,
    )


def test_position_classes_by_hand():
    # BOS, 2 prompt tokens (the last is LP = 2), 11 completion tokens at 3..13, 2 padding positions
    cls = predicting_classes(3, 14, 8, 16).tolist()
    assert cls == [-1, -1, 0] + [1] * 8 + [2] * 2 + [-1] + [-1, -1]
    # a completion of 9 tokens: LP, F = the 8 predicting completion positions, no R; the last token predicts nothing
    assert predicting_classes(3, 12, 8).tolist() == [-1, -1, 0] + [1] * 8 + [-1]
    assert predicting_classes(3, 4, 8).tolist() == [-1, -1, 0, -1]  # one completion token: LP only
    assert predicting_classes(2, 10, 2).tolist() == [-1, 0, 1, 1, 2, 2, 2, 2, 2, -1]
    # the scope the rows name is exactly the classified positions
    for p, n, w in ((3, 14, 16), (3, 4, 4), (1, 30, 30)):
        mask = scope_mask("predicting", p, n, w)
        assert torch.equal(mask, predicting_classes(p, n, 8, w) >= 0)


def test_add_by_class_adds_each_class_vector_at_exactly_its_positions():
    vectors = torch.tensor([[1.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 100.0, 0]])
    ctx = _ctx(3, 14, 16)
    out = AddByClass(vectors, first_k=8)(ctx)
    delta = out - ctx.target
    expected = torch.zeros_like(delta)
    expected[2] = vectors[0]
    expected[3:11] = vectors[1]
    expected[11:13] = vectors[2]
    assert torch.equal(delta, expected)
    untouched = [0, 1, 13, 14, 15]  # BOS, the earlier prompt, the last completion token, padding: bit-for-bit
    assert torch.equal(out[untouched], ctx.target[untouched])
    assert torch.equal(AddByClass(torch.zeros(3, 4))(ctx), ctx.target)
    assert AddByClass.same_on_both_prompts


def test_add_by_class_refuses_bad_shapes():
    with pytest.raises(ValueError, match="one vector per position class"):
        AddByClass(torch.zeros(2, 4))
    per_head = SequenceContext(
        pair_id=0,
        side="chosen",
        layer=0,
        target=torch.zeros(5, 2, 4),
        source=torch.zeros(5, 2, 4),
        prompt_len=2,
        length=5,
    )
    with pytest.raises(ValueError, match="per-head hooks cannot be steered"):
        AddByClass(torch.zeros(3, 4))(per_head)


def test_the_scale_grid_always_has_one_and_refuses_negative_scales():
    assert steering.steer_scales(SuiteConfig(steer_cs=(2.0, 0.5))) == [0.5, 1.0, 2.0]
    assert steering.steer_scales(SuiteConfig()) == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(ConfigError, match="≥ 0"):
        steering.steer_scales(SuiteConfig(steer_cs=(-1.0, 1.0)))


def test_random_draws_are_seeded_unit_directions_per_class():
    a = steering.random_units(16, seed=0, layer=3, draw=5)
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(a, steering.random_units(16, seed=0, layer=3, draw=5))
    for other in (
        {"seed": 1, "layer": 3, "draw": 5},
        {"seed": 0, "layer": 4, "draw": 5},
        {"seed": 0, "layer": 3, "draw": 6},
    ):
        assert not torch.equal(a, steering.random_units(16, **other))


def test_null_location():
    null = np.arange(100, dtype=float)  # draws' mean effects 0 … 99
    at = steering.null_location(97.5, null)
    assert at["n"] == 100 and at["percentile"] == pytest.approx(98.0) and at["p"] == pytest.approx(3 / 101)
    assert at["q95"] == pytest.approx(np.quantile(null, 0.95)) and at["exceeds_q95"]
    tie = steering.null_location(50.0, null)  # a tie counts half below, and as "at or above" in p
    assert tie["percentile"] == pytest.approx(50.5) and tie["p"] == pytest.approx(51 / 101) and not tie["exceeds_q95"]
    top = steering.null_location(1e9, null)
    assert top["percentile"] == 100.0 and top["p"] == pytest.approx(1 / 101)
    # a negative gain: "towards the tuned model" is down; the same location for the mirrored numbers
    neg = steering.null_location(-97.5, -null, gain_sign=-1.0)
    assert neg["percentile"] == pytest.approx(98.0) and neg["p"] == pytest.approx(3 / 101) and neg["exceeds_q95"]
    assert neg["q95"] == pytest.approx(-np.quantile(null, 0.95))
    assert math.isnan(steering.null_location(1.0, [])["p"])


def _numbers(**over):
    n = {
        "layer": 3,
        "scale": 1.0,
        "recovered_fraction": 0.4,
        "recovered_ci_low": 0.2,
        "recovered_ci_high": 0.6,
        "recovered_defined": True,
        "effect": 2.0,
        "effect_ci_low": 1.0,
        "effect_ci_high": 3.0,
        "gain": 5.0,
        "gain_ci_low": 3.0,
        "gain_ci_high": 7.0,
        "null_n": 100,
        "null_q95": 0.5,
        "null_percentile": 100.0,
        "null_p": 1 / 101,
    }
    return n | over


@pytest.mark.parametrize(
    "over, outcome",
    [
        ({}, AGREES),
        # the fraction's CI touches 0: not "excludes 0"; the effect's CI reaches above the null: inconclusive
        ({"recovered_ci_low": 0.0}, INCONCLUSIVE),
        ({"recovered_ci_low": -0.1}, INCONCLUSIVE),
        # the effect exactly at the null's 95th percentile does not exceed it; its CI reaches above: inconclusive
        ({"effect": 0.5}, INCONCLUSIVE),
        # the effect's whole CI at or below the null's 95th percentile: v is no better than random directions
        ({"effect": 0.4, "effect_ci_low": 0.1, "effect_ci_high": 0.5}, DIFFERS),
        ({"effect": 0.4, "effect_ci_low": 0.1, "effect_ci_high": 0.5000001}, INCONCLUSIVE),
        # steering the wrong way
        (
            {
                "recovered_fraction": -0.4,
                "recovered_ci_low": -0.6,
                "recovered_ci_high": -0.2,
                "effect": -2.0,
                "effect_ci_low": -3.0,
                "effect_ci_high": -1.0,
            },
            DIFFERS,
        ),
        # the gain's CI spans 0: the ratio is undefined
        (
            {
                "recovered_defined": False,
                "recovered_fraction": math.nan,
                "recovered_ci_low": math.nan,
                "recovered_ci_high": math.nan,
            },
            INCONCLUSIVE,
        ),
        ({"null_n": 0, "null_q95": math.nan}, INCONCLUSIVE),
        # a negative gain: the same rule in the gain's direction
        ({"gain": -5.0, "effect": -2.0, "effect_ci_low": -3.0, "effect_ci_high": -1.0, "null_q95": -0.5}, AGREES),
        ({"gain": -5.0, "effect": -0.4, "effect_ci_low": -0.5, "effect_ci_high": -0.1, "null_q95": -0.5}, DIFFERS),
    ],
)
def test_steer_rule(over, outcome):
    assert steering.steer_outcome(_numbers(**over)) == outcome


@pytest.mark.parametrize(
    "over, outcome",
    [
        ({}, AGREES),
        ({"transfer_ci_low": -0.05}, INCONCLUSIVE),  # not significantly lower than held-out, but not clearly above 0
        ({"difference_ci_high": -0.01}, DIFFERS),  # significantly below the held-out fraction
        ({"difference_ci_high": 0.0}, AGREES),  # the boundary: reaching 0 is enough
        ({"transfer_ci_low": -0.05, "difference_ci_high": -0.01}, DIFFERS),
        ({"transfer_defined": False}, INCONCLUSIVE),
        ({"heldout_defined": False, "difference_ci_low": math.nan, "difference_ci_high": math.nan}, INCONCLUSIVE),
    ],
)
def test_transfer_rule(over, outcome):
    n = {
        "layer": 1,
        "scale": 1.0,
        "n_pairs": 10,
        "transfer_fraction": 0.2,
        "transfer_ci_low": 0.1,
        "transfer_ci_high": 0.4,
        "transfer_defined": True,
        "heldout_fraction": 0.3,
        "heldout_defined": True,
        "difference": -0.1,
        "difference_ci_low": -0.4,
        "difference_ci_high": 0.2,
        "transfer_gain": 2.0,
        "transfer_gain_ci_low": 1.0,
        "transfer_gain_ci_high": 3.0,
    } | over
    assert steering.transfer_outcome(n) == outcome


def test_ratio_difference_of_two_independent_pair_sets():
    rng = np.random.default_rng(0)
    den_a, den_b = rng.uniform(1, 3, 30), rng.uniform(1, 3, 20)
    # every resample of a has ratio 2 and of b ratio 0.5: the difference is exactly 1.5 with a zero-width CI
    d = steering.ratio_difference(2 * den_a, den_a, 0.5 * den_b, den_b, seed=0, n_boot=200)
    assert d["defined"] and d["mean"] == pytest.approx(1.5) and d["ci_low"] == pytest.approx(1.5) == d["ci_high"]
    noisy = steering.ratio_difference(rng.normal(1, 1, 30), den_a, rng.normal(1, 1, 20), den_b, seed=0, n_boot=500)
    assert noisy["ci_low"] < noisy["mean"] < noisy["ci_high"]
    spans = steering.ratio_difference(den_a, rng.normal(0, 1, 30), den_b, den_b, seed=0, n_boot=200)
    assert not spans["defined"] and math.isnan(spans["mean"]) and "undefined" in spans["text"]


def _entry(**over):
    entry = {
        "layer": 3,
        "scale": 2.0,
        "layer_rule": "rule",
        "by_c": [
            {"c": 1.0, "mean": 0.1, "ci_low": 0.0, "ci_high": 0.2, "n": 10},
            {"c": 2.0, "mean": 2.0, "ci_low": 1.0, "ci_high": 3.0, "n": 10},
        ],
        "recovered_fraction": {"mean": 0.4, "ci_low": 0.2, "ci_high": 0.6, "defined": True, "text": "0.4 [0.2, 0.6]"},
        "gain": {"mean": 5.0, "ci_low": 3.0, "ci_high": 7.0, "n": 10},
        "null": {"n": 100, "percentile": 100.0, "p": 1 / 101, "q95": 0.5},
    }
    return entry | over


def test_the_verdict_row_reads_the_chosen_scale_and_prints_its_numbers():
    find = steering.verdict({"experiments": {"steer": _entry()}})
    assert find.verdict == AGREES and find.numbers == _numbers(scale=2.0)  # the a = 2 row, not a = 1
    for text in ("[0.2, 0.6]", "2 nats", "0.5 nats", "n = 100", "[3, 7]", "3)"):
        assert text in find.rule, text
    below = _entry(null={"n": 100, "percentile": 40.0, "p": 0.6, "q95": 5.0})
    assert steering.verdict({"experiments": {"steer": below}}).verdict == DIFFERS
    assert steering.verdict({"experiments": {}}) is None
    assert steering.verdict_transfer({"experiments": {"steer": _entry()}}) is None  # no transfer data: no row


def test_the_cell_closest_to_the_gain_and_ties_at_random():
    assert _cell_index([0.1, 0.9, 3.0], 1.0, seed=0) == 1
    assert _cell_index([0.1, 0.9, 1.05], 1.0, seed=0) == 2  # an overshoot closer to the gain wins
    assert _cell_index([float("nan"), 0.5], 1.0, seed=0) == 1
    # a tie (to float rounding) is broken at random, seeded: never always the first cell
    picks = {_cell_index([1.0, 3.0, 3.0 + 1e-12], 2.0, seed=s) for s in range(20)}
    assert picks == {0, 1, 2}
    assert _cell_index([1.0, 3.0], 2.0, seed=4) == _cell_index([1.0, 3.0], 2.0, seed=4)


def test_add_fixed_is_a_pure_function_of_the_context():
    """The first definition's intervention (kept for hand-made patches): one vector at every position in scope."""
    from alignment_probe.interventions import AddFixed

    vec = torch.arange(4, dtype=torch.float32)
    ctx = _ctx(1, 3, 3)
    torch.testing.assert_close(AddFixed(vec)(ctx), ctx.target + vec)
    assert torch.equal(AddFixed(torch.zeros(4))(ctx), ctx.target)

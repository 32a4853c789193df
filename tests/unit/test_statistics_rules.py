"""statistics.md's rules, each against an answer known in advance: peak sets and random tie-breaking, the ratio
rule, max-|t| bands, nulls printed as bounds, explore/confirm records, the coverage check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignment_probe import stats
from alignment_probe.stats.peaks import _peak_index

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- peaks as sets


def planted_curve(n: int = 40, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A planted twin's resid_post curve: 0 below block 3, the whole per-pair gain at every layer from 3 on."""
    rng = np.random.default_rng(seed)
    gain = rng.normal(1.0, 0.5, size=n)
    m = np.zeros((n, 8))
    m[:, 3:] = gain[:, None]
    m[:, :3] = rng.normal(0, 0.01, size=(n, 3))
    return m, list(range(8))


def test_peak_set_holds_every_layer_that_carries_the_whole_gain():
    m, layers = planted_curve()
    out = stats.peak_set(m, layers, seed=0, n_boot=500)
    assert out["peak_set"] == [3, 4, 5, 6, 7]
    assert out["layers_swept"] == 8 and "one-sided" in out["peak_set_rule"]
    json.dumps(out)


def test_peak_set_float_rounding_ties_count_as_ties():
    m, layers = planted_curve()
    m[:, 5] += 3e-7  # what batching does to a tie
    assert stats.peak_set(m, layers, seed=0, n_boot=500)["peak_set"] == [3, 4, 5, 6, 7]


def test_peak_set_sharp_peak_and_near_tie():
    rng = np.random.default_rng(1)
    sharp = np.array([0.0, 0.2, 3.0, 0.5]) + rng.normal(0, 0.3, size=(50, 4))
    assert stats.peak_set(sharp, [0, 1, 2, 3], seed=0, n_boot=1000)["peak_set"] == [2]
    near = np.array([0.0, 1.0, 1.02, 0.0]) + rng.normal(0, 1.0, size=(30, 4))
    assert set(stats.peak_set(near, [0, 1, 2, 3], seed=0, n_boot=1000)["peak_set"]) >= {1, 2}


def test_peak_set_boundary_one_sided_level():
    """A layer whose paired difference from the max is exactly at the boundary: its lower bound sits at 0 with
    a constant difference of 0 (in) and moves out as soon as the whole bootstrap distribution is above 0."""
    base = np.random.default_rng(2).normal(0, 1, size=(20, 1))
    same = np.hstack([base + 1.0, base + 1.0])
    assert stats.peak_set(same, [0, 1], seed=0, n_boot=200)["peak_set"] == [0, 1]
    below = np.hstack([base + 1.0, base + 0.9])  # differs by 0.1 in every pair: significantly below
    assert stats.peak_set(below, [0, 1], seed=0, n_boot=200)["peak_set"] == [0]


def test_bootstrap_argmax_breaks_ties_at_random():
    """Without random tie-breaking the planted curve's peak CI is [3, 3] (the first tied layer); the CI must
    spread over the tied layers instead."""
    m, layers = planted_curve()
    out = stats.peak_onset_with_ci(m, layers, seed=0, n_boot=500)
    assert out["peak_layer_ci"][0] == 3 and out["peak_layer_ci"][1] >= 6
    boots = stats.bootstrap_means(m, seed=0, n_boot=2000)
    picks = _peak_index(boots, np.random.default_rng(0))
    counts = np.bincount(picks, minlength=8)
    assert counts[:3].sum() == 0
    assert (counts[3:] > 300).all()  # about 400 each
    assert (_peak_index(boots) == 3).all()  # the deterministic argmax piles onto the first


def test_heldout_choice_breaks_ties_at_random_and_records_roles():
    m, layers = planted_curve()
    ids = list(range(100, 140))
    chosen = {stats.heldout_peak(m, layers, ids, seed=s, n_boot=100)["chosen_layer"] for s in range(12)}
    assert len(chosen) > 1 and chosen <= {3, 4, 5, 6, 7}
    sel = stats.heldout_peak(m, layers, ids, seed=0, n_boot=100)["selection"]
    assert set(sel["explore_pair_ids"]).isdisjoint(sel["confirm_pair_ids"])
    assert sorted(sel["explore_pair_ids"] + sel["confirm_pair_ids"]) == ids
    assert set(sel["confirm"]) == {"mean", "ci_low", "ci_high", "n"} and sel["confirm"]["n"] == 20
    rows = [ids.index(p) for p in sel["confirm_pair_ids"]]
    assert sel["confirm"]["mean"] == pytest.approx(m[rows, sel["chosen"]].mean())


def test_summarize_experiment_reports_peak_set_and_selection():
    from tests.unit.test_stats import effects_frame

    m, _ = planted_curve()
    out = stats.summarize_experiment(effects_frame(m), seed=0, n_boot=300)
    assert out["peak_set"] == [3, 4, 5, 6, 7]
    assert out["selection"]["chosen"] in out["peak_set"]
    assert out["selection"] == out["heldout"]["selection"]
    json.dumps(out)


# ---------------------------------------------------------------- the ratio rule


def test_ratio_defined_when_denominator_ci_excludes_zero():
    rng = np.random.default_rng(3)
    den = rng.normal(2.0, 0.5, size=60)
    num = 0.5 * den + rng.normal(0, 0.05, size=60)
    out = stats.ratio_ci(num, den, seed=0, n_boot=1000)
    assert out["defined"] and out["ratio"] == pytest.approx(num.mean() / den.mean())
    assert out["ci_low"] < 0.5 < out["ci_high"]
    assert out["denominator"]["ci_low"] > 0
    json.dumps(out)


def test_ratio_undefined_when_denominator_ci_spans_zero():
    rng = np.random.default_rng(4)
    den = rng.normal(0.05, 1.0, size=40)
    num = rng.normal(0.1, 1.0, size=40)
    out = stats.ratio_ci(num, den, seed=0, n_boot=1000)
    assert not out["defined"] and math.isnan(out["ratio"])
    assert out["text"].startswith("undefined (denominator CI spans 0)")
    assert out["numerator"]["mean"] == pytest.approx(num.mean())
    assert out["denominator"]["ci_low"] < 0 < out["denominator"]["ci_high"]


def test_ratio_keeps_every_resample():
    """The interval is the percentile interval of all resampled ratios, infinite ones included: the same as a
    brute-force computation over the identical resamples (the old helper dropped non-finite resamples)."""
    rng = np.random.default_rng(5)
    den = np.r_[np.full(9, 1.0), [-4.0]]  # a resample drawing the -4 twice has a denominator mean of exactly 0
    num = rng.normal(1.0, 0.2, size=10)
    out = stats.ratio_ci(num, den, seed=7, n_boot=4000, level=0.3)
    boots = stats.bootstrap_means(np.stack([num, den], axis=1), seed=7, n_boot=4000)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = boots[:, 0] / boots[:, 1]
    assert out["n_infinite"] == int((~np.isfinite(r)).sum()) > 0
    assert out["defined"]
    r = np.sort(np.where(np.isnan(r), np.inf, r))
    assert out["ci_low"] == float(np.percentile(r, 35, method="lower"))
    assert out["ci_high"] == float(np.percentile(r, 65, method="higher"))
    assert math.isfinite(out["ci_low"]) and math.isfinite(out["ci_high"])


def test_ratio_boundary_denominator_ci_touching_zero_is_undefined():
    den = np.array([0.0] * 9 + [1.0])  # a third of the resamples miss the one non-zero pair: CI's lower end is 0
    out = stats.ratio_ci(np.ones(10), den, seed=0, n_boot=2000)
    assert out["denominator"]["ci_low"] == 0.0 and not out["defined"]


# ---------------------------------------------------------------- simultaneous bands


def test_max_t_band_is_familywise_and_wider_than_pointwise():
    rng = np.random.default_rng(6)
    m_cells, hits_sim, hits_point = 20, 0, 0
    trials = 80
    for t in range(trials):
        x = rng.normal(0, 1, size=(40, m_cells))
        band = stats.simultaneous_band(x, seed=t, n_boot=500)
        lo, hi = np.array(band["band_low"]), np.array(band["band_high"])
        hits_sim += bool(((lo <= 0) & (0 <= hi)).all())
        point = np.array([stats.bootstrap_mean_ci(x[:, j], seed=t, n_boot=500)[1:] for j in range(m_cells)])
        hits_point += bool(((point[:, 0] <= 0) & (0 <= point[:, 1])).all())
    assert band["m"] == m_cells and band["critical"] > 2.5  # above the pointwise 1.96
    assert hits_sim / trials >= 0.85
    assert hits_point / trials < 0.6  # 20 pointwise 95 % intervals all cover about 36 % of the time


# ---------------------------------------------------------------- nulls as bounds


def test_null_printed_as_bound_not_zero():
    x = np.random.default_rng(7).normal(0, 0.2, size=50)
    x = x - x.mean() + 0.01  # a small true mean the sample cannot tell from 0
    out = stats.effect_or_bound(x, seed=0, n_boot=1000)
    assert not out["excludes_zero"]
    assert out["bound"] == pytest.approx(max(abs(out["ci_low"]), abs(out["ci_high"])))
    assert out["text"].startswith("|effect| < ") and "at 95%" in out["text"]
    clear = stats.effect_or_bound(x + 1.0, seed=0, n_boot=1000)
    assert clear["excludes_zero"] and clear["bound"] is None and "|effect|" not in clear["text"]


# ---------------------------------------------------------------- explore / confirm


def test_selection_record_rejects_overlap_and_reports_confirm_only():
    with pytest.raises(ValueError, match="overlap"):
        stats.selection_record([1, 2], [2, 3], 0, [0.1, 0.2])
    rec = stats.selection_record([5, 1], [4, 2], {"layer": 3}, [1.0, 3.0], seed=0, n_boot=100, in_sample=[9.0, 9.0])
    assert rec["explore_pair_ids"] == [1, 5] and rec["confirm_pair_ids"] == [2, 4]
    assert rec["confirm"]["mean"] == 2.0 and rec["in_sample"]["mean"] == 9.0
    assert stats.explore_confirm(range(10), seed=3) == stats.split_halves(range(10), seed=3)


# ---------------------------------------------------------------- coverage


def test_coverage_rate_near_nominal_on_a_known_population():
    pop = np.random.default_rng(8).gamma(2.0, 1.0, size=256)
    out = stats.coverage_rate(pop, sample_size=40, n_draws=200, seed=0, n_boot=500)
    assert out["population_mean"] == pytest.approx(pop.mean())
    assert 0.85 <= out["rate"] <= 1.0
    with pytest.raises(ValueError):
        stats.coverage_rate(pop, sample_size=300)

"""Statistics: bootstrap CIs, peak/onset layers and held-out splits against answers known in advance."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from alignment_probe.stats import (
    bootstrap_mean_ci,
    effect_matrix,
    heldout_peak,
    onset_layer,
    peak_layer,
    peak_onset_with_ci,
    per_layer_summary,
    spearman_monotonicity,
    split_halves,
    summarize_experiment,
)


def effects_frame(
    matrix: np.ndarray, layers=None, pair_ids=None, shuffle_seed: int | None = 0, **extra
) -> pd.DataFrame:
    """A long effects-table slice (layer, pair_id, effect, + constant condition columns)."""
    n, L = matrix.shape
    layers = list(range(L)) if layers is None else list(layers)
    pair_ids = list(range(n)) if pair_ids is None else list(pair_ids)
    rows = [
        {
            "experiment": "patch_tuned_to_base",
            "hook": "resid_post",
            "scope": "all",
            "param": math.nan,
            "layer": layers[j],
            "pair_id": pair_ids[i],
            "effect": float(matrix[i, j]),
        }
        | extra
        for i in range(n)
        for j in range(L)
    ]
    frame = pd.DataFrame(rows)
    if shuffle_seed is not None:
        frame = frame.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    return frame


# ---------------------------------------------------------------- bootstrap_mean_ci


def test_ci_covers_true_mean_at_nominal_rate():
    """Over many samples from N(2, 1), the 95% interval should contain 2 about 95% of the time."""
    rng = np.random.default_rng(123)
    hits = 0
    trials = 200
    for t in range(trials):
        x = rng.normal(2.0, 1.0, size=60)
        mean, lo, hi = bootstrap_mean_ci(x, seed=t, n_boot=1000)
        assert lo <= mean <= hi
        hits += lo <= 2.0 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_ci_width_matches_normal_theory_and_narrows_with_n():
    rng = np.random.default_rng(7)
    widths = {}
    for n in (25, 400):
        x = rng.normal(0.0, 3.0, size=n)
        mean, lo, hi = bootstrap_mean_ci(x, seed=0, n_boot=4000)
        assert mean == pytest.approx(x.mean())
        widths[n] = hi - lo
        expected = 2 * 1.96 * x.std(ddof=1) / math.sqrt(n)
        assert widths[n] == pytest.approx(expected, rel=0.2)
    # 16x the pairs -> about a quarter of the width
    assert widths[400] < 0.4 * widths[25]


def test_ci_deterministic_under_seed_and_level():
    x = np.random.default_rng(0).exponential(size=40)
    assert bootstrap_mean_ci(x, seed=5) == bootstrap_mean_ci(x, seed=5)
    assert bootstrap_mean_ci(x, seed=5) != bootstrap_mean_ci(x, seed=6)
    _, lo50, hi50 = bootstrap_mean_ci(x, seed=5, level=0.5)
    _, lo95, hi95 = bootstrap_mean_ci(x, seed=5, level=0.95)
    assert lo95 < lo50 < hi50 < hi95
    assert all(isinstance(v, float) for v in bootstrap_mean_ci(x))


def test_ci_edge_cases():
    assert bootstrap_mean_ci([3.5]) == (3.5, 3.5, 3.5)
    assert bootstrap_mean_ci([2.0] * 10) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


# ---------------------------------------------------------------- effect_matrix / per_layer_summary


def test_effect_matrix_pivots_sorted():
    m = np.arange(12, dtype=float).reshape(3, 4)
    frame = effects_frame(m, layers=[7, 2, 5, 9], pair_ids=[30, 10, 20])
    matrix, pair_ids, layers = effect_matrix(frame)
    assert pair_ids == [10, 20, 30]
    assert layers == [2, 5, 7, 9]
    # row for pair 10 is m[1], columns reordered to layers 2, 5, 7, 9 = original columns 1, 2, 0, 3
    np.testing.assert_array_equal(matrix, m[[1, 2, 0]][:, [1, 2, 0, 3]])


def test_effect_matrix_rejects_missing_and_duplicate_rows():
    frame = effects_frame(np.ones((4, 3)))
    with pytest.raises(ValueError, match="missing"):
        effect_matrix(frame.drop(index=frame.index[5]))
    two_alphas = pd.concat([frame.assign(param=0.5), frame.assign(param=1.0)], ignore_index=True)
    with pytest.raises(ValueError, match="param"):
        effect_matrix(two_alphas)
    bad = frame.copy()
    bad.loc[0, "effect"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        effect_matrix(bad)


def test_per_layer_summary_on_synthetic_table():
    rng = np.random.default_rng(1)
    true = np.array([0.0, 0.5, 2.0, 1.0])
    m = true + rng.normal(0, 0.3, size=(80, 4))
    frame = effects_frame(m, layers=[0, 1, 2, 3])
    out = per_layer_summary(frame, seed=3, n_boot=2000)
    assert [r["layer"] for r in out] == [0, 1, 2, 3]
    assert set(out[0]) == {"layer", "mean", "ci_low", "ci_high", "n"}
    means = frame.groupby("layer")["effect"].mean()
    for r in out:
        assert r["n"] == 80
        assert r["mean"] == pytest.approx(means[r["layer"]], abs=1e-12)
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        assert abs(r["mean"] - true[r["layer"]]) < 4 * 0.3 / math.sqrt(80)
        # a 95% interval of a mean of 80 values with sd 0.3: half-width ≈ 1.96 · 0.3 / sqrt(80)
        assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(1.96 * 0.3 / math.sqrt(80), rel=0.25)
        # the same interval as bootstrapping that column alone with the same seed
        _, lo, hi = bootstrap_mean_ci(m[:, r["layer"]], seed=3, n_boot=2000)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert per_layer_summary(frame, seed=3, n_boot=2000) == out


def test_per_layer_summary_resamples_pairs_jointly():
    """Layer 1 = layer 0 + 1 for every pair. With the same pairs drawn for both layers, every
    resampled mean differs by exactly 1, so the CIs are shifted copies of each other; resampling
    layers independently would give intervals of unrelated placement."""
    base = np.random.default_rng(2).normal(size=50)
    m = np.stack([base, base + 1.0, 2.0 * base], axis=1)
    out = per_layer_summary(effects_frame(m), seed=0, n_boot=500)
    assert out[1]["ci_low"] - out[0]["ci_low"] == pytest.approx(1.0, abs=1e-9)
    assert out[1]["ci_high"] - out[0]["ci_high"] == pytest.approx(1.0, abs=1e-9)
    assert out[2]["ci_low"] == pytest.approx(2 * out[0]["ci_low"], abs=1e-9)


def test_per_layer_summary_single_pair():
    out = per_layer_summary(effects_frame(np.array([[1.0, 2.0, 3.0]])))
    assert [(r["mean"], r["ci_low"], r["ci_high"], r["n"]) for r in out] == [(1, 1, 1, 1), (2, 2, 2, 1), (3, 3, 3, 1)]


# ---------------------------------------------------------------- peak / onset


def test_peak_and_onset_known_curves():
    step = [0, 0, 0, 1, 1, 1]
    assert onset_layer(step) == 3
    assert peak_layer(step) == 3  # first of the tied maxima
    ramp = [0, 1, 2, 3, 4]
    assert peak_layer(ramp) == 4
    assert onset_layer(ramp) == 2
    bump = [0.1, 0.4, 0.6, 1.0, 0.2]
    assert (peak_layer(bump), onset_layer(bump)) == (3, 2)
    # layer ids from a mapping, a Series or explicit ids, not positions
    assert onset_layer({10: 0.0, 12: 0.2, 14: 0.9, 16: 1.0}) == 14
    assert peak_layer(pd.Series([0.0, 3.0, 1.0], index=[4, 5, 6])) == 5
    assert peak_layer([0, 3, 1], layers=[8, 9, 10]) == 9
    # all effects negative: onset falls back to the peak
    assert onset_layer([-3.0, -1.0, -2.0]) == 1
    assert peak_layer([np.nan, 1.0, 2.0]) == 2


def test_peak_onset_with_ci_sharp_answer_uses_layer_ids():
    rng = np.random.default_rng(4)
    curve = np.array([0.0, 0.0, 0.1, 3.0, 3.2, 5.0, 1.0])
    m = curve + rng.normal(0, 0.2, size=(40, 7))
    layers = [10, 11, 12, 13, 14, 15, 16]
    out = peak_onset_with_ci(m, layers, seed=0, n_boot=1000)
    assert out == {"peak_layer": 15, "peak_layer_ci": [15, 15], "onset_layer": 13, "onset_layer_ci": [13, 13]}
    assert all(type(v) is int for v in out["peak_layer_ci"] + out["onset_layer_ci"])
    json.dumps(out)


def test_peak_ci_spans_near_tie():
    """Two layers with the same true effect: the data cannot say which peaks, and the CI says so."""
    rng = np.random.default_rng(5)
    m = np.array([0.0, 1.0, 1.0, 0.2]) + rng.normal(0, 1.0, size=(30, 4))
    out = peak_onset_with_ci(m, [0, 1, 2, 3], seed=1, n_boot=1000)
    lo, hi = out["peak_layer_ci"]
    assert lo <= 1 and hi >= 2
    assert peak_onset_with_ci(m, [0, 1, 2, 3], seed=1, n_boot=1000) == out


# ---------------------------------------------------------------- held-out split


@pytest.mark.parametrize("n", [1, 2, 7, 10, 51])
def test_split_halves_properties(n):
    ids = list(range(100, 100 + 3 * n, 3))
    fit, held = split_halves(ids, seed=0)
    assert set(fit).isdisjoint(held)
    assert sorted(fit + held) == ids
    assert abs(len(fit) - len(held)) <= 1
    assert fit == sorted(fit) and held == sorted(held)
    assert split_halves(ids, seed=0) == (fit, held)
    assert split_halves(list(reversed(ids)), seed=0) == (fit, held)  # input order does not matter


def test_split_halves_depends_on_seed_and_rejects_duplicates():
    ids = list(range(40))
    assert split_halves(ids, seed=0) != split_halves(ids, seed=1)
    with pytest.raises(ValueError):
        split_halves([1, 1, 2], seed=0)


def test_heldout_peak_finds_true_peak():
    rng = np.random.default_rng(6)
    m = np.array([0.0, 0.5, 2.0, 1.0]) + rng.normal(0, 0.3, size=(60, 4))
    ids = list(range(500, 560))
    out = heldout_peak(m, [0, 1, 2, 3], ids, seed=2, n_boot=1000)
    assert out["chosen_layer"] == 2
    assert set(out["fit_pairs"]).isdisjoint(out["heldout_pairs"])
    assert sorted(out["fit_pairs"] + out["heldout_pairs"]) == ids
    held_rows = [ids.index(p) for p in out["heldout_pairs"]]
    assert out["heldout_mean"] == pytest.approx(m[held_rows, 2].mean())
    lo, hi = out["heldout_ci"]
    assert lo < 2.0 < hi
    json.dumps(out)


def test_heldout_peak_removes_winners_curse():
    """Pure noise at 30 layers: on average the in-sample peak looks like an effect (the max of 30
    noisy means, about +0.45 here), while the held-out mean at the chosen layer is unbiased (0)."""
    fit, held = [], []
    for s in range(30):
        m = np.random.default_rng(s).normal(0, 1.0, size=(40, 30))
        out = heldout_peak(m, list(range(30)), list(range(40)), seed=s, n_boot=200)
        fit.append(out["fit_mean"])
        held.append(out["heldout_mean"])
    assert np.mean(fit) > 0.3
    assert abs(np.mean(held)) < 0.15  # se of the average of 30 held-out means ≈ 0.04


# ---------------------------------------------------------------- monotonicity


def test_spearman_monotonicity():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    assert spearman_monotonicity(alphas, [0, 0.1, 0.5, 0.9, 1.0, 3.0]) == pytest.approx(1.0)
    assert spearman_monotonicity(alphas, [5, 4, 3, 2, 1, 0]) == pytest.approx(-1.0)
    assert spearman_monotonicity(alphas, [0, np.nan, 0.5, 0.9, 1.0, 3.0]) == pytest.approx(1.0)
    assert math.isnan(spearman_monotonicity(alphas, [1.0] * 6))
    assert math.isnan(spearman_monotonicity([0.0], [1.0]))
    assert 0 < spearman_monotonicity(alphas, [0, 1, 0.5, 2, 1.5, 3]) < 1


# ---------------------------------------------------------------- summarize_experiment


def test_summarize_experiment_on_effects_table():
    from alignment_probe.effects import RowKey, make_row, to_frame

    rng = np.random.default_rng(9)
    curve = [0.0, 0.1, 2.0, 3.0]
    rows = []
    for layer, mu in enumerate(curve):
        key = RowKey("patch_tuned_to_base", "base", "tuned", "resid_post", "all", "both", layer)
        for pid in range(0, 60, 2):
            clean = (-10.0 - rng.normal(), -12.0)
            patched = (clean[0] + mu + rng.normal(0, 0.2), clean[1])
            rows.append(make_row(key, pid, clean, patched))
    table = to_frame(rows)
    out = summarize_experiment(table, seed=0, n_boot=500)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert [r["layer"] for r in out["per_layer"]] == [0, 1, 2, 3]
    assert all(r["n"] == 30 for r in out["per_layer"])
    assert out["peak_layer"] == 3 and out["peak_layer_ci"] == [3, 3]
    assert out["onset_layer"] == 2 and out["onset_layer_ci"] == [2, 2]
    assert out["heldout"]["chosen_layer"] == 3
    assert len(out["heldout"]["fit_pairs"]) == len(out["heldout"]["heldout_pairs"]) == 15
    assert summarize_experiment(table, seed=0, n_boot=500) == out
    assert summarize_experiment(table, seed=1, n_boot=500) != out

"""The findings-vs-paper rules: three outcomes (agrees / differs / inconclusive), each on synthetic summaries that
fall clearly on each side and on the boundary (../shared/docs/statistics.md, "Nulls and verdicts"); the numbers and
rule each prints; the summary's ``verdicts``. No model is run."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from alignment_probe.effects import RowKey, make_row, to_frame
from alignment_probe.experiments import cross, token_map, windows
from alignment_probe.report import verdicts as V
from alignment_probe.report.format import fmt_effect, fmt_layers, fmt_ratio

A, D, I, N = V.AGREES, V.DIFFERS, V.INCONCLUSIVE, V.NOT_RUN
L = 16  # the paper's depth: mid-depth layers are 7, 8, 9 (|ℓ/15 − 8/15| ≤ 0.10)


def rows(means, half=0.1, layers=None):
    layers = range(len(means)) if layers is None else layers
    return [
        {"layer": int(la), "mean": m, "ci_low": m - half, "ci_high": m + half, "n": 40} for la, m in zip(layers, means)
    ]


def ramp(n=L):
    return [0.1 * i for i in range(n)]


def summary_with(**experiments):
    return {"n_layers": L, "n_pairs": 40, "gain_mean": 2.0, "gain_ci": [1.8, 2.2], "experiments": experiments}


def test_mid_depth_layers_follow_the_relative_depth_rule():
    assert V.mid_depth_layers(16) == [7, 8, 9]  # 8/15 ± 0.10 → [0.433, 0.633] × 15
    # 31 layers: 13/30 and 19/30 are exactly 8/15 ∓ 0.10, the band's (inclusive) ends
    assert V.mid_depth_layers(31) == list(range(13, 20))
    assert V.relative_depth(8, 16) == pytest.approx(8 / 15)


# ------------------------------------------------------------------------------------------------ peak


def peak_summary(peak_set=None, n=L, **extra):
    entry = {
        "per_layer": rows(ramp(n)),
        "peak_layer": n - 1,
        "peak_layer_ci": [n - 2, n - 1],
        "onset_layer": n // 2,
        "onset_layer_ci": [n // 2 - 1, n // 2 + 1],
    } | extra
    if peak_set is not None:
        entry |= {"peak_set": peak_set, "layers_swept": n}
    return {"n_layers": n, "experiments": {"patch_tuned_to_base": entry}}


@pytest.mark.parametrize(
    ("peak_set", "n", "verdict"),
    [
        ([8], L, A),
        ([7, 8, 9], L, A),  # inside
        ([0, 1], L, D),
        ([15], L, D),  # outside
        ([8, 12], L, I),
        ([9, 10], L, I),  # straddles the band's edge
        ([13], 31, A),
        ([12], 31, D),
        ([19], 31, A),
        ([20], 31, D),  # the band's exact ends
    ],
)
def test_peak_rule_reads_the_whole_peak_set(peak_set, n, verdict):
    f = V.finding_peak(peak_summary(peak_set, n))
    assert f.verdict == verdict
    assert f.numbers["peak_set"] == peak_set and f.numbers["layers_swept"] == n
    assert f.numbers["mid_depth_layers"] == V.mid_depth_layers(n)
    assert "peak set" in f.rule and fmt_layers(peak_set) in f.ours


def test_peak_onset_is_never_evidence():
    # the half-maximum onset of this ramp sits mid-depth (layer 8); the peak set at the top does not: the onset
    # cannot turn the verdict, and the text says why it is not judged
    f = V.finding_peak(peak_summary([14, 15]))
    assert f.verdict == D and "by construction" in f.ours and "onset layer 8" in f.ours


def test_peak_without_a_set_uses_the_argmax_ci_else_is_inconclusive():
    s = peak_summary(None, peak_layer=8, peak_layer_ci=[7, 9])
    f = V.finding_peak(s)
    assert f.verdict == A and f.numbers["peak_set"] == [7, 8, 9] and "argmax" in f.numbers["peak_set_source"]
    s["experiments"]["patch_tuned_to_base"]["peak_layer_ci"] = [6, 9]
    assert V.finding_peak(s).verdict == I
    del s["experiments"]["patch_tuned_to_base"]["peak_layer_ci"]
    assert V.finding_peak(s).verdict == I  # a point without its uncertainty decides nothing
    assert V.finding_peak({"experiments": {}}).verdict == N


def test_peak_on_a_coarse_grid_says_how_many_layers_were_swept():
    s = {
        "n_layers": L,
        "experiments": {
            "patch_tuned_to_base": {
                "per_layer": rows([0.1, 0.5, 0.2], layers=[0, 8, 15]),
                "peak_layer": 8,
                "peak_layer_ci": [8, 8],
                "peak_set": [8],
                "layers_swept": 3,
            }
        },
    }
    f = V.finding_peak(s)
    assert f.verdict == A and "3 layers swept, of 16 in the model" in f.ours


# ----------------------------------------------------------------------------------------------- LASSO


def lasso_summary(nonzero, freq):
    coefs = [(-0.18 if i in nonzero else 0.0) for i in range(L)]
    entry = {"coefficients": coefs, "nonzero_layers": nonzero, "alpha_": 0.01}
    if freq is not None:
        entry["selection_frequency"] = freq
    return {"n_layers": L, "experiments": {"lasso": entry}}


def freqs(**at):
    return [at.get(f"l{i}", 0.0) for i in range(L)]


@pytest.mark.parametrize(
    ("nonzero", "freq", "verdict"),
    [
        ([8], freqs(l8=0.99), A),
        ([8], freqs(l8=0.95, l3=0.05, l12=0.05), A),  # the boundary: 95% and 5% belong to the inclusive side
        ([8], freqs(l8=0.9499), I),  # just unstable
        ([8], freqs(l8=0.99, l3=0.0501), I),  # another layer plausibly non-zero
        ([8], freqs(l8=0.6, l9=0.4), I),  # the bootstrap cannot tell 8 from 9
        ([2], freqs(l2=0.99), D),  # stably non-zero outside mid-depth
        ([7, 8], freqs(l7=0.96, l8=0.97), D),  # stably two
        ([], freqs(l4=0.05, l8=0.02), I),  # stably none: a null, not evidence against one layer
        ([], freqs(l8=0.3), I),
        ([8], None, I),  # no bootstrap: stability unknown
    ],
)
def test_lasso_rule(nonzero, freq, verdict):
    f = V.finding_lasso(lasso_summary(nonzero, freq))
    assert f.verdict == verdict
    assert f.numbers["nonzero_layers"] == nonzero
    if freq is not None:
        assert f.numbers["selection_frequency"] == freq
        assert f.numbers["stable_layers"] == [i for i, x in enumerate(freq) if x >= 0.95]


def test_lasso_nonzero_layers_derived_from_coefficients():
    s = lasso_summary([8], freqs(l8=0.99))
    del s["experiments"]["lasso"]["nonzero_layers"]
    assert V.finding_lasso(s).verdict == A
    assert V.finding_lasso({"experiments": {}}).verdict == N


# ---------------------------------------------------------------------------------------------- low rank


def lowrank_summary(held_ci=(0.92, 1.05), held=0.98, ratio=0.99, ci=(0.95, 1.03), *, with_held_ci=True, k=4):
    row = {
        "layer": 8,
        "k": k,
        "effect_ratio": ratio,
        "effect_ratio_ci": list(ci),
        "variance_explained": 0.15,
        "heldout_effect_ratio": held,
        "effect_mean": 0.5,
        "full_effect_mean": 0.51,
    }
    if with_held_ci:
        row["heldout_effect_ratio_ci"] = list(held_ci)
    return {"n_layers": L, "experiments": {"lowrank_reconstruct": {"layers": [8], "by_k": [row]}}}


@pytest.mark.parametrize(
    ("held_ci", "verdict"),
    [
        ((0.92, 1.05), A),
        ((0.90, 1.10), A),  # inside; exactly the band
        ((0.2, 0.5), D),
        ((1.2, 1.4), D),
        ((0.5, 0.8999), D),  # disjoint
        ((0.89, 1.0), I),
        ((1.05, 1.3), I),
        ((0.5, 0.90), I),
        ((1.10, 1.3), I),  # overlapping; touching an end
    ],
)
def test_lowrank_rule_reads_the_heldout_ci_against_the_band(held_ci, verdict):
    f = V.finding_lowrank(lowrank_summary(held_ci))
    assert f.verdict == verdict
    assert f.numbers["ratio_used"] == "held-out" and f.numbers["ratio_ci"] == list(held_ci)
    assert f.numbers["band"] == [0.9, 1.1]


def test_lowrank_undefined_ratio_is_inconclusive_and_printed_as_undefined():
    s = lowrank_summary((math.nan, math.nan), held=math.nan, ratio=math.nan, ci=(math.nan, math.nan))
    f = V.finding_lowrank(s)
    assert f.verdict == I and f.numbers["defined"] is False
    assert "undefined (denominator CI spans 0): numerator +0.5 nats, denominator +0.51 nats" in f.ours


def test_lowrank_without_heldout_ci_uses_the_in_sample_ratio():
    f = V.finding_lowrank(lowrank_summary(with_held_ci=False, held=0.3, ci=(0.95, 1.03)))
    assert f.verdict == A and f.numbers["ratio_used"] == "in-sample"
    f = V.finding_lowrank(lowrank_summary(with_held_ci=False, ci=(0.4, 0.6)))
    assert f.verdict == D
    assert V.finding_lowrank(lowrank_summary(k=8)).verdict == N  # k = 4 not in the grid
    assert V.finding_lowrank({"experiments": {}}).verdict == N


# ---------------------------------------------------------------------------------------------- identity


def identity_effects(offset: float) -> pd.DataFrame:
    out = []
    for layer in range(3):
        key = RowKey("identity", "base", "base", "resid_post", "all", "both", layer)
        for pair in range(4):
            clean = (-1.0 - pair, -2.0)
            out.append(make_row(key, pair, clean, (clean[0] + (offset if pair == 3 else 0.0), clean[1])))
    return to_frame(out)


@pytest.mark.parametrize(("offset", "verdict"), [(0.0, A), (5e-7, A), (1e-3, D), (math.nan, D)])
def test_identity_is_exact_on_per_pair_rows(offset, verdict):
    f = V.finding_identity({"experiments": {}}, identity_effects(offset))
    assert f.verdict == verdict and f.numbers["n_values"] == 12 and "per-pair rows" in f.numbers["source"]


def test_identity_boundary_and_summary_fallback():
    at = {"n_layers": 3, "experiments": {"identity": {"per_layer": rows([0.0, 0.0, 0.0], half=V.IDENTITY_TOLERANCE)}}}
    assert V.finding_identity(at).verdict == A  # exactly the tolerance
    over = json.loads(json.dumps(at))
    over["experiments"]["identity"]["per_layer"][1]["ci_high"] = 2 * V.IDENTITY_TOLERANCE
    f = V.finding_identity(over)
    assert f.verdict == D and f.numbers["max_abs_effect_nats"] == pytest.approx(2e-6)
    assert V.finding_identity({"experiments": {}}).verdict == N


# ----------------------------------------------------------------------------------------------- reverse


def reverse_summary(reverse_rows, forward_max=0.78):
    forward = rows([forward_max * i / (L - 1) for i in range(L)])
    return summary_with(patch_tuned_to_base={"per_layer": forward}, patch_base_to_tuned={"per_layer": reverse_rows})


def ci_rows(*cis):
    return [{"layer": i, "mean": (lo + hi) / 2, "ci_low": lo, "ci_high": hi} for i, (lo, hi) in enumerate(cis)]


M = 0.25 * 0.78  # the margin: 0.195 nats


@pytest.mark.parametrize(
    ("cis", "verdict"),
    [
        ([(-0.1, 0.1), (-0.05, 0.12)], A),
        ([(-M, M), (0.0, M)], A),  # exactly the margin
        ([(-0.1, 0.1), (-1.33, -0.24)], D),  # the findings page's mirror image: −0.78 [−1.33, −0.24] against +0.78
        ([(0.2, 0.5)], D),
        ([(-0.3, 0.1)], I),  # crosses −M
        ([(M, 0.5)], I),
        ([(-0.5, -M)], I),  # touches the margin from outside: not wholly outside
    ],
)
def test_reverse_rule_compares_every_layer_ci_with_the_margin(cis, verdict):
    f = V.finding_reverse(reverse_summary(ci_rows(*cis)))
    assert f.verdict == verdict
    assert f.numbers["margin_nats"] == pytest.approx(M) and f.numbers["scale_nats"] == pytest.approx(0.78)


def test_reverse_symmetric_to_the_forward_effect_differs():
    mirror = [
        {"layer": i, "mean": -r["mean"], "ci_low": -r["ci_high"], "ci_high": -r["ci_low"]}
        for i, r in enumerate(rows([0.78 * i / (L - 1) for i in range(L)], half=0.3))
    ]
    f = V.finding_reverse(reverse_summary(mirror))
    assert f.verdict == D and f.numbers["ratio_to_scale"] == pytest.approx(1.0)
    assert f.numbers["layers_outside"] == [i for i, r in enumerate(mirror) if r["ci_high"] < -M]


def test_reverse_falls_back_to_the_gain_and_prints_bounds():
    s = reverse_summary(ci_rows((-0.2, 0.3)))
    del s["experiments"]["patch_tuned_to_base"]
    f = V.finding_reverse(s)  # margin 0.25 × |gain 2.0| = 0.5
    assert f.verdict == A and f.numbers["scale_source"] == "|mean gain|" and f.numbers["margin_nats"] == 0.5
    assert "|effect| < 0.3 nats at 95%" in f.ours  # a CI that holds 0 is a bound, not "0"
    assert V.finding_reverse({"experiments": {}}).verdict == N


# ----------------------------------------------------------------------------------------------- windows


def windows_summary(peak_set=(8,), confirm=(1.6, 1.2, 2.0), gain=(2.0, 1.8, 2.2)):
    entry = {
        "per_layer": rows([0.1] * L),
        "peak_layer": 8,
        "peak_set": list(peak_set),
        "layers_swept": L,
        "selection": {
            "explore_pair_ids": list(range(20)),
            "confirm_pair_ids": list(range(20, 40)),
            "chosen": 8,
            "confirm": dict(zip(("mean", "ci_low", "ci_high"), confirm), n=20),
            "in_sample": None,
        },
        "gain": dict(zip(("mean", "ci_low", "ci_high"), gain), n=40),
    }
    return {"n_layers": L, "experiments": {windows.TRANSPLANT: entry}}


@pytest.mark.parametrize(
    ("peak_set", "confirm", "verdict"),
    [
        ((8,), (1.6, 1.2, 2.0), A),
        ((8,), (1.5, 1.1, 2.0), A),  # CI low exactly half the gain's CI high (0.5 × 2.2)
        ((8,), (1.5, 1.0999, 2.0), I),
        ((8, 12), (1.6, 1.2, 2.0), I),  # the peak set straddles mid-depth
        ((2,), (1.6, 1.2, 2.0), D),  # carried, but not mid-depth
        ((8,), (0.5, 0.2, 0.8), D),  # mid-depth, but less than half the gain (0.8 < 0.5 × 1.8)
        ((8,), (0.6, 0.2, 0.9), I),  # CI high exactly half the gain's CI low: not below it
    ],
)
def test_windows_rule(peak_set, confirm, verdict):
    f = windows.verdict(windows_summary(peak_set, confirm))
    assert f.verdict == verdict
    assert f.numbers["peak_set"] == list(peak_set) and f.numbers["confirm_ci"] == list(confirm[1:])
    assert f.numbers["explore_pairs"] == 20 and f.numbers["confirm_pairs"] == 20


def test_windows_reads_the_older_heldout_record():
    s = windows_summary()
    entry = s["experiments"][windows.TRANSPLANT]
    del entry["selection"]
    entry["heldout"] = {
        "chosen_layer": 8,
        "fit_pairs": [0, 1],
        "heldout_pairs": [2, 3],
        "heldout_mean": 1.6,
        "heldout_ci": [1.2, 2.0],
    }
    f = windows.verdict(s)
    assert f.verdict == A and f.numbers["confirm_pairs"] == 2
    assert windows.verdict({"experiments": {}}) is None


# ------------------------------------------------------------------------------------------------- cross


def cross_summary(*cis, gain=2.0):
    splits = [
        {"split": i + 1, "interaction": (lo + hi) / 2, "interaction_ci": [lo, hi]} for i, (lo, hi) in enumerate(cis)
    ]
    return {"n_layers": L, "gain_mean": gain, "experiments": {cross.NAME: {"by_split": splits}}}


@pytest.mark.parametrize(
    ("cis", "verdict"),
    [
        ([(0.1, 0.9), (-0.1, 0.1)], A),  # some split's interaction is positive
        ([(0.0, 0.15), (-0.1, 0.1)], D),  # CI low exactly 0 is not positive; every CI high below 0.1 × 2.0
        ([(-0.1, 0.1999)], D),
        ([(-0.1, 0.2)], I),  # CI high exactly the margin: not bounded below it
        ([(-0.1, 0.9)], I),
    ],
)
def test_cross_rule_never_reads_a_ci_holding_zero_as_zero(cis, verdict):
    f = cross.verdict(cross_summary(*cis))
    assert f.verdict == verdict and f.numbers["margin_nats"] == pytest.approx(0.2)
    assert f.numbers["m_splits"] == len(cis)
    best = max(cis, key=lambda c: (c[0] + c[1]) / 2)
    if best[0] <= 0 <= best[1]:
        assert "|interaction| <" in f.ours


def test_cross_without_a_gain_cannot_bound():
    assert cross.verdict(cross_summary((-0.1, 0.05), gain=None)).verdict == I
    assert cross.verdict({"experiments": {}}) is None


# --------------------------------------------------------------------------------------------- token map


def token_summary(share, ci, **cell_extra):
    cell = {
        "hook": "blocks",
        "layer": 0,
        "width": L,
        "first": token_map.EARLY,
        "mean": 0.45,
        "ci_low": 0.1,
        "ci_high": 0.8,
        "share": share,
        "share_ci": list(ci),
    } | cell_extra
    total = {"hook": "blocks", "layer": 0, "width": L, "mean": 0.78, "ci_low": 0.24, "ci_high": 1.33}
    return {"n_layers": L, "experiments": {token_map.NAME: {"by_bin": [cell], "conditions": [total]}}}


def lengths(chosen, rejected):
    return pd.DataFrame({"n_chosen_tokens": chosen, "n_rejected_tokens": rejected})


def test_token_share_is_the_first_tokens_share_of_all_tokens():
    assert token_map.token_share(lengths([3, 10], [12, 5]), 8) == pytest.approx((3 + 8 + 8 + 5) / 30)
    assert token_map.token_share(lengths([32], [32]), 8) == pytest.approx(0.25)
    assert math.isnan(token_map.token_share(None, 8))


@pytest.mark.parametrize(
    ("share", "ci", "verdict"),
    [
        (0.6, (0.3, 0.9), A),  # above the null 0.25
        (0.15, (0.1, 0.2), D),  # below it
        (0.59, (0.19, 1.62), I),  # the findings page's case: the CI holds the null
        (0.5, (0.25, 0.9), I),
        (0.2, (0.1, 0.25), I),  # CI ends exactly at the null
    ],
)
def test_token_rule_compares_the_share_with_the_null_share(share, ci, verdict):
    f = token_map.verdict(token_summary(share, ci), scores=lengths([32] * 4, [32] * 4))
    assert f.verdict == verdict and f.numbers["null_share"] == pytest.approx(0.25)
    assert "25% of all completion tokens" in f.ours


def test_token_rule_undefined_share_or_unknown_null_is_inconclusive():
    f = token_map.verdict(token_summary(math.nan, (math.nan, math.nan)), scores=lengths([32], [32]))
    assert f.verdict == I and "undefined (denominator CI spans 0)" in f.ours and "+0.78" in f.ours
    assert token_map.verdict(token_summary(0.9, (0.8, 0.95))).verdict == I  # no token counts
    assert token_map.verdict(token_summary(0.9, (0.8, 0.95), token_share=0.5)).verdict == A  # the summary's null


# ----------------------------------------------------------------------------------- summary and wording


def paper_like_summary():
    s = summary_with(
        patch_tuned_to_base={
            "per_layer": rows([2.0 * math.exp(-((i - 8) ** 2)) for i in range(L)]),
            "peak_layer": 8,
            "peak_layer_ci": [8, 8],
            "peak_set": [8],
            "layers_swept": L,
        },
        patch_base_to_tuned={"per_layer": rows([0.0] * L, half=0.05)},
    )
    s["experiments"] |= lasso_summary([8], freqs(l8=1.0))["experiments"]
    s["experiments"] |= lowrank_summary()["experiments"]
    return s


def test_summary_verdicts_hold_the_judged_claims_and_list_the_rest():
    s = paper_like_summary()
    out = V.summary_verdicts(s, identity_effects(0.0))
    assert set(out) == {"verdicts", "verdicts_not_run"}
    got = {v["key"]: v["verdict"] for v in out["verdicts"]}
    assert got == {"peak": A, "lasso": A, "lowrank:reconstruct": A, "identity": A, "reverse": A}
    for record in out["verdicts"]:
        assert {"claim", "verdict", "rule", "numbers"} <= set(record) and record["verdict"] in V.VERDICTS
        assert record["numbers"]  # every rule says which numbers it used
    assert out["verdicts_not_run"] == []
    assert json.loads(json.dumps(out)) == out  # JSON as it stands (no NaN here)
    bare = V.summary_verdicts({"experiments": {}})
    assert bare["verdicts"] == [] and {r["key"] for r in bare["verdicts_not_run"]} == {
        "peak",
        "lasso",
        "lowrank:reconstruct",
        "identity",
        "reverse",
    }


def test_by_construction_is_shown_as_not_evidence():
    f = V.Finding("onset", "c", "p", "o", A, "r", {"onset": 8}, by_construction=True)
    assert f.shown == "by construction (not evidence)"
    assert V.Finding("x", "c", "p", "o", D, "r").shown == D
    (record,), _ = V.verdict_records([f])
    assert record["by_construction"] is True and record["verdict"] == A


def test_three_way_helpers_boundaries():
    assert V.interval_vs_band(0.9, 1.1, (0.9, 1.1)) == A
    assert V.interval_vs_band(1.1, 1.2, (0.9, 1.1)) == I
    assert V.interval_vs_band(1.2, 1.3, (0.9, 1.1)) == D
    assert V.interval_vs_band(math.nan, 1.0, (0.9, 1.1)) == I
    assert V.interval_vs_value(0.3, 0.5, 0.3) == "holds" and V.interval_vs_value(0.31, 0.5, 0.3) == "above"
    assert V.set_vs_band([], L) == I


def test_formatting_prints_bounds_and_undefined_ratios():
    assert fmt_effect(0.02, -0.05, 0.11) == "|effect| < 0.11 nats at 95% (mean +0.02, CI [-0.05, +0.11])"
    assert fmt_effect(0.02, -0.05, 0.114).startswith("|effect| < 0.12 nats")  # rounded up, never down
    assert fmt_effect(0.5, 0.3, 0.7) == "+0.5 nats [+0.3, +0.7]"
    assert fmt_effect(0.0, 0.0, 0.0).startswith("0 nats in every resample")  # exact, not "|effect| < 0"
    assert fmt_ratio(0.986, 0.95, 1.02) == "0.986 [0.95, 1.02]"
    assert fmt_ratio(math.nan, math.nan, math.nan, numerator=(0.12, 0.01, 0.2), denominator=(0.01, -0.1, 0.2)) == (
        "undefined (denominator CI spans 0): numerator +0.12 [+0.01, +0.2] nats, denominator +0.01 [-0.1, +0.2] nats"
    )
    assert fmt_layers([3, 4, 5, 9, 11, 12]) == "3–5, 9, 11–12" and fmt_layers([]) == "none"

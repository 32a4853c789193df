"""The real-model findings tables (alignment_probe/realmodels/findings/, quoted by docs/findings-smollm2.md) word
their numbers by statistics.md: a CI that includes 0 is printed as a bound, a ratio whose denominator's CI spans 0
as "undefined" with numerator and denominator in nats, peaks as sets, and a Markdown cell never splits on a "|"."""

from __future__ import annotations

import math

from alignment_probe.realmodels.findings import UNDEFINED, render_tables


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells, honouring escaped pipes."""
    parts, cur, i = [], "", 1
    body = line.strip()
    while i < len(body) - 1:
        if body[i] == "\\" and body[i + 1] == "|":
            cur, i = cur + "|", i + 2
            continue
        if body[i] == "|":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += body[i]
        i += 1
    return [*parts, cur.strip()]


def _tables_are_rectangular(text: str) -> None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ---"):
            width = len(_cells(lines[i - 1]))
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert len(_cells(lines[j])) == width, (lines[i - 1], lines[j])
                j += 1


def _run(gain_ci, *, interaction_ci=(-0.05, 0.10), peak_set=(24, 29)) -> dict:
    per_layer = [
        {"layer": 0, "mean": 0.0, "ci_low": -0.03, "ci_high": 0.04},
        {"layer": 29, "mean": 0.78, "ci_low": 0.24, "ci_high": 1.33},
    ]
    e1 = {
        "peak_layer": 29,
        "peak_layer_ci": [24, 29],
        "onset_layer": 15,
        "onset_layer_ci": [6, 18],
        "heldout": {"chosen_layer": 29, "heldout_mean": 0.80, "heldout_ci": [-0.08, 1.67]},
        "per_layer": per_layer,
    }
    if peak_set is not None:
        e1 |= {"peak_set": list(peak_set), "layers_swept": 7}
    return {
        "n_pairs": 80,
        "gain_mean": 0.78,
        "gain_ci": [0.24, 1.33],
        "base_delta_logp_mean": 12.89,
        "tuned_delta_logp_mean": 13.66,
        "gain_per_token_mean": 0.01,
        "gain_per_token_ci": [-0.002, 0.02],
        "patch_tuned_to_base": e1,
        "identity_max_abs_mean": 0.0,
        "lowrank_difference": [
            {
                "layer": 15,
                "k": 4,
                "effect_ratio": 0.13,
                "effect_ratio_ci": [-0.5, 0.39],
                "variance_explained": 0.26,
                "heldout_effect_ratio": math.nan,
                "heldout_effect_ratio_ci": [math.nan, math.nan],
                "effect_mean": 0.06,
                "full_effect_mean": 0.49,
            }
        ],
        "cross_2x2": [
            {
                "split": 15,
                "bb": 12.89,
                "tt": 13.66,
                "late_on_base": 0.33,
                "late_on_base_ci": [0.05, 0.62],
                "late_on_tuned": 0.35,
                "late_on_tuned_ci": [0.06, 0.66],
                "interaction": 0.02,
                "interaction_ci": list(interaction_ci),
            }
        ],
        "steer": {
            "layer": 29,
            "layer_rule": "fit half",
            "gain": {"mean": 0.80, "ci_low": gain_ci[0], "ci_high": gain_ci[1]},
            "by_c": [{"c": 1.0, "mean": 0.27, "ci_low": -0.58, "ci_high": 1.06}],
            "recovered_fraction": {"mean": 0.34, "ci_low": -2.59, "ci_high": 2.67},
            "baselines": {
                "random": {
                    "by_c": [{"c": 1.0, "mean": 1.17, "ci_low": 0.26, "ci_high": 2.14}],
                    "recovered_fraction": {"mean": 1.46, "ci_low": -6.42, "ci_high": 10.44},
                }
            },
        },
    }


def test_nulls_are_bounds_and_undefined_ratios_say_so():
    text = render_tables({"harmless": _run([-0.08, 1.67])})
    _tables_are_rectangular(text)
    # the interaction's CI [-0.05, +0.10] includes 0: a bound, rounded up, beside the interval
    assert "\\|I\\| < 0.10 (+0.02 [-0.05, +0.10])" in text
    # the held-out peak's CI includes 0, so does the per-token gain's
    assert "\\|effect\\| < 1.67 (+0.80 [-0.08, +1.67])" in text
    assert "\\|gain\\| < 0.02 (+0.01 [-0.00, +0.02])" in text
    # the steering gain's CI spans 0: no fraction, the effect and the gain in nats instead; the lone random draw says so
    assert (f"{UNDEFINED}: numerator +0.27 [-0.58, +1.06] nats, denominator +0.80 [-0.08, +1.67] nats") in text
    assert "| random (one draw) | +1.17 [+0.26, +2.14] | " + UNDEFINED in text
    assert "+0.34 [-2.59, +2.67]" not in text and "+1.46" not in text
    # a NaN ratio (the ratio rule's answer) is "undefined", never "+nan"; the in-sample ratio keeps its CI
    assert "nan" not in text.lower().replace("nats", "")
    assert "| 15 | 4 | +0.13 [-0.50, +0.39] | 0.260 | " + UNDEFINED + " |" in text
    # peaks as sets; the onset is labelled as holding by construction on a ramp
    assert "| {24, 29} of 7 swept | 29 [24, 29] | 15 [6, 18] |" in text and "by construction" in text
    assert "exactly 0" in text  # the identity check, an exact zero on every pair


def test_ratios_and_effects_whose_ci_excludes_zero_are_printed_as_intervals():
    text = render_tables({"harmless": _run([0.08, 1.67], interaction_ci=(0.01, 0.10), peak_set=None)})
    _tables_are_rectangular(text)
    assert "| +0.02 [+0.01, +0.10] |" in text and "\\|I\\|" not in text
    assert "| v_ℓ (mean tuning shift) | +0.27 [-0.58, +1.06] | +0.34 [-2.59, +2.67] |" in text
    assert "— (not in this summary: rerun)" in text  # an older summary without peak sets says so


def _atp_run(*, with_bands: bool) -> dict:
    """An AtP entry as collect() shapes it: one hook over two layers and one head map, bands optional."""

    def cell(mean: float, lo: float, hi: float, **where: int) -> dict:
        band = {"band_low": lo - 0.2, "band_high": hi + 0.2} if with_bands else {}
        return {**where, "mean": mean, "ci_low": lo, "ci_high": hi, "n": 80, **band}

    atp = {
        "by_hook": {"attn_out": {"per_layer": [cell(0.30, 0.09, 0.51, layer=16), cell(0.01, -0.02, 0.04, layer=0)]}},
        "by_head": {"v": [cell(0.18, 0.05, 0.32, layer=16, head=2)]},
    }
    if with_bands:
        atp["map"] = {"m": 2, "critical": 3.32}
        atp["head_map"] = {"v": {"m": 1, "critical": 3.45}}
    return {
        "atp": {
            "n_pairs": 80,
            "gain_mean": 0.78,
            "gain_ci": [0.24, 1.33],
            "base_delta_logp_mean": 12.9,
            "tuned_delta_logp_mean": 13.7,
            "atp": atp,
        }
    }


def test_atp_maps_print_their_simultaneous_bands_and_m_or_say_they_are_per_cell():
    banded = render_tables(_atp_run(with_bands=True))
    _tables_are_rectangular(banded)
    # statistics.md: a "largest" claim over a map of m cells needs simultaneous bands; the table prints them and m
    assert "16: +0.30 [+0.09, +0.51], band [-0.11, +0.71]" in banded
    assert "max-|t| bootstrap bands over m = 2 layer × hook cells (critical |t| 3.32)" in banded
    assert "L16h2 +0.18 [+0.05, +0.32], band [-0.15, +0.52]" in banded and "v: m = 1" in banded
    plain = render_tables(_atp_run(with_bands=False))
    assert "band [" not in plain and "Per-cell CIs over a map of m = 2 layer × hook cells, not simultaneous" in plain


def test_steering_rows_quote_the_chosen_scale_not_c_1():
    """Revised E11 picks (ℓ, a) on the fit half: the table's effect and an undefined fraction's numerator are the
    a row of the dose curve, so a = 2 must not print the c = 1 row."""
    by_c = [
        {"c": 1.0, "mean": 0.11, "ci_low": -0.21, "ci_high": 0.43, "n": 40},
        {"c": 2.0, "mean": 0.37, "ci_low": -0.47, "ci_high": 1.14, "n": 40},
    ]
    undefined = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "defined": False}
    steer = {
        "layer": 29,
        "scale": 2.0,
        "by_c": by_c,
        "recovered_fraction": undefined,
        "gain": {"mean": 0.80, "ci_low": -0.08, "ci_high": 1.67, "n": 40},
    }
    text = render_tables({"harmless": _run([-0.08, 1.67]) | {"steer": steer}})
    row = next(line for line in text.splitlines() if line.startswith("| v_ℓ (mean tuning shift)"))
    effect, fraction = _cells(row)[1:]
    assert "+0.37 [-0.47, +1.14]" in effect and "0.11" not in effect
    assert fraction.startswith(UNDEFINED) and "+0.37 [-0.47, +1.14]" in fraction
    assert "held-out half, c = 2;" in text

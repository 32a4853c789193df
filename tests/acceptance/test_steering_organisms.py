"""E11 on the bundled model organisms: steering with the tuning shift at the layer the run localized.

Measured (80 pairs, seed 0, fit/held-out halves of 40, n_boot 1000; E1's fit-half peak is layer 7,
the last block): adding v_ℓ at norm s recovers 0.068 [−0.012, 0.173] of the held-out gain at c = 1,
no more than a random direction at the same norm (0.072 [−0.025, 0.205]) or the rank-4 and v±
directions (0.080, 0.073). Subtracting v_ℓ from the tuned model does cost it gain, 0.134
[0.020, 0.209], where subtracting the random direction costs nothing (−0.018 [−0.113, 0.056]).
So on these organisms the direction is *necessary* for part of the gain (reverse) but adding it
is not *sufficient* to recover it (forward). The tests check what holds; the forward claim is an
xfail(strict) test, so a change that makes it hold is noticed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

import alignment_probe as ap
from alignment_probe.experiments import steering
from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    base, tuned = bundled_pair_paths()
    out = tmp_path_factory.mktemp("steer-organisms") / "run"
    run = ap.run_suite(out, base=base, tuned=tuned, data=bundled_pairs_path(), experiments=("patch_tuned_to_base", "steer"),
                 n_pairs=80, progress=False, steer_cs=(0.5, 1.0, 2.0), n_boot=1000)
    summary = run.summary["experiments"]
    assert summary["steer"]["layer"] == summary["patch_tuned_to_base"]["heldout"]["chosen_layer"]
    return summary["steer"]


def test_the_held_out_halves_and_gain(entry):
    assert entry["fit"]["fit_pairs"] == entry["fit"]["heldout_pairs"] == 40
    assert entry["gain"]["ci_low"] > 0


def test_subtracting_v_from_the_tuned_model_loses_gain_and_a_random_direction_does_not(entry):
    lost, random = entry["reverse"]["lost_fraction"], entry["reverse"]["random"]["lost_fraction"]
    assert lost["ci_low"] > 0
    assert lost["mean"] > random["ci_high"]
    assert all(r["mean"] < 0 for r in entry["reverse"]["by_c"])  # every dose lowers the tuned model's Δlogp


def test_small_doses_of_v_move_the_base_towards_the_tuned_model(entry):
    small = [r for r in entry["by_c"] if r["c"] <= 1.0]
    assert small and all(r["mean"] > 0 for r in small)


@pytest.mark.xfail(strict=True, reason="measured on the organisms: v_ℓ at layer 7 recovers 0.068 [-0.012, 0.173] of "
                                       "the gain, a random direction 0.072 [-0.025, 0.205]")
def test_v_recovers_the_gain_above_a_random_direction(entry):
    rec, random = entry["recovered_fraction"], entry["baselines"]["random"]["recovered_fraction"]
    assert rec["ci_low"] > 0 and rec["ci_low"] > random["ci_high"]


def test_the_verdict_row_follows_its_rule(entry):
    found = steering.verdict({"experiments": {"steer": entry}})
    rec, random = entry["recovered_fraction"], entry["baselines"]["random"]["recovered_fraction"]
    holds = rec["ci_low"] > 0 and rec["ci_low"] > random["ci_high"]
    assert found.verdict == ("agrees" if holds else "differs")

"""E11 on the bundled model organisms: steering with the tuning shift at a layer chosen on the fit half.

The run: 80 pairs, seed 0, fit/held-out halves of 40, c ∈ {0.5, 1, 2, 4}, n_boot 1000; transfer pairs: 80 of
the bundled pairs the run did not sample. Numbers below are those of this configuration (docs/method.md, E11,
has the whole landscape and the diagnostics).

**Layer rule.** E1's fit-half peak (tuned → base ``resid_post`` at every position) is the last layer, 7, by
construction, so it cannot choose a steering layer. The steering scan adds v_ℓ (c = 1) at every layer to the
*fit* half and picks the layer with the largest mean effect: layer 6 (fit half 0.073 of the gain; the other
layers 0.02–0.06). Everything below is on the held-out half at layer 6.

**v_ℓ (the mean shift over completion positions, added at every position) does not steer:** it recovers
0.088 [−0.004, 0.216] of the held-out gain at c = 1, a random direction at the same norm 0.070
[0.002, 0.167]. At no layer is v_ℓ's held-out CI above 0 (means 0.02–0.09), and per-token Δlogp does not
change that. (With 160 pairs v_ℓ's paired excess over the random direction is 0.036 [0.003, 0.079]: a small real
signal that the two-CI rule cannot separate.) What a random direction "recovers" is a temperature effect: any
perturbation flattens the base's next-token distributions, which helps the chosen completions (lower per-token
log-prob under the base, and 2.5× longer); scaling the base's logits by 1/1.05 alone moves Δlogp by +0.53 nats
(7% of the gain). Even the per-sequence mean shift (an oracle that reads the tuned model on each sequence)
recovers only 1–4%, while replacing the activation outright recovers 20–85%: the part of the shift a
constant vector could carry is not in the completion positions.

**The last-prompt variant does steer**: the mean shift at the last prompt position, added there only, recovers
0.155 [0.101, 0.238] at c = 1 (0.42 at c = 2), a random direction there 0.005 [−0.015, 0.030].
Subtracting v_ℓ from the tuned model costs it gain, 0.127 [0.063, 0.190], where the random direction costs
little. The defined v_ℓ's forward claim is an xfail(strict) test, so a change that makes it hold is noticed.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

import alignment_probe as ap
from alignment_probe.experiments import steering
from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path

N_PAIRS = 80


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base, tuned = bundled_pair_paths()
    root = tmp_path_factory.mktemp("steer-organisms")
    # transfer pairs: the bundled pairs the run does not sample (the same corpus, pairs never fitted on)
    from transformers import AutoTokenizer

    used = {t.pair_id for t in ap.load_pairs(bundled_pairs_path(), n=N_PAIRS, seed=0,
                                             tokenizer=AutoTokenizer.from_pretrained(base))}
    lines = bundled_pairs_path().read_text().splitlines(keepends=True)
    other = root / "other-pairs.jsonl"
    other.write_text("".join(line for i, line in enumerate(lines) if i not in used))
    out = ap.run_suite(root / "run", base=base, tuned=tuned, data=bundled_pairs_path(),
                       experiments=("patch_tuned_to_base", "steer"), n_pairs=N_PAIRS, progress=False,
                       steer_cs=(0.5, 1.0, 2.0, 4.0), n_boot=1000, transfer_data=str(other))
    assert sorted(out.scores.pair_id) == sorted(used)
    return out


@pytest.fixture(scope="module")
def entry(run):
    return run.summary["experiments"]["steer"]


def test_the_held_out_halves_and_gain(entry):
    assert entry["fit"]["fit_pairs"] == entry["fit"]["heldout_pairs"] == N_PAIRS // 2
    assert entry["gain"]["ci_low"] > 0


def test_the_layer_is_chosen_on_the_fit_half_not_by_e1s_last_layer_peak(run, entry):
    """E1's resid_post peak is the last layer (the tuned model's output), so the scan chooses the layer: the
    argmax of v_ℓ's mean effect on the fit half, from the fit half's rows only."""
    n_layers = run.summary["n_layers"]
    choice = entry["layer_choice"]
    assert choice["e1_layer"] == n_layers - 1
    assert entry["layer_rule"] == steering.RULE_SCAN
    scan = run.effects[run.effects.experiment == "steer_scan"]
    assert set(scan.split) == {"fit"} and scan.pair_id.nunique() == N_PAIRS // 2
    assert entry["layer"] == int(scan.groupby("layer").effect.mean().idxmax()) == choice["chosen_layer"]


def test_subtracting_v_from_the_tuned_model_loses_gain_and_a_random_direction_does_not(entry):
    lost, random = entry["reverse"]["lost_fraction"], entry["reverse"]["random"]["lost_fraction"]
    assert lost["ci_low"] > 0
    assert lost["mean"] > random["ci_high"]
    assert all(r["mean"] < 0 for r in entry["reverse"]["by_c"])  # every dose lowers the tuned model's Δlogp


def test_small_doses_of_v_move_the_base_towards_the_tuned_model_and_large_ones_break_it(entry):
    small = [r for r in entry["by_c"] if r["c"] <= 1.0]
    assert small and all(r["mean"] > 0 for r in small)
    large = [r for r in entry["by_c"] if r["c"] >= 4.0]
    assert large and all(r["mean"] < 0 for r in large)  # c = 4 pushes the base off its distribution


@pytest.mark.xfail(strict=True, reason="measured on the organisms: v_ℓ at the scan's layer 6 recovers 0.088 "
                                       "[-0.004, 0.216] of the held-out gain, a random direction 0.070 [0.002, 0.167]; "
                                       "no layer does better on the held-out half (docs/method.md, E11)")
def test_v_recovers_the_gain_above_a_random_direction(entry):
    rec, random = entry["recovered_fraction"], entry["baselines"]["random"]["recovered_fraction"]
    assert rec["ci_low"] > 0 and rec["ci_low"] > random["ci_high"]


def test_the_shift_at_the_last_prompt_position_recovers_the_gain_above_a_random_direction(entry):
    last = entry["variants"]["last_prompt"]
    rec, random = last["recovered_fraction"], last["random"]["recovered_fraction"]
    assert rec["ci_low"] > 0 and rec["ci_low"] > random["ci_high"]
    # and more of it with a larger dose (c = 2), still above the random direction's
    by_c = {r["c"]: r for r in last["by_c"]}
    by_c_random = {r["c"]: r for r in last["random"]["by_c"]}
    assert by_c[2.0]["mean"] > by_c[1.0]["mean"] and by_c[2.0]["ci_low"] > by_c_random[2.0]["ci_high"]


def test_the_verdict_rows_follow_their_rules(entry):
    summary = {"experiments": {"steer": entry}}
    for find, data, random in ((steering.verdict, entry, entry["baselines"]["random"]),
                               (steering.verdict_last_prompt, entry["variants"]["last_prompt"],
                                entry["variants"]["last_prompt"]["random"])):
        rec, rnd = data["recovered_fraction"], random["recovered_fraction"]
        holds = rec["ci_low"] > 0 and rec["ci_low"] > rnd["ci_high"]
        assert find(summary).verdict == ("agrees" if holds else "differs")


def test_transfer_to_pairs_the_run_never_saw(run, entry):
    transfer = entry["transfer"]
    assert transfer["n_pairs"] == len(run.manifest["transfer_data"]["pair_ids"]) == N_PAIRS
    assert transfer["gain"]["ci_low"] > 0
    for curve in (transfer, transfer["random"], transfer["variants"]["last_prompt"],
                  transfer["variants"]["last_prompt"]["random"]):
        assert [r["c"] for r in curve["by_c"]] == [0.5, 1.0, 2.0, 4.0]
        assert all(r["n"] == N_PAIRS and np.isfinite(r["mean"]) for r in curve["by_c"])
        assert all(np.isfinite(v) for v in curve["recovered_fraction"].values())
    assert np.isfinite(transfer["reverse"]["lost_fraction"]["mean"])
    json.dumps(transfer)  # JSON-able as written to summary.json


def test_transfer_to_real_hh_rlhf_helpful_base_end_to_end(tmp_path):
    """``--transfer-data`` with another data source end to end (the CLI, on the organisms): vectors fitted on the
    bundled pairs steer HH-RLHF helpful-base pairs; ``transfer`` is in the summary and the report."""
    from conftest import HH_HELPFUL, require_hh

    from alignment_probe.cli import main

    helpful = require_hh(HH_HELPFUL)
    out = tmp_path / "run"
    assert main(["run", "--data", str(bundled_pairs_path()), "--n-pairs", "16", "--n-boot", "200",
                 "--experiments", "patch_tuned_to_base,steer", "--steer-c", "1,2", "--transfer-data", str(helpful),
                 "--out", str(out)]) == 0
    run = ap.load_run(out)
    transfer = run.summary["experiments"]["steer"]["transfer"]
    assert run.manifest["transfer_data"]["source"] == str(helpful)
    assert transfer["n_pairs"] == len(run.manifest["transfer_data"]["pair_ids"]) == 16
    assert [r["c"] for r in transfer["by_c"]] == [1.0, 2.0] and all(r["n"] == 16 for r in transfer["by_c"])
    assert set(transfer["recovered_fraction"]) == {"mean", "ci_low", "ci_high"}
    assert all(np.isfinite(transfer[k]["mean"]) for k in ("gain",)) and np.isfinite(transfer["by_c"][0]["mean"])
    assert "Steering with the localized direction (E11)" in (out / "report.html").read_text()

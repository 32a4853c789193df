"""statistics.md's held-out selection through the suite on tiny twins: low rank is fitted at E1's peak chosen on
the explore pairs (not its all-pairs peak), its headline ratio is the confirm pairs', and every experiment of the
run records the same explore and confirm pairs, with its peak set."""

from __future__ import annotations

import json

from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe import stats
from alignment_probe.engine import FastEngine
from alignment_probe.experiments.suite import SuiteConfig, run_suite


def test_suite_hands_the_explore_peak_downstream_and_records_the_roles(tiny_pair):
    pairs = ap.load_pairs(BUNDLED_PAIRS, n=6, seed=3, tokenizer=tiny_pair.tokenizer, max_length=64)
    cfg = SuiteConfig(
        experiments=("patch_tuned_to_base", "lowrank_difference", "window_transplant"),
        n_boot=50,
        lowrank_ks=(1, 4),
        extra_hooks=("mlp_out",),
    )
    result = run_suite(tiny_pair, pairs, FastEngine(), cfg, pairs_per_part=3)
    s = result.summary["experiments"]
    ids = sorted(t.pair_id for t in pairs)
    explore, confirm = stats.explore_confirm(ids, seed=cfg.seed)
    e1 = s["patch_tuned_to_base"]
    # low rank ran at the layer E1 chose on the explore pairs, whatever its all-pairs peak
    assert result.fits["lowrank"]["layers"] == [e1["selection"]["chosen"]]
    lr = s["lowrank_difference"]
    assert lr["selection"]["chosen"]["layer"] == e1["selection"]["chosen"]
    heldout_rows = result.effects[
        (result.effects.experiment == "lowrank_difference") & (result.effects.split == "heldout")
    ]
    assert set(heldout_rows.pair_id) == set(confirm) and lr["selection"]["confirm"]["n"] == len(confirm)
    for entry in (e1, lr, s["window_transplant"]):
        sel = entry["selection"]
        assert sel["explore_pair_ids"] == explore and sel["confirm_pair_ids"] == confirm
        assert entry["peak_set"] and set(entry["peak_set"]) <= set(range(tiny_pair.n_layers))
    assert e1["map"]["m"] == tiny_pair.n_layers and e1["by_hook_map"]["m"] == 2 * tiny_pair.n_layers
    assert e1["per_token"]["per_layer"] and e1["basis"] == "sum" and result.summary["gain_basis"] == "sum"
    json.dumps(result.summary)

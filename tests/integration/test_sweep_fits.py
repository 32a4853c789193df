"""``ap.sweep`` runs experiments with a fit on all pairs (low rank, E6) or upstream needs: their stages run in
memory, as in a suite run, and the table holds the rows of the names asked for. Checked against the suite itself
(the same rows, bit for bit) and across the two engines (which share no forward code)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe.effects import KEY_COLUMNS
from alignment_probe.engine import FastEngine
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite import SuiteConfig, run_suite

OPTIONS = {"lowrank_layers": (1,), "lowrank_ks": (1, 4)}


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return ap.load_pairs(BUNDLED_PAIRS, n=4, seed=3, tokenizer=tiny_pair.tokenizer, max_length=96)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def test_a_fitted_experiment_sweeps_to_the_suites_rows(tiny_pair, pairs):
    eff = ap.sweep(tiny_pair, pairs, experiments=["lowrank_difference"], progress=False, **OPTIONS)
    # the name asked for and the extra name its experiment emits (the full patch the ratios divide by)
    assert set(eff.experiment) == {"lowrank_difference", "lowrank_full"}
    assert {1.0, 4.0} <= set(eff.param[eff.experiment == "lowrank_difference"])  # (and d_model, the full rank)
    assert set(eff.layer) == {1} and len(eff) == len(eff.drop_duplicates(KEY_COLUMNS))
    cfg = SuiteConfig(experiments=("lowrank_difference",), extra_hooks=(), **OPTIONS)
    suite = run_suite(tiny_pair, pairs, FastEngine(), cfg, pairs_per_part=None).effects
    suite = suite[suite.experiment.isin(["lowrank_difference", "lowrank_full"])]
    pd.testing.assert_frame_equal(_sorted(eff), _sorted(suite))


def test_the_engines_agree_on_a_fitted_sweep(tiny_pair, pairs):
    fast = ap.sweep(tiny_pair, pairs, experiments=["lowrank_difference"], progress=False, **OPTIONS)
    ref = ap.sweep(tiny_pair, pairs, experiments=["lowrank_difference"], engine="reference", progress=False, **OPTIONS)
    np.testing.assert_allclose(_sorted(fast).effect, _sorted(ref).effect, atol=1e-4)


def test_a_whole_data_computation_is_still_refused_naming_the_alternative(tiny_pair, pairs):
    with pytest.raises(ConfigError, match="alignment-probe run --experiments"):
        ap.sweep(tiny_pair, pairs, experiments=["lasso"], progress=False)

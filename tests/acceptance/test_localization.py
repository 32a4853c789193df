"""Known-answer validation: the suite must localise the planted twins, whose DPO tuning was confined
to one layer's MLP, to that layer — and the organisms' tuned twin must show a real gain."""

from __future__ import annotations

import pytest

from alignment_probe import stats
from alignment_probe.data import load_pairs
from alignment_probe.engine import FastEngine
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.organisms import PLANTED_LAYERS, bundled_pair_paths, bundled_pairs_path, planted_twin_path
from alignment_probe.pair import load_twins
from alignment_probe.scoring import score_pairs
from alignment_probe.tokens import sample_and_tokenize

N_PAIRS = 24


@pytest.fixture(scope="module")
def heldout():
    pairs, _ = load_pairs(bundled_pairs_path())
    return pairs


@pytest.mark.parametrize("planted", PLANTED_LAYERS)
def test_suite_localises_the_planted_layer(planted, heldout):
    base, _ = bundled_pair_paths()
    pair = load_twins(base, planted_twin_path(planted))
    tokenized = sample_and_tokenize(heldout, pair.tokenizer, n_pairs=N_PAIRS, seed=0, max_length=256)
    specs = layer_sweep(
        "patch_tuned_to_base",
        target="base",
        source="tuned",
        layers=range(pair.n_layers),
        hooks=("mlp_out", "resid_post"),
    )
    effects = FastEngine().run(pair, tokenized, specs)
    gain = score_pairs(pair, tokenized).gain.mean()
    assert gain > 0

    mlp = effects[effects.hook == "mlp_out"].groupby("layer").effect.mean()
    # The planted MLP's output carries the whole gain (the rest of the twin is the base) ...
    assert mlp[planted] == pytest.approx(gain, rel=1e-3)
    # ... MLPs before it carry nothing, and no other MLP carries as much as half of it.
    assert (mlp[mlp.index < planted] == 0).all()
    assert mlp.drop(planted).abs().max() < 0.5 * mlp[planted]

    resid = effects[effects.hook == "resid_post"]
    summary = stats.summarize_experiment(resid, seed=0, n_boot=500)
    assert summary["onset_layer"] == planted
    assert summary["onset_layer_ci"] == [planted, planted]


def test_bundled_tuned_twin_has_a_positive_gain(heldout):
    pair = load_twins(*bundled_pair_paths())
    tokenized = sample_and_tokenize(heldout, pair.tokenizer, n_pairs=N_PAIRS, seed=1, max_length=256)
    gain = score_pairs(pair, tokenized).gain.to_numpy()
    mean, lo, hi = stats.bootstrap_mean_ci(gain, seed=0)
    assert lo > 0

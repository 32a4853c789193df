"""E2: activation-distance features, LASSO attribution and univariate probes against known answers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.lasso import (
    activation_distance_features,
    fit_lasso,
    lasso_table,
    run_lasso,
    univariate_probes,
)
from alignment_probe.tokens import sample_and_tokenize


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny models are far too small to gain from intra-op threads, and on a busy 2-core machine
    torch's thread pool makes every forward pass 30x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(seed: int, n: int = 120, n_layers: int = 8, noise: float = 1.0, informative: int = 5):
    """Features on very different scales and offsets; the target depends on one column only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_layers)) * rng.uniform(0.5, 3.0, size=n_layers) + rng.uniform(0, 10, size=n_layers)
    y = 2.0 * x[:, informative] + 7.0 + noise * rng.normal(size=n)
    return x, y


# ---------------------------------------------------------------- LASSO on synthetic data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lasso_selects_only_the_informative_layer(seed):
    """Target = 2·x5 (+ tiny noise): LASSO keeps layer 5 alone, in every bootstrap resample."""
    x, y = synthetic(seed, n=80, noise=0.01)
    out = fit_lasso(x, y, seed=seed, n_boot=100)
    assert out["nonzero_layers"] == [5]
    assert out["selection_frequency"][5] == 1.0
    assert max(np.delete(out["selection_frequency"], 5)) <= 0.05
    # z-scored units: the coefficient is the target change per SD of x5, i.e. 2·sd(x5), barely shrunk
    assert out["coefficients"][5] == pytest.approx(2.0 * x[:, 5].std(), rel=0.02)
    assert out["n_pairs"] == 80
    assert 1e-4 <= out["alpha_"] <= 10
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lasso_with_noisy_target(seed):
    """A noisy target: with the minimum-CV-error α, layer 5 dominates and is always selected, but
    irrelevant layers may get small non-zero coefficients; the one-standard-error rule's larger α
    keeps layer 5 alone."""
    x, y = synthetic(seed, n=200, noise=2.0)
    out = fit_lasso(x, y, seed=seed, n_boot=100)
    coef = np.abs(out["coefficients"])
    assert int(np.argmax(coef)) == 5
    assert coef[5] > 4 * np.delete(coef, 5).max()
    assert out["selection_frequency"][5] == 1.0
    sparse = fit_lasso(x, y, seed=seed, n_boot=100, alpha_rule="1se")
    assert sparse["alpha_"] >= out["alpha_"]
    assert sparse["nonzero_layers"] == [5]
    assert sparse["selection_frequency"][5] == 1.0
    assert max(np.delete(sparse["selection_frequency"], 5)) <= 0.2


def test_lasso_deterministic_and_guards_constant_column():
    x, y = synthetic(3, n=60, noise=0.5)
    x[:, 2] = 4.0  # e.g. a layer where base and tuned agree exactly
    a = fit_lasso(x, y, seed=0, n_boot=50)
    assert a == fit_lasso(x, y, seed=0, n_boot=50)
    assert a["coefficients"][2] == 0.0 and a["selection_frequency"][2] == 0.0
    assert np.isfinite(a["coefficients"]).all()
    with pytest.raises(ValueError):
        fit_lasso(x[:3], y[:3])
    with pytest.raises(ValueError):
        fit_lasso(x, y[:-1])
    with pytest.raises(ConfigError):
        fit_lasso(x, y, alpha_rule="max")


def test_probes_peak_at_informative_layer():
    x, y = synthetic(4, n=150, noise=1.0)
    r2 = univariate_probes(x, y, seed=0)
    assert len(r2) == 8
    assert int(np.argmax(r2)) == 5
    assert r2[5] > 0.7
    assert max(np.delete(r2, 5)) < 0.1
    assert univariate_probes(x, y, seed=0) == r2


# ---------------------------------------------------------------- features on the tiny model pair


@pytest.fixture(scope="module")
def tokenized(hh_pairs, tiny_pair):
    pairs, _ = hh_pairs
    return sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=12, seed=11, max_length=96)


def direct_norms(pair, t, side: str, position: int, hook: str = "resid_post") -> np.ndarray:
    """The definition, one unpadded sequence at a time with the full forward pass."""
    ids = torch.tensor([list(t.prompt_ids) + list(t.completion_ids(side))])
    out = []
    with torch.no_grad():
        _, cb = pair.base.run_with_cache(ids)
        _, ct = pair.tuned.run_with_cache(ids)
    for layer in range(pair.n_layers):
        name = f"blocks.{layer}.hook_{hook}"
        out.append((ct[name][0, position] - cb[name][0, position]).double().norm().item())
    return np.array(out)


def test_features_shape_and_sign(tiny_pair, tokenized):
    x = activation_distance_features(tiny_pair, tokenized, batch_size=5)
    assert x.shape == (12, 4)
    assert np.isfinite(x).all()
    assert (x > 0).all()  # tuned = base + noise: every layer moved


def test_features_zero_for_a_model_compared_with_itself(tiny_pair, tokenized):
    same = dataclasses.replace(tiny_pair, tuned=tiny_pair.base)
    for position in ("last_prompt", "final_tokens"):
        x = activation_distance_features(same, tokenized, position=position, batch_size=4)
        assert x.shape == (12, 4)
        assert (x == 0).all()


@pytest.mark.parametrize("hook", ["resid_post", "mlp_out"])
def test_features_equal_direct_computation(tiny_pair, tokenized, hook):
    x = activation_distance_features(tiny_pair, tokenized, hook=hook, batch_size=5)
    xf = activation_distance_features(tiny_pair, tokenized, hook=hook, position="final_tokens", batch_size=5)
    for i in (0, 7):
        t = tokenized[i]
        ref = direct_norms(tiny_pair, t, "chosen", len(t.prompt_ids) - 1, hook)
        np.testing.assert_allclose(x[i], ref, rtol=1e-4, atol=1e-5)
        # the last prompt token is shared by both runs: the rejected sequence gives the same value
        np.testing.assert_allclose(
            ref, direct_norms(tiny_pair, t, "rejected", len(t.prompt_ids) - 1, hook), rtol=1e-4, atol=1e-5
        )
        ref_final = 0.5 * (
            direct_norms(tiny_pair, t, "chosen", len(t.prompt_ids) + len(t.chosen_ids) - 1, hook)
            + direct_norms(tiny_pair, t, "rejected", len(t.prompt_ids) + len(t.rejected_ids) - 1, hook)
        )
        np.testing.assert_allclose(xf[i], ref_final, rtol=1e-4, atol=1e-5)


def test_features_independent_of_batching(tiny_pair, tokenized):
    a = activation_distance_features(tiny_pair, tokenized, position="final_tokens", batch_size=1)
    b = activation_distance_features(tiny_pair, tokenized, position="final_tokens", batch_size=12)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_features_reject_bad_options(tiny_pair, tokenized):
    with pytest.raises(ConfigError):
        activation_distance_features(tiny_pair, tokenized, hook="resid")
    with pytest.raises(ConfigError):
        activation_distance_features(tiny_pair, tokenized, position="all")


# ---------------------------------------------------------------- end to end


def test_run_lasso_recovers_planted_layer(tiny_pair, tokenized):
    """A target built from layer 2's feature (given as a Series keyed by pair id, shuffled) is
    attributed to layer 2 alone, and layer 2's probe explains it perfectly."""
    x = activation_distance_features(tiny_pair, tokenized)
    ids = [t.pair_id for t in tokenized]
    target = pd.Series(3.0 * x[:, 2] - 1.0, index=ids).sample(frac=1.0, random_state=0)
    out = run_lasso(tiny_pair, tokenized, target=target, seed=0, n_boot=50, target_name="planted")
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["nonzero_layers"] == [2]
    assert out["selection_frequency"][2] == 1.0
    assert int(np.argmax(out["probe_r2"])) == 2 and out["probe_r2"][2] > 0.999
    assert out["feature_hook"] == "resid_post" and out["feature_position"] == "last_prompt"
    assert out["target_name"] == "planted" and out["pair_ids"] == ids and out["n_pairs"] == 12

    table = lasso_table(out)
    assert list(table.columns) == ["layer", "coefficient", "selection_frequency", "probe_r2"]
    assert table["layer"].tolist() == [0, 1, 2, 3]
    assert table.loc[2, "coefficient"] == out["coefficients"][2]


def test_run_lasso_with_gain_target(tiny_pair, tokenized):
    from alignment_probe.scoring import score_pairs

    gain = score_pairs(tiny_pair, tokenized, batch_size=6)["gain"].to_numpy()
    out = run_lasso(tiny_pair, tokenized, target=gain, seed=1, n_boot=20, position="final_tokens")
    assert len(out["coefficients"]) == len(out["selection_frequency"]) == len(out["probe_r2"]) == 4
    assert all(0.0 <= f <= 1.0 for f in out["selection_frequency"])
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError):
        run_lasso(tiny_pair, tokenized, target=gain[:-1])

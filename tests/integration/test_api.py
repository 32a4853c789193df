"""The notebook API (``import alignment_probe as ap``) against independent computations."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe.errors import ConfigError


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return ap.load_pairs(BUNDLED_PAIRS, n=4, seed=0, tokenizer=tiny_pair.tokenizer, max_length=96)


def test_top_level_names():
    import alignment_probe.run  # noqa: F401  (a submodule import must not shadow an API name)

    for name in (
        "load_twins",
        "load_pairs",
        "score",
        "sweep",
        "curves",
        "plot",
        "list_experiments",
        "load_run",
        "run_suite",
    ):
        assert callable(getattr(ap, name)), name
    with pytest.raises(AttributeError):
        ap.no_such_name  # noqa: B018


def test_load_pairs_samples_and_reports(pairs):
    assert len(pairs) == 4 and pairs.report.n_read == 256
    assert len({p.pair_id for p in pairs}) == 4


def test_sweep_curves_and_identities(tiny_pair, pairs):
    n = tiny_pair.n_layers
    eff = ap.sweep(
        tiny_pair,
        pairs,
        experiments=["patch_tuned_to_base", "identity"],
        hooks=["resid_post", "mlp_out"],
        progress=False,
    )
    assert len(eff) == 2 * 2 * n * len(pairs)
    assert (eff[eff.experiment == "identity"].effect == 0).all()
    # One row against a hand patch through full forwards (ap.completion_logprob with a TransformerLens hook).
    pair, name = pairs[1], "blocks.1.hook_mlp_out"
    hand = {}
    for side in ("chosen", "rejected"):
        _, cache = tiny_pair.tuned.run_with_cache(ap.sequence_tokens(pair, side), names_filter=[name])
        hand[side] = ap.completion_logprob(
            tiny_pair.base, pair, side, fwd_hooks=[(name, lambda a, hook: cache[name])]
        ) - ap.completion_logprob(tiny_pair.base, pair, side)
    row = eff.query(
        "experiment == 'patch_tuned_to_base' and hook == 'mlp_out' and layer == 1 and pair_id == @pair.pair_id"
    )
    assert row.effect.item() == pytest.approx(hand["chosen"] - hand["rejected"], abs=1e-4)
    curves = ap.curves(eff)
    assert list(curves.columns[:9]) == [
        "experiment",
        "hook",
        "scope",
        "param",
        "layer",
        "mean",
        "ci_low",
        "ci_high",
        "n",
    ]
    assert len(curves) == 2 * 2 * n and (curves.n == len(pairs)).all()
    means = eff.groupby(["experiment", "hook", "layer"]).effect.mean()
    for row in curves.itertuples():
        assert row.mean == pytest.approx(means[(row.experiment, row.hook, row.layer)], abs=1e-12)
        assert row.ci_low <= row.mean + 1e-12 and row.mean <= row.ci_high + 1e-12
    fig = ap.plot(eff)
    names = [t.name for t in fig.data if not t.name.endswith("(95% CI)")]
    assert len(names) == 4 and len(set(names)) == 4


def test_sweep_engines_agree(tiny_pair, pairs):
    kw = dict(
        experiments=["patch_tuned_to_base", "alpha"], hooks=["attn_out"], layers=[1, 2], progress=False, alphas=(0.5,)
    )
    fast = ap.sweep(tiny_pair, pairs, engine="fast", **kw)
    ref = ap.sweep(tiny_pair, pairs, engine="reference", **kw)
    assert sorted(fast.layer.unique()) == [1, 2]
    np.testing.assert_allclose(fast.effect, ref.effect, atol=1e-4)


def test_sweep_refuses_what_is_not_per_layer(tiny_pair, pairs):
    with pytest.raises(ConfigError, match="per-layer"):
        ap.sweep(tiny_pair, pairs, experiments=["lasso"])
    with pytest.raises(ConfigError, match="hook"):
        ap.sweep(tiny_pair, pairs, hooks=["resid_mdi"])


def test_completion_logprob_and_a_hand_patch(tiny_pair, pairs):
    scores = ap.score(tiny_pair, pairs).set_index("pair_id")
    pair = pairs[0]
    base = ap.completion_logprob(tiny_pair.base, pair, "chosen")
    assert base == pytest.approx(scores.loc[pair.pair_id, "base_logp_chosen"], abs=1e-4)
    assert ap.completion_logprob(tiny_pair.tuned, pair, "rejected") == pytest.approx(
        scores.loc[pair.pair_id, "tuned_logp_rejected"], abs=1e-4
    )
    # A hand patch of the base's own activation changes nothing (the identity control, by hand).
    name = "blocks.1.hook_resid_mid"
    _, cache = tiny_pair.base.run_with_cache(ap.sequence_tokens(pair, "chosen"), names_filter=[name])
    same = ap.completion_logprob(tiny_pair.base, pair, "chosen", fwd_hooks=[(name, lambda act, hook: cache[name])])
    assert same == base


def test_list_experiments_is_the_registry():
    table = ap.list_experiments()
    from alignment_probe.experiments.registry import EXPERIMENT_NAMES

    assert tuple(table[table.default].name) == EXPERIMENT_NAMES and table.name.is_unique
    assert "steer" in set(table[~table.default].name)  # opt-in experiments are listed too
    assert all(re.fullmatch(r"E\d+", m) for m in table.method)
    assert table.set_index("name").loc["patch_base_to_tuned", "method"] == "E3"
    assert table.set_index("name").loc["lasso", "method"] == "E2"

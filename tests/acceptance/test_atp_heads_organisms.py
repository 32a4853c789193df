"""E10 attribution patching per head on the planted head twins (one query head; one KV head's values), against
their known answers and against exact head patching of the same conditions (measured values: docs/method.md, E10).

* head twin (only query head 1 of layer 4 tuned): every head estimate below layer 4 is exactly 0, and so are the
  other query heads of layer 4 and layer 4's keys and values (their inputs are the base's); the planted head is
  the one non-zero head of its layer, with the sign of the gain; AtP's per-head map ranks like exact head_patch.
* KV twin (only KV head 0's values of layer 3): the same for its value head; keys are exactly 0 up to layer 3;
  at layer 3 the value-head estimate is exactly the sum of its two query heads' (same pattern in both models);
  and on the key heads above it AtP* (the QK fix) is closer to exact patching than plain AtP.
"""

from __future__ import annotations

import pandas as pd
import pytest

from alignment_probe import organisms
from alignment_probe.data import load_pairs
from alignment_probe.engine import FastEngine
from alignment_probe.engine.attribution import AttributionEngine
from alignment_probe.experiments.atp import atp_head_specs, validation
from alignment_probe.pair import load_twins
from alignment_probe.tokens import sample_and_tokenize

N_PAIRS = 16


def _maps(twin_path) -> tuple[pd.Series, pd.Series]:
    """(AtP means by hook, estimator, layer, head; exact means by hook, layer, head), every layer, 16 pairs."""
    base, _ = organisms.bundled_pair_paths()
    pair = load_twins(base, twin_path)
    pairs, _ = load_pairs(organisms.bundled_pairs_path())
    tok = sample_and_tokenize(pairs, pair.tokenizer, n_pairs=N_PAIRS, seed=0, max_length=256)
    cfg = pair.base.cfg
    specs = atp_head_specs(range(pair.n_layers), cfg.n_heads, cfg.n_key_value_heads)
    est = AttributionEngine().run(pair, tok, specs)
    exact = FastEngine().run(pair, tok, [s for s in specs if s.key.estimator == "exact"])
    return (
        est.groupby(["hook", "estimator", "layer", "param"]).effect.mean(),
        exact.groupby(["hook", "layer", "param"]).effect.mean(),
    )


@pytest.fixture(scope="module")
def head_twin():
    return _maps(organisms.head_twin_path())


@pytest.fixture(scope="module")
def kv_twin():
    return _maps(organisms.kv_twin_path())


def _layer(series: pd.Series, layer: int) -> pd.Series:
    return series[series.index.get_level_values("layer") == layer].droplevel("layer")


def test_head_twin_known_answer(head_twin):
    atp, exact = head_twin
    layer, head = organisms.head_twin_site()
    below = atp[atp.index.get_level_values("layer") < layer]
    assert len(below) and (below == 0.0).all()  # a′ − a = 0 exactly below the planted layer
    z = _layer(atp.loc[("z", "atp")], layer)
    assert z.abs().idxmax() == head and (z.drop(head) == 0.0).all()  # the planted head, and only it
    assert z[head] > 0 and exact.loc[("z", layer, head)] > 0  # with the sign of the gain
    for hook, estimator in (("v", "atp"), ("k", "atp*"), ("k", "atp")):  # queries were tuned, not keys or values
        assert (_layer(atp.loc[(hook, estimator)], layer) == 0.0).all()


def test_head_twin_atp_ranks_heads_like_exact_head_patching(head_twin):
    atp, exact = head_twin
    layer, _ = organisms.head_twin_site()
    est, ex = atp.loc[("z", "atp")], exact.loc["z"]
    v = validation(ex.to_numpy(), est.reindex(ex.index).to_numpy())
    above = ex.index.get_level_values("layer") >= layer  # without the cells both give exactly 0
    v_above = validation(ex[above].to_numpy(), est.reindex(ex.index)[above].to_numpy())
    print("head twin, z: all heads", v, "\nlayers ≥ planted", v_above)
    assert v["spearman"] >= 0.8 and v_above["spearman"] >= 0.8
    assert v["topk_recall"]["3"] == 1.0  # the planted head and the two largest downstream heads


def test_kv_twin_known_answer(kv_twin):
    atp, exact = kv_twin
    layer, group = organisms.kv_twin_site()
    below = atp[atp.index.get_level_values("layer") < layer]
    assert len(below) and (below == 0.0).all()
    v = _layer(atp.loc[("v", "atp")], layer)
    assert v.abs().idxmax() == group and (v.drop(group) == 0.0).all()
    keys = atp.loc["k"]
    assert (keys[keys.index.get_level_values("layer") <= layer] == 0.0).all()  # values were tuned, not keys
    z = _layer(atp.loc[("z", "atp")], layer)
    readers = [h for h in z.index if int(h) // 2 == group]  # grouped-query: 2 query heads per KV head
    assert (z.drop(readers) == 0.0).all()
    assert v[group] == pytest.approx(z[readers].sum(), rel=1e-5)  # z′ − z = A (v′ − v), the same A
    # (Its size is another matter: docs/method.md, E10 — the exact patch of this value head carries the whole gain,
    # while either query head reading it, patched alone, moves Δlogp little; a first-order sum cannot see that.)
    print("kv twin, planted value head: AtP", v[group], "exact", exact.loc[("v", layer, group)])


def test_qk_fix_is_closer_to_exact_than_plain_atp_on_the_kv_twins_keys(kv_twin):
    atp, exact = kv_twin
    layer, _ = organisms.kv_twin_site()
    ex = exact.loc["k"]
    ex = ex[ex.index.get_level_values("layer") > layer]  # above the planted layer the keys differ
    assert ex.abs().max() > 1e-2
    err = {e: (atp.loc[("k", e)].reindex(ex.index) - ex).abs() for e in ("atp*", "atp")}
    print("kv twin, k: |error| atp*", err["atp*"].round(4).tolist(), "\n atp", err["atp"].round(4).tolist())
    assert err["atp*"].mean() < err["atp"].mean() and err["atp*"].max() < err["atp"].max()

"""Known answers for E8's weight transplants on the bundled planted twins (one MLP at layer 2, 4 or 6; two MLPs at
2 and 5; one query head at layer 4; one KV head at layer 3): a window that contains every planted block carries
exactly the gain, by transplant (tuned blocks in base) and by revert (base blocks in tuned); a window that
contains none carries exactly 0; with two planted blocks, a window over one of them carries some of it but not all.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

import alignment_probe as ap
from alignment_probe.engine import make_engine
from alignment_probe.experiments import windows
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.organisms import (
    bundled_pair_paths,
    bundled_pairs_path,
    head_twin_path,
    head_twin_site,
    kv_twin_path,
    kv_twin_site,
    planted_layers,
    twin_path,
    two_block_layers,
    two_block_twin_path,
)

N_PAIRS = 8
WIDTHS = (1, 2, 4)
NAMES = ("window_transplant", "window_revert")


def _twins():
    yield from (
        (f"mlp_layer{layer}", lambda c, layer=layer: twin_path(f"mlp_layer{layer}", cache_dir=c), {layer})
        for layer in planted_layers()
    )
    yield "two_blocks", lambda c: two_block_twin_path(cache_dir=c), set(two_block_layers())
    yield "head", lambda c: head_twin_path(cache_dir=c), {head_twin_site()[0]}
    yield "kv_head", lambda c: kv_twin_path(cache_dir=c), {kv_twin_site()[0]}


TWINS = list(_twins())


@pytest.fixture(scope="module", params=TWINS, ids=[t[0] for t in TWINS])
def measured(request, tmp_path_factory):
    name, path_of, planted = request.param
    base = bundled_pair_paths()[0]
    twins = ap.load_twins(base, path_of(tmp_path_factory.mktemp(f"twin-{name}")))
    pairs = list(ap.load_pairs(bundled_pairs_path(), n=N_PAIRS, seed=0, tokenizer=twins.tokenizer, max_length=256))
    cfg = SuiteConfig(experiments=NAMES, window_widths=WIDTHS, n_boot=200)
    plan = Plan(cfg=cfg, n_layers=twins.n_layers, d_model=twins.d_model, selected=NAMES)
    engine = make_engine("fast")
    rows = engine.run(twins, pairs, windows.window_specs(plan))
    scores = engine.clean_scores(twins, pairs)  # the same clean runs the rows were measured against
    summary = windows.summarize_windows(Tables(rows, scores, {}, cfg, twins.n_layers, twins.d_model, selected=NAMES))
    return planted, rows, scores.set_index("pair_id").sort_index().gain.to_numpy(), summary


def test_every_window_carries_all_of_the_gain_or_none_of_it(measured):
    planted, rows, gain, _ = measured
    assert np.abs(gain).min() > 0
    for (name, a, w), group in rows.groupby(["experiment", "layer", "param"]):
        carried = group.sort_values("pair_id").effect.to_numpy() * (1 if name == "window_transplant" else -1)
        inside = {b for b in planted if a <= b < a + w}
        if inside == planted:
            np.testing.assert_array_equal(carried, gain, err_msg=f"{name} ({a}, {w})")
        elif not inside:
            np.testing.assert_array_equal(carried, 0.0, err_msg=f"{name} ({a}, {w})")
        else:  # one of two planted blocks: some of the gain, not all of it
            assert np.abs(carried).max() > 1e-3 and not np.allclose(carried, gain), f"{name} ({a}, {w})"


def test_the_summary_finds_the_planted_block(measured):
    planted, _, gain, summary = measured
    for name in NAMES:
        entry = summary[name]
        assert entry["gain"]["mean"] == pytest.approx(gain.mean())
        if len(planted) == 1:
            (block,) = planted
            assert entry["peak_layer"] == block and entry["heldout"]["chosen_layer"] == block
            assert {r["layer"] for r in entry["per_layer"] if r["mean"] != 0} == {block}
    assert summary["window_transplant"]["every_block"]["max_abs_error"] == 0.0

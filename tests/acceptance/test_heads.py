"""E7 head maps against the organisms with a known answer: a twin tuned in one query head, and one tuned
in one key/value head's values."""

from __future__ import annotations

import pytest

import alignment_probe as ap
from alignment_probe import organisms
from alignment_probe.engine import make_engine
from alignment_probe.experiments.suite import SuiteConfig, run_suite


def _run(tuned, name, layers, engine="fast", n=8):
    base, _ = organisms.bundled_pair_paths()
    twins = ap.load_twins(base, tuned)
    pairs = ap.load_pairs(n=n, seed=0, tokenizer=twins.tokenizer, max_length=256)
    cfg = SuiteConfig(experiments=(name,), layers=tuple(layers), n_boot=200)
    result = run_suite(twins, pairs, make_engine(engine), cfg)
    return result.summary["gain_mean"], result.summary["experiments"][name], result.effects


def test_the_head_twins_head_carries_the_whole_gain_and_no_other_head_moves():
    layer, head = organisms.head_twin_site()
    gain, entry, _ = _run(organisms.head_twin_path(), "head_patch", range(layer + 1))
    cells = {(c["layer"], c["head"]): c["mean"] for c in entry["by_head"]}
    assert cells[(layer, head)] == pytest.approx(gain, rel=1e-3, abs=1e-5)
    assert all(v == 0.0 for (la, h), v in cells.items() if (la, h) != (layer, head)), cells
    attn = {r["layer"]: r["mean"] for r in entry["attn_out"]}
    assert attn[layer] == pytest.approx(gain, rel=1e-3, abs=1e-5) and all(attn[la] == 0.0 for la in range(layer))


def test_the_kv_twins_value_head_carries_the_whole_gain():
    layer, group = organisms.kv_twin_site()
    gain, entry, _ = _run(organisms.kv_twin_path(), "kv_head_patch", range(layer + 1))
    cells = {(c["layer"], c["head"]): c["mean"] for c in entry["by_head"]}
    assert cells[(layer, group)] == pytest.approx(gain, rel=1e-3)
    assert all(v == 0.0 for (la, g), v in cells.items() if (la, g) != (layer, group)), cells
    assert all(c["mean"] == 0.0 for c in entry["by_head_k"])  # only values were tuned: keys are identical


def test_head_patches_agree_with_the_reference_engine():
    layer, _ = organisms.head_twin_site()
    _, _, fast = _run(organisms.head_twin_path(), "head_patch", [layer], "fast", n=3)
    _, _, ref = _run(organisms.head_twin_path(), "head_patch", [layer], "reference", n=3)
    assert (fast.effect - ref.effect).abs().max() < 1e-4

"""E8 windows and E9 per-token maps: their summaries, figures and verdict on synthetic tables (no model)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alignment_probe import stats
from alignment_probe.effects import RowKey, TokenBlock, effects_from_tokens, make_row, to_frame, tokens_to_frame
from alignment_probe.experiments import token_map, windows
from alignment_probe.experiments.registry import Tables
from alignment_probe.experiments.suite import SuiteConfig

N_LAYERS, N_PAIRS = 4, 6


def _scores(gain: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"pair_id": np.arange(len(gain)), "gain": gain})


def _window_rows(carried: dict[tuple[int, int], np.ndarray], name: str, gain: np.ndarray) -> list[dict]:
    target, source = windows.DIRECTIONS[name]
    rows = []
    for (a, w), values in carried.items():
        for pid, v in enumerate(values):
            # transplant: clean = base Δ (0), patched = base + carried; revert: clean = tuned Δ (the gain), patched = gain − carried
            clean, patched = (0.0, v) if name == windows.TRANSPLANT else (gain[pid], gain[pid] - v)
            rows.append(
                make_row(
                    RowKey(name, target, source, "blocks", "all", "both", a, float(w)),
                    pid,
                    (clean, 0.0),
                    (patched, 0.0),
                )
            )
    return rows


@pytest.fixture
def window_tables():
    rng = np.random.default_rng(0)
    gain = 2.0 + rng.normal(0, 0.1, N_PAIRS)
    carried = {(a, 1): (gain if a == 2 else np.zeros(N_PAIRS)) + rng.normal(0, 0.01, N_PAIRS) for a in range(N_LAYERS)}
    carried |= {(a, 2): gain * (a in (1, 2)) for a in range(N_LAYERS - 1)}
    rows = _window_rows(carried | {(0, N_LAYERS): gain}, windows.TRANSPLANT, gain)
    rows += _window_rows(carried, windows.REVERT, gain)
    cfg = SuiteConfig(experiments=(windows.TRANSPLANT, windows.REVERT), n_boot=200)
    return Tables(to_frame(rows), _scores(gain), {}, cfg, N_LAYERS, 16, selected=(windows.TRANSPLANT, windows.REVERT))


def test_windows_summary_reads_both_directions_as_gain_carried(window_tables):
    out = windows.summarize_windows(window_tables)
    for name in (windows.TRANSPLANT, windows.REVERT):
        entry = out[name]
        assert entry["peak_layer"] == 2 and entry["heldout"]["chosen_layer"] == 2
        by = {(r["start"], r["width"]): r for r in entry["by_window"]}
        assert set(by) == {(a, 1) for a in range(N_LAYERS)} | {(a, 2) for a in range(N_LAYERS - 1)}
        assert by[(2, 1)]["mean"] == pytest.approx(entry["gain"]["mean"], abs=0.02)
        assert all(by[k]["ci_low"] <= by[k]["mean"] <= by[k]["ci_high"] for k in by)
    every = out[windows.TRANSPLANT]["every_block"]
    assert every["max_abs_error"] == pytest.approx(0.0, abs=1e-12)
    assert "every_block" not in out[windows.REVERT]


def test_windows_figure_and_verdict(window_tables):
    summary = {"n_layers": N_LAYERS, "experiments": windows.summarize_windows(window_tables)}
    fig = windows.windows_figure(summary)
    names = [t.name for t in fig.data if t.name]
    assert any("transplant" in n and "1 block" in n for n in names) and any(
        "revert" in n and "2 blocks" in n for n in names
    )
    found = windows.verdict(summary)
    # block 2 of 4 carries the whole gain: relative depth 2/3 = 0.67, outside 0.10 of the paper's 8/15 = 0.53
    assert found.verdict == "differs" and "block 2" in found.ours
    summary["n_layers"] = 16  # the same block in a 16-block model: depth 2/15, further still
    assert windows.verdict(summary).verdict == "differs"
    summary["n_layers"] = 5  # … and in a 5-block one: depth 2/4 = 0.50, mid-stack, carrying the whole gain
    assert windows.verdict(summary).verdict == "agrees"


def _token_blocks(effects_by_pair: list[tuple[np.ndarray, np.ndarray]], key: RowKey) -> list[TokenBlock]:
    blocks = []
    for pid, (chosen, rejected) in enumerate(effects_by_pair):
        for side, eff in (("chosen", chosen), ("rejected", rejected)):
            clean = -np.arange(1, len(eff) + 1, dtype=float)
            blocks.append(TokenBlock(key, pid, side, list(range(len(eff))), clean, clean + eff))
    return blocks


@pytest.fixture
def token_tables():
    rng = np.random.default_rng(1)
    key = RowKey(token_map.NAME, "base", "tuned", "resid_post", "all", "both", 1)
    per_pair = [(rng.normal(0, 1, rng.integers(3, 12)), rng.normal(0, 1, rng.integers(3, 12))) for _ in range(N_PAIRS)]
    tokens = tokens_to_frame(_token_blocks(per_pair, key))
    cfg = SuiteConfig(experiments=(token_map.NAME,), n_boot=200)
    effects = effects_from_tokens(tokens)
    return per_pair, Tables(
        effects, _scores(np.zeros(N_PAIRS)), {}, cfg, N_LAYERS, 16, selected=(token_map.NAME,), tokens=tokens
    )


def test_token_share_defined_when_the_total_is_clearly_non_zero():
    """Chosen tokens all gain, rejected ones all lose: the total's CI excludes 0, so the first-k shares are
    ratios with finite CIs that equal the share of the means."""
    rng = np.random.default_rng(2)
    key = RowKey(token_map.NAME, "base", "tuned", "resid_post", "all", "both", 1)
    per_pair = [
        (rng.uniform(0.5, 1.5, rng.integers(3, 12)), -rng.uniform(0.5, 1.5, rng.integers(3, 12)))
        for _ in range(N_PAIRS)
    ]
    tokens = tokens_to_frame(_token_blocks(per_pair, key))
    cfg = SuiteConfig(experiments=(token_map.NAME,), n_boot=200)
    tables = Tables(
        effects_from_tokens(tokens),
        _scores(np.zeros(N_PAIRS)),
        {},
        cfg,
        N_LAYERS,
        16,
        selected=(token_map.NAME,),
        tokens=tokens,
    )
    first = {b["first"]: b for b in token_map.summarize_token_map(tables)[token_map.NAME]["by_bin"]}
    total = np.mean([c.sum() - r.sum() for c, r in per_pair])
    expect_1 = np.mean([c[0] - r[0] for c, r in per_pair])
    assert first[1]["share"] == pytest.approx(expect_1 / total)
    assert first[1]["share_ci"][0] < expect_1 / total < first[1]["share_ci"][1]


def test_long_table_sums_to_the_pair_rows(token_tables):
    per_pair, tables = token_tables
    got = tables.effects.sort_values("pair_id").effect.to_numpy()
    np.testing.assert_allclose(got, [c.sum() - r.sum() for c, r in per_pair], atol=1e-12)
    assert tables.tokens.position.min() == 0 and set(tables.tokens.side) == {"chosen", "rejected"}


def test_token_summary_positions_add_up_and_bins_split_the_effect(token_tables):
    per_pair, tables = token_tables
    entry = token_map.summarize_token_map(tables)[token_map.NAME]
    (cond,) = entry["conditions"]
    total = np.mean([c.sum() - r.sum() for c, r in per_pair])
    assert cond["mean"] == pytest.approx(total)
    assert sum(p["mean"] for p in entry["by_position"]) == pytest.approx(total)  # every position is shown (< 32)
    first = {b["first"]: b for b in entry["by_bin"]}
    assert first[8]["mean"] + first["rest"]["mean"] == pytest.approx(total)
    expect_1 = np.mean([c[0] - r[0] for c, r in per_pair])
    assert first[1]["mean"] == pytest.approx(expect_1)
    # the share is a ratio: reported only when the total's CI excludes 0 (statistics.md), else NaN
    rule = stats.ratio_ci(
        [c[0] - r[0] for c, r in per_pair],
        [c.sum() - r.sum() for c, r in per_pair],
        seed=tables.cfg.seed,
        n_boot=tables.cfg.n_boot,
    )
    if rule["defined"]:
        assert first[1]["share"] == pytest.approx(expect_1 / total)
    else:
        assert math.isnan(first[1]["share"])
    at_10 = next(p for p in entry["by_position"] if p["position"] == 10)
    assert at_10["n"] == N_PAIRS and at_10["n_with_position"] == sum(max(len(c), len(r)) > 10 for c, r in per_pair)
    fig = token_map.token_map_figure({"n_layers": N_LAYERS, "experiments": {token_map.NAME: entry}})
    assert fig.data and fig.data[0].type == "heatmap"


def test_nothing_to_map_is_an_empty_summary():
    cfg = SuiteConfig(experiments=(token_map.NAME,), n_boot=10)
    out = token_map.summarize_token_map(
        Tables(
            to_frame([]), _scores(np.zeros(1)), {}, cfg, N_LAYERS, 16, selected=(token_map.NAME,), tokens=pd.DataFrame()
        )
    )
    assert out[token_map.NAME]["conditions"] == [] and not math.isnan(out[token_map.NAME]["max_position"])


def test_cross_and_token_verdicts_follow_their_rules():
    from alignment_probe.experiments import cross

    split = {"split": 2, "interaction": 0.5, "interaction_ci": [0.1, 0.9]}
    summary = {"n_layers": N_LAYERS, "experiments": {"cross_2x2": {"by_split": [split]}}}
    assert cross.verdict(summary).verdict == "agrees"
    split["interaction_ci"] = [-0.1, 0.9]  # holds 0 and, with no gain to set a margin by, bounds nothing
    assert cross.verdict(summary).verdict == "inconclusive"
    cell = {
        "hook": "blocks",
        "layer": 0,
        "width": N_LAYERS,
        "first": 8,
        "mean": 1.0,
        "share": 0.8,
        "share_ci": [0.6, 0.9],
    }
    summary = {"n_layers": N_LAYERS, "experiments": {token_map.NAME: {"by_bin": [cell]}}}
    lengths = pd.DataFrame({"n_chosen_tokens": [16] * N_PAIRS, "n_rejected_tokens": [16] * N_PAIRS})  # null 8/16
    assert token_map.verdict(summary, scores=lengths).verdict == "agrees"
    cell["share_ci"] = [0.4, 0.9]  # holds the null share 0.5 (the rules' boundaries: tests/unit/test_verdicts.py)
    assert token_map.verdict(summary, scores=lengths).verdict == "inconclusive"
    assert token_map.verdict({"n_layers": N_LAYERS, "experiments": {}}) is None

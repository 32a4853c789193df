"""statistics.md's "Selection is always held out" and "Peaks, tops and maps" in every experiment that chooses from
the data, on synthetic effects tables whose answer is planted (no model). Each test fails without its rule: a
choice made on all pairs, a top reported on the pairs that chose it, an AtP confirmation measured on the pairs
that ranked it, a per-layer summary without its peak set, a map without its m and bands."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from alignment_probe import stats
from alignment_probe.effects import RowKey, make_row, to_frame
from alignment_probe.experiments import alpha, atp, cross, heads, heldout, lowrank, windows
from alignment_probe.experiments.atp.conditions import _confirm_specs
from alignment_probe.experiments.patching import summarize_patching
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig, gain_summary
from alignment_probe.realmodels.protocol import explore_peak, picked_blocks

pytestmark = pytest.mark.unit

N_PAIRS = 24
SEED = 0
EXPLORE, CONFIRM = stats.explore_confirm(range(N_PAIRS), seed=SEED)


def rows_of(
    name: str,
    cells: dict[tuple, np.ndarray],
    *,
    target: str = "base",
    source: str = "tuned",
    scope: str = "all",
    estimator: str = "exact",
) -> list[dict]:
    """Effects-table rows: ``cells[(hook, layer, param)][pair]`` is the effect; 3/4 of it on the chosen side's
    log-prob, −1/4 on the rejected side's (so the per-token version has a known answer)."""
    out = []
    for (hook, layer, param), values in cells.items():
        key = RowKey(name, target, source, hook, scope, "both", int(layer), float(param), "all", estimator)
        for pid, e in enumerate(values):
            out.append(make_row(key, pid, (-10.0, -12.0), (-10.0 + 0.75 * e, -12.0 - 0.25 * e)))
    return out


def scores(n: int = N_PAIRS) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n_c, n_r = rng.integers(2, 20, n), rng.integers(2, 20, n)
    gain = rng.normal(1.0, 0.3, n)
    return pd.DataFrame(
        {
            "pair_id": np.arange(n),
            "n_chosen_tokens": n_c,
            "n_rejected_tokens": n_r,
            "gain": gain,
            "gain_per_token": gain / (n_c + n_r),
            "base_delta_logp": 0.0,
            "tuned_delta_logp": gain,
        }
    )


def tables(rows: list[dict], *selected: str, fits: dict | None = None, **cfg) -> Tables:
    config = SuiteConfig(experiments=tuple(selected), n_boot=cfg.pop("n_boot", 300), seed=SEED, **cfg)
    return Tables(to_frame(rows), scores(), fits or {}, config, 6, 16, selected=tuple(selected))


def split_values(explore_value: float, confirm_value: float, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """A cell whose effect is ``explore_value`` on the explore pairs and ``confirm_value`` on the confirm pairs."""
    v = np.where(np.isin(np.arange(N_PAIRS), EXPLORE), explore_value, confirm_value)
    return v + np.random.default_rng(seed).normal(0, noise, N_PAIRS)


def assert_roles(selection: dict) -> None:
    assert selection["explore_pair_ids"] == EXPLORE and selection["confirm_pair_ids"] == CONFIRM
    assert set(EXPLORE).isdisjoint(CONFIRM) and sorted(EXPLORE + CONFIRM) == list(range(N_PAIRS))
    assert set(selection["confirm"]) >= {"mean", "ci_low", "ci_high", "n"}


# ---------------------------------------------------------------- selection is always held out


def window_rows(carried: dict[tuple[int, int], np.ndarray], name: str = windows.TRANSPLANT) -> list[dict]:
    target, source = windows.DIRECTIONS[name]
    return rows_of(name, {("blocks", a, w): v for (a, w), v in carried.items()}, target=target, source=source)


def test_best_window_is_chosen_on_explore_and_reported_on_confirm():
    """Window (2, 1) is best on the explore pairs, window (4, 1) on all pairs (huge on the confirm pairs): the
    choice must be (2, 1) and its reported number the confirm pairs' (about 0), the explore mean beside it."""
    carried = {(a, 1): split_values(0.0, 0.0, seed=a) for a in range(5)}
    carried[(2, 1)] = split_values(1.0, 0.0, seed=10)
    carried[(4, 1)] = split_values(0.5, 3.0, seed=11)
    carried |= {(a, 2): split_values(0.2, 0.2, seed=20 + a) for a in range(4)}
    entry = windows.summarize_windows(tables(window_rows(carried), windows.TRANSPLANT))[windows.TRANSPLANT]
    sel = entry["selection"]
    assert_roles(sel)
    assert sel["chosen"] == {"start": 2, "width": 1} and sel["m"] == 9
    assert sel["confirm"]["mean"] == pytest.approx(carried[(2, 1)][CONFIRM].mean())
    assert sel["in_sample"]["mean"] == pytest.approx(carried[(2, 1)][EXPLORE].mean())
    assert sel["top"][0]["cell"] == sel["chosen"] and sel["top"][1]["cell"] == {"start": 4, "width": 1}
    assert sel["top"][1]["confirm"]["mean"] == pytest.approx(carried[(4, 1)][CONFIRM].mean())
    width1 = entry["by_width"]["1"]["selection"]
    assert width1["chosen"] == 2 == entry["heldout"]["chosen_layer"]  # the per-width choice agrees with heldout
    assert [c["cell"] for c in width1["top"][:2]] == [2, 4]
    json.dumps(entry)


def winners_curse(summarize, make_rows, key, n_maps: int = 30) -> tuple[float, float, float]:
    """Pure-noise maps (every cell's true effect 0, 12 pairs): the mean over maps of the largest all-pairs cell
    mean (what choosing and reporting on the same pairs prints), of the selection's confirm mean and of its
    in-sample (explore) mean."""
    maxima, confirmed, in_sample = [], [], []
    for i in range(n_maps):
        rng = np.random.default_rng(100 + i)
        noise = {c: rng.normal(0, 1, N_PAIRS) for c in range(12)}
        t = tables(make_rows(noise), key, n_boot=50)
        sel = summarize(t)[key]["selection"]
        maxima.append(max(v.mean() for v in noise.values()))
        confirmed.append(sel["confirm"]["mean"])
        in_sample.append(sel["in_sample"]["mean"])
    return float(np.mean(maxima)), float(np.mean(confirmed)), float(np.mean(in_sample))


@pytest.mark.parametrize("what", ["windows", "heads", "cross"])
def test_winners_curse_is_removed_by_the_confirm_half(what):
    """On maps of pure noise the best cell's same-pairs mean is biased upwards (about +0.33 for the max of 12
    N(0, 1/24) means); the confirm half's mean of the explore-chosen cell is unbiased (0 ± 0.04 over 30 maps)."""
    if what == "windows":
        summarize, key = windows.summarize_windows, windows.TRANSPLANT
        make = lambda noise: window_rows({(c, 1): v for c, v in noise.items()})
    elif what == "heads":
        summarize, key = heads.summarize_heads, heads.HEADS
        make = lambda noise: rows_of(heads.HEADS, {("z", c // 4, c % 4): v for c, v in noise.items()})
    else:
        summarize, key = cross.summarize_cross, cross.NAME
        make = lambda noise: cross_rows({c + 1: v for c, v in noise.items()})
    biased, confirmed, in_sample = winners_curse(summarize, make, key)
    assert biased > 0.2 and in_sample > 0.2
    assert abs(confirmed) < 0.12  # the sd of a mean of 30 confirm means of 12 pairs: 1/sqrt(360) ≈ 0.053


def test_top_heads_are_chosen_on_explore_and_their_effects_reported_on_confirm():
    cells = {("z", layer, h): split_values(0.0, 0.0, seed=4 * layer + h) for layer in (1, 3) for h in range(4)}
    cells[("z", 3, 2)] = split_values(0.8, -0.1, seed=99)  # best on explore
    cells[("z", 1, 0)] = split_values(0.3, 2.0, seed=98)  # best on all pairs
    cells |= {("attn_out", layer, math.nan): split_values(0.5, 0.5, seed=50 + layer) for layer in (1, 3)}
    entry = heads.summarize_heads(tables(rows_of(heads.HEADS, cells), heads.HEADS))[heads.HEADS]
    sel = entry["selection"]
    assert_roles(sel)
    assert sel["chosen"] == {"layer": 3, "head": 2, "hook": "z"} and sel["m"] == 8
    assert sel["confirm"]["mean"] == pytest.approx(cells[("z", 3, 2)][CONFIRM].mean())
    second = sel["top"][1]
    assert second["cell"] == {"layer": 1, "head": 0, "hook": "z"}
    assert second["confirm"]["mean"] == pytest.approx(cells[("z", 1, 0)][CONFIRM].mean())
    assert second["explore_mean"] == pytest.approx(cells[("z", 1, 0)][EXPLORE].mean())


def atp_table(cells: dict[tuple, np.ndarray], confirm_rows: dict[tuple, np.ndarray] | None = None, **cfg) -> Tables:
    rows = rows_of("atp", {(h, la, math.nan): v for (h, la), v in cells.items()}, estimator="atp")
    if confirm_rows:
        rows += rows_of("atp_confirm", {(h, la, math.nan): v for (h, la), v in confirm_rows.items()})
    return tables(rows, "atp", "atp_confirm", **cfg)


def test_atp_confirmation_is_ranked_on_explore_and_measured_on_confirm_only():
    """AtP's explore ranking puts mlp_out 2 and attn_out 1 first; on all pairs resid_post 3 would lead. The exact
    confirmation patches exactly the explore top K, on the confirm pairs only (never the pairs that ranked them),
    and the summary reports it on those pairs."""
    hooks = ("resid_pre", "resid_post", "attn_out", "mlp_out")
    cells = {(h, la): split_values(0.0, 0.0, seed=10 * i + la) for i, h in enumerate(hooks) for la in range(4)}
    cells[("mlp_out", 2)] = split_values(-1.0, 0.0, seed=1)  # |mean| counts: a negative estimate ranks too
    cells[("attn_out", 1)] = split_values(0.7, 0.0, seed=2)
    cells[("resid_post", 3)] = split_values(0.1, 5.0, seed=3)
    cells[("resid_pre", 3)] = split_values(0.9, 0.0, seed=4)  # = resid_post 2: one patch, confirmed as resid_post
    t = atp_table(cells, atp_confirm_k=2)
    summary = atp.summarize_atp(t)["atp"]
    sel = summary["selection"]
    assert_roles(sel)
    assert [c["cell"] for c in sel["top"]] == [{"hook": "mlp_out", "layer": 2}, {"hook": "attn_out", "layer": 1}]
    assert sel["rank_by"] == "|mean|" and sel["m"] == 16 - 3  # resid_pre 1..3 are resid_post 0..2
    plan = Plan(
        cfg=t.cfg,
        n_layers=4,
        d_model=16,
        selected=("atp_confirm",),
        pair_ids=tuple(range(N_PAIRS)),
        upstream={"atp": summary},
    )
    specs = _confirm_specs(plan)
    assert {(s.key.hook, s.key.layer) for s in specs} == {("mlp_out", 2), ("attn_out", 1)}
    for spec in specs:
        assert spec.pair_ids == frozenset(CONFIRM) and spec.pair_ids.isdisjoint(EXPLORE)
    # a table whose exact rows cover every pair (a run made before this rule) is still reported on confirm only
    exact = {("mlp_out", 2): split_values(3.0, -0.5, seed=5), ("attn_out", 1): split_values(3.0, 0.25, seed=6)}
    conf = atp.confirmed(atp_table(cells, exact, atp_confirm_k=2))
    assert [(c["hook"], c["layer"]) for c in conf] == [("mlp_out", 2), ("attn_out", 1)]
    for c in conf:
        values = exact[(c["hook"], c["layer"])]
        assert c["n"] == len(CONFIRM) and c["pairs"] == "confirm"
        assert c["exact"] == pytest.approx(values[CONFIRM].mean())
        assert c["atp"] == pytest.approx(cells[(c["hook"], c["layer"])][CONFIRM].mean())
        assert c["atp_explore"] == pytest.approx(cells[(c["hook"], c["layer"])][EXPLORE].mean())


def cross_rows(interaction: dict[int, np.ndarray]) -> list[dict]:
    """2×2 rows whose interaction at split s is ``interaction[s]`` (Δ(B,B) = 0, Δ(T,B) = 1, Δ(T,T) = 2)."""
    out = []
    for s, inter in interaction.items():
        for pid, v in enumerate(inter):
            out.append(
                make_row(
                    RowKey(cross.NAME, "base", "tuned", "resid_pre", "all", "both", s), pid, (0.0, 0.0), (1.0, 0.0)
                )
            )
            # Δ(B,T) = Δ(T,T) − Δ(T,B) + Δ(B,B) − I = 1 − I
            out.append(
                make_row(
                    RowKey(cross.NAME, "tuned", "base", "resid_pre", "all", "both", s), pid, (2.0, 0.0), (1.0 - v, 0.0)
                )
            )
    return out


def test_cross_split_chosen_on_explore_with_peak_set_and_bands():
    inter = {s: split_values(0.0, 0.0, seed=s) for s in range(1, 5)}
    inter[2] = split_values(1.0, 0.0, seed=20)
    inter[4] = split_values(0.2, 4.0, seed=21)
    entry = cross.summarize_cross(tables(cross_rows(inter), cross.NAME))[cross.NAME]
    assert [r["interaction"] for r in entry["by_split"]] == pytest.approx([v.mean() for v in inter.values()])
    assert_roles(entry["selection"])
    assert entry["selection"]["chosen"] == 2
    assert entry["selection"]["confirm"]["mean"] == pytest.approx(inter[2][CONFIRM].mean())
    assert entry["peak_set"] == [4] and entry["map"]["m"] == 4
    for r in entry["by_split"]:
        assert r["interaction_band"][0] <= r["interaction"] <= r["interaction_band"][1]


def e1_rows(curve: dict[int, np.ndarray]) -> list[dict]:
    return rows_of("patch_tuned_to_base", {("resid_post", layer, math.nan): v for layer, v in curve.items()})


def test_lowrank_is_fitted_at_e1s_explore_peak_not_its_all_pairs_peak():
    e1 = {"peak_layer": 5, "selection": {"chosen": 3}}
    cfg = SuiteConfig(experiments=("patch_tuned_to_base", "lowrank_difference"))
    plan = Plan(cfg=cfg, n_layers=6, d_model=16, selected=("lowrank_difference",), upstream={"patch_tuned_to_base": e1})
    assert lowrank.lowrank_layers(plan) == [3]
    assert lowrank.lowrank_layers(
        Plan(
            cfg=cfg,
            n_layers=6,
            d_model=16,
            selected=(),
            upstream={"patch_tuned_to_base": {"peak_layer": 5, "selection": None}},
        )
    ) == [5]
    assert explore_peak(e1) == 3  # the protocol's harmless-peak run hands the same layer to α and low rank
    # … and the suite's E1 summary gives that record: its explore peak is 2 here, its all-pairs peak 4
    curve = {layer: split_values(0.1 * layer, 0.1 * layer, seed=layer) for layer in range(6)}
    curve[2] = split_values(2.0, 0.0, seed=30)
    curve[4] = split_values(1.0, 3.0, seed=31)
    entry = summarize_patching(tables(e1_rows(curve), "patch_tuned_to_base"))["patch_tuned_to_base"]
    assert entry["peak_layer"] == 4 and entry["selection"]["chosen"] == 2
    assert lowrank.e1_chosen_layer(entry) == 2


def lowrank_tables(
    layers: tuple[int, ...] = (3,), k: int = 4, extra: list[dict] | None = None
) -> tuple[Tables, np.ndarray, np.ndarray, np.ndarray]:
    """The all-pairs subspace (fitted on every pair) recovers the whole full-patch effect (ratio 1, in-sample);
    the explore-fitted subspace recovers half of it on the confirm pairs (ratio 0.5, held out), at every layer."""
    rng = np.random.default_rng(3)
    full = rng.normal(2.0, 0.2, N_PAIRS)
    every = full.copy()
    held = 0.5 * full + rng.normal(0, 0.01, N_PAIRS)
    rows, variance = list(extra or []), []
    for layer in layers:
        rows += rows_of("lowrank_full", {("resid_post", layer, math.nan): full}, scope="all_but_bos")
        # k = d_model = 16 (always run): the whole space, the full patch on both subspaces
        rows += rows_of(
            "lowrank_difference",
            {("resid_post", layer, k): every, ("resid_post", layer, 16): full},
            scope="all_but_bos",
        )
        for kk, values in ((k, held), (16, full)):
            key = RowKey(
                "lowrank_difference", "base", "tuned", "resid_post", "all_but_bos", "both", layer, float(kk), "heldout"
            )
            rows += [
                make_row(key, pid, (-10.0, -12.0), (-10.0 + 0.75 * values[pid], -12.0 - 0.25 * values[pid]))
                for pid in CONFIRM
            ]
        variance += [["lowrank_difference", layer, k, 0.2], ["lowrank_difference", layer, 16, 1.0]]
    fits = {
        "lowrank": {
            "layers": list(layers),
            "variance": variance,
            "layers_chosen_by": "patch_tuned_to_base: its peak chosen on the explore pairs",
        }
    }
    t = tables(rows, "lowrank_difference", fits=fits, lowrank_ks=(k,))
    return t, full, every, held


def test_lowrank_headline_layer_among_several_is_e1s_explore_peak():
    curve = {layer: split_values(0.0, 0.0, seed=layer) for layer in range(4)}
    curve[3] = split_values(2.0, 0.0, seed=70)  # explore peak
    curve[1] = split_values(0.5, 3.0, seed=71)  # all-pairs peak
    t, *_ = lowrank_tables(layers=(1, 3), extra=e1_rows(curve))
    entry = lowrank.summarize_lowrank(t)["lowrank_difference"]
    assert set(entry["selection_by_layer"]) == {"1", "3"} and entry["selection"]["chosen"]["layer"] == 3


def test_lowrank_headline_ratio_is_the_confirm_pairs_and_the_all_pairs_one_is_labelled_in_sample():
    t, full, _, held = lowrank_tables()
    entry = lowrank.summarize_lowrank(t)["lowrank_difference"]
    sel = entry["selection"]
    assert_roles(sel)
    assert sel["chosen"]["layer"] == 3 and sel["chosen"]["k"] == 4
    assert sel["confirm"]["mean"] == pytest.approx(held[CONFIRM].mean() / full[CONFIRM].mean())
    assert sel["confirm"]["mean"] == pytest.approx(0.5, abs=0.02) and sel["confirm"]["n"] == len(CONFIRM)
    assert sel["confirm"]["defined"] and sel["confirm"]["ci_low"] < 0.5 < sel["confirm"]["ci_high"] + 0.02
    assert sel["in_sample"]["mean"] == pytest.approx(1.0)
    assert "in-sample" in entry["effect_ratio_labels"]["effect_ratio"]
    assert entry["selection_by_layer"]["3"] == sel
    by_k = {r["k"]: r for r in entry["by_k"]}
    assert by_k[4]["heldout_effect_ratio"] == pytest.approx(sel["confirm"]["mean"])  # the existing key agrees
    json.dumps(entry)


def test_alpha_reports_its_dose_response_at_e1s_explore_peak_on_confirm_pairs():
    curve = {layer: split_values(0.0, 0.0, seed=layer) for layer in range(4)}
    curve[1] = split_values(2.0, 0.0, seed=40)  # explore peak
    curve[3] = split_values(0.5, 3.0, seed=41)  # all-pairs peak
    rows = e1_rows(curve)
    for a in (0.0, 0.5, 1.0):
        rows += rows_of("alpha", {("resid_post", layer, a): a * v for layer, v in curve.items()})
    entry = alpha.summarize_alpha(tables(rows, "alpha", alphas=(0.0, 0.5, 1.0)))["alpha"]
    assert_roles(entry["selection"])
    assert entry["selection"]["chosen"] == 1 and entry["selection"]["chosen_by"].startswith("patch_tuned_to_base")
    assert entry["selection"]["confirm"]["mean"] == pytest.approx(curve[1][CONFIRM].mean())
    at = entry["at_chosen_layer"]
    assert at["layer"] == 1 and [r["n"] for r in at["by_alpha"]] == [len(CONFIRM)] * 3
    assert [r["mean"] for r in at["by_alpha"]] == pytest.approx([a * curve[1][CONFIRM].mean() for a in (0, 0.5, 1)])
    assert 3 in entry["peak_set"]  # α = 1's own peak set on all pairs


def test_every_experiment_of_one_seed_uses_the_same_explore_and_confirm_pairs():
    rng = np.random.default_rng(5)
    curve = {layer: rng.normal(layer, 1, N_PAIRS) for layer in range(4)}
    rows = e1_rows(curve) + window_rows({(a, 1): rng.normal(0, 1, N_PAIRS) for a in range(4)})
    rows += rows_of(heads.HEADS, {("z", 1, h): rng.normal(0, 1, N_PAIRS) for h in range(3)})
    rows += cross_rows({s: rng.normal(0, 1, N_PAIRS) for s in (1, 2)})
    rows += rows_of("atp", {("mlp_out", la, math.nan): rng.normal(0, 1, N_PAIRS) for la in range(4)}, estimator="atp")
    t = tables(rows, "patch_tuned_to_base")
    records = [summarize_patching(t)["patch_tuned_to_base"]["selection"]]
    t.selected = (windows.TRANSPLANT,)
    records.append(windows.summarize_windows(t)[windows.TRANSPLANT]["selection"])
    t.selected = (heads.HEADS,)
    records.append(heads.summarize_heads(t)[heads.HEADS]["selection"])
    t.selected = (cross.NAME,)
    records.append(cross.summarize_cross(t)[cross.NAME]["selection"])
    t.selected = ("atp",)
    records.append(atp.summarize_atp(t)["atp"]["selection"])
    for sel in records:
        assert_roles(sel)
    other = stats.explore_confirm(range(N_PAIRS), seed=SEED + 1)
    assert other[0] != EXPLORE  # the split is the seed's, not a constant


# ---------------------------------------------------------------- peaks are sets; maps state m and carry bands


def planted(carrying: tuple[int, ...], n_layers: int = 6) -> dict[int, np.ndarray]:
    """Every layer in ``carrying`` holds the whole per-pair gain; the others about 0."""
    gain = np.random.default_rng(8).normal(1.0, 0.3, N_PAIRS)
    return {
        layer: gain.copy() if layer in carrying else np.random.default_rng(layer).normal(0, 0.01, N_PAIRS)
        for layer in range(n_layers)
    }


def test_every_per_layer_summary_has_its_peak_set():
    curve = planted((3, 4, 5))
    e1 = summarize_patching(tables(e1_rows(curve), "patch_tuned_to_base"))["patch_tuned_to_base"]
    assert e1["peak_set"] == [3, 4, 5] and e1["layers_swept"] == 6
    win = windows.summarize_windows(tables(window_rows({(a, 1): v for a, v in curve.items()}), windows.TRANSPLANT))
    assert win[windows.TRANSPLANT]["peak_set"] == [3, 4, 5]
    assert win[windows.TRANSPLANT]["by_width"]["1"]["peak_set"] == [3, 4, 5]
    rows = []
    for a in (0.0, 1.0):
        rows += rows_of("alpha", {("resid_post", layer, a): a * v for layer, v in curve.items()})
    assert alpha.summarize_alpha(tables(rows, "alpha", alphas=(0.0, 1.0)))["alpha"]["peak_set"] == [3, 4, 5]
    at = rows_of(heads.HEADS, {("attn_out", layer, math.nan): v for layer, v in curve.items()})
    at += rows_of(heads.HEADS, {("z", layer, 0): v for layer, v in curve.items()})
    assert heads.summarize_heads(tables(at, heads.HEADS))[heads.HEADS]["peak_set"] == [3, 4, 5]
    a = rows_of("atp", {("resid_post", layer, math.nan): v for layer, v in curve.items()}, estimator="atp")
    s = atp.summarize_atp(tables(a, "atp"))["atp"]
    assert s["peak_set"] == s["by_hook"]["resid_post"]["peak_set"] == [3, 4, 5]
    inter = cross.summarize_cross(tables(cross_rows({s: v for s, v in curve.items() if s >= 1}), cross.NAME))
    assert inter[cross.NAME]["peak_set"] == [3, 4, 5]


def test_lowrank_per_layer_summary_has_its_peak_set():
    t, *_ = lowrank_tables()
    assert lowrank.summarize_lowrank(t)["lowrank_difference"]["peak_set"] == [3]


def test_maps_state_m_and_carry_familywise_bands():
    """Every map with a "top" cell states its size m and gives each cell a max-|t| band; with m > 1 cells the
    critical value exceeds the pointwise 1.96 (the band is family-wise, not per cell)."""
    rng = np.random.default_rng(9)
    noise = lambda: rng.normal(0, 1, N_PAIRS)
    head_cells = {("z", layer, h): noise() for layer in (0, 2, 4) for h in range(4)}
    entry = heads.summarize_heads(tables(rows_of(heads.HEADS, head_cells), heads.HEADS))[heads.HEADS]
    win = windows.summarize_windows(
        tables(window_rows({(a, w): noise() for a in range(4) for w in (1, 2)}), windows.TRANSPLANT)
    )[windows.TRANSPLANT]
    a = atp.summarize_atp(
        tables(
            rows_of(
                "atp", {(h, la, math.nan): noise() for h in ("attn_out", "mlp_out") for la in range(5)}, estimator="atp"
            ),
            "atp",
        )
    )["atp"]
    e1_cells = {(h, la, math.nan): noise() for h in ("resid_post", "attn_out", "mlp_out") for la in range(5)}
    e1 = summarize_patching(
        tables(rows_of("patch_tuned_to_base", e1_cells), "patch_tuned_to_base", extra_hooks=("attn_out", "mlp_out"))
    )["patch_tuned_to_base"]
    maps = [
        (entry["map"], entry["by_head"], 12),
        (win["map"], win["by_window"], 8),
        (a["map"], [r for e in a["by_hook"].values() for r in e["per_layer"]], 10),
        (e1["map"], e1["per_layer"], 5),
        (e1["by_hook_map"], [r for rows in e1["by_hook"].values() for r in rows], 15),
    ]
    for info, cells, m in maps:
        assert info["m"] == m == len(cells) and info["critical"] > 1.96 and f"m = {m}" in info["rule"]
        for c in cells:
            assert c["band_low"] <= c["mean"] <= c["band_high"]
            assert c["band_high"] - c["band_low"] > c["ci_high"] - c["ci_low"]  # wider than the pointwise CI
    json.dumps([entry, win, a, e1])


def test_band_of_a_planted_map_holds_every_cell_at_once():
    """The band's family-wise claim on a planted map: over 200 noisy maps of 10 cells whose true effects are
    known, every cell is inside its band in about 95 % of maps (pointwise CIs: far fewer)."""
    truth = np.linspace(-1, 1, 10)
    cfg = SuiteConfig(n_boot=300)
    hits = 0
    for i in range(200):
        m = truth + np.random.default_rng(300 + i).normal(0, 1, (30, 10))
        _, low, high = heldout.band(m, cfg)
        hits += bool(np.all((np.asarray(low) <= truth) & (truth <= np.asarray(high))))
    assert 0.88 <= hits / 200 <= 0.995


# ---------------------------------------------------------------- per-token means beside sums


def test_per_token_twin_of_e1_and_the_gain_and_the_basis_named():
    rng = np.random.default_rng(11)
    curve = {layer: rng.normal(layer, 1, N_PAIRS) for layer in range(4)}
    t = tables(e1_rows(curve), "patch_tuned_to_base")
    entry = summarize_patching(t)["patch_tuned_to_base"]
    n_c, n_r = t.scores.n_chosen_tokens.to_numpy(), t.scores.n_rejected_tokens.to_numpy()
    for row in entry["per_token"]["per_layer"]:
        e = curve[row["layer"]]
        assert row["mean"] == pytest.approx(np.mean(0.75 * e / n_c + 0.25 * e / n_r))
    assert entry["per_token"]["peak_set"] and entry["basis"] == "sum"
    assert [r["mean"] for r in entry["per_layer"]] == pytest.approx([v.mean() for v in curve.values()])
    g = gain_summary(t.scores, t.cfg)
    assert g["gain_basis"] == "sum" and g["gain_per_token_mean"] == pytest.approx(t.scores.gain_per_token.mean())


# ---------------------------------------------------------------- the SmolLM2 protocol's choices


def test_protocol_picks_head_layers_from_the_explore_ranking():
    """The heads run looks at the blocks the windows' explore ranking puts first, not the all-pairs top."""
    carried = {(a, 1): split_values(0.0, 0.0, seed=a) for a in range(6)}
    carried[(1, 1)] = split_values(1.0, 0.0, seed=60)
    carried[(2, 1)] = split_values(0.8, 0.0, seed=61)
    carried[(5, 1)] = split_values(0.1, 9.0, seed=62)  # the all-pairs best
    entry = windows.summarize_windows(tables(window_rows(carried), windows.TRANSPLANT))
    assert picked_blocks({"experiments": entry}, top=2) == (1, 2)
    old = {"experiments": {windows.TRANSPLANT: {"heldout": {"chosen_layer": 4}, "per_layer": []}}}
    assert picked_blocks(old) == (4,)  # a summary from before the explore ranking: its held-out choice only

"""E11 — steering with the localized direction, revised (experiments/steering/), on the tiny twins; and the
known answers: a bias twin (a constant shift everywhere) and a twin whose shift differs by position class."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe import stats
from alignment_probe.cli import main
from alignment_probe.data import load_pairs
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import registry, steering
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.interventions import AddByClass, predicting_classes
from alignment_probe.tables import json_bytes
from alignment_probe.tokens import sample_and_tokenize

SCALES = (0.0, 1.0, 2.0)
CURVE = {"c", "mean", "ci_low", "ci_high", "n"}
FRACTION = {"mean", "ci_low", "ci_high", "defined", "text"}
CURVE_NAMES = {
    "steer",
    "steer_random",
    "steer_contrast",
    "steer_lowrank",
    "steer_pooled",
    "steer_reverse",
    "steer_reverse_random",
}
CLASS_NAMES = {"steer_last_prompt", "steer_first", "steer_rest"}


@pytest.fixture(scope="module")
def transfer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("transfer") / "other.jsonl"
    path.write_text("".join(BUNDLED_PAIRS.read_text().splitlines(keepends=True)[-80:]))
    return path


@pytest.fixture(scope="module")
def run_dir(tiny, transfer_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "run"
    args = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(BUNDLED_PAIRS),
        "--n-pairs",
        "8",
        "--max-length",
        "72",
        "--n-boot",
        "100",
        "--pairs-per-part",
        "4",
        "--experiments",
        "patch_tuned_to_base,steer",
        "--steer-c",
        ",".join(map(str, SCALES)),
        "--transfer-data",
        str(transfer_file),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return ap.load_run(run_dir)


def _entry(run):
    return run.summary["experiments"]["steer"]


def _halves(run):
    return stats.explore_confirm(run.scores.pair_id.tolist(), seed=0)


def test_steer_is_opt_in():
    for name in ("steer", "steer_scan"):
        assert name not in SuiteConfig().experiments and name not in registry.experiment_names()
        assert name in registry.experiment_names(opt_in=True)
        assert registry.method_id(name) == "E11"
    assert "steer_scan" in registry.get("steer").needs  # naming steer runs the scan that chooses its layer and scale
    SuiteConfig(experiments=("steer",)).validate()
    with pytest.raises(ConfigError, match="steer"):
        SuiteConfig(experiments=("patch_tuned_to_base",), transfer_data="x.jsonl").validate()


def test_scale_zero_is_exactly_zero(run):
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    zero = eff[(eff.param == 0.0) & (eff.experiment != "steer_null")]
    assert len(zero) and (zero.effect == 0.0).all()
    assert set(zero.experiment) == CURVE_NAMES | {"steer_scan"}


def test_rows_positions_and_halves(run):
    """Held-out conditions on the held-out pairs only, every curve at every scale; the class parts and the 100-draw
    null at the chosen scale; the scan on the fit half; every row steers the predicting positions."""
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    entry = _entry(run)
    fit, held = _halves(run)
    assert set(eff.split) == {"fit", "heldout", "transfer"} and set(eff.scope) == {"predicting"}
    assert set(eff.hook) == {"resid_post"}
    heldout = eff[eff.split == "heldout"]
    assert set(heldout.layer) == {entry["layer"]}
    for name, rows in heldout.groupby("experiment"):
        assert sorted(rows.pair_id.unique()) == held, name
        if name in CURVE_NAMES:
            assert set(rows.param) == set(SCALES), name
        elif name in CLASS_NAMES:
            assert set(rows.param) == {entry["scale"]}, name
        else:
            assert name == "steer_null" and set(rows.param) == set(map(float, range(steering.N_NULL)))
    assert set(heldout.experiment) == CURVE_NAMES | CLASS_NAMES | {"steer_null"}
    assert set(heldout[heldout.experiment.isin(["steer_reverse", "steer_reverse_random"])].target) == {"tuned"}
    assert set(heldout[~heldout.experiment.isin(["steer_reverse", "steer_reverse_random"])].target) == {"base"}
    transfer = eff[eff.split == "transfer"]
    assert set(transfer.experiment) == {"steer", "steer_random", "steer_reverse"} and set(transfer.param) == set(SCALES)
    assert sorted(transfer.pair_id.unique()) == run.manifest["transfer_data"]["pair_ids"]
    scan = eff[eff.split == "fit"]
    assert set(scan.experiment) == {"steer_scan", "steer_scan_random"} and sorted(scan.pair_id.unique()) == fit
    assert set(scan[scan.experiment == "steer_scan"].param) == set(SCALES)
    assert set(scan[scan.experiment == "steer_scan_random"].param) == {1.0}
    assert sorted(scan.layer.unique()) == list(range(run.summary["n_layers"]))


def test_layer_and_scale_are_the_fit_half_cell_closest_to_the_gain(run):
    """(ℓ, a) is chosen on the fit half (the scan's cell whose mean effect is closest to the fit half's mean gain)
    and reported once on the held-out half; the selection record says which pairs did what."""
    entry = _entry(run)
    fit, held = _halves(run)
    scan = run.effects[run.effects.experiment == "steer_scan"]
    means = scan.groupby(["layer", "param"]).effect.mean()
    gain = run.scores.set_index("pair_id").gain.reindex(fit).mean()
    layer, scale = (means - gain).abs().idxmin()
    assert (entry["layer"], entry["scale"]) == (int(layer), float(scale))
    assert entry["layer_rule"] == steering.RULE_SCAN == entry["layer_choice"]["rule"]
    sel = entry["selection"]
    assert sel["chosen"] == {"layer": entry["layer"], "scale": entry["scale"]}
    assert sel["explore_pair_ids"] == fit and sel["confirm_pair_ids"] == held
    held_rows = run.effects[
        (run.effects.experiment == "steer") & (run.effects.split == "heldout") & (run.effects.param == scale)
    ]
    assert sel["confirm"]["mean"] == pytest.approx(held_rows.effect.mean()) and sel["confirm"]["n"] == len(held)
    assert sel["in_sample"]["mean"] == pytest.approx(means[(layer, scale)])
    scan_entry = run.summary["experiments"]["steer_scan"]  # it ran for steer, so the summary says so
    assert scan_entry["chosen"] == sel["chosen"] and scan_entry["by_layer"] == entry["layer_choice"]["by_layer"]
    assert len(scan_entry["grid"]) == run.summary["n_layers"] * len(SCALES)
    assert (
        entry["layer_choice"]["e1_layer"]
        == run.summary["experiments"]["patch_tuned_to_base"]["heldout"]["chosen_layer"]
    )


def test_summary_keys(run):
    entry = _entry(run)
    assert set(entry) == {
        "layer",
        "scale",
        "layer_rule",
        "by_c",
        "recovered_fraction",
        "excess_over_random",
        "null",
        "selection",
        "baselines",
        "variants",
        "per_token",
        "reverse",
        "kl",
        "transfer",
        "gain",
        "layer_choice",
        "fit",
    }
    assert [r["c"] for r in entry["by_c"]] == list(SCALES) and all(set(r) == CURVE for r in entry["by_c"])
    assert set(entry["recovered_fraction"]) == FRACTION
    assert set(entry["baselines"]) == {"random", "contrast", "lowrank", "pooled"}
    for b in entry["baselines"].values():
        assert set(b) == {"by_c", "recovered_fraction"} and all(set(r) == CURVE for r in b["by_c"])
    assert set(entry["variants"]) == {"last_prompt", "first", "rest"}
    assert {"n", "percentile", "p", "q95", "exceeds_q95", "quantiles", "effect", "means"} <= set(entry["null"])
    assert entry["null"]["n"] == steering.N_NULL == len(entry["null"]["means"])
    assert set(entry["selection"]) == {"explore_pair_ids", "confirm_pair_ids", "chosen", "confirm", "in_sample", "rule"}
    assert set(entry["reverse"]) == {"by_c", "lost_fraction", "random"}
    assert set(entry["kl"]) == {"positions", "layer", "scale", "base", "steered", "fraction_closed", "by_c"}
    assert [r["c"] for r in entry["kl"]["by_c"]] == list(SCALES)
    at = next(r for r in entry["kl"]["by_c"] if r["c"] == entry["scale"])
    assert at["steered"] == entry["kl"]["steered"] and at["fraction_closed"] == entry["kl"]["fraction_closed"]
    assert {
        "by_c",
        "recovered_fraction",
        "random",
        "excess_over_random",
        "reverse",
        "gain",
        "n_pairs",
        "vs_heldout",
    } == set(entry["transfer"])
    _, held = _halves(run)
    assert all(r["n"] == len(held) for r in entry["by_c"])
    assert all(r["n"] == len(run.manifest["transfer_data"]["pair_ids"]) for r in entry["transfer"]["by_c"])
    json.dumps(entry)


def test_the_null_is_located_from_its_rows(run):
    entry, eff = _entry(run), run.effects
    _, held = _halves(run)
    null = eff[(eff.experiment == "steer_null") & (eff.split == "heldout")]
    draws = null.groupby("param").effect.mean().to_numpy()
    v = eff[(eff.experiment == "steer") & (eff.split == "heldout") & (eff.param == entry["scale"])].effect.mean()
    sign = np.sign(run.scores.set_index("pair_id").gain.reindex(held).mean())
    o, e = sign * draws, sign * v
    assert entry["null"]["percentile"] == pytest.approx(100 * ((o < e).sum() + 0.5 * (o == e).sum()) / len(o))
    assert entry["null"]["p"] == pytest.approx((1 + (o >= e).sum()) / (len(o) + 1))
    assert entry["null"]["q95"] == pytest.approx(sign * np.quantile(o, 0.95))
    assert entry["null"]["means"] == pytest.approx(list(draws))
    # draw 0 of the null is the random baseline at the chosen scale (one run, the same numbers)
    rnd = eff[(eff.experiment == "steer_random") & (eff.split == "heldout") & (eff.param == entry["scale"])]
    first = null[null.param == 0.0]
    np.testing.assert_array_equal(
        rnd.set_index("pair_id").effect.sort_index(), first.set_index("pair_id").effect.sort_index()
    )


def test_fractions_and_sign_conventions(run):
    entry, eff = _entry(run), run.effects
    scale = entry["scale"]
    scores = run.scores.set_index("pair_id")
    _, held = _halves(run)
    gain = scores.gain.reindex(held)
    one = eff[(eff.param == scale) & (eff.split == "heldout")]
    fwd = one[one.experiment == "steer"].set_index("pair_id").sort_index()
    rev = one[one.experiment == "steer_reverse"].set_index("pair_id").sort_index()
    np.testing.assert_allclose(fwd.clean_delta_logp, scores.base_delta_logp.reindex(held), atol=1e-4)
    np.testing.assert_allclose(rev.clean_delta_logp, scores.tuned_delta_logp.reindex(held), atol=1e-4)
    rf = stats.ratio_ci(fwd.effect.to_numpy(), gain.to_numpy(), seed=0, n_boot=100)
    assert entry["recovered_fraction"]["defined"] == rf["defined"]
    if rf["defined"]:
        assert entry["recovered_fraction"]["mean"] == pytest.approx(fwd.effect.mean() / gain.mean())
        assert entry["reverse"]["lost_fraction"]["mean"] == pytest.approx(-rev.effect.mean() / gain.mean())
    else:
        assert np.isnan(entry["recovered_fraction"]["mean"]) and "undefined" in entry["recovered_fraction"]["text"]
    assert entry["gain"]["mean"] == pytest.approx(gain.mean())
    # excess: v minus the null's per-pair mean over its draws
    null = eff[(eff.experiment == "steer_null") & (eff.split == "heldout")].groupby("pair_id").effect.mean()
    excess = stats.ratio_ci((fwd.effect - null.reindex(fwd.index)).to_numpy(), gain.to_numpy(), seed=0, n_boot=100)
    assert entry["excess_over_random"]["text"] == excess["text"]
    # transfer gain: tuned − base clean Δ on the transfer pairs
    t = eff[(eff.param == scale) & (eff.split == "transfer")]
    t_gain = (
        t[t.experiment == "steer_reverse"].set_index("pair_id").clean_delta_logp
        - t[t.experiment == "steer"].set_index("pair_id").clean_delta_logp
    )
    assert entry["transfer"]["gain"]["mean"] == pytest.approx(t_gain.mean())
    # per-token: each side's log-prob change over its completion length, against the per-token gain
    n = scores.reindex(held)
    per_token = (fwd.patched_logp_chosen - fwd.clean_logp_chosen) / n.n_chosen_tokens - (
        fwd.patched_logp_rejected - fwd.clean_logp_rejected
    ) / n.n_rejected_tokens
    pt = stats.ratio_ci(per_token.to_numpy(), n.gain_per_token.to_numpy(), seed=0, n_boot=100)
    assert entry["per_token"]["v"]["text"] == pt["text"]


def test_no_transfer_key_without_transfer_data(run):
    fits = json.loads(json.dumps(run.fits))
    fits["steer"]["transfer_pairs"] = 0
    effects = run.effects[run.effects.split != "transfer"]
    cfg = SuiteConfig(experiments=("patch_tuned_to_base", "steer"), n_boot=100, steer_cs=SCALES)
    entry = steering.summarize_steering(Tables(effects, run.scores, fits, cfg, 4, 0))["steer"]
    assert "transfer" not in entry
    assert entry["by_c"] == _entry(run)["by_c"]


def test_summary_regenerates_from_the_tables(run, run_dir):
    assert json_bytes(run.summarize()) == (run_dir / "summary.json").read_bytes()
    html = (run_dir / "report.html").read_text()
    assert 'id="section-steer"' in html and "Steering with the localized direction (E11)" in html


def test_vectors_and_kl_recomputed_by_hand(tiny_pair):
    """v_ℓ,c from TransformerLens caches at the class positions of the fit half; every condition's per-class
    vectors (baselines at v's per-class norms, the null's 100 draws, the reverse, the class parts); KL(T ‖ B) and
    KL(T ‖ steered B) at the predicting positions from full forwards."""
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tokenized = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=6, seed=0, max_length=72)

    def plan(scales):
        return Plan(
            cfg=SuiteConfig(experiments=("steer",), steer_layer=2, steer_cs=scales, n_boot=50),
            n_layers=tiny_pair.n_layers,
            d_model=tiny_pair.d_model,
            selected=("steer",),
            pair_ids=tuple(t.pair_id for t in tokenized),
            twins=tiny_pair,
            tokenized=tokenized,
        )

    assert steering.fit_scan(plan((1.0,))).specs == []  # --steer-layer and one scale: nothing to choose
    scan = steering.fit_scan(plan((2.0,)))  # the grid is 1, 2: the scan chooses a at layer 2
    assert {(s.key.experiment, s.key.layer, s.key.param) for s in scan.specs} == {
        ("steer_scan", 2, 1.0),
        ("steer_scan", 2, 2.0),
        ("steer_scan_random", 2, 1.0),
    }
    fitted = steering.fit_steering(plan((1.0,)))
    rec = fitted.record
    assert (
        rec["layer"] == 2
        and rec["scale"] == 1.0
        and rec["scales"] == [1.0]
        and rec["layer_rule"] == steering.RULE_OVERRIDE
    )
    fit_ids, held = stats.explore_confirm([t.pair_id for t in tokenized], seed=0)
    name = "blocks.2.hook_resid_post"
    sums, counts = torch.zeros(3, tiny_pair.d_model, dtype=torch.float64), torch.zeros(3)
    for t in tokenized:
        if t.pair_id not in fit_ids:
            continue
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            toks = ap.sequence_tokens(t, side)
            acts = {
                m: model.run_with_cache(toks, names_filter=name)[1][name][0].double()
                for m, model in (("base", tiny_pair.base), ("tuned", tiny_pair.tuned))
            }
            p, n = seq.completion_start, seq.length
            for c, span in enumerate((range(p - 1, p), range(p, min(p + 8, n - 1)), range(p + 8, n - 1))):
                for i in span:
                    sums[c] += acts["tuned"][i] - acts["base"][i]
                    counts[c] += 1
    v = sums / counts[:, None]
    assert rec["positions"] == [int(x) for x in counts]
    by = {(s.key.experiment, s.key.param): s for s in fitted.specs}
    for s in fitted.specs:
        assert isinstance(s.intervention, AddByClass) and s.pair_ids == frozenset(held) and s.key.scope == "predicting"
    vec = {key: s.intervention.vectors.double() for key, s in by.items()}
    torch.testing.assert_close(vec[("steer", 1.0)], v, rtol=1e-5, atol=1e-6)
    norms = v.norm(dim=-1)
    for name_ in ("steer_random", "steer_contrast", "steer_lowrank"):
        torch.testing.assert_close(vec[(name_, 1.0)].norm(dim=-1), norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        vec[("steer_pooled", 1.0)], (sums.sum(0) / counts.sum()).expand(3, -1), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(vec[("steer_reverse", 1.0)], -vec[("steer", 1.0)])
    torch.testing.assert_close(vec[("steer_reverse_random", 1.0)], -vec[("steer_random", 1.0)])
    draws = [vec[("steer_null", float(j))] for j in range(steering.N_NULL)]
    assert all(torch.allclose(d.norm(dim=-1), norms.float().double(), rtol=1e-5) for d in draws)
    assert torch.equal(draws[0], vec[("steer_random", 1.0)])  # draw 0 is the random baseline
    cos = torch.nn.functional.cosine_similarity(draws[1], draws[2], dim=-1)
    assert cos.abs().max() < 0.9  # distinct draws
    for c, cls in enumerate(("last_prompt", "first", "rest")):
        only = vec[(steering.CLASS_ONLY[cls], 1.0)]
        assert torch.equal(only[c], vec[("steer", 1.0)][c]) and not only[[i for i in range(3) if i != c]].any()
    # KL at the predicting positions, by hand, for the first held-out pair
    kl = rec["kl"]
    assert kl["pair_id"] == held
    t = next(x for x in tokenized if x.pair_id == held[0])
    total = {"base": 0.0, "steered": 0.0}
    count = 0
    for side in ("chosen", "rejected"):
        seq = t.sequence(side)
        toks = ap.sequence_tokens(t, side)
        cls = predicting_classes(seq.completion_start, seq.length, 8)
        add = torch.zeros(seq.length, tiny_pair.d_model)
        add[cls >= 0] = v.float()[cls[cls >= 0]]
        with torch.no_grad():
            lt = torch.log_softmax(tiny_pair.tuned(toks)[0].double(), -1)
            lb = torch.log_softmax(tiny_pair.base(toks)[0].double(), -1)
            ls = torch.log_softmax(
                tiny_pair.base.run_with_hooks(toks, fwd_hooks=[(name, lambda a, hook: a + add)])[0].double(), -1
            )
        at = cls >= 0
        for key, other in (("base", lb), ("steered", ls)):
            total[key] += float((lt.exp() * (lt - other))[at].sum())
        count += int(at.sum())
    assert kl["base"][0] == pytest.approx(total["base"] / count, rel=1e-4)
    assert kl["scales"] == [1.0] and kl["steered"][0][0] == pytest.approx(total["steered"] / count, rel=1e-4)


def test_fast_engine_equals_reference_on_steering_conditions(tiny_pair):
    """AddByClass through the fast engine (prompt shared, runs from block ℓ + 1) and the reference engine
    (run_with_hooks over the whole sequence) give the same rows, at the residual and at a component's output."""
    from alignment_probe.engine import FastEngine, ReferenceEngine

    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tokenized = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=3, seed=5, max_length=72)
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(3, tiny_pair.d_model, generator=gen, dtype=torch.float64)
    specs = [
        steering.class_spec(
            name,
            sign * vectors,
            layer=layer,
            hook=hook,
            param=1.0,
            split="heldout",
            pair_ids=[t.pair_id for t in tokenized],
        )
        for name, sign in (("steer", 1.0), ("steer_reverse", -1.0))
        for layer, hook in ((0, "resid_pre"), (1, "resid_post"), (2, "mlp_out"), (3, "resid_post"))
    ]
    ref = ReferenceEngine().run(tiny_pair, tokenized, specs)
    fast = FastEngine(batch_size=3).run(tiny_pair, tokenized, specs)
    keys = ["experiment", "target", "hook", "scope", "layer", "pair_id"]
    pd.testing.assert_frame_equal(ref[keys], fast[keys])
    assert set(fast.scope) == {"predicting"} and set(fast[fast.experiment == "steer_reverse"].target) == {"tuned"}
    for col in ("patched_logp_chosen", "patched_logp_rejected", "effect"):
        assert np.abs(ref[col].to_numpy() - fast[col].to_numpy()).max() <= 1e-4, col
    assert fast.effect.abs().min() > 1e-3  # not vacuous: every condition moves Δlogp


def test_steer_layer_with_one_scale_has_nothing_to_choose(tiny, tmp_path):
    """--steer-layer and a single scale: no scan rows, the rule says so; with several scales the scan runs at that
    layer only and chooses a."""
    run = ap.run_suite(
        tmp_path / "run",
        base=tiny.base,
        tuned=tiny.tuned,
        data=BUNDLED_PAIRS,
        n_pairs=4,
        max_length=72,
        experiments=("patch_tuned_to_base", "steer"),
        steer_layer=1,
        steer_cs=(1.0,),
        n_boot=50,
        progress=False,
    )
    entry = run.summary["experiments"]["steer"]
    assert (entry["layer"], entry["scale"], entry["layer_rule"]) == (1, 1.0, steering.RULE_OVERRIDE)
    assert entry["layer_choice"]["by_layer"] == [] and entry["layer_choice"]["chosen"] is None
    assert entry["selection"]["in_sample"] is None
    assert (
        not run.effects.experiment.str.startswith("steer_scan").any() and "steer_scan" not in run.summary["experiments"]
    )
    assert set(run.effects[run.effects.experiment.str.startswith("steer")].layer) == {1}


def test_bad_transfer_data_fails_before_any_model_loads(tiny, tmp_path):
    args = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(BUNDLED_PAIRS),
        "--experiments",
        "patch_tuned_to_base,steer",
        "--transfer-data",
        str(tmp_path / "missing.jsonl"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) != 0
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_findings_tables_quote_the_steering_summary(run_dir):
    """The real-model findings (docs/findings-smollm2.md) quote the run's own numbers at the chosen scale a."""
    from alignment_probe.realmodels.findings import collect, render_tables
    from alignment_probe.report.format import ci_cell

    summary = json.loads((run_dir / "summary.json").read_text())
    st = summary["experiments"]["steer"]
    found = collect({"steer": summary}, n_layers=4, planted_layer=2)
    assert found["steer"]["steer"]["layer"] == st["layer"]
    tables = render_tables(found)
    at_a = next(r for r in st["by_c"] if r["c"] == st["scale"])
    assert f"E11 steering at layer {st['layer']}" in tables and "E11 transfer" in tables
    assert f"held-out half, c = {st['scale']:g};" in tables
    assert f"| v_ℓ (mean tuning shift) | {ci_cell(at_a['mean'], [at_a['ci_low'], at_a['ci_high']])} |" in tables
    assert "nan" not in tables.split("E11 steering at layer", 1)[1]


# --------------------------------------------------------------------------------------------------
# known answers


def test_a_bias_twin_is_steered_exactly(tmp_path):
    """A twin that differs from its base only by a vector u added to the *last* block's MLP output bias has
    h_T − h_B = u at every position of ``resid_post`` there, so v_ℓ,c = u for every class, and the base steered
    there with a = 1 at the predicting positions scores every completion token exactly as the twin does (nothing
    downstream but the final norm and unembedding, which work position by position; BOS and the earlier prompt,
    left alone, feed nothing that is scored). So the scan picks (last layer, a = 1) on the fit half, the effect equals
    the gain on every held-out pair (recovered fraction 1), −v_ℓ on the twin loses all of it, the KL to the twin is
    closed, and a = 2 is not the twin. (Where v falls in the null is not part of the known answer: in 32
    dimensions right before the unembedding, random directions of ‖u‖ move Δ a lot, either way.) (GPT-2: its MLPs have an output bias.)"""
    from tests.helpers.checkpoints import gpt2_bias_twin, save_checkpoint, train_tokenizer

    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs], vocab_size=320)
    # (a u whose gain has the same sign on every held-out pair, so the ratio is defined: statistics.md)
    layer = 2
    base, twin = gpt2_bias_twin(tok, block=layer)
    dirs = {k: save_checkpoint(m, tok, tmp_path / k) for k, m in (("base", base), ("tuned", twin))}
    run = ap.run_suite(
        tmp_path / "run",
        base=dirs["base"],
        tuned=dirs["tuned"],
        data=BUNDLED_PAIRS,
        experiments=("steer",),
        n_pairs=12,
        max_length=128,
        steer_cs=(1.0, 2.0),
        n_boot=100,
        progress=False,
    )
    entry, eff = _entry(run), run.effects
    scores = run.scores.set_index("pair_id")
    _, held = stats.explore_confirm(run.scores.pair_id.tolist(), seed=0)
    gain = scores.gain.reindex(held)
    assert (entry["layer"], entry["scale"]) == (layer, 1.0) and gain.min() > 1e-3 and entry["gain"]["ci_low"] > 0
    one = eff[(eff.param == 1.0) & (eff.split == "heldout")]
    fwd = one[one.experiment == "steer"].set_index("pair_id").effect.reindex(held)
    rev = one[one.experiment == "steer_reverse"].set_index("pair_id").effect.reindex(held)
    np.testing.assert_allclose(fwd, gain, atol=1e-4)
    np.testing.assert_allclose(-rev, gain, atol=1e-4)
    assert entry["recovered_fraction"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert entry["reverse"]["lost_fraction"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert entry["kl"]["fraction_closed"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert entry["null"]["n"] == steering.N_NULL
    two = eff[(eff.param == 2.0) & (eff.split == "heldout") & (eff.experiment == "steer")].set_index("pair_id")
    assert np.abs(two.effect.reindex(held) - gain).max() > 1e-2


# A twin whose tuning differs by position class: T = B with one embedding row per token changed, by u_LP for the
# token that ends every prompt, u_F for the tokens of the first 8 completion positions and u_R for the rest's;
# no other token changes. At ``resid_pre`` of block 0 (the embedding) h_T − h_B is then exactly u_c at every class-c
# position and 0 at BOS and the earlier prompt: per-class vectors at a = 1 reproduce the twin's residual at every
# predicting position; one pooled vector (or one class's vector alone) cannot.
PROMPT_WORDS = ["bag", "cab", "dab", "fad", "gab", "had", "bad", "ace", "bed", "cage"]
FIRST_WORDS = ["kin", "lip", "mop", "nil", "ink", "pin", "limo", "mink"]
REST_WORDS = ["sun", "tux", "rust", "stun", "turn", "rut", "run", "tsu"]
MARKER = " zz"


def _class_data(n_pairs: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)

    def completion() -> str:
        n = int(rng.integers(3, 20))
        words = [FIRST_WORDS[int(i)] for i in rng.integers(0, len(FIRST_WORDS), min(n, 8))]
        words += [REST_WORDS[int(i)] for i in rng.integers(0, len(REST_WORDS), max(n - 8, 0))]
        return "".join(" " + w for w in words)

    return [
        {
            "prompt": " ".join(
                PROMPT_WORDS[int(i)] for i in rng.integers(0, len(PROMPT_WORDS), int(rng.integers(2, 9)))
            )
            + MARKER,
            "chosen": completion(),
            "rejected": completion(),
        }
        for _ in range(n_pairs)
    ]


def test_a_twin_tuned_by_position_class_is_recovered_only_with_per_class_vectors(tmp_path):
    from tests.helpers.checkpoints import llama_config, random_llama, save_checkpoint, train_tokenizer

    rows = _class_data(16, seed=1)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [r["prompt"] + r[s] for r in _class_data(400, seed=2) for s in ("chosen", "rejected")]
    tok = train_tokenizer(corpus, vocab_size=400)  # enough merges that every " word" is one token
    base = random_llama(llama_config(tok, num_hidden_layers=3), seed=7)
    pairs, _ = load_pairs(data)
    tokenized = sample_and_tokenize(pairs, tok, n_pairs=None, seed=0, max_length=64)
    # the token sets of the classes (and of the positions that must not move) are disjoint: the known answer holds
    sets = {c: set() for c in (-1, 0, 1, 2)}
    counts = torch.zeros(3)
    for t in tokenized:
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            ids = list(seq.prompt_ids) + list(seq.completion_ids)
            for i, c in enumerate(predicting_classes(seq.completion_start, seq.length, 8).tolist()):
                if i < seq.length - 1:  # the last completion token's own shift is never scored
                    sets[c].add(ids[i])
                    counts[c] += c >= 0
    assert all(not (sets[a] & sets[b]) for a in sets for b in sets if a < b), "class token sets overlap"
    gen = torch.Generator().manual_seed(11)
    u = torch.randn(3, base.config.hidden_size, generator=gen) * 2.0
    # u_R balances u_F over the data's F and R positions: the shift pooled over the completion is about 0, so one
    # pooled vector is about u_LP / (mean predicting positions per run), far from every class's own shift
    u[2] = -u[1] * counts[1] / counts[2]
    twin = copy.deepcopy(base)
    with torch.no_grad():
        for c in (0, 1, 2):
            for token in sets[c]:
                twin.model.embed_tokens.weight[token] += u[c]
    dirs = {k: save_checkpoint(m, tok, tmp_path / k) for k, m in (("base", base), ("tuned", twin))}
    run = ap.run_suite(
        tmp_path / "run",
        base=dirs["base"],
        tuned=dirs["tuned"],
        data=data,
        experiments=("steer",),
        n_pairs=None,
        max_length=64,
        hook="resid_pre",
        extra_hooks=(),
        steer_cs=(1.0, 2.0),
        n_boot=100,
        progress=False,
    )
    entry, eff = _entry(run), run.effects
    _, held = stats.explore_confirm(run.scores.pair_id.tolist(), seed=0)
    gain = run.scores.set_index("pair_id").gain.reindex(held)
    assert (entry["layer"], entry["scale"]) == (0, 1.0) and gain.abs().min() > 1e-2
    torch.testing.assert_close(torch.tensor(entry["fit"]["norm"]), u.norm(dim=-1), rtol=1e-5, atol=1e-5)

    def effects(name: str):
        rows = eff[(eff.experiment == name) & (eff.split == "heldout") & (eff.param == 1.0)]
        return rows.set_index("pair_id").effect.reindex(held)

    # per-class vectors at a = 1 are the twin at every predicting position: its gain on every held-out pair
    np.testing.assert_allclose(effects("steer"), gain, atol=1e-3)
    rec = entry["recovered_fraction"]
    assert rec["mean"] == pytest.approx(1.0, abs=1e-3) and rec["ci_low"] > 0.99 and rec["ci_high"] < 1.01
    assert entry["kl"]["fraction_closed"]["mean"] == pytest.approx(1.0, abs=1e-3)
    # one pooled vector, or one class's vector alone, is not: pair by pair it misses the gain by far (the pooled
    # vector's ratio of means may land near 1 by chance; its CI then spans a wide range, not the point 1)
    scale = gain.abs().max()
    for name in ("steer_pooled", "steer_last_prompt", "steer_first", "steer_rest"):
        assert np.abs(effects(name) - gain).max() > 0.3 * scale, name
    pooled = entry["baselines"]["pooled"]["recovered_fraction"]
    assert pooled["ci_high"] - pooled["ci_low"] > 0.5

"""E11 — steering with the localized direction (experiments/steering.py), on the tiny twins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import alignment_probe as ap
from alignment_probe import stats
from alignment_probe.cli import main
from alignment_probe.data import load_pairs
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import registry, steering
from alignment_probe.experiments.registry import Plan, Tables
from alignment_probe.experiments.suite import SuiteConfig
from alignment_probe.interventions import AddFixed, SequenceContext
from alignment_probe.tables import json_bytes
from alignment_probe.tokens import sample_and_tokenize

from conftest import BUNDLED_PAIRS

CS = (0.0, 1.0, 2.0)
CURVE = {"c", "mean", "ci_low", "ci_high", "n"}
FRACTION = {"mean", "ci_low", "ci_high"}


@pytest.fixture(scope="module")
def transfer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("transfer") / "other.jsonl"
    path.write_text("".join(BUNDLED_PAIRS.read_text().splitlines(keepends=True)[-80:]))
    return path


@pytest.fixture(scope="module")
def run_dir(tiny, transfer_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "run"
    args = ["run", "--base", str(tiny.base), "--tuned", str(tiny.tuned), "--data", str(BUNDLED_PAIRS),
            "--n-pairs", "8", "--max-length", "72", "--n-boot", "100", "--pairs-per-part", "4",
            "--experiments", "patch_tuned_to_base,steer", "--steer-c", ",".join(map(str, CS)),
            "--transfer-data", str(transfer_file), "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return ap.load_run(run_dir)


def _entry(run):
    return run.summary["experiments"]["steer"]


def test_steer_is_opt_in():
    for name in ("steer", "steer_scan"):
        assert name not in SuiteConfig().experiments and name not in registry.experiment_names()
        assert name in registry.experiment_names(opt_in=True)
        assert registry.method_id(name) == "E11"
    assert "steer_scan" in registry.get("steer").needs  # naming steer runs the scan that chooses its layer
    SuiteConfig(experiments=("steer",)).validate()
    with pytest.raises(ConfigError, match="steer"):
        SuiteConfig(experiments=("patch_tuned_to_base",), transfer_data="x.jsonl").validate()


def test_c_zero_is_exactly_zero(run):
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    zero = eff[eff.param == 0.0]
    assert len(zero) and (zero.effect == 0.0).all()
    assert set(zero.experiment) == {"steer", "steer_random", "steer_contrast", "steer_lowrank", "steer_reverse",
                                    "steer_reverse_random", "steer_last_prompt", "steer_last_prompt_random"}


def test_rows_only_on_the_heldout_half_and_transfer_pairs(run):
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    assert set(eff.split) == {"fit", "heldout", "transfer"}
    fit, held = stats.split_halves(run.scores.pair_id.tolist(), seed=0)
    steered = eff[eff.split != "fit"]
    for name, rows in steered[steered.split == "heldout"].groupby("experiment"):
        assert sorted(rows.pair_id.unique()) == held, name
        assert set(rows.param) == set(CS)
    transfer = steered[steered.split == "transfer"]
    assert set(transfer.experiment) == {"steer", "steer_random", "steer_reverse", "steer_last_prompt",
                                        "steer_last_prompt_random"}
    assert sorted(transfer.pair_id.unique()) == run.manifest["transfer_data"]["pair_ids"]
    layer = _entry(run)["layer"]
    assert set(steered.layer) == {layer} and set(steered.hook) == {"resid_post"}
    assert set(steered.scope) == {"all", "last_prompt"}
    assert set(steered[steered.scope == "last_prompt"].experiment) == {"steer_last_prompt", "steer_last_prompt_random"}
    # the scan: v_ℓ and the random direction at c = 1 at every layer, on the fit half only
    scan = eff[eff.split == "fit"]
    assert set(scan.experiment) == {"steer_scan", "steer_scan_random"} and set(scan.param) == {1.0}
    assert sorted(scan.pair_id.unique()) == fit
    assert sorted(scan.layer.unique()) == list(range(run.summary["n_layers"]))


def test_the_layer_is_the_scans_fit_half_argmax(run):
    """The steering layer is chosen on the fit half (the layer whose v_ℓ raises Δlogp most), never on the held-out
    half; E1's fit-half peak is recorded beside it."""
    entry = _entry(run)
    scan = run.effects[run.effects.experiment == "steer_scan"]
    means = scan.groupby("layer").effect.mean()
    assert entry["layer"] == int(means.idxmax())
    assert entry["layer_rule"] == steering.RULE_SCAN == entry["layer_choice"]["rule"]
    choice = entry["layer_choice"]
    assert choice["chosen_layer"] == choice["layer"] == entry["layer"] == run.summary["experiments"]["steer"]["layer"]
    scan_entry = run.summary["experiments"]["steer_scan"]  # it ran for steer, so the summary says so
    assert scan_entry["chosen_layer"] == entry["layer"] and scan_entry["by_layer"] == choice["by_layer"]
    assert choice["e1_layer"] == run.summary["experiments"]["patch_tuned_to_base"]["heldout"]["chosen_layer"]
    assert [r["layer"] for r in choice["by_layer"]] == list(range(run.summary["n_layers"]))
    for r in choice["by_layer"]:
        assert r["v"]["mean"] == pytest.approx(means[r["layer"]]) and r["v"]["n"] == len(stats.split_halves(
            run.scores.pair_id.tolist(), seed=0)[0])
        assert set(r["v"]) == set(r["random"]) == CURVE - {"c"} | {"recovered_fraction"}


def test_summary_keys(run):
    entry = _entry(run)
    assert set(entry) == {"layer", "layer_rule", "by_c", "recovered_fraction", "excess_over_random", "baselines",
                          "variants", "per_token", "reverse", "transfer", "gain", "layer_choice", "fit"}
    assert [r["c"] for r in entry["by_c"]] == list(CS) and all(set(r) == CURVE for r in entry["by_c"])
    assert set(entry["recovered_fraction"]) == FRACTION
    assert set(entry["baselines"]) == {"random", "contrast", "lowrank"}
    for b in entry["baselines"].values():
        assert set(b) == {"by_c", "recovered_fraction"} and all(set(r) == CURVE for r in b["by_c"])
    last = entry["variants"]["last_prompt"]
    assert set(last) == {"by_c", "recovered_fraction", "random", "excess_over_random", "scope", "norm"}
    assert last["scope"] == "last_prompt" and set(last["excess_over_random"]) == set(entry["excess_over_random"]) == FRACTION
    assert set(last["random"]) == {"by_c", "recovered_fraction"} and all(set(r) == CURVE for r in last["by_c"])
    assert set(entry["per_token"]) == {"v", "random", "last_prompt", "last_prompt_random", "gain"}
    assert set(entry["reverse"]) == {"by_c", "lost_fraction", "random"}
    assert set(entry["reverse"]["lost_fraction"]) == FRACTION
    assert set(entry["reverse"]["random"]) == {"by_c", "lost_fraction"}
    assert {"by_c", "recovered_fraction", "random", "excess_over_random", "reverse", "variants", "gain",
            "n_pairs"} == set(entry["transfer"])
    assert set(entry["transfer"]["variants"]["last_prompt"]) == {"by_c", "recovered_fraction", "random",
                                                                 "excess_over_random"}
    held = len(stats.split_halves(run.scores.pair_id.tolist(), seed=0)[1])
    assert all(r["n"] == held for r in entry["by_c"])
    assert all(r["n"] == len(run.manifest["transfer_data"]["pair_ids"]) for r in entry["transfer"]["by_c"])


def test_no_transfer_key_without_transfer_data(run):
    fits = json.loads(json.dumps(run.fits))
    fits["steer"]["transfer_pairs"] = 0
    effects = run.effects[run.effects.split != "transfer"]
    cfg = SuiteConfig(experiments=("patch_tuned_to_base", "steer"), n_boot=100, steer_cs=CS)
    entry = steering.summarize_steering(Tables(effects, run.scores, fits, cfg, 4, 0))["steer"]
    assert "transfer" not in entry
    assert entry["by_c"] == _entry(run)["by_c"]


def test_summary_regenerates_from_the_tables(run, run_dir):
    assert json_bytes(run.summarize()) == (run_dir / "summary.json").read_bytes()
    assert 'id="section-steer"' in (run_dir / "report.html").read_text()
    assert "Steering with the localized direction (E11)" in (run_dir / "report.html").read_text()


def test_fractions_and_sign_conventions(run):
    entry, eff = _entry(run), run.effects
    scores = run.scores.set_index("pair_id")
    _, held = stats.split_halves(run.scores.pair_id.tolist(), seed=0)
    gain = scores.gain.reindex(held)
    one = eff[(eff.param == 1.0) & (eff.split == "heldout")]
    fwd = one[one.experiment == "steer"].set_index("pair_id").sort_index()
    rev = one[one.experiment == "steer_reverse"].set_index("pair_id").sort_index()
    # forward: the base is the target (its own Δ is the clean one); reverse: the tuned model is
    assert (fwd.target == "base").all() and (rev.target == "tuned").all()
    np.testing.assert_allclose(fwd.clean_delta_logp, scores.base_delta_logp.reindex(held), atol=1e-4)
    np.testing.assert_allclose(rev.clean_delta_logp, scores.tuned_delta_logp.reindex(held), atol=1e-4)
    np.testing.assert_allclose(fwd.effect, fwd.patched_delta_logp - fwd.clean_delta_logp, atol=1e-9)
    assert entry["recovered_fraction"]["mean"] == pytest.approx(fwd.effect.mean() / gain.mean())
    assert entry["reverse"]["lost_fraction"]["mean"] == pytest.approx(-rev.effect.mean() / gain.mean())
    assert entry["gain"]["mean"] == pytest.approx(gain.mean())
    # transfer gain: tuned − base clean Δ on the transfer pairs
    t = eff[(eff.param == 1.0) & (eff.split == "transfer")]
    t_gain = (t[t.experiment == "steer_reverse"].set_index("pair_id").clean_delta_logp
              - t[t.experiment == "steer"].set_index("pair_id").clean_delta_logp)
    assert entry["transfer"]["gain"]["mean"] == pytest.approx(t_gain.mean())
    # per-token: each side's log-prob change over its completion length, against the per-token gain
    n = scores.reindex(held)
    per_token = ((fwd.patched_logp_chosen - fwd.clean_logp_chosen) / n.n_chosen_tokens
                 - (fwd.patched_logp_rejected - fwd.clean_logp_rejected) / n.n_rejected_tokens)
    assert entry["per_token"]["v"]["mean"] == pytest.approx(per_token.mean() / n.gain_per_token.mean())
    last = one[one.experiment == "steer_last_prompt"].set_index("pair_id").sort_index()
    assert (last.scope == "last_prompt").all() and (last.target == "base").all()
    assert entry["variants"]["last_prompt"]["recovered_fraction"]["mean"] == pytest.approx(last.effect.mean() / gain.mean())
    rnd = one[one.experiment == "steer_random"].set_index("pair_id").sort_index()
    assert entry["excess_over_random"]["mean"] == pytest.approx((fwd.effect - rnd.effect).mean() / gain.mean())


def test_fixed_vectors_have_norm_s(tiny_pair):
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tokenized = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=6, seed=0, max_length=72)
    cfg = SuiteConfig(experiments=("steer",), steer_layer=2, steer_cs=(0.5, 2.0), n_boot=50)
    plan = Plan(cfg=cfg, n_layers=tiny_pair.n_layers, d_model=tiny_pair.d_model, selected=("steer",),
                pair_ids=tuple(t.pair_id for t in tokenized), twins=tiny_pair, tokenized=tokenized)
    fitted = steering.fit_steering(plan)
    rec = fitted.record
    assert rec["layer"] == 2 and rec["cs"] == [0.5, 1.0, 2.0] and rec["layer_source"] == "--steer-layer"
    fit_ids, held = stats.split_halves([t.pair_id for t in tokenized], seed=0)
    assert rec["fit_pairs"] == len(fit_ids) and rec["heldout_pairs"] == len(held)
    # s and v_ℓ recomputed by hand: completion positions of both runs of the fit pairs; the last-prompt variant
    # from each run's last prompt position
    diffs, last = [], []
    name = "blocks.2.hook_resid_post"
    for t in tokenized:
        if t.pair_id not in fit_ids:
            continue
        for side in ("chosen", "rejected"):
            seq = t.sequence(side)
            toks = ap.sequence_tokens(t, side)
            acts = {m: model.run_with_cache(toks, names_filter=name)[1][name][0]
                    for m, model in (("base", tiny_pair.base), ("tuned", tiny_pair.tuned))}
            diffs.append((acts["tuned"] - acts["base"])[seq.completion_start: seq.length].double())
            last.append((acts["tuned"] - acts["base"])[seq.completion_start - 1].double())
    diff, last = torch.cat(diffs), torch.stack(last)
    s, s_last = float(diff.norm(dim=-1).mean()), float(last.norm(dim=-1).mean())
    assert rec["norm"] == pytest.approx(s, rel=1e-5) and rec["norm_last_prompt"] == pytest.approx(s_last, rel=1e-5)
    v = diff.mean(0)
    by = {(spec.key.experiment, spec.key.param): spec for spec in fitted.specs}
    for (exp, c), spec in by.items():
        assert isinstance(spec.intervention, AddFixed) and spec.pair_ids == frozenset(held)
        norm = s_last if exp.startswith("steer_last_prompt") else s
        assert float(spec.intervention.vector.norm()) == pytest.approx(c * norm, rel=1e-5), (exp, c)
        assert spec.key.scope == ("last_prompt" if exp.startswith("steer_last_prompt") else "all")
    cos = torch.nn.functional.cosine_similarity
    main_vec = by[("steer", 1.0)].intervention.vector.double()
    assert float(cos(main_vec, v, dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert float(cos(by[("steer_last_prompt", 1.0)].intervention.vector.double(), last.mean(0), dim=0)) == pytest.approx(
        1.0, abs=1e-6)
    torch.testing.assert_close(by[("steer_last_prompt_random", 2.0)].intervention.vector / s_last,
                               by[("steer_random", 2.0)].intervention.vector / s)  # one random direction
    torch.testing.assert_close(by[("steer_reverse", 1.0)].intervention.vector, -by[("steer", 1.0)].intervention.vector)
    assert by[("steer_reverse", 1.0)].key.target == "tuned" == by[("steer_reverse_random", 1.0)].key.target
    torch.testing.assert_close(by[("steer_reverse_random", 2.0)].intervention.vector,
                               -by[("steer_random", 2.0)].intervention.vector)
    # the scan adds the same v_ℓ and random direction at c = 1 (here at layer 2) to the fit half
    scan = steering.fit_scan(Plan(cfg=SuiteConfig(experiments=("steer",), steer_cs=(0.5, 2.0), n_boot=50),
                                  n_layers=tiny_pair.n_layers, d_model=tiny_pair.d_model, selected=("steer_scan",),
                                  pair_ids=plan.pair_ids, twins=tiny_pair, tokenized=tokenized))
    at2 = {s.key.experiment: s for s in scan.specs if s.key.layer == 2}
    assert {s.key.layer for s in scan.specs} == set(range(tiny_pair.n_layers)) and scan.record["layers"] == [0, 1, 2, 3]
    assert all(s.pair_ids == frozenset(fit_ids) and s.key.split == "fit" and s.key.param == 1.0 for s in scan.specs)
    torch.testing.assert_close(at2["steer_scan"].intervention.vector, by[("steer", 1.0)].intervention.vector)
    torch.testing.assert_close(at2["steer_scan_random"].intervention.vector, by[("steer_random", 1.0)].intervention.vector)
    assert steering.fit_scan(plan).specs == []  # --steer-layer: nothing to choose


def test_steer_layer_overrides_the_scan(tiny, tmp_path):
    """--steer-layer: no scan rows (the stage before steer has no conditions), and the rule says so."""
    run = ap.run_suite(tmp_path / "run", base=tiny.base, tuned=tiny.tuned, data=BUNDLED_PAIRS, n_pairs=4, max_length=72,
                       experiments=("patch_tuned_to_base", "steer"), steer_layer=1, steer_cs=(1.0,), n_boot=50,
                       progress=False)
    entry = run.summary["experiments"]["steer"]
    assert entry["layer"] == 1 and entry["layer_rule"] == "--steer-layer"
    assert entry["layer_choice"]["by_layer"] == [] and entry["layer_choice"]["chosen_layer"] is None
    assert not run.effects.experiment.str.startswith("steer_scan").any() and "steer_scan" not in run.summary["experiments"]
    assert set(run.effects[run.effects.experiment.str.startswith("steer")].layer) == {1}


def test_add_fixed_is_a_pure_function_of_the_context():
    vec = torch.arange(4, dtype=torch.float32)
    ctx = SequenceContext(pair_id=0, side="chosen", layer=0, target=torch.ones(3, 4), source=torch.zeros(3, 4),
                          prompt_len=1, length=3)
    torch.testing.assert_close(AddFixed(vec)(ctx), torch.ones(3, 4) + vec)
    assert torch.equal(AddFixed(torch.zeros(4))(ctx), ctx.target)


def test_bad_transfer_data_fails_before_any_model_loads(tiny, tmp_path):
    args = ["run", "--base", str(tiny.base), "--tuned", str(tiny.tuned), "--data", str(BUNDLED_PAIRS),
            "--experiments", "patch_tuned_to_base,steer", "--transfer-data", str(tmp_path / "missing.jsonl"),
            "--out", str(tmp_path / "out")]
    assert main(args) != 0
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_findings_tables_quote_the_steering_summary(run_dir):
    """The real-model findings (docs/findings-smollm2.md) quote the run's own c = 1 numbers."""
    from alignment_probe.realmodels.findings import collect, render_tables
    from alignment_probe.report.format import ci_cell

    summary = json.loads((run_dir / "summary.json").read_text())
    st = summary["experiments"]["steer"]
    found = collect({"steer": summary}, n_layers=4, planted_layer=2)
    assert found["steer"]["steer"]["layer"] == st["layer"]
    tables = render_tables(found)
    at1 = next(r for r in st["by_c"] if r["c"] == 1.0)
    rf = st["recovered_fraction"]
    assert f"E11 steering at layer {st['layer']}" in tables and "E11 transfer" in tables
    row = f"| v_ℓ (mean tuning shift) | {ci_cell(at1['mean'], [at1['ci_low'], at1['ci_high']])} | "
    # statistics.md's ratio rule: a fraction of the gain only where the gain's CI excludes 0, else "undefined" with
    # the steering effect and the gain in nats (never "+nan")
    g = st["gain"]
    if math.isfinite(rf["mean"]) and (g["ci_low"] > 0 or g["ci_high"] < 0):
        assert row + f"{ci_cell(rf['mean'], [rf['ci_low'], rf['ci_high']])} |" in tables
    else:
        assert row + "undefined (denominator CI spans 0): numerator " in tables
    assert "nan" not in tables.split("E11 steering at layer", 1)[1]


def test_a_bias_twin_is_steered_exactly(tmp_path):
    """Known answer: a twin that differs from its base only by a vector u added to block ℓ's MLP output bias has
    h_T − h_B = u at every position of ``resid_post`` ℓ. So v_ℓ = u, s = ‖u‖, and the base steered at ℓ with c = 1
    *is* the twin: on every held-out pair the steering effect equals the gain (recovered fraction 1), and the twin
    steered with −v_ℓ is the base (lost fraction 1); c = 2 is not the twin. (GPT-2: its MLPs have an output bias.)"""
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.helpers.checkpoints import save_checkpoint, train_tokenizer

    pairs, _ = load_pairs(BUNDLED_PAIRS)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs], vocab_size=320)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, initializer_range=0.2,
                                      vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    twin, layer = copy.deepcopy(base), 1
    with torch.no_grad():
        twin.transformer.h[layer].mlp.c_proj.bias.add_(torch.randn(32, generator=torch.Generator().manual_seed(3)))
    dirs = {k: save_checkpoint(m, tok, tmp_path / k) for k, m in (("base", base), ("tuned", twin))}
    run = ap.run_suite(tmp_path / "run", base=dirs["base"], tuned=dirs["tuned"], data=BUNDLED_PAIRS,
                       experiments=("steer",), n_pairs=12, max_length=128, steer_layer=layer, steer_cs=(1.0, 2.0),
                       n_boot=100, progress=False)
    entry, eff = _entry(run), run.effects
    scores = run.scores.set_index("pair_id")
    _, held = stats.split_halves(run.scores.pair_id.tolist(), seed=0)
    gain = scores.gain.reindex(held)
    assert entry["layer"] == layer and gain.abs().min() > 1e-3  # the twin differs on every pair
    one = eff[(eff.param == 1.0) & (eff.split == "heldout")]
    fwd = one[one.experiment == "steer"].set_index("pair_id").effect.reindex(held)
    rev = one[one.experiment == "steer_reverse"].set_index("pair_id").effect.reindex(held)
    np.testing.assert_allclose(fwd, gain, atol=1e-4)
    np.testing.assert_allclose(-rev, gain, atol=1e-4)
    assert entry["recovered_fraction"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert entry["reverse"]["lost_fraction"]["mean"] == pytest.approx(1.0, abs=1e-4)
    two = eff[(eff.param == 2.0) & (eff.split == "heldout") & (eff.experiment == "steer")].set_index("pair_id")
    assert np.abs(two.effect.reindex(held) - gain).max() > 1e-2

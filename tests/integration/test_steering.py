"""E11 — steering with the localized direction (experiments/steering.py), on the tiny twins."""

from __future__ import annotations

import json

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
    assert "steer" not in SuiteConfig().experiments and "steer" not in registry.experiment_names()
    assert "steer" in registry.experiment_names(opt_in=True)
    assert registry.method_id("steer") == "E11"
    SuiteConfig(experiments=("steer",)).validate()
    with pytest.raises(ConfigError, match="steer"):
        SuiteConfig(experiments=("patch_tuned_to_base",), transfer_data="x.jsonl").validate()


def test_c_zero_is_exactly_zero(run):
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    zero = eff[eff.param == 0.0]
    assert len(zero) and (zero.effect == 0.0).all()
    assert set(zero.experiment) == {"steer", "steer_random", "steer_contrast", "steer_lowrank", "steer_reverse",
                                    "steer_reverse_random"}


def test_rows_only_on_the_heldout_half_and_transfer_pairs(run):
    eff = run.effects[run.effects.experiment.str.startswith("steer")]
    assert set(eff.split) == {"heldout", "transfer"}
    fit, held = stats.split_halves(run.scores.pair_id.tolist(), seed=0)
    for name, rows in eff[eff.split == "heldout"].groupby("experiment"):
        assert sorted(rows.pair_id.unique()) == held, name
        assert set(rows.param) == set(CS)
    transfer = eff[eff.split == "transfer"]
    assert set(transfer.experiment) == {"steer", "steer_random", "steer_reverse"}
    assert sorted(transfer.pair_id.unique()) == run.manifest["transfer_data"]["pair_ids"]
    layer = _entry(run)["layer"]
    assert set(eff.layer) == {layer} and set(eff.scope) == {"all"} and set(eff.hook) == {"resid_post"}
    # the layer is E1's peak chosen on the fit half
    assert layer == run.summary["experiments"]["patch_tuned_to_base"]["heldout"]["chosen_layer"]


def test_summary_keys(run):
    entry = _entry(run)
    assert set(entry) == {"layer", "by_c", "recovered_fraction", "baselines", "reverse", "transfer", "gain", "fit"}
    assert [r["c"] for r in entry["by_c"]] == list(CS) and all(set(r) == CURVE for r in entry["by_c"])
    assert set(entry["recovered_fraction"]) == FRACTION
    assert set(entry["baselines"]) == {"random", "contrast", "lowrank"}
    for b in entry["baselines"].values():
        assert set(b) == {"by_c", "recovered_fraction"} and all(set(r) == CURVE for r in b["by_c"])
    assert set(entry["reverse"]) == {"by_c", "lost_fraction", "random"}
    assert set(entry["reverse"]["lost_fraction"]) == FRACTION
    assert set(entry["reverse"]["random"]) == {"by_c", "lost_fraction"}
    assert {"by_c", "recovered_fraction", "random", "reverse", "gain", "n_pairs"} == set(entry["transfer"])
    held = len(stats.split_halves(run.scores.pair_id.tolist(), seed=0)[1])
    assert all(r["n"] == held for r in entry["by_c"])


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
    entry, eff, cfg = _entry(run), run.effects, SuiteConfig(n_boot=100)
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
    # s and v_ℓ recomputed by hand: completion positions of both runs of the fit pairs
    diffs = []
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
    diff = torch.cat(diffs)
    s = float(diff.norm(dim=-1).mean())
    assert rec["norm"] == pytest.approx(s, rel=1e-5)
    v = diff.mean(0)
    by = {(spec.key.experiment, spec.key.param): spec for spec in fitted.specs}
    for (exp, c), spec in by.items():
        assert isinstance(spec.intervention, AddFixed) and spec.pair_ids == frozenset(held)
        assert float(spec.intervention.vector.norm()) == pytest.approx(c * s, rel=1e-5), (exp, c)
    main_vec = by[("steer", 1.0)].intervention.vector.double()
    assert float(torch.nn.functional.cosine_similarity(main_vec, v, dim=0)) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(by[("steer_reverse", 1.0)].intervention.vector, -by[("steer", 1.0)].intervention.vector)
    assert by[("steer_reverse", 1.0)].key.target == "tuned" == by[("steer_reverse_random", 1.0)].key.target
    torch.testing.assert_close(by[("steer_reverse_random", 2.0)].intervention.vector,
                               -by[("steer_random", 2.0)].intervention.vector)


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

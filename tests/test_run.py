"""`alignment-probe run` end to end: the run directory, summary.json's format, determinism, refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from alignment_probe.cli import main
from alignment_probe.effects import EXPERIMENT_NAMES

from conftest import HH_HARMLESS

PER_LAYER = ["patch_tuned_to_base", "patch_base_to_tuned", "identity", "random_noise", "random_direction",
             "source_chosen_only", "source_rejected_only", "vector_chosen", "vector_rejected", "vector_contrast",
             "alpha", "lowrank_reconstruct", "lowrank_difference"]


def _args(tiny, out, *extra):
    return ["run", "--base", str(tiny.base), "--tuned", str(tiny.tuned), "--data", str(HH_HARMLESS),
            "--n-pairs", "6", "--max-length", "72", "--device", "cpu", "--n-boot", "200", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    assert main(_args(tiny, out)) == 0
    return out


def test_run_directory_and_summary_format(full_run):
    for name in ("manifest.json", "scores.parquet", "effects.parquet", "lasso.parquet", "summary.json", "report.html"):
        assert (full_run / name).exists(), name
    s = json.loads((full_run / "summary.json").read_text())
    for key in ("n_pairs", "n_layers", "base_delta_logp_mean", "tuned_delta_logp_mean", "gain_mean", "gain_ci"):
        assert key in s
    assert s["n_pairs"] == 6 and s["n_layers"] == 4 and len(s["gain_ci"]) == 2
    assert set(s["experiments"]) == set(EXPERIMENT_NAMES)
    for name in PER_LAYER:
        e = s["experiments"][name]
        assert [r["layer"] for r in e["per_layer"]] == sorted(r["layer"] for r in e["per_layer"])
        assert all({"layer", "mean", "ci_low", "ci_high"} <= set(r) for r in e["per_layer"])
        assert "peak_layer" in e and "onset_layer" in e
    assert len(s["experiments"]["patch_tuned_to_base"]["per_layer"]) == 4
    assert {"alphas", "by_alpha", "spearman_rho"} <= set(s["experiments"]["alpha"])
    lr = s["experiments"]["lowrank_difference"]["by_k"]
    assert {"k", "effect_ratio", "variance_explained", "heldout_effect_ratio"} <= set(lr[0])
    assert {"coefficients", "alpha_", "selection_frequency"} <= set(s["experiments"]["lasso"])
    assert all(r["mean"] == 0.0 for r in s["experiments"]["identity"]["per_layer"])
    # The summary is computed from the table: recompute one number from effects.parquet.
    effects = pd.read_parquet(full_run / "effects.parquet")
    e1 = effects.query("experiment == 'patch_tuned_to_base' and layer == 2")
    assert abs(e1.effect.mean() - s["experiments"]["patch_tuned_to_base"]["per_layer"][2]["mean"]) < 1e-12
    scores = pd.read_parquet(full_run / "scores.parquet")
    assert abs(scores.gain.mean() - s["gain_mean"]) < 1e-12
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0 and len(manifest["data"]["pair_ids"]) == 6
    html = (full_run / "report.html").read_text()
    assert "Findings vs the paper" in html and "<script src=\"http" not in html


def test_same_seed_same_numbers_and_subset(tiny, tmp_path, full_run):
    out = tmp_path / "subset"
    assert main(_args(tiny, out, "--experiments", "patch_tuned_to_base,identity")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["experiments"]) == {"patch_tuned_to_base", "identity"}
    full = json.loads((full_run / "summary.json").read_text())
    assert s["experiments"]["patch_tuned_to_base"] == full["experiments"]["patch_tuned_to_base"]
    a = pd.read_parquet(out / "effects.parquet")
    b = pd.read_parquet(full_run / "effects.parquet")
    b = b[b.experiment.isin(["patch_tuned_to_base", "identity"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_changed_config_in_existing_run_dir_is_refused(tiny, full_run, capsys):
    assert main(_args(tiny, full_run, "--seed", "5")) == 2
    assert "different configuration" in capsys.readouterr().err


def test_unknown_experiment_is_refused_before_compute(tiny, tmp_path, capsys):
    assert main(_args(tiny, tmp_path / "x", "--experiments", "patch_tuned_to_bse")) == 2
    assert "unknown experiment" in capsys.readouterr().err

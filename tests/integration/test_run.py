"""`alignment-probe run` end to end: the run directory, summary.json's format, determinism, refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import PAIRS_DATA

import alignment_probe as ap
from alignment_probe.cli import main
from alignment_probe.experiments.registry import EXPERIMENT_NAMES

PER_LAYER = [
    "patch_tuned_to_base",
    "patch_base_to_tuned",
    "identity",
    "random_noise",
    "random_direction",
    "source_chosen_only",
    "source_rejected_only",
    "vector_chosen",
    "vector_rejected",
    "vector_contrast",
    "alpha",
    "lowrank_reconstruct",
    "lowrank_difference",
]


def _args(tiny, out, *extra):
    return [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        "--n-pairs",
        "6",
        "--max-length",
        "72",
        "--device",
        "cpu",
        "--n-boot",
        "200",
        "--out",
        str(out),
        *extra,
    ]


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
    e1 = effects.query("experiment == 'patch_tuned_to_base' and layer == 2 and hook == 'resid_post'")
    assert set(effects.query("experiment == 'patch_tuned_to_base'").hook) == {"resid_post", "attn_out", "mlp_out"}
    assert "by_hook" in s["experiments"]["patch_tuned_to_base"]  # the components (E7) are in the default run
    assert abs(e1.effect.mean() - s["experiments"]["patch_tuned_to_base"]["per_layer"][2]["mean"]) < 1e-12
    scores = pd.read_parquet(full_run / "scores.parquet")
    assert abs(scores.gain.mean() - s["gain_mean"]) < 1e-12
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0 and len(manifest["data"]["pair_ids"]) == 6
    html = (full_run / "report.html").read_text()
    assert "Findings vs the paper" in html and '<script src="http' not in html


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


def test_layer_subset_rows_equal_the_full_sweep(tiny, tmp_path, full_run):
    """--layers only filters conditions: every row (random controls included) equals the full run's row."""
    names = ["patch_tuned_to_base", "random_noise", "random_direction", "source_chosen_only", "alpha"]
    out = tmp_path / "layers"
    assert main(_args(tiny, out, "--experiments", ",".join(names), "--layers", "1,3")) == 0
    a = pd.read_parquet(out / "effects.parquet")
    assert sorted(a.layer.unique()) == [1, 3]
    b = pd.read_parquet(full_run / "effects.parquet")
    b = b[b.experiment.isin(names) & b.layer.isin([1, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    e1 = json.loads((out / "summary.json").read_text())["experiments"]["patch_tuned_to_base"]
    assert [r["layer"] for r in e1["per_layer"]] == [1, 3] and e1["peak_layer"] in (1, 3)


def test_layer_range_syntax_and_out_of_range_layer(tiny, tmp_path, capsys):
    from alignment_probe.cli import _layers

    assert _layers("0:4:2,3", "--layers") == (0, 2, 3)
    assert main(_args(tiny, tmp_path / "x", "--experiments", "identity", "--layers", "0:9")) == 2
    assert "out of range" in capsys.readouterr().err


def test_pair_ids_restrict_the_sample(tiny, tmp_path, capsys, full_run):
    fit = json.loads((full_run / "manifest.json").read_text())["data"]["pair_ids"]  # 6 pairs that fit in 72 tokens
    ids = sorted({*fit, 3, 10, 11, 12})
    id_file = tmp_path / "ids.json"
    id_file.write_text(json.dumps(ids))
    out = tmp_path / "ids"
    assert main(_args(tiny, out, "--experiments", "identity", "--pair-ids", str(id_file))) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["data"]["pair_ids"]) == 6 and set(manifest["data"]["pair_ids"]) <= set(ids)
    assert manifest["config"]["pair_ids"] == str(id_file) and manifest["data"]["n_pairs_in_id_file"] == len(ids)
    # An id the data file does not have is named, before any model loads.
    bad = tmp_path / "bad.txt"
    bad.write_text("3\n10\n999999\n")
    assert main(_args(tiny, tmp_path / "bad", "--pair-ids", str(bad))) == 2
    err = capsys.readouterr().err
    assert "999999" in err and str(bad) in err
    assert not (tmp_path / "bad").exists()


def test_smollm2_findings_collect_reads_runs(tiny, tmp_path, full_run):
    """The real-model protocol's collector quotes a run's own numbers (checked on a tiny run here)."""
    from alignment_probe.realmodels.findings import collect, extra_hook_results, neighbours, render_tables

    assert neighbours(12, [0, 3, 6, 9, 12, 15, 18], 1) == (9, 12, 15)
    assert neighbours(0, [0, 3, 6], 2) == (0, 3, 6)
    out = tmp_path / "hooks"
    assert main(_args(tiny, out, "--experiments", "patch_tuned_to_base", "--extra-hooks", "mlp_out")) == 0
    s = json.loads((full_run / "summary.json").read_text())
    found = collect(
        {"harmless": s},
        n_layers=4,
        planted_layer=2,
        extra={"harmless": {"by_hook": extra_hook_results(out, ("mlp_out",), seed=0, n_boot=200)}},
    )
    h = found["harmless"]
    assert h["gain_ci"] == s["gain_ci"] and h["n_pairs"] == 6
    assert h["patch_tuned_to_base"]["peak_layer"] == s["experiments"]["patch_tuned_to_base"]["peak_layer"]
    assert h["lasso"]["coefficients"] == s["experiments"]["lasso"]["coefficients"]
    assert h["identity_max_abs_mean"] == 0.0
    effects = pd.read_parquet(out / "effects.parquet")
    mlp = effects.query("hook == 'mlp_out' and layer == 1").effect.mean()
    assert abs(h["by_hook"]["mlp_out"]["per_layer"][1]["mean"] - mlp) < 1e-12
    json.dumps(found)  # JSON-ready
    # Labels come from the registry, so the numbering is the method docs' (the reverse direction is E3).
    tables = render_tables(found)
    assert "| E1 tuned → base |" in tables and "| E3 base → tuned |" in tables and "E2 base" not in tables
    # The localization instruments of the default run have their tables too (E8 windows and 2×2, E9 shift).
    assert "weight transplants" in tables and "2×2 cross design" in tables and "distribution shift" in tables
    assert h["window_transplant"]["by_window"] == s["experiments"]["window_transplant"]["by_window"]


def test_the_command_line_runs_a_narrow_model_on_one_thread_and_puts_the_count_back(tiny, tmp_path, monkeypatch):
    """torch's default threads made the bundled default run 2.3x slower than one thread (bench/README.md): the
    command line uses one for models narrower than 512 unless OMP_NUM_THREADS says otherwise; the manifest
    records what ran, and the caller's process gets its own count back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert main(_args(tiny, tmp_path / "auto", "--experiments", "identity")) == 0
        assert json.loads((tmp_path / "auto" / "manifest.json").read_text())["environment"]["torch_num_threads"] == 1
        assert torch.get_num_threads() == 2
        # the library call leaves threads alone
        api = ap.run_suite(
            tmp_path / "api",
            base=tiny.base,
            tuned=tiny.tuned,
            data=PAIRS_DATA,
            experiments=("identity",),
            n_pairs=6,
            max_length=72,
            n_boot=200,
            progress=False,
        )
        assert api.manifest["environment"]["torch_num_threads"] == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        assert main(_args(tiny, tmp_path / "chosen", "--experiments", "identity")) == 0
        assert json.loads((tmp_path / "chosen" / "manifest.json").read_text())["environment"]["torch_num_threads"] == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ presets (issue 25)
@pytest.fixture(scope="module")
def full_suite_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "suite-full"
    assert main(_args(tiny, out, "--suite", "full")) == 0
    return out


def test_the_default_run_is_the_tour_and_its_rows_are_the_full_suites(full_run, full_suite_run):
    """The tour drops conditions and changes none: every row of the default run equals the --suite full run's row
    of the same key, bit for bit; the full run has the rest (the reverse's extra hooks, the coarse experiments off
    the tour's grid: layers 1 and 3 of 4)."""
    tour_manifest = json.loads((full_run / "manifest.json").read_text())["config"]
    full_manifest = json.loads((full_suite_run / "manifest.json").read_text())["config"]
    assert tour_manifest["suite"]["preset"] == "tour" and full_manifest["suite"]["preset"] == "full"
    tour = pd.read_parquet(full_run / "effects.parquet")
    full = pd.read_parquet(full_suite_run / "effects.parquet")
    key = ["experiment", "target", "source", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
    joined = tour.merge(full, on=key, how="left", suffixes=("", "_full"), indicator=True)
    assert (joined["_merge"] == "both").all()
    for column in ("effect", "patched_delta_logp", "clean_delta_logp"):
        assert (joined[column] == joined[f"{column}_full"]).all(), column
    assert sorted(tour.query("experiment == 'alpha'").layer.unique()) == [1, 3]
    assert sorted(full.query("experiment == 'alpha'").layer.unique()) == [0, 1, 2, 3]
    assert set(tour.query("experiment == 'patch_base_to_tuned'").hook) == {"resid_post"}
    assert set(full.query("experiment == 'patch_base_to_tuned'").hook) == {"resid_post", "attn_out", "mlp_out"}
    assert len(full) > len(tour)
    # every report section is in both
    for out in (full_run, full_suite_run):
        s = json.loads((out / "summary.json").read_text())
        assert set(s["experiments"]) == set(EXPERIMENT_NAMES)
    tour_gen = json.loads((full_run / "summary.json").read_text())["experiments"]["generations"]
    assert tour_gen["max_new_tokens"] == 16 and all(len(r["token_ids"]) <= 16 for r in tour_gen["rows"])


def test_the_log_is_one_line_per_stage_with_no_file_names_or_library_chatter(tiny, tmp_path, capfd):
    assert main(_args(tiny, tmp_path / "log", "--procs", "1")) == 0
    out, err = capfd.readouterr()
    text = out + err.replace("\r", "\n")
    assert "Moving model to device" not in text and "Loading weights" not in text
    assert ".parquet" not in text and ".json" not in text  # no part file lists
    done = [line for line in text.splitlines() if " done in " in line]
    assert [line.split(" done in ")[0] for line in done] == ["stage 1", "stage 2", "stage 3"], done


def test_a_run_directory_made_before_presets_resumes_as_the_full_suite(tiny, tmp_path, full_suite_run, capsys):
    """Its manifest lacks the preset and the options that came with it; they ran as their defaults, i.e. full."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(full_suite_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for k in ("preset", "coarse", "coarse_step", "reverse_extras", "generation_tokens"):
        del manifest["config"]["suite"][k]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert ap.load_run(out).summary == json.loads((full_suite_run / "summary.json").read_text())
    capsys.readouterr()
    assert main(_args(tiny, out)) == 2  # the tour is another configuration: refused, naming the way to resume
    assert "--suite full" in capsys.readouterr().err
    assert main(_args(tiny, out, "--suite", "full")) == 0
    err = capsys.readouterr().err
    assert "resuming the run" in err and "different configuration" not in err
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "effects.parquet"), pd.read_parquet(full_suite_run / "effects.parquet")
    )


def test_run_suite_takes_the_preset_by_name(tiny, tmp_path):
    from alignment_probe.errors import ConfigError

    common = dict(base=tiny.base, tuned=tiny.tuned, data=PAIRS_DATA, max_length=72, n_boot=50, progress=False)
    run = ap.run_suite(tmp_path / "full", suite="full", experiments=("identity",), n_pairs=4, **common)
    assert run.manifest["config"]["suite"]["preset"] == "full" and run.manifest["config"]["n_pairs"] == 4
    with pytest.raises(ConfigError, match="--suite 'quick'"):
        ap.run_suite(tmp_path / "bad", suite="quick", **common)
    with pytest.raises(ConfigError, match="n_pairs='some'"):
        ap.run_suite(tmp_path / "bad", n_pairs="some", **common)
    assert not (tmp_path / "bad").exists()

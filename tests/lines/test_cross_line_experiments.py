"""Every registered experiment, the opt-in ones included, gives the same numbers on both TransformerLens lines
(issue 26's target): one run of all of them on the tiny twins in this interpreter and in
``$ALIGNMENT_PROBE_OTHER_LINE_PYTHON``; every table (effects, token effects, scores, LASSO) and the summary agree
to 1e-4. AtP*'s QK fix (atp_heads' ``k`` rows, estimator ``atp*``) runs on both: the Bridge recomputes attention
from the Hugging Face module (backends/bridge_attention.py). Skipped, saying how to run it, where the variable is
unset. Few pairs, two layers and a small bootstrap keep it to a few minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import alignment_probe as ap
from tests.helpers import other_line
from tests.helpers.run_tables import leaves, summary_differences

TOL = 1e-4

# Every registered experiment, by name: a new one must be added here (test_every_experiment_is_run says so).
EXPERIMENTS = (
    "weight_diff",
    "patch_tuned_to_base",
    "patch_base_to_tuned",
    "head_patch",
    "kv_head_patch",
    "identity",
    "random_noise",
    "random_direction",
    "alpha",
    "window_transplant",
    "window_revert",
    "cross_2x2",
    "source_chosen_only",
    "source_rejected_only",
    "vector_chosen",
    "vector_rejected",
    "vector_contrast",
    "lowrank_reconstruct",
    "lowrank_difference",
    "shift",
    "token_map",
    "lasso",
    "atp",
    "atp_heads",
    "atp_confirm",
    "generations",
    "steer_scan",
    "steer",
)
# what each run is given besides the models: small, and every experiment's own options exercised once
OPTIONS = [
    "--experiments",
    ",".join(e for e in EXPERIMENTS if e != "atp_confirm"),
    "--confirm",
    "2",  # atp_confirm: the two conditions AtP ranks highest, patched exactly
    "--n-pairs",
    "8",
    "--max-length",
    "96",
    "--layers",
    "0,2",
    "--n-boot",
    "50",
    "--generation-tokens",
    "4",
    "--procs",
    "1",
]


def test_every_experiment_is_run():
    registered = set(ap.list_experiments()["name"])
    assert registered == set(EXPERIMENTS), (
        f"registered but not run here: {sorted(registered - set(EXPERIMENTS))}; "
        f"run here but not registered: {sorted(set(EXPERIMENTS) - registered)}"
    )


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    other = other_line.other_python() or pytest.skip(other_line.how_to_run("the cross-line experiment comparison"))
    out = {}
    for name, python in (("this", sys.executable), ("other", other)):
        folder = tmp_path_factory.mktemp(f"all-{name}") / "run"
        cmd = [
            python,
            "-m",
            "alignment_probe",
            "run",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            *OPTIONS,
            "--out",
            str(folder),
        ]
        proc = subprocess.run(
            cmd, cwd=other_line.REPO, env=other_line.environment(python), capture_output=True, text=True, timeout=1800
        )
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        out[name] = folder
    return out


def test_the_runs_are_on_two_lines_and_backends(runs):
    manifests = [json.loads((runs[k] / "manifest.json").read_text()) for k in runs]
    versions = [m["versions"]["transformer-lens"] for m in manifests]
    assert len({v.split(".")[0] for v in versions}) == 2, f"both runs used TransformerLens {versions}"


def test_every_experiment_produced_rows(runs):
    """The comparison below is not vacuous: each experiment that writes effects rows wrote some on both lines,
    and AtP*'s key rows are among them."""
    for k in runs:
        effects = pd.read_parquet(runs[k] / "effects.parquet")
        wrote = set(effects["experiment"])
        # weight_diff, shift, lasso, generations write the summary and their own tables, not effects rows
        missing = set(EXPERIMENTS) - {"weight_diff", "shift", "lasso", "generations"} - wrote
        assert not missing, f"{k}: no effects rows for {sorted(missing)}"
        assert (effects["estimator"] == "atp*").any(), f"{k}: no AtP* (QK fix) rows"


@pytest.mark.parametrize("table", ["effects", "token_effects", "scores", "lasso"])
def test_tables_equal_across_lines(runs, table):
    this, other = (pd.read_parquet(runs[k] / f"{table}.parquet") for k in ("this", "other"))
    assert list(this.columns) == list(other.columns)
    assert len(this) == len(other) > 0
    values = [c for c in this.columns if this[c].dtype.kind == "f"]
    keys = [c for c in this.columns if c not in values]
    if keys:
        this, other = (t.sort_values(keys, na_position="first").reset_index(drop=True) for t in (this, other))
        pd.testing.assert_frame_equal(this[keys], other[keys])
    for col in values:
        np.testing.assert_allclose(other[col], this[col], atol=TOL, rtol=0, equal_nan=True, err_msg=f"{table}.{col}")


def test_summary_equal_across_lines(runs):
    this, other = (dict(leaves(json.loads((runs[k] / "summary.json").read_text()))) for k in ("this", "other"))
    # A simultaneous band's critical value is the quantile of max |t| over a map's cells, each studentised by its
    # bootstrap standard error: a cell whose effects are all ~0 (a KV head that moves nothing) has an se at float
    # rounding, and its |t| is rounding over rounding. The bands themselves (mean ± critical·se) are held to 1e-4
    # with every other number; the dimensionless critical value to 1e-3 of itself.
    differ = summary_differences(this, other, TOL, rel={"/critical": 1e-3})
    assert not differ, f"{len(differ)} summary entries differ beyond {TOL}:\n" + "\n".join(differ[:40])

"""Same inputs, seed and device → byte-identical tables and summary; the manifest says how to repeat it."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import PAIRS_DATA

from alignment_probe.cli import main
from alignment_probe.engine import FastEngine
from alignment_probe.experiments.suite import SuiteConfig, run_suite
from alignment_probe.tokens import sample_and_tokenize

EXPERIMENTS = "patch_tuned_to_base,random_noise,random_direction,alpha,lowrank_difference,lasso"


def args(tiny, out):
    return [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        "--n-pairs",
        "5",
        "--seed",
        "4",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "50",
        "--pairs-per-part",
        "2",
        "--alpha-layers",
        "1,2",
        "--experiments",
        EXPERIMENTS,
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def two_runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    for name in ("a", "b"):
        assert main(args(tiny, root / name)) == 0
    return root / "a", root / "b"


@pytest.mark.parametrize("name", ["scores.parquet", "effects.parquet", "lasso.parquet", "summary.json"])
def test_two_runs_are_byte_identical(two_runs, name):
    a, b = two_runs
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_summary_holds_no_timestamp_and_the_manifest_everything_to_repeat(two_runs, tiny):
    a, _ = two_runs
    summary = (a / "summary.json").read_text()
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", summary)
    m = json.loads((a / "manifest.json").read_text())
    assert m["argv"][:2] == ["alignment-probe", "run"] and "--pairs-per-part" in m["argv"]
    assert m["config"]["seed"] == 4 and m["config"]["suite"]["seed"] == 4 and m["config"]["pairs_per_part"] == 2
    assert m["config"]["suite"]["alpha_layers"] == [1, 2] and m["config"]["suite"]["n_boot"] == 50
    assert m["models"]["base"]["fingerprint"] and m["models"]["tuned"]["fingerprint"]
    assert len(m["data"]["sha256"]) == 64 and m["data"]["max_length_used"] == 64 and len(m["data"]["pair_ids"]) == 5
    assert {"torch", "transformer-lens", "transformers", "numpy", "pandas", "pyarrow"} <= set(m["versions"])
    assert m["environment"]["torch_num_threads"] == 1
    assert m["status"] == "complete" and m["created"] and m["finished"]


def test_parts_do_not_change_the_numbers(tiny_pair):
    """Saving results per group of pairs changes batching only: the numbers agree to float precision."""
    from alignment_probe.data import load_pairs

    pairs, _ = load_pairs(PAIRS_DATA)
    tokenized = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=4, seed=2, max_length=64)
    cfg = SuiteConfig(experiments=("patch_tuned_to_base", "random_noise", "lowrank_difference"), n_boot=50)
    whole = run_suite(tiny_pair, tokenized, FastEngine(), cfg, pairs_per_part=None)
    parted = run_suite(tiny_pair, tokenized, FastEngine(), cfg, pairs_per_part=1)
    pd.testing.assert_frame_equal(whole.scores, parted.scores, check_exact=False, atol=1e-5, rtol=0)
    keys = ["experiment", "target", "source", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
    pd.testing.assert_frame_equal(whole.effects[keys], parted.effects[keys])
    np.testing.assert_allclose(whole.effects.effect, parted.effects.effect, atol=1e-5)

"""`alignment-probe score` end to end on a local pair and HH-format data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import PAIRS_DATA

from alignment_probe.cli import main

REQUIRED = [
    "pair_id",
    "base_logp_chosen",
    "base_logp_rejected",
    "tuned_logp_chosen",
    "tuned_logp_rejected",
    "base_delta_logp",
    "tuned_delta_logp",
    "gain",
    "n_chosen_tokens",
    "n_rejected_tokens",
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_command_writes_the_table(tiny, tmp_path, suffix, capsys):
    out = tmp_path / f"scores{suffix}"
    code = main(
        [
            "score",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            "--data",
            str(PAIRS_DATA),
            "--n-pairs",
            "5",
            "--seed",
            "1",
            "--max-length",
            "128",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert len(table) == 5 and all(c in table.columns for c in REQUIRED)
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["config"]["seed"] == 1 and manifest["models"]["base"]["fingerprint"]
    assert "torch" in manifest["versions"]
    assert "wrote" in capsys.readouterr().out


def test_score_same_seed_same_numbers(tiny, tmp_path):
    args = [
        "score",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(PAIRS_DATA),
        "--n-pairs",
        "3",
        "--max-length",
        "96",
        "--device",
        "cpu",
    ]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_bad_input_exits_2_with_a_message(tiny, tmp_path, capsys):
    code = main(
        [
            "score",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.deeper),
            "--data",
            str(PAIRS_DATA),
            "--n-pairs",
            "2",
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    assert code == 2
    assert "not a compatible pair" in capsys.readouterr().err
    code = main(
        [
            "score",
            "--base",
            str(tiny.base),
            "--tuned",
            str(tiny.tuned),
            "--data",
            str(PAIRS_DATA),
            "--out",
            str(tmp_path / "x.txt"),
        ]
    )
    assert code == 2
    assert ".csv or .parquet" in capsys.readouterr().err

"""Interrupted runs resume where they stopped and end with byte-identical results.

A run is killed midway (SIGKILL from outside, SIGTERM, Ctrl-C), then the same command is run again:
it must keep every part it had finished (not recompute them) and end with the same scores, effects,
LASSO table and summary, byte for byte, as a run that was never interrupted. A run directory of a
different configuration, or whose data changed, is refused unless --force.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PAIRS_DATA

import alignment_probe.tables
from alignment_probe.cli import main
from alignment_probe.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[2]
RESULTS = ("scores.parquet", "effects.parquet", "lasso.parquet", "summary.json")
# Every stage (per-layer patching, low rank, LASSO) in a few seconds; 3 parts per stage.
EXPERIMENTS = "patch_tuned_to_base,random_noise,lowrank_difference,lasso"


def args(tiny, out, *extra):
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
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "50",
        "--pairs-per-part",
        "2",
        "--experiments",
        EXPERIMENTS,
        "--out",
        str(out),
        *extra,
    ]


def assert_same_results(a: Path, b: Path) -> None:
    for name in RESULTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def part_times(out: Path) -> dict[str, int]:
    """Finished parts and their write times (a ``.tmp`` file is a part being written, not a finished one)."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if not p.name.endswith(".tmp")}


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    assert main(args(tiny, out)) == 0
    return out


def test_sigkill_midway_then_the_same_command_resumes(tiny, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")  # as conftest: 1 thread
    log = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignment_probe.cli", *args(tiny, out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "parts").glob("stage1-*.parquet")):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no part was written in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    done = part_times(out)
    assert 1 <= len([n for n in done if n.startswith("stage1-")]) < 3, done  # killed midway
    (out / "parts" / "stage1-000999-000999.parquet.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves

    assert main(args(tiny, out)) == 0
    assert {n: t for n, t in part_times(out).items() if n in done} == done  # finished parts were kept, not redone
    assert not list((out / "parts").glob("*.tmp"))
    assert_same_results(uninterrupted, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 1


@pytest.mark.parametrize(
    "signum, after, code",
    [(signal.SIGTERM, "stage2-", 143), (signal.SIGINT, "lasso", 130)],
    ids=["sigterm-in-low-rank", "ctrl-c-before-report"],
)
def test_signal_stops_between_writes_and_resume_matches(
    tiny, tmp_path, uninterrupted, monkeypatch, capsys, signum, after, code
):
    out = tmp_path / "interrupted"
    write = alignment_probe.tables.write_bytes_atomic

    def write_then_signal(path, data):
        written = write(path, data)
        if Path(path).name.startswith(after):
            os.kill(os.getpid(), signum)  # delivered to this (main) thread, as from a terminal or a scheduler
        return written

    monkeypatch.setattr(alignment_probe.tables, "write_bytes_atomic", write_then_signal)
    assert main(args(tiny, out)) == code
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    monkeypatch.setattr(alignment_probe.tables, "write_bytes_atomic", write)
    done = part_times(out)
    assert main(args(tiny, out)) == 0
    assert {n: t for n, t in part_times(out).items() if n in done} == done
    assert_same_results(uninterrupted, out)


# --- run directories of another configuration or other inputs ---------------------------------------


def small(tiny, data, out, *extra):
    return [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(data),
        "--n-pairs",
        "3",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "20",
        "--experiments",
        "patch_tuned_to_base",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def data_file(tmp_path):
    prompt = "\n\nHuman: What should I cook tonight?\n\nAssistant:"
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": prompt, "chosen": f" Soup number {i}.", "rejected": f" No {i}."}) + "\n"
            for i in range(4)
        )
    )
    return path


def test_changed_configuration_is_refused_unless_forced(tiny, tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(small(tiny, data_file, out)) == 0
    before = part_times(out)
    assert main(small(tiny, data_file, out, "--seed", "3")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "already holds a run with a different configuration (seed changed)" in err and "--force" in err
    assert part_times(out) == before  # a refusal touches nothing
    # Options that change no number (here the batch size) resume the run instead.
    assert main(small(tiny, data_file, out, "--batch-size", "3")) == 0
    assert part_times(out) == before
    # --force discards the old results and starts over with the new configuration.
    assert main(small(tiny, data_file, out, "--seed", "3", "--force")) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 3
    assert all(part_times(out)[n] != t for n, t in before.items() if n in part_times(out))
    # ... and a rerun of that same forced command resumes rather than starting over again.
    after = part_times(out)
    assert main(small(tiny, data_file, out, "--seed", "3", "--force")) == 0
    assert part_times(out) == after


def test_changed_data_file_is_refused_unless_forced(tiny, tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(small(tiny, data_file, out)) == 0
    with open(data_file, "a") as handle:
        handle.write(
            json.dumps({"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello.", "rejected": " Bye."}) + "\n"
        )
    assert main(small(tiny, data_file, out)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"the data file {data_file} (sha256) changed since it started" in err
    assert main(small(tiny, data_file, out, "--force")) == 0

"""One run over several processes (torchrun, gloo on CPU) gives the same bytes as one process.

Two processes share every stage's parts (per-group tables round robin, the whole-data fit and
LASSO on rank 0) and rank 0 writes the outputs: scores, effects, LASSO table and summary must equal
a single-process run's byte for byte (one thread per process in both). A rank killed mid-run stops
the other one (no hang), and the same command resumes from the finished parts with another number
of processes, here one, again byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment_probe.distributed import EXIT_PEER, PartPending, PendingPart, part_family

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "pairs" / "heldout.jsonl"  # bundled: needs no ../shared
RESULTS = ("scores.parquet", "effects.parquet", "lasso.parquet", "summary.json")
# Every kind of stage: per-layer patching (stage 1), a fit on all pairs and its parts (stage 2), the LASSO.
EXPERIMENTS = "patch_tuned_to_base,random_noise,lowrank_difference,lasso"


def args(tiny, out, *extra):
    return [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(DATA),
        "--n-pairs",
        "6",
        "--max-length",
        "64",
        "--device",
        "cpu",
        "--n-boot",
        "50",
        "--pairs-per-part",
        "1",
        "--experiments",
        EXPERIMENTS,
        "--out",
        str(out),
        *extra,
    ]


def env(**extra):
    # One thread per process, as in the single-process reference (conftest sets torch threads to 1).
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
        **extra,
    )


def assert_same_results(a: Path, b: Path) -> None:
    for name in RESULTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def one_process(tiny, out):
    """``python -m alignment_probe run ...``: a plain single-process run, launched like the others."""
    proc = subprocess.run(
        [sys.executable, "-m", "alignment_probe", *args(tiny, out)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "single"
    one_process(tiny, out)
    return out


def test_two_processes_give_the_bytes_of_one(tiny, tmp_path, single):
    out = tmp_path / "two"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "alignment_probe",
            *args(tiny, out),
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_results(single, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
    assert "world_size" not in json.dumps(manifest["config"])  # not compared on resume
    # The work counted is the whole run's: each rank's, summed. Every part is computed once, so the floor is at
    # least one process's; rank 0 also replays rank 1's clean passes for the low-rank fit, so no less work either.
    by_rank, whole = manifest["engine_work_by_rank"], manifest["engine_work"]
    assert len(by_rank) == 2 and all(w["patched"]["computed"] > 0 for w in by_rank)
    for stage in whole:
        for k in whole[stage]:
            assert whole[stage][k] == by_rank[0][stage][k] + by_rank[1][stage][k]
    alone = json.loads((single / "manifest.json").read_text())["engine_work"]
    assert "engine_work_by_rank" not in json.loads((single / "manifest.json").read_text())
    assert whole["patched"] == alone["patched"]  # the patched parts are split, not repeated
    assert (
        whole["clean"]["floor"] >= alone["clean"]["floor"] and whole["clean"]["computed"] >= alone["clean"]["computed"]
    )
    # Rank 0 alone reports. (Whether rank 0 had to *wait* for rank 1's parts, and so logs "waiting for …",
    # depends on timing: a fresh clone's run once had every part ready in time. Who owns which part is
    # deterministic and tested in test_ownership_and_placeholders.)
    assert proc.stdout.count("wrote ") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_stops_the_run_and_one_process_resumes_it(tiny, tmp_path, single):
    """Launched without torchrun's agent (as a scheduler would), so the ranks' own liveness checks
    must notice: rank 1 is SIGKILLed after the first part; rank 0 stops within the timeout with an
    error naming rank 1; then the same run resumes with one process and ends byte-identical."""
    out, port = tmp_path / "killed", _free_port()
    procs, logs = [], []
    for rank in range(2):
        logs.append(open(tmp_path / f"rank{rank}.txt", "wb"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "alignment_probe", *args(tiny, out)],
                cwd=REPO,
                stdout=logs[-1],
                stderr=logs[-1],
                env=env(
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE="2",
                    LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                    ALIGNMENT_PROBE_DIST_TIMEOUT="5",
                ),
            )
        )
    try:
        deadline = time.monotonic() + 180
        while not list((out / "parts").glob("stage1-*.parquet")):
            assert all(p.poll() is None for p in procs), (tmp_path / "rank0.txt").read_text()
            assert time.monotonic() < deadline, "no part was written in time"
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=60)  # no hang
        stopped_after = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    err = (tmp_path / "rank0.txt").read_text()
    assert code == EXIT_PEER, err[-3000:]
    assert "rank 1 of this run has shown no sign of life" in err and "run the same command again" in err
    assert stopped_after < 30
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / "summary.json").exists() and not (out / "parts" / "lasso.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p.suffix != ".tmp"}
    assert done

    assert "resuming the run" in one_process(tiny, out).stderr  # the same command, now one process
    assert {n: (out / "parts" / n).stat().st_mtime_ns for n in done} == done  # kept, not recomputed
    assert_same_results(single, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_sizes"] == [2, 1] and manifest["status"] == "complete"


def test_ownership_and_placeholders():
    assert part_family("stage1-000000-000007") == part_family("stage1-000008-000015") == "stage1"
    assert part_family("stage2-fit") == "stage2-fit" and part_family("lasso") == "lasso"
    pending = PendingPart("stage1-000000-000007.parquet", 1)
    import pandas as pd

    for use in (len, bool, list, lambda p: p.effect, lambda p: pd.concat([p])):
        with pytest.raises(PartPending, match="computed by rank 1"):
            use(pending)


def test_procs_two_gives_the_bytes_of_one(tiny, tmp_path, single):
    """``run --procs 2``: the command line starts the two ranks itself (torchrun's environment, no agent); the
    same bytes as one process, rank 0 alone reports, the other rank's output is not shown."""
    out = tmp_path / "procs"
    proc = subprocess.run(
        [sys.executable, "-m", "alignment_probe", *args(tiny, out, "--procs", "2")],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_results(single, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
    assert proc.stdout.count("wrote ") == 1 and proc.stderr.count("distributed: 2 processes") == 1


def test_procs_bad_input_is_refused_once_with_exit_2(tiny, tmp_path):
    """A refusal inside the ranks (here: no pair fits --max-length) is reported once, with the ranks' own message
    and exit code 2, as a single process reports it."""
    from alignment_probe.errors import EXIT_BAD_INPUT

    def run(procs: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "alignment_probe",
            *args(tiny, tmp_path / procs, "--procs", procs, "--max-length", "6"),
        ]
        return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)

    two, one = run("2"), run("1")
    assert two.returncode == one.returncode == EXIT_BAD_INPUT, two.stderr[-2000:]
    assert two.stderr.count("error:") == 1
    message = [line for line in one.stderr.splitlines() if "error:" in line]
    assert message and message[0] in two.stderr


def test_procs_auto_counts_cores_for_narrow_local_models_on_the_cpu(tmp_path):
    from alignment_probe.processes import auto_processes

    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    for folder, width in ((narrow, 128), (wide, 2048)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"hidden_size": width}))
    common = dict(n_pairs=80, pairs_per_part=8, cores=2, environ={})
    assert auto_processes(device=None, base=str(narrow), **common)[0] == 2
    assert auto_processes(device="cpu", base=str(narrow), **{**common, "cores": 16})[0] == 5  # 2 parts each
    assert auto_processes(device="cpu", base=str(narrow), **{**common, "n_pairs": 16})[0] == 1  # 2 parts in all
    assert auto_processes(device="cpu", base=str(wide), **common)[0] == 1
    assert auto_processes(device="cuda", base=str(narrow), **common)[0] == 1
    assert auto_processes(device="cpu", base="meta-llama/Llama-3.2-1B", **common)[0] == 1
    for chosen in ({"OMP_NUM_THREADS": "4"}, {"WORLD_SIZE": "2"}):
        assert auto_processes(device="cpu", base=str(narrow), **{**common, "environ": chosen})[0] == 1


def _request(tiny, out, **extra):
    """The run of :func:`args` as a :class:`RunRequest` built in Python (as the findings driver builds one)."""
    from alignment_probe.experiments.suite import preset_config
    from alignment_probe.request import RunRequest

    options = {"n_pairs": 6, "max_length": 64, "pairs_per_part": 1, **extra}
    suite = preset_config(experiments=tuple(EXPERIMENTS.split(",")), n_boot=50, seed=0)
    return RunRequest(base=str(tiny.base), tuned=str(tiny.tuned), data=str(DATA), out=out, suite=suite, **options)


def test_a_request_launched_as_two_ranks_gives_the_bytes_of_one(tiny, tmp_path, single, monkeypatch):
    """The findings driver's ``--nproc``: a request built in Python goes to the ranks of the one launcher (the one
    ``run --procs`` uses) as JSON, and the run directory holds the bytes of a single process's run."""
    from alignment_probe.launch import spawn_request

    for name, value in env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "request"
    spawn_request(_request(tiny, out), 2, log=lambda s: None)
    assert_same_results(single, out)
    assert json.loads((out / "manifest.json").read_text())["distributed"]["world_size"] == 2


def test_a_refusal_in_a_launched_request_reaches_the_caller_with_its_message(tiny, tmp_path, monkeypatch):
    """A rank's error is raised in the launching process, once, with the rank's own message and exit code (no pass
    of the suite, no launcher, swallows it)."""
    from alignment_probe.errors import EXIT_BAD_INPUT, AlignmentProbeError
    from alignment_probe.launch import LaunchedError, spawn_request
    from alignment_probe.run import execute

    for name, value in env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AlignmentProbeError) as alone:  # the same request in this process: its own refusal
        execute(_request(tiny, tmp_path / "one", max_length=6), progress=False, log=lambda s: None)
    with pytest.raises(LaunchedError) as launched:
        spawn_request(_request(tiny, tmp_path / "two", max_length=6), 2, log=lambda s: None)
    assert launched.value.exit_code == alone.value.exit_code == EXIT_BAD_INPUT
    assert str(alone.value) in str(launched.value)

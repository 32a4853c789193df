"""The other TransformerLens line's tests, run in that line's own interpreter beside this pytest run.

One interpreter holds one TransformerLens line (3.9 has HookedTransformer, 4.x only TransformerBridge), so CI
builds a second environment (``.ci-venv-tl4``, ``constraints/tl4.txt``) and names its python in
``$ALIGNMENT_PROBE_OTHER_LINE_PYTHON``. The selected tiers start in a subprocess as soon as this run has collected
``tests/lines/test_other_line.py`` (``tests/conftest.py``), so the two lines' tests share the machine's cores
instead of running one after the other; the test waits for it and fails with its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VAR = "ALIGNMENT_PROBE_OTHER_LINE_PYTHON"
TIMEOUT_VAR = "ALIGNMENT_PROBE_OTHER_LINE_TIMEOUT"
REPO = Path(__file__).resolve().parents[2]
RUNNER = "tests/lines/test_other_line.py::test_other_line_tiers"

# What runs on the other line, by tier (paths from the repository root). A new module that belongs to a tier is
# added here; conftest marks every test under these paths `other_line`, so `pytest -m other_line` in either
# environment runs the same selection.
SELECTION: dict[str, tuple[str, ...]] = {
    # how patched forwards run: exact identities, known answers, TransformerLens's own patching, fast vs reference
    # on every experiment; continuations and generation under intervention through the key/value cache
    "engine": ("tests/integration/test_engine.py", "tests/integration/test_generation.py"),
    # every family from a local folder against Hugging Face's logits; the twins' load and compatibility checks
    # (the bridge backend's own tests skip on 3.9, so this is where they run: families, AtP*'s attention, weights)
    "family": (
        "tests/integration/test_families.py",
        "tests/integration/test_pair.py",
        "tests/integration/test_bridge_backend.py",
        "tests/integration/test_bridge_attention.py",
    ),
    # two routes, one answer: shared prompts = full sequences, the one clean pass = the fits' own forwards,
    # same inputs and seed = the same bytes
    "equivalence": (
        "tests/integration/test_prompt_sharing.py",
        "tests/integration/test_clean_pass.py",
        "tests/integration/test_determinism.py",
    ),
    # the bundled organisms' known answers, the notebooks, the real model
    "acceptance": ("tests/acceptance",),
}
PATHS = tuple(p for paths in SELECTION.values() for p in paths)


def other_python() -> str | None:
    return os.environ.get(VAR) or None


def how_to_run(what: str = "the other TransformerLens line's engine, family, equivalence and acceptance tests") -> str:
    return (
        f"${VAR} is not set, so {what} did not run. To run: python3 -m venv .venv-tl4 && .venv-tl4/bin/pip install -e '.[dev]' "
        f"-c constraints/tl4.txt, then {VAR}=$PWD/.venv-tl4/bin/python python -m pytest -q tests/lines "
        "(.ci/run builds .ci-venv-tl4 and sets it)"
    )


def is_selected(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in PATHS)


@dataclass
class OtherLineRun:
    python: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes]
    started: float


_run: OtherLineRun | None = None


def environment(python: str) -> dict[str, str]:
    """This process's environment for a subprocess of ``python``: its own console scripts (alignment-probe,
    lint-imports) first on PATH, and no ``$ALIGNMENT_PROBE_OTHER_LINE_PYTHON`` (it would point back here)."""
    env = {k: v for k, v in os.environ.items() if k != VAR}
    env["PATH"] = str(Path(python).parent) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(python).parent.parent)
    return env


def command(python: str, basetemp: Path) -> list[str]:
    # --basetemp: its own temporary root, so neither run's pytest clears the other's folders
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *PATHS]


def start() -> OtherLineRun:
    """Start the selected tiers in the other interpreter (once per session), output to a log file."""
    global _run
    if _run is not None:
        return _run
    python = other_python()
    assert python is not None, how_to_run()
    work = Path(tempfile.mkdtemp(prefix="ap-other-line-"))
    cmd = command(python, work / "basetemp")
    log = work / "pytest.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=environment(python),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _run = OtherLineRun(python, cmd, log, process, time.monotonic())
    return _run


def wait() -> tuple[int | None, str, float]:
    """Wait for the run (starting it if this session has not): (exit code or None on time-out, its output,
    seconds). It is stopped after ``$ALIGNMENT_PROBE_OTHER_LINE_TIMEOUT`` seconds (default 3600)."""
    run = start()
    limit = float(os.environ.get(TIMEOUT_VAR, "3600"))
    try:
        code: int | None = run.process.wait(timeout=max(1.0, limit - (time.monotonic() - run.started)))
    except subprocess.TimeoutExpired:
        stop()
        code = None
    return code, run.log.read_text(errors="replace"), time.monotonic() - run.started


def stop() -> None:
    """End the run if it is still going (its whole process group: pytest and what it started)."""
    if _run is not None and _run.process.poll() is None:
        os.killpg(_run.process.pid, signal.SIGTERM)
        try:
            _run.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(_run.process.pid, signal.SIGKILL)
            _run.process.wait()

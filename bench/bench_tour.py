"""Issue 25: the default run as a tour vs ``--suite full``, each as a user types it, side by side in one invocation.

    python bench/bench_tour.py --repeats 2                      # tour, full, full, tour (alternated), 2 of each
    python bench/bench_tour.py --repeats 3 --quiet-below 1.0    # wait (up to --quiet-wait s) for a quiet machine

Each run is ``python -m alignment_probe run --out DIR`` (the tour, the default) or the same with ``--suite full``,
in a fresh process with no thread setting (``--procs auto``: one process per core here), progress displays and
all: the command as the README types it. Recorded per run: wall and CPU seconds of the whole process tree
(``os.wait4``: the launcher and the ranks it waited for), peak RSS, the 1-minute load average before and after,
and, from the log's own lines, when the ranks had imported and tokenised (``data:``), each stage's "done" line
(``stage N done in X s``) and the end. The order alternates (tour, full, then full, tour) so both see the same
drift in the machine's load. ``--arms`` adds ``tour-1p``/``full-1p`` (``--procs 1``: one process, one thread), whose
CPU time is close to what one quiet core needs. Raw logs: ``bench/results/run-tour-*.log``; numbers: ``--out``
(default ``bench/results/bench-tour.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ARMS = {
    "tour": [],
    "full": ["--suite", "full"],
    "tour-1p": ["--procs", "1"],
    "full-1p": ["--suite", "full", "--procs", "1"],
}
STAGE = re.compile(r"^stage (\d+) done in ([\d.]+) s")


def wait_quiet(below: float | None, patience: float) -> float:
    """Wait until the 1-minute load average is below ``below`` (at most ``patience`` seconds); the load then."""
    deadline = time.monotonic() + patience
    while below is not None and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def timed(name: str, argv: list[str]) -> dict:
    """One command in a fresh process; its output lines time-stamped as they arrive."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # as typed: the command line chooses
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"run-tour-{name}.log"
    lines: list[tuple[float, str]] = []
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignment_probe", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            for part in raw.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
                if part.strip() and "%|" not in part:  # progress displays are drawn, not logged
                    lines.append((time.perf_counter() - t0, part.rstrip()))

    reader = threading.Thread(target=pump)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    reader.join()
    log.write_text("".join(f"{t:7.2f} {text}\n" for t, text in lines))
    when = {
        "data": next((t for t, s in lines if s.startswith("data:")), None),
        "wrote": next((t for t, s in lines if s.startswith("wrote ")), None),
    }
    stages = {m.group(1): {"at": round(t, 2), "took": float(m.group(2))} for t, s in lines if (m := STAGE.match(s))}
    row = {
        "name": name,
        "argv": argv,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
        "rc": os.waitstatus_to_exitcode(status),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "started": datetime.now().isoformat(timespec="seconds"),
        "data_line_s": None if when["data"] is None else round(when["data"], 2),
        "wrote_line_s": None if when["wrote"] is None else round(when["wrote"], 2),
        "stages": stages,
        "log": str(log.relative_to(ROOT)),
    }
    print(
        f"{name:>12}: {row['wall_s']:6.1f} s wall {row['cpu_s']:6.1f} s CPU rc {row['rc']} "
        f"[load {row['load_before']:.2f} → {row['load_after']:.2f}] data at {row['data_line_s']} s, stages "
        + ", ".join(f"{k}: {v['took']} s" for k, v in stages.items()),
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated (default 2)")
    parser.add_argument(
        "--arms", default="tour,full", help=f"comma-separated, of {', '.join(ARMS)} (default tour,full)"
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=None,
        help="before each run, wait until the 1-minute load average is below this",
    )
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="... for at most this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench-tour.json")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    work = Path(tempfile.mkdtemp(prefix="bench-tour-"))
    results: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "arms": arms,
        "head": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "runs": [],
    }
    try:
        for rep in range(args.repeats):
            for arm in arms if rep % 2 == 0 else arms[::-1]:  # alternated: A B, B A, …
                wait_quiet(args.quiet_below, args.quiet_wait)
                out = work / f"{arm}-{rep}"
                results["runs"].append(timed(f"{arm}-{rep}", ["run", *ARMS[arm], "--out", str(out)]) | {"arm": arm})
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| arm | runs: wall s (CPU s) [load before] |\n|---|---|")
    for arm in arms:
        rows = [r for r in results["runs"] if r["arm"] == arm]
        print(
            f"| {arm} | "
            + "; ".join(f"{r['wall_s']:.1f} ({r['cpu_s']:.1f}) [{r['load_before']:.2f}]" for r in rows)
            + " |"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How one run of the SmolLM2 protocol is executed: in this process, or as torchrun processes.

:mod:`~alignment_probe.realmodels.findings` drives the protocol and renders the numbers; what runs and what each
run patches is :mod:`~alignment_probe.realmodels.plan` (its names are importable from here too).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from alignment_probe.distributed import PeerError
from alignment_probe.errors import AlignmentProbeError, ConfigError
from alignment_probe.manifest import write_json_atomic
from alignment_probe.realmodels.plan import (  # the plan: kept importable from here
    DPO_ADAPTER,
    HELPFUL_DATA,
    PLANTED_ADAPTER,
    PLANTED_LAYER,
    PROTOCOLS,
    REPO_DATA,
    RUNS,
    explore_peak,
    models,
    neighbours,
    picked_blocks,
    plan,
    write_heldout_ids,
)
from alignment_probe.run import RunRequest, execute

__all__ = [
    "DPO_ADAPTER",
    "HELPFUL_DATA",
    "PLANTED_ADAPTER",
    "PLANTED_LAYER",
    "PROTOCOLS",
    "REPO_DATA",
    "RUNS",
    "explore_peak",
    "launch",
    "models",
    "neighbours",
    "picked_blocks",
    "plan",
    "run_one",
    "write_heldout_ids",
]


def run_one(
    name: str,
    kwargs: dict[str, Any],
    out: Path,
    *,
    device: str | None,
    batch_size: int,
    log: Callable[[str], None],
    nproc: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """One resumable ``alignment-probe run`` into ``out/name``; returns its summary. ``nproc`` > 1: the
    same run as that many torchrun processes (``threads`` each), with the same numbers."""
    kw = dict(kwargs)
    req = RunRequest(
        base=str(kw.pop("base")),
        tuned=str(kw.pop("tuned")),
        out=out / name,
        device=device,
        batch_size=batch_size,
        argv=["alignment_probe.realmodels.findings", name],
        **kw,
    )
    t0 = time.perf_counter()
    log(f"[{name}] running into {req.out}")
    if nproc > 1:
        launch(req, nproc, threads=threads, log=lambda s: log(f"[{name}] {s}"))
    else:
        execute(req, progress=True, log=lambda s: log(f"[{name}] {s}"))
    summary = json.loads((req.out / "summary.json").read_text())
    timing = req.out / "wall_seconds.json"
    if not timing.exists():  # the first complete run's wall time; a resumed no-op does not overwrite it
        write_json_atomic(
            timing,
            {
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "device": device,
                "threads": (threads or 1) if nproc > 1 else _threads(),
                "processes": nproc,
            },
        )
    return summary


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# --- launching a run as torchrun processes (only the findings driver does: a tool, so it may import run) ----
def launch(req: RunRequest, nproc: int, *, threads: int | None = None, log: Callable[[str], None] = print) -> None:
    """Run the :class:`~alignment_probe.run.RunRequest` ``req`` as ``nproc`` processes on this machine with
    ``torchrun --standalone`` (``threads`` torch threads each; torchrun's default is 1). The run
    directory is the same as a single-process run's, and so are the numbers; rank 0's output shows."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}.")
    with tempfile.TemporaryDirectory(prefix="alignment-probe-launch-") as tmp:
        path = os.path.join(tmp, "request.pkl")
        with open(path, "wb") as handle:
            pickle.dump(req, handle)
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "alignment_probe.realmodels.protocol",
            path,
        ]
        log(f"launching {nproc} processes: {' '.join(cmd[1:])}")
        code = subprocess.call(cmd, env=env)
    if code != 0:
        raise PeerError(
            f"the {nproc}-process run into {req.out} failed (torchrun exit code {code}; the ranks' "
            "messages are above). The finished parts are kept: run the same command again to resume."
        )


def _worker(path: str) -> int:
    """One torchrun process of :func:`launch`: the pickled request, executed in this rank's share."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(path, "rb") as handle:
        req = pickle.load(handle)
    try:
        execute(req, progress=True, log=lambda s: print(s, file=sys.stderr))
    except AlignmentProbeError as exc:
        print(f"alignment-probe (rank {os.environ.get('RANK', 0)}): error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))

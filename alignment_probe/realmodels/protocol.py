"""How one run of the SmolLM2 protocol is executed: in this process, or as several (the launcher of ``run --procs``).

:mod:`~alignment_probe.realmodels.findings` drives the protocol and renders the numbers; what runs and what each
run patches is :mod:`~alignment_probe.realmodels.plan` (its names are importable from here too).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from alignment_probe.launch import spawn_request
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
from alignment_probe.runfiles import RunFiles

__all__ = [
    "DPO_ADAPTER",
    "HELPFUL_DATA",
    "PLANTED_ADAPTER",
    "PLANTED_LAYER",
    "PROTOCOLS",
    "REPO_DATA",
    "RUNS",
    "explore_peak",
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
    same run as that many processes (``threads`` each, default 1), with the same numbers."""
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
    if nproc > 1:  # the launcher of `run --procs N`: a rank's error is raised here, with its message
        spawn_request(req, nproc, threads=threads or 1, log=lambda s: log(f"[{name}] {s}"))
    else:
        execute(req, progress=True, log=lambda s: log(f"[{name}] {s}"))
    summary = RunFiles(req.out).summary
    assert summary is not None  # a finished run (execute returned, or every rank exited 0) wrote it
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

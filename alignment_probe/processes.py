"""How a run uses the machine it runs on: how many processes ``run --procs auto`` starts, how many CPU threads each
uses, and deterministic kernels on a GPU. Decided from cheap facts (the environment, the base checkpoint's
config.json) before torch is imported; torch is imported only to set what was decided.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from alignment_probe.checkpoint_files import is_local_checkpoint, read_checkpoint_config

# Models narrower than this gain nothing from a second CPU thread: their matrix products are too small to share.
# The command line runs them on one thread per process, and one process per core. Measured side by side on the
# bundled default (d_model 128, 2-core machine, bench/README.md): 1 thread 129 s, torch's 2 threads 293 s; one
# process 87 s, two processes 53-61 s, byte-identical.
ONE_THREAD_BELOW_D_MODEL = 512
# Each process gets at least this many parts of a stage, so a small run is not split for nothing.
MIN_PARTS_PER_PROCESS = 2


def auto_processes(
    *, device: str | None, base: str, n_pairs: int, pairs_per_part: int, cores: int | None = None, environ: Any = None
) -> tuple[int, str]:
    """How many processes ``run --procs auto`` starts, and why: one per CPU core (up to one per
    :data:`MIN_PARTS_PER_PROCESS` parts) for a narrow model (d_model < :data:`ONE_THREAD_BELOW_D_MODEL`, read from
    the local base checkpoint's config.json) on the CPU; 1 under torchrun (or in a rank of ``--procs``), with
    ``OMP_NUM_THREADS`` set (the user chose threads), on a GPU, for a hub model or a wide one. Decided before
    torch is imported."""
    import math
    from pathlib import Path

    env = os.environ if environ is None else environ
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 or "OMP_NUM_THREADS" in env:
        return 1, "torchrun or OMP_NUM_THREADS chose"
    if device is not None and not str(device).startswith("cpu"):
        return 1, f"device {device}"
    if device is None and any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")):
        return 1, "a GPU is present"
    if not is_local_checkpoint(base):  # a hub name: a real model, not worth a process per core
        return 1, "the base is a hub model"
    config = read_checkpoint_config(Path(base).expanduser())  # the command line checked the folder before
    d_model = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if not isinstance(d_model, int) or d_model >= ONE_THREAD_BELOW_D_MODEL:
        return 1, f"d_model {d_model}"
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parts = math.ceil(n_pairs / pairs_per_part)
    why = f"{cores} CPU cores, d_model {d_model}, {parts} parts per stage"
    return max(1, min(cores, parts // MIN_PARTS_PER_PROCESS)), why


def make_deterministic(device: str | None) -> None:
    """On a GPU: deterministic cuBLAS workspaces and kernels (set before the first CUDA call).
    CPU kernels are deterministic for a fixed number of threads (recorded in the manifest)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class CpuThreads:
    """The command line's CPU thread count: one thread for a narrow model unless the user chose
    (``OMP_NUM_THREADS`` set, as torchrun does), otherwise torch's own; put back when the run ends, so a
    library caller's process keeps its setting."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and "OMP_NUM_THREADS" not in os.environ
        self.before: int | None = None

    def choose(self, device: Any, d_model: int, log: Callable[[str], None]) -> None:
        if not self.enabled or not str(device).startswith("cpu") or d_model >= ONE_THREAD_BELOW_D_MODEL:
            return
        import torch

        if torch.get_num_threads() > 1:
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)
            log(
                f"note: 1 CPU thread (d_model {d_model} is too narrow to gain from {self.before}; "
                "set OMP_NUM_THREADS to choose, or run more processes with --procs or torchrun)"
            )

    def restore(self) -> None:
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)
            self.before = None

"""What every result records so it can be repeated: versions, seeds, options, model fingerprints,
the data file's checksum, the command line and the numerical environment.

Timestamps live here and only here: tables and ``summary.json`` hold none, so the same inputs,
seed and device give byte-identical results.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from alignment_probe.files import json_bytes, write_bytes_atomic

PACKAGES = (
    "alignment-probe",
    "torch",
    "transformer-lens",
    "transformers",
    "tokenizers",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "datasets",
)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(device: str | None = None) -> dict[str, Any]:
    """What besides inputs and options can change the numbers: threads, device, determinism flags."""
    import torch

    env: dict[str, Any] = {
        "torch_num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda_available": torch.cuda.is_available(),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda_version"] = torch.version.cuda
        env["cudnn_deterministic"] = torch.backends.cudnn.deterministic
    return env


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (data files, checkpoints, adapters, twin deltas)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """sha256 and size of a local file (a data file), or {} for a hub name."""
    path = Path(path).expanduser()
    if not path.is_file():
        return {}
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def build_manifest(
    command: str,
    config: dict[str, Any],
    models: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    *,
    argv: Sequence[str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    return {
        "command": command,
        "argv": list(argv) if argv is not None else ["alignment-probe", *sys.argv[1:]],
        "config": config,
        "models": models or {},
        "data": data or {},
        "versions": versions(),
        "environment": environment(device),
        "created": now(),
    }


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON via a flushed temporary file and a rename, so readers never see half a file."""
    return write_bytes_atomic(path, json_bytes(obj))

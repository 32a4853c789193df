"""What every result records so it can be repeated: versions, seeds, options, model fingerprints."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("alignment-probe", "torch", "transformer-lens", "transformers", "tokenizers", "numpy", "pandas",
            "scikit-learn", "datasets")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_manifest(command: str, config: dict[str, Any], models: dict[str, Any] | None = None,
                   data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "config": config,
        "models": models or {},
        "data": data or {},
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path

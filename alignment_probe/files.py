"""Core file helpers every layer may use: atomic writes and the cache root (no torch, no pandas).

Atomic means: the data goes to a temporary file next to the target, is flushed to disk, and is
renamed over the target (``os.replace``). A reader — or a run restarted after a kill — sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a flushed temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8")


def default_cache_root() -> Path:
    """``$ALIGNMENT_PROBE_CACHE``, else ``$XDG_CACHE_HOME/alignment-probe``, else ``~/.cache/alignment-probe``."""
    if os.environ.get("ALIGNMENT_PROBE_CACHE"):
        return Path(os.environ["ALIGNMENT_PROBE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "alignment-probe"


def make_readable(path: Path) -> None:
    """mkdtemp makes 0700 directories; a shared cache should be as readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)

"""Publishing a finished cache directory atomically (twins, the SmolLM2 conversion, merged adapters)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def publish_directory(
    tmp: Path, target: Path, *, is_complete: Callable[[Path], bool], replace_stale: bool = True
) -> Path:
    """Move a fully written temporary directory ``tmp`` into place as ``target`` with one atomic rename.

    A reader therefore sees either no ``target`` or a complete one. An existing ``target`` (stale or
    half-written) is first renamed aside and removed when ``replace_stale``; if another process wins
    the race to the rename, its copy is kept when ``is_complete(target)`` says it is whole.
    ``tmp`` must sit on the same filesystem as ``target`` (e.g. ``tempfile.mkdtemp(dir=target.parent)``).
    """
    import os
    import shutil
    import tempfile

    if replace_stale and target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process renamed its copy into place first
        if not is_complete(target):
            raise
    return target

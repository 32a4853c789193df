"""A run's log: one progress display per stage of the suite and one line when the stage has finished.

The suite may run its stages several times over (:func:`~alignment_probe.distributed.run_passes`: a pass that
met another process's unfinished part waits for it and runs again, loading what is done), so :class:`Stages`
outlives a pass: a stage's display is created once, counts each part once (computed here, by another process,
or found done from an earlier run) and ends with one line, in whichever pass the stage completes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable


class Stages:
    """Progress of the suite's stages. ``enabled``: show the progress displays (on stderr); ``log``: where the
    finished-stage lines go (always written); ``existing``: the parts an earlier run left (a resumed run says how
    many of a stage's parts it found done)."""

    def __init__(
        self,
        enabled: bool = True,
        log: Callable[[str], None] = lambda s: None,
        *,
        existing: frozenset[str] = frozenset(),
    ):
        self.enabled, self.log, self.existing = enabled, log, existing
        self._bars: dict[int, Any] = {}
        self._started: dict[int, float] = {}
        self._seen: dict[int, dict[str, bool]] = {}  # stage → part name → left by an earlier run
        self._counted: dict[int, set[str]] = {}
        self._finished: set[int] = set()

    def start(self, stage: int, what: str, total: int, unit: str = "pair") -> None:
        """Stage ``stage`` (``what``: for its display) runs ``total`` units of work (pairs, or ``unit``s);
        called again by a later pass, it changes nothing."""
        if stage in self._started:
            return
        self._started[stage] = time.perf_counter()
        self._seen[stage], self._counted[stage] = {}, set()
        if self.enabled:
            from tqdm.auto import tqdm

            self._bars[stage] = tqdm(
                total=total, desc=f"stage {stage}: {what}", unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )

    def done(self, stage: int, name: str, units: int, real: bool = True) -> None:
        """The part ``name`` (a file name in the run's parts) of ``units`` units is there (``real``: not a
        placeholder for another process's); each part counts once."""
        self._seen[stage].setdefault(name, name in self.existing)
        if not real or name in self._counted[stage]:
            return
        self._counted[stage].add(name)
        bar = self._bars.get(stage)
        if bar is not None:
            bar.update(units)

    def finish(self, stage: int, line: str) -> None:
        """The stage is complete: close its display and log ``line`` with the time it took, once."""
        if stage in self._finished:
            return
        self._finished.add(stage)
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.close()
        seen = self._seen.get(stage, {})
        resumed = sum(seen.values())
        note = f" ({resumed} of its {len(seen)} parts were done already)" if resumed else ""
        self.log(f"stage {stage} done in {time.perf_counter() - self._started[stage]:.1f} s: {line}{note}")

    def write(self, message: str) -> None:
        """A message while a display may be open: above it, not through it."""
        if not self._bars:
            self.log(message)
            return
        from tqdm.auto import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            self.log(message)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

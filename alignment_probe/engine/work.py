"""Work accounting of the fast engine (fast.py's docstring, "Work accounting"): block-token products computed,
padding included, beside the floor, the least work of the same task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkCounter:
    """Block-token products: what the engine computed (padding included) and the floor, the least
    work of the same task (no padding, shareable prompts once). Their ratio is the overhead."""

    computed: int = 0
    floor: int = 0
    forwards: int = 0

    def add_computed(self, n_blocks: int, tokens: int) -> None:
        self.computed += n_blocks * tokens
        self.forwards += 1

    def add_floor(self, n_blocks: int, tokens: int) -> None:
        self.floor += n_blocks * tokens

    @property
    def ratio(self) -> float | None:
        return self.computed / self.floor if self.floor else None


class WorkAccounting:
    """The engine's counters, over all forwards (``work``) and per stage (``work_by_stage``: clean, patched)."""

    work: WorkCounter
    work_by_stage: dict[str, WorkCounter]

    def _start_counting(self) -> None:
        self.work = WorkCounter()
        self.work_by_stage = {"clean": WorkCounter(), "patched": WorkCounter()}

    def _computed(self, stage: str, n_blocks: int, tokens: int) -> None:
        self.work.add_computed(n_blocks, tokens)
        self.work_by_stage[stage].add_computed(n_blocks, tokens)

    def _floor(self, stage: str, n_blocks: int, tokens: int) -> None:
        self.work.add_floor(n_blocks, tokens)
        self.work_by_stage[stage].add_floor(n_blocks, tokens)

"""From an engine's runs to its two tables: the per-pair effects table and the long per-token table (effects.py).

An exact engine yields, per (condition, pair), each side's clean and patched ``(log p(y|x), per-token
log-probs)`` from its ``runs`` method; :func:`effects_table` and :func:`token_table` turn that stream into
rows, and :class:`ExactEngine` gives an engine with ``runs`` both ``run`` and ``run_tokens``, so every exact
engine builds its tables the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from alignment_probe.effects import TokenBlock, make_row, to_frame, tokens_to_frame
from alignment_probe.tokens import SIDES, TokenizedPair

if TYPE_CHECKING:
    import pandas as pd

    from alignment_probe.engine.spec import PatchSpec

# (condition, pair_id, clean per side, patched per side); per side: (log-prob, per-token log-probs [n])
Run = tuple["PatchSpec", int, tuple[tuple[float, Any], ...], tuple[tuple[float, Any], ...]]


def effects_table(runs: Iterable[Run]) -> pd.DataFrame:

    return to_frame(
        [
            make_row(spec.key, pair_id, tuple(c[0] for c in clean), tuple(a[0] for a in after))
            for spec, pair_id, clean, after in runs
        ]
    )


def token_table(runs: Iterable[Run], tokenized: Sequence[TokenizedPair]) -> pd.DataFrame:
    import numpy as np

    by_id = {t.pair_id: t for t in tokenized}
    return tokens_to_frame(
        [
            TokenBlock(
                spec.key,
                pair_id,
                side,
                by_id[pair_id].completion_ids(side),
                np.asarray(c[1], dtype=np.float64),
                np.asarray(a[1], dtype=np.float64),
            )
            for spec, pair_id, clean, after in runs
            for side, c, a in zip(SIDES, clean, after)
        ]
    )


class ExactEngine:
    """``run`` (the effects table) and ``run_tokens`` (the long per-token table) from a subclass's ``runs``."""

    def runs(
        self, pair: Any, tokenized: Sequence[TokenizedPair], specs: Sequence["PatchSpec"], *, progress: bool = False
    ) -> Iterable[Run]:
        raise NotImplementedError

    def run(
        self, pair: Any, tokenized: Sequence[TokenizedPair], specs: Sequence["PatchSpec"], *, progress: bool = False
    ) -> pd.DataFrame:
        """The effects table (effects.py) of ``specs`` on ``tokenized``."""
        return effects_table(self.runs(pair, tokenized, specs, progress=progress))

    def run_tokens(
        self, pair: Any, tokenized: Sequence[TokenizedPair], specs: Sequence["PatchSpec"], *, progress: bool = False
    ) -> pd.DataFrame:
        """The long per-token table (effects.py, E9) of ``specs``: every completion token's clean and patched
        log-prob, both sides of every pair (the unpatched side of a one-sided condition has effect 0), from the
        same forwards as :meth:`run`; each sequence's tokens sum to its log-prob in :meth:`run`'s table."""
        return token_table(self.runs(pair, tokenized, specs, progress=progress), tokenized)

"""What to patch: the contract between experiments (which say *what*) and engines (which decide *how*)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import pandas as pd

from alignment_probe.effects import RowKey
from alignment_probe.interventions import Intervention
from alignment_probe.pair import Twins
from alignment_probe.tokens import TokenizedPair

HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def hook_name(layer: int, hook: str) -> str:
    """TransformerLens's uniform hook names, e.g. ``blocks.8.hook_resid_post``."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; use one of {', '.join(HOOKS)}")
    return f"blocks.{layer}.hook_{hook}"


@dataclass(frozen=True, eq=False)
class PatchSpec:
    """One patched condition: run ``key.target`` with the activation at ``key.hook`` of block
    ``key.layer`` replaced (at ``key.scope`` positions, in ``key.sides`` sequences) by
    ``intervention`` of the target's and ``key.source``'s activations.

    ``pair_ids`` restricts the condition to some pairs (e.g. the held-out half); None = all.
    """

    key: RowKey
    intervention: Intervention
    pair_ids: frozenset[int] | None = None

    @property
    def name(self) -> str:
        return hook_name(self.key.layer, self.key.hook)

    def applies_to(self, pair_id: int) -> bool:
        return self.pair_ids is None or pair_id in self.pair_ids

    def patches(self, side: str) -> bool:
        return self.key.sides in ("both", side)


class Engine(Protocol):
    """Runs patched conditions and returns the tidy effects table (see effects.py)."""

    name: str

    def run(self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *,
            progress: bool = False) -> pd.DataFrame: ...

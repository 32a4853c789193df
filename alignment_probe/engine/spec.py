"""What to patch: the contract between experiments (which say *what*) and engines (which decide *how*)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from alignment_probe.effects import RowKey
from alignment_probe.interventions import Intervention, Transplant

if TYPE_CHECKING:  # annotations only: importing the engine's contract loads no model code
    import pandas as pd

    from alignment_probe.pair import Twins
    from alignment_probe.tokens import TokenizedPair
from alignment_probe import sites
from alignment_probe.vocab import BLOCK_HOOKS, HOOKS, Side, check_hook, check_side

__all__ = ["HOOKS", "Engine", "PatchSpec", "hook_name"]


def hook_name(layer: int, hook: str) -> str:
    """The TransformerLens hook name of a site kind at block ``layer`` (the site table, sites.py), e.g.
    ``blocks.8.hook_resid_post``, ``blocks.8.attn.hook_z``; a transplant's (``blocks``) is the residual entering it."""
    check_hook(hook)
    return sites.hook_name(layer, hook)


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

    def __post_init__(self) -> None:
        if not isinstance(self.key, RowKey):  # RowKey validates its own vocabularies
            raise TypeError(f"PatchSpec.key must be a RowKey, got {type(self.key).__name__}")
        if not callable(self.intervention):
            raise TypeError(f"PatchSpec.intervention must be callable, got {self.intervention!r}")
        transplant = isinstance(self.intervention, Transplant)
        if transplant != (self.key.hook in BLOCK_HOOKS):
            raise ValueError(
                f"{self.key.experiment} at layer {self.key.layer}: a Transplant goes with hook 'blocks' "
                f"and hook 'blocks' with a Transplant (got {type(self.intervention).__name__} at hook "
                f"{self.key.hook!r})"
            )
        if isinstance(self.intervention, Transplant) and not (
            self.key.param == self.intervention.width and self.key.scope == "all" and self.key.sides == "both"
        ):
            raise ValueError(
                f"{self.key.experiment} at layer {self.key.layer}: a transplant's row has param = its "
                f"width ({self.intervention.width}), scope 'all' and sides 'both'; got param "
                f"{self.key.param}, scope {self.key.scope!r}, sides {self.key.sides!r}"
            )

    @property
    def name(self) -> str:
        """The hook point the engine reads and writes; a transplant's is the residual entering its first block."""
        return hook_name(self.key.layer, self.key.hook)

    @property
    def site(self) -> sites.Site:
        """The site kind it patches (its hook name, axes, and where a patched run starts)."""
        return sites.site(self.key.hook)

    @property
    def window(self) -> range | None:
        """The blocks whose weights come from the source (a transplant), else None."""
        return self.intervention.blocks(self.key.layer) if isinstance(self.intervention, Transplant) else None

    def applies_to(self, pair_id: int) -> bool:
        return self.pair_ids is None or pair_id in self.pair_ids

    def patches(self, side: Side) -> bool:
        return self.key.sides in ("both", check_side(side))


class Engine(Protocol):
    """Runs patched conditions and returns the tidy effects table (see effects.py)."""

    name: str

    def run(
        self, pair: Twins, tokenized: Sequence[TokenizedPair], specs: Sequence[PatchSpec], *, progress: bool = False
    ) -> pd.DataFrame: ...

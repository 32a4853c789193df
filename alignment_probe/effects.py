"""The tidy effects table: the one result type every experiment returns and every figure,
statistic and report reads.

One row per (experiment, condition, hook, scope, layer, pair). It keeps the raw numbers the effect
came from, so any summary can be recomputed from the table alone:

==================  ===========================================================================
column              meaning
==================  ===========================================================================
experiment          name, e.g. ``patch_tuned_to_base``, ``identity``, ``alpha``, ``lowrank_difference``
target, source      which model is run (``base``/``tuned``) and where patched activations come from
hook                hook point inside block ``layer``: ``resid_pre``, ``resid_mid``, ``resid_post``,
                    ``attn_out`` or ``mlp_out`` (the full name is ``blocks.{layer}.hook_{hook}``)
scope               positions patched: ``all``, ``prompt``, ``completion``, ``last_prompt``
sides               sequences patched: ``both``, ``chosen`` or ``rejected``
layer               block index
param               the experiment's extra axis (α, k, scale), NaN when it has none
split               ``all``, or ``fit`` / ``heldout`` for quantities fitted on half the pairs
pair_id             the pair's 0-based line in the data file
estimator           ``exact`` (the patch was run) or ``atp`` (attribution patching's first-order
                    estimate of it, E10; its patched_* columns are clean + estimate)
clean_logp_chosen   target's own log p(y+|x) (unpatched) — and the same for rejected
clean_delta_logp    target's own Δlogp
patched_logp_*      log-probs with the patch applied
patched_delta_logp  Δlogp with the patch applied
effect              patched_delta_logp − clean_delta_logp
==================  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from alignment_probe.vocab import Hook, Role, Sides, check_hook, check_role, check_scope, check_sides

# ``estimator`` last: every exact-only table keeps the row order it had before the column existed
KEY_COLUMNS = ["experiment", "target", "source", "hook", "scope", "sides", "layer", "param", "split", "pair_id",
               "estimator"]
ESTIMATORS: tuple[str, ...] = ("exact", "atp", "atp*")
VALUE_COLUMNS = ["clean_logp_chosen", "clean_logp_rejected", "clean_delta_logp",
                 "patched_logp_chosen", "patched_logp_rejected", "patched_delta_logp", "effect"]
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS



def __getattr__(name: str) -> Any:
    # EXPERIMENT_NAMES derives from the experiment registry (which imports this module, hence lazily).
    if name == "EXPERIMENT_NAMES":
        from alignment_probe.experiments.registry import experiment_names

        return experiment_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class RowKey:
    """Identifies one group of rows (all pairs) of the effects table.

    Target, source, hook, scope and sides are checked against their vocabularies (alignment_probe.vocab)
    here, so a typo fails when the spec is built, naming the bad value and the allowed ones.
    """

    experiment: str
    target: Role
    source: Role
    hook: Hook
    scope: str  # a vocab.Scope, or a parametrised one such as "first_completion:4"
    sides: Sides
    layer: int
    param: float = math.nan
    split: str = "all"
    estimator: str = "exact"  # how the rows' effects were obtained: run exactly, or estimated (ESTIMATORS)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; use one of {', '.join(ESTIMATORS)}")
        check_role(self.target, "target model")
        check_role(self.source, "source model")
        check_hook(self.hook)
        check_scope(self.scope)
        check_sides(self.sides)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEY_COLUMNS if k != "pair_id"}


def make_row(key: RowKey, pair_id: int, clean: tuple[float, float], patched: tuple[float, float]) -> dict[str, Any]:
    clean_delta = clean[0] - clean[1]
    patched_delta = patched[0] - patched[1]
    return key.as_dict() | {
        "pair_id": pair_id,
        "clean_logp_chosen": clean[0], "clean_logp_rejected": clean[1], "clean_delta_logp": clean_delta,
        "patched_logp_chosen": patched[0], "patched_logp_rejected": patched[1],
        "patched_delta_logp": patched_delta, "effect": patched_delta - clean_delta,
    }


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → the effects table with canonical column order, types and a stable row order."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["layer"] = frame["layer"].astype("int64")
    frame["pair_id"] = frame["pair_id"].astype("int64")
    frame["param"] = frame["param"].astype("float64")
    return frame.sort_values(KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)

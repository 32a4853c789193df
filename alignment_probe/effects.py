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
estimator           ``exact`` (the patch was run), ``atp`` (attribution patching's first-order
                    estimate of it, E10; its patched_* columns are clean + estimate) or ``atp*``
                    (AtP with the QK fix: the attention pattern recomputed with patched keys)
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
from typing import Any, Callable, Sequence

import pandas as pd

from alignment_probe.vocab import Role, Sides, check_hook, check_role, check_scope, check_sides

# ``estimator`` last: every exact-only table keeps the row order it had before the column existed
KEY_COLUMNS = [
    "experiment",
    "target",
    "source",
    "hook",
    "scope",
    "sides",
    "layer",
    "param",
    "split",
    "pair_id",
    "estimator",
]
ESTIMATORS: tuple[str, ...] = ("exact", "atp", "atp*")
VALUE_COLUMNS = [
    "clean_logp_chosen",
    "clean_logp_rejected",
    "clean_delta_logp",
    "patched_logp_chosen",
    "patched_logp_rejected",
    "patched_delta_logp",
    "effect",
]
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS


@dataclass(frozen=True)
class RowKey:
    """Identifies one group of rows (all pairs) of the effects table.

    Target, source, hook, scope and sides are checked against their vocabularies (alignment_probe.vocab)
    here, so a typo fails when the spec is built, naming the bad value and the allowed ones.
    """

    experiment: str
    target: Role
    source: Role
    hook: str  # a site kind (sites.py)
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


def make_row(key: RowKey, pair_id: int, clean: Sequence[float], patched: Sequence[float]) -> dict[str, Any]:
    """One effects-table row from the (chosen, rejected) log-probs of the clean and the patched run."""
    clean_delta = clean[0] - clean[1]
    patched_delta = patched[0] - patched[1]
    return key.as_dict() | {
        "pair_id": pair_id,
        "clean_logp_chosen": clean[0],
        "clean_logp_rejected": clean[1],
        "clean_delta_logp": clean_delta,
        "patched_logp_chosen": patched[0],
        "patched_logp_rejected": patched[1],
        "patched_delta_logp": patched_delta,
        "effect": patched_delta - clean_delta,
    }


# The long per-token table (E9): one row per (condition, pair, side, completion position). Σ over a side's
# positions of ``effect`` is that sequence's change of log p(y|x), so chosen minus rejected is the pair's effect.
TOKEN_KEY_COLUMNS = KEY_COLUMNS + ["side", "position"]
TOKEN_VALUE_COLUMNS = ["token_id", "clean_logp", "patched_logp", "effect"]
TOKEN_COLUMNS = TOKEN_KEY_COLUMNS + TOKEN_VALUE_COLUMNS


@dataclass(frozen=True)
class TokenBlock:
    """The per-token values of one sequence under one condition (rows of the long table, see
    :func:`tokens_to_frame`): arrays over its completion positions."""

    key: RowKey
    pair_id: int
    side: str
    token_ids: Any  # [n] ints
    clean: Any  # [n] clean log-probs
    patched: Any  # [n] patched log-probs


def tokens_to_frame(blocks: list[TokenBlock]) -> pd.DataFrame:
    """Per-sequence token blocks → the long table with canonical column order, types and row order."""
    import numpy as np

    lengths = [len(b.token_ids) for b in blocks]
    data: dict[str, Any] = {}
    for col in KEY_COLUMNS:
        values = [b.pair_id if col == "pair_id" else getattr(b.key, col) for b in blocks]
        data[col] = np.repeat(
            np.asarray(values, dtype=object if col not in ("layer", "param", "pair_id") else None), lengths
        )
    data["side"] = np.repeat(np.asarray([b.side for b in blocks], dtype=object), lengths)
    data["position"] = np.concatenate([np.arange(n) for n in lengths]) if blocks else np.zeros(0, int)

    def cat(f: Callable[[Any], Any], dtype: Any) -> Any:
        return np.concatenate([np.asarray(f(b), dtype=dtype) for b in blocks]) if blocks else np.zeros(0, dtype)

    data["token_id"] = cat(lambda b: b.token_ids, np.int64)
    data["clean_logp"] = cat(lambda b: b.clean, np.float64)
    data["patched_logp"] = cat(lambda b: b.patched, np.float64)
    data["effect"] = data["patched_logp"] - data["clean_logp"]
    frame = pd.DataFrame(data, columns=TOKEN_COLUMNS)
    for col in ("layer", "pair_id", "position", "token_id"):
        frame[col] = frame[col].astype("int64")
    frame["param"] = frame["param"].astype("float64")
    return frame.sort_values(TOKEN_KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)


def effects_from_tokens(tokens: pd.DataFrame) -> pd.DataFrame:
    """The per-pair effects table of the conditions in a long per-token table: each sequence's log-probs are
    its tokens' sums (accumulated in float64), Δlogp is chosen minus rejected."""
    if not len(tokens):
        return to_frame([])
    sums = (
        tokens.groupby(KEY_COLUMNS + ["side"], sort=False, dropna=False)[["clean_logp", "patched_logp"]]
        .sum()
        .unstack("side")
    )
    rows = []
    for index, r in sums.iterrows():
        key = dict(zip(KEY_COLUMNS, index))
        pair_id = key.pop("pair_id")
        rows.append(
            make_row(
                RowKey(**key),
                int(pair_id),
                (float(r[("clean_logp", "chosen")]), float(r[("clean_logp", "rejected")])),
                (float(r[("patched_logp", "chosen")]), float(r[("patched_logp", "rejected")])),
            )
        )
    return to_frame(rows)


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → the effects table with canonical column order, types and a stable row order."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["layer"] = frame["layer"].astype("int64")
    frame["pair_id"] = frame["pair_id"].astype("int64")
    frame["param"] = frame["param"].astype("float64")
    return frame.sort_values(KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)

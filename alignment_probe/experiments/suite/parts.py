"""The suite's parts: how pairs are grouped into resumable parts, and how parts become one table in the canonical
row order (see :class:`~alignment_probe.tables.PartStore`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd

from alignment_probe.effects import KEY_COLUMNS, TOKEN_KEY_COLUMNS
from alignment_probe.engine.outputs import effects_table, token_table
from alignment_probe.engine.spec import Engine, PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import registry
from alignment_probe.pair import Twins
from alignment_probe.tables import PartStore
from alignment_probe.tokens import TokenizedPair

DEFAULT_PAIRS_PER_PART = 8


def pair_groups(
    tokenized: Sequence[TokenizedPair], pairs_per_part: int | None, *, ranks: int = 1
) -> list[list[TokenizedPair]]:
    """Groups of ``pairs_per_part`` pairs of similar prompt length (one group if None), each in pair-id order.

    The pairs are sorted by prompt length (ties by pair id) and cut every ``pairs_per_part``: a group's prompts,
    which its forwards share and its continuations attend to, then pad little (bundled default run: block-token
    work 1.103 → 1.076 of the floor; pair-id groups mixed 20- and 150-token prompts). The groups' contents depend
    on the pairs and ``pairs_per_part`` only; their *order* deals them to ``ranks`` processes (a part goes to
    rank k mod ranks, :class:`~alignment_probe.tables.PartStore`) as a snake — short to long, then long to
    short — so no rank gets every longer prompt."""
    if pairs_per_part is not None and pairs_per_part < 1:
        raise ConfigError(f"--pairs-per-part must be at least 1, got {pairs_per_part}.")
    ordered = sorted(tokenized, key=lambda t: (len(t.prompt_ids), t.pair_id))
    size = pairs_per_part or max(len(ordered), 1)
    groups = [sorted(ordered[i : i + size], key=lambda t: t.pair_id) for i in range(0, len(ordered), size)]
    rounds = [groups[i : i + ranks] for i in range(0, len(groups), max(ranks, 1))]
    return [g for n, r in enumerate(rounds) for g in (r[::-1] if n % 2 else r)]


def group_tag(group: Sequence[TokenizedPair]) -> str:
    return f"{group[0].pair_id:06d}-{group[-1].pair_id:06d}"


def canonical_tokens(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of the long per-token table → one table in the canonical row order (that of ``tokens_to_frame``)."""

    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(TOKEN_KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)


def per_token_names() -> set[str]:
    """Names of the experiments whose conditions the engine reports per token (``Experiment.per_token``)."""
    return {n.name for e in registry.experiments() if e.per_token for n in e.names}


def engine_part(
    store: PartStore,
    name: str,
    engine: Engine,
    pair: Twins,
    group: Sequence[TokenizedPair],
    specs: Callable[[], Sequence[PatchSpec]],
    *,
    per_token: bool,
    token_parts: list[pd.DataFrame],
) -> pd.DataFrame:
    """One engine call on one group of pairs (``specs()``: its conditions, built only if a part is computed),
    stored as the effects part ``name``. With ``per_token`` (the stage has an ``Experiment.per_token``
    experiment) the same call also gives the long per-token table of those experiments' conditions, stored first
    as ``<stage>-tokens-<group>`` (appended to ``token_parts``)."""
    if not per_token:
        return store.table(name, lambda: engine.run(pair, group, specs(), progress=False))
    if not hasattr(engine, "runs"):
        raise ConfigError(f"per-token maps need an exact engine (--engine fast or reference); {engine.name} has none.")

    wanted = per_token_names()
    done: dict[str, pd.DataFrame] = {}

    def both() -> dict[str, pd.DataFrame]:
        if not done:  # one engine call for both parts (a resumed run may need only one of them)
            runs = list(engine.runs(pair, group, specs(), progress=False))
            done["effects"] = effects_table(runs)
            done["tokens"] = token_table([r for r in runs if r[0].key.experiment in wanted], group)
        return done

    stage, _, tag = name.partition("-")
    token_parts.append(store.table(f"{stage}-tokens-{tag}", lambda: both()["tokens"]))
    return store.table(name, lambda: both()["effects"])


def _real(*parts: Any) -> bool:
    """Every one a table, none a placeholder for a part another process is computing."""
    return all(isinstance(p, pd.DataFrame) for p in parts)


def canonical_effects(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Parts of an effects table → one table in the canonical row order (that of ``to_frame``)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    for i, p in enumerate(parts):
        if "estimator" not in p.columns:  # a part stored before the column existed: every row exact
            parts[i] = p = p.copy()
            p.insert(p.columns.get_loc("pair_id") + 1, "estimator", "exact")
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(KEY_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)

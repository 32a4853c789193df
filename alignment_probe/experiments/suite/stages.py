"""The suite's stages after planning: stage 1 (the scores and every condition that needs nothing upstream, one
engine call per group of pairs), a later stage (its fits on all pairs, then its conditions), and the conditions an
estimator computes instead of the run's engine (``Experiment.estimator``)."""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd

from alignment_probe.engine.spec import Engine, PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite.config import SuiteConfig
from alignment_probe.experiments.suite.graph import Step, _plan, stage_specs
from alignment_probe.experiments.suite.parts import (
    _real,
    canonical_effects,
    engine_part,
    group_tag,
    pair_groups,
)
from alignment_probe.numerics import check_scores
from alignment_probe.pair import Twins
from alignment_probe.progress import Stages
from alignment_probe.scoring import score_pairs
from alignment_probe.tables import PartStore
from alignment_probe.tokens import TokenizedPair


def _stage_one(
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    specs: list[PatchSpec],
    store: PartStore,
    *,
    stages: Stages,
    per_token: bool,
    token_parts: list[pd.DataFrame],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores and every stage-1 condition, one group of pairs at a time."""
    score_parts, effect_parts = [], []
    for group in groups:
        tag = group_tag(group)

        def score(group: list[TokenizedPair] = group) -> pd.DataFrame:
            # One clean pass per model for the run: the fast engine scored these sequences in its clean runs
            # (free after engine.run; else its own clean pass); the reference engine has no such pass.
            clean = getattr(engine, "clean_scores", None)
            table = clean(pair, group) if clean is not None else score_pairs(pair, group, progress=False)
            check_scores(pair, table, group)  # NaN/inf: names the pair, model and layer
            return table

        if specs:
            effect_parts.append(
                engine_part(
                    store,
                    f"stage1-{tag}",
                    engine,
                    pair,
                    group,
                    lambda: specs,
                    per_token=per_token,
                    token_parts=token_parts,
                )
            )
        score_parts.append(store.table(f"scores-{tag}", score))
        stages.done(1, f"stage1-{tag}.parquet", len(group), real=_real(score_parts[-1], *effect_parts[-1:]))
    scores = pd.concat(score_parts, ignore_index=True).sort_values("pair_id", kind="stable").reset_index(drop=True)
    return scores, canonical_effects(effect_parts)


def _later_stage(
    number: int,
    stage: list[Step],
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    cfg: SuiteConfig,
    store: PartStore,
    fits: dict[str, Any],
    extra: dict[str, Any],
    *,
    stages: Stages,
    token_parts: list[pd.DataFrame],
) -> pd.DataFrame:
    """A stage after the first: its fits on all pairs (computed only when some part still needs them),
    then its conditions per group of pairs."""
    n_layers, d_model = pair.n_layers, pair.d_model
    fitting = [s for s in stage if s.experiment.fit is not None]
    fit_part = {
        s.experiment.key: f"stage{number}-fit" if len(fitting) == 1 else f"stage{number}-fit-{s.experiment.key}"
        for s in fitting
    }
    names = [f"stage{number}-{group_tag(g)}.parquet" for g in groups]
    # other pair sets (E11's transfer data), in groups of the run's size
    other = {
        tag: pair_groups(p, max(map(len, groups)) if groups else None, ranks=store.ranks)
        for tag, p in extra.get("extra_pairs", {}).items()
        if p
    }
    other_names = {tag: [f"stage{number}-{tag}-{group_tag(g)}.parquet" for g in gs] for tag, gs in other.items()}
    fitted: dict[str, Any] = {}

    def fitted_of(step: Step) -> Any:
        if step.experiment.key not in fitted:
            fitted[step.experiment.key] = step.experiment.fit(_plan(step, cfg, n_layers, d_model, **extra))
        return fitted[step.experiment.key]

    complete = (
        all(store.has(f"{p}.json") for p in fit_part.values())
        and all(store.has(n) for n in names)
        and all(store.has(n) for ns in other_names.values() for n in ns)
    )
    for step in fitting:
        if not complete:
            fitted_of(step)  # some part is missing: its conditions need the fit
        fits[step.experiment.key] = store.json(fit_part[step.experiment.key], lambda s=step: fitted_of(s).record)
    specs_cache: list[list[PatchSpec]] = []

    def specs() -> list[PatchSpec]:
        if not specs_cache:
            specs_cache.append(
                [
                    spec
                    for s in stage
                    for spec in s.experiment.specs(
                        _plan(s, cfg, n_layers, d_model, fitted=fitted_of(s) if s.experiment.fit else None, **extra)
                    )
                ]
            )
        return specs_cache[0]

    def specs_for(tag: str | None) -> list[PatchSpec]:
        """The run's pairs (None) get every condition but those of another pair set; a set, only its own."""
        if not other:
            return specs()
        return [s for s in specs() if (s.key.split == tag if tag is not None else s.key.split not in other)]

    parts = []
    for group, name in zip(groups, names):
        parts.append(
            engine_part(
                store,
                name.removesuffix(".parquet"),
                engine,
                pair,
                group,
                lambda: specs_for(None),
                per_token=any(s.experiment.per_token for s in stage),
                token_parts=token_parts,
            )
        )
        stages.done(number, name, len(group), real=_real(parts[-1]))
    for tag, tag_groups in other.items():
        for group, name in zip(tag_groups, other_names[tag]):

            def run_other(g: list[TokenizedPair] = group, t: str = tag) -> pd.DataFrame:
                chosen = specs_for(t)
                return engine.run(pair, g, chosen, progress=False) if chosen else pd.DataFrame()

            parts.append(store.table(name.removesuffix(".parquet"), run_other))
            stages.done(number, name, len(group), real=_real(parts[-1]))
    return canonical_effects(parts)


# Engines of the estimators an experiment may declare (``Experiment.estimator``), "module:Class".
ESTIMATOR_ENGINES = {"atp": "alignment_probe.engine.attribution:AttributionEngine"}


def estimator_engine(name: str) -> Engine:
    """The engine that computes an estimator's conditions (built with its defaults)."""
    if name not in ESTIMATOR_ENGINES:
        raise ConfigError(f"unknown estimator {name!r}; known: exact, {', '.join(ESTIMATOR_ENGINES)}.")
    module, _, attr = ESTIMATOR_ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def _estimated(
    number: int,
    stage: list[Step],
    rows: pd.DataFrame,
    pair: Twins,
    groups: list[list[TokenizedPair]],
    cfg: SuiteConfig,
    store: PartStore,
    extra: dict[str, Any],
    *,
    stages: Stages,
) -> pd.DataFrame:
    """A stage's conditions that an estimator computes instead of the run's engine (``Experiment.estimator``,
    e.g. attribution patching), per group of pairs in parts ``stage<n>-<estimator>-<first>-<last>``, added to
    the stage's exact ``rows`` in the canonical order (the exact rows keep theirs)."""
    parts = [rows]
    for name in sorted({s.experiment.estimator for s in stage}):
        own = [s for s in stage if s.experiment.estimator == name]
        if any(s.experiment.fit is not None for s in own):
            raise ConfigError(f"{', '.join(s.experiment.key for s in own)}: an estimated experiment cannot have a fit.")
        specs = stage_specs(own, cfg, pair.n_layers, pair.d_model, **extra)
        if not specs:
            continue
        engine = estimator_engine(name)
        for group in groups:
            part = f"stage{number}-{name}-{group_tag(group)}"
            parts.append(store.table(part, lambda g=group, e=engine, c=specs: e.run(pair, g, c, progress=False)))
            stages.done(number, f"{part}.parquet", len(group), real=_real(parts[-1]))
    return canonical_effects(parts) if len(parts) > 1 else rows

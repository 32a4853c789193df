"""The suite runner: a small dependency graph over the registered experiments (see registry.py).

:func:`run_suite` decides the order. Experiments whose conditions need nothing upstream share
**stage 1**; an experiment that *declares* it needs another's summary (low rank is fitted at E1's
peak layer) runs in the stage after it; whole-data computations (the LASSO) come last. Every result
is kept as a *part* (see :class:`~alignment_probe.tables.PartStore`), so an interrupted run resumes
where it stopped and ends with the same numbers as an uninterrupted one:

1. per group of ``pairs_per_part`` pairs of similar prompt length (:func:`pair_groups`; ``<first>``/``<last>``
   are its lowest and highest pair ids): the scores (``scores-<first>-<last>``)
   and every stage-1 condition (``stage1-<first>-<last>``, one engine call, so they share batches);
2. stage n ≥ 2: an experiment's fit on all pairs, if it has one (``stage<n>-fit``, a JSON record
   such as low rank's variance explained), then its conditions per group (``stage<n>-<first>-<last>``);
3. each whole-data computation under its experiment's key (``lasso``).

Fits and whole-data computations read the clean activations they declare (``Experiment.clean_hooks``)
from the clean pass stage 1 made anyway, kept by the fast engine (:func:`_shared_clean_pass`), and a later
stage's clean runs come from there too: each model runs once per sequence from its tokens.

The summary is then a pure function of the tables (effects, scores and the fit records, see
:func:`summarize_tables`), always read back from their stored form, so it cannot depend on which
parts were computed in this process, and a finished run directory regenerates it byte for byte.
The groups are a function of the pair list and ``pairs_per_part`` only, so every run of the same
configuration batches the same sequences together. run.py writes the result to disk and report/
draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from alignment_probe.effects import to_frame
from alignment_probe.engine.spec import Engine, PatchSpec
from alignment_probe.experiments.registry import Tables
from alignment_probe.experiments.suite.config import SuiteConfig
from alignment_probe.experiments.suite.graph import Step, _plan, plan_steps, stage_specs, summarize_tables
from alignment_probe.experiments.suite.parts import (
    DEFAULT_PAIRS_PER_PART,
    canonical_tokens,
    pair_groups,
)
from alignment_probe.experiments.suite.stages import _estimated, _later_stage, _stage_one
from alignment_probe.pair import Twins
from alignment_probe.progress import Stages
from alignment_probe.tables import PartStore
from alignment_probe.tokens import TokenizedPair


@dataclass
class SuiteResult:
    scores: pd.DataFrame
    effects: pd.DataFrame
    summary: dict[str, Any]
    lasso: dict[str, Any] | None = None
    fits: dict[str, Any] = field(default_factory=dict)  # each experiment's fit / whole-data record
    extra: dict[str, Any] = field(default_factory=dict)
    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # the long per-token table (token_effects.parquet)


def run_suite(
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    engine: Engine,
    cfg: SuiteConfig | None = None,
    *,
    progress: bool | Stages = False,
    log: Callable[[str], None] = lambda s: None,
    store: PartStore | None = None,
    pairs_per_part: int | None = DEFAULT_PAIRS_PER_PART,
    extra_pairs: Mapping[str, Sequence[TokenizedPair]] | None = None,
    summarize: bool = True,
) -> SuiteResult:
    """Run the chosen experiments on loaded twins and tokenised pairs.

    ``store`` keeps each stage's parts (a folder for a resumable run; in memory by default):
    parts it already holds are loaded, not recomputed. ``extra_pairs`` (tag → tokenised pairs, e.g. the
    transfer data of E11) are other pair sets a later stage's conditions may target: a condition whose
    ``key.split`` is a tag runs on that set (parts ``stage<n>-<tag>-<first>-<last>``), the others on the run's.
    ``summarize=False``: the tables only (``summary`` empty; e.g. ``ap.sweep``, which reads the effects).
    ``progress``: one progress display per stage (True, or the :class:`~alignment_probe.progress.Stages` of a
    run that spans several passes); ``log`` gets a line per finished stage.
    """
    cfg = cfg or SuiteConfig()
    cfg.validate(pair.n_layers)
    store = store if store is not None else PartStore()
    stages = progress if isinstance(progress, Stages) else Stages(progress, log, existing=store.names())
    tokenized = sorted(tokenized, key=lambda t: t.pair_id)
    groups = pair_groups(tokenized, pairs_per_part, ranks=store.ranks)
    n_layers, d_model = pair.n_layers, pair.d_model
    steps = plan_steps(cfg)
    ids = tuple(t.pair_id for t in tokenized)
    base_extra: dict[str, Any] = {"pair_ids": ids, "twins": pair, "tokenized": tokenized}
    if extra_pairs:
        base_extra["extra_pairs"] = {tag: sorted(p, key=lambda t: t.pair_id) for tag, p in extra_pairs.items()}
    stage_one = [
        s for s in steps if s.stage == 1 and s.experiment.compute is None and s.experiment.estimator == "exact"
    ]
    stage_one_specs = stage_specs(stage_one, cfg, n_layers, d_model, upstream={}, **base_extra)
    clean = _shared_clean_pass(steps, cfg, pair, groups, engine, stage_one_specs)
    try:
        return _run_stages(
            pair,
            groups,
            steps,
            engine,
            cfg,
            store,
            clean,
            base_extra,
            stage_one_specs,
            stages=stages,
            summarize=summarize,
        )
    finally:
        if clean is not None:  # the kept activations are this run's: release them
            engine.release_activations()  # an engine that keeps them (_shared_clean_pass checked)


def _shared_clean_pass(
    steps: Sequence[Step],
    cfg: SuiteConfig,
    pair: Twins,
    groups: list[list[TokenizedPair]],
    engine: Engine,
    stage_one_specs: list[PatchSpec],
) -> Callable[[], Any] | None:
    """Issue 15's one clean pass per model and sequence: the clean activations the run's fits and whole-data
    computations declare (``Experiment.clean_hooks``), kept by the engine from the clean runs it makes anyway.

    Returns the ``Plan.clean`` callable, which first runs the clean passes that did not happen in this process
    (a resumed run loads stage 1's parts instead), group by group exactly as stage 1 would have (same chunks
    and batches, so the same numbers as an uninterrupted run); or None — the engine cannot keep activations
    (the reference engine), or they would not fit its ``keep_budget_gb`` — and each experiment runs the models
    itself."""
    if not hasattr(engine, "keep_activations"):
        return None
    keep: dict[str, set[str]] = {}
    tokenized = [t for g in groups for t in g]
    for step in steps:
        exp = step.experiment
        if exp.clean_hooks is not None and (exp.fit is not None or exp.compute is not None):
            plan = _plan(step, cfg, pair.n_layers, pair.d_model, twins=pair, tokenized=tokenized)
            for model, names in exp.clean_hooks(plan).items():
                keep.setdefault(model, set()).update(names)
    tokens = sum(2 * len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    size = tokens * sum(len(v) for v in keep.values()) * pair.d_model * pair.backends()["base"].dtype.itemsize
    if not keep or size > getattr(engine, "keep_budget_gb", 0.0) * 2**30:
        return None
    engine.keep_activations(keep)

    def clean() -> Any:
        # groups stage 1 ran here are held already; the others (a resumed run loaded them) run their clean pass now
        return engine.clean_activations(pair, groups, stage_one_specs)

    return clean


def _run_stages(
    pair: Twins,
    groups: list[list[TokenizedPair]],
    steps: list[Step],
    engine: Engine,
    cfg: SuiteConfig,
    store: PartStore,
    clean: Callable[[], Any] | None,
    base_extra: dict[str, Any],
    stage_one_specs: list[PatchSpec],
    *,
    stages: Stages,
    summarize: bool = True,
) -> SuiteResult:
    """:func:`run_suite`'s stages, in order (see the module docstring)."""
    n_layers, d_model = pair.n_layers, pair.d_model
    fits: dict[str, Any] = {}
    upstream: dict[str, Any] = {}
    tables: list[pd.DataFrame] = []
    token_parts: list[pd.DataFrame] = []  # the long per-token table's parts (per-token experiments only)
    scores = pd.DataFrame()

    def ran(rows: pd.DataFrame, stage: Sequence[Step]) -> None:
        """Keep a stage's rows, and the summaries that later stages declared they need."""
        tables.append(rows)
        for step in stage:
            wanted = [n for n in step.computed if any(n in s.experiment.needs for s in steps)]
            if wanted:
                upstream.update(
                    step.experiment.summarize(
                        Tables(rows, scores, fits, cfg, n_layers, d_model, selected=tuple(wanted))
                    )
                )

    for number in sorted({s.stage for s in steps if s.experiment.compute is None} | {1}):
        stage = [s for s in steps if s.stage == number and s.experiment.compute is None]
        extra = {**base_extra, "upstream": upstream, "clean": clean}
        exact = [s for s in stage if s.experiment.estimator == "exact"]  # the others: _estimated
        estimated = [s for s in stage if s not in exact]
        # the stage's work in pairs: the run's pairs for its exact conditions (and the scores), once more per
        # estimator, and the other pair sets' (E11's transfer pairs) in a later stage
        n_pairs = sum(map(len, groups))
        units = (n_pairs if exact or number == 1 else 0) + n_pairs * len({s.experiment.estimator for s in estimated})
        if exact and number > 1:
            units += sum(map(len, base_extra.get("extra_pairs", {}).values()))
        if number == 1:
            what = f"scores and {len(stage_one_specs)} conditions"
            stages.start(1, what, units)
            scores, rows = _stage_one(
                pair,
                groups,
                engine,
                stage_one_specs,
                store,
                stages=stages,
                token_parts=token_parts,
                per_token=any(s.experiment.per_token for s in exact),
            )
        else:
            stages.start(number, ", ".join(s.experiment.key for s in stage), units)
            rows = (
                _later_stage(
                    number, exact, pair, groups, engine, cfg, store, fits, extra, stages=stages, token_parts=token_parts
                )
                if exact
                else pd.DataFrame()
            )
            what = ", ".join(f"{s.experiment.key}" + (" (fit on all pairs)" if s.experiment.fit else "") for s in stage)
        rows = _estimated(number, estimated, rows, pair, groups, cfg, store, extra, stages=stages)
        stages.finish(
            number,
            f"{what}: {len(rows)} rows, {n_pairs} pairs in {len(groups)} part(s)"
            + (f" ({engine.name} engine)" if number == 1 else ""),
        )
        if len(rows):
            ran(rows, stage)
    computes = [s for s in steps if s.experiment.compute is not None]
    if computes:
        number = computes[0].stage
        stages.start(number, ", ".join(s.experiment.key for s in computes), len(computes), unit="step")
    for step in computes:
        plan = _plan(step, cfg, n_layers, d_model, upstream=upstream, scores=scores, clean=clean, **base_extra)
        fits[step.experiment.key] = store.json(step.experiment.key, lambda s=step, p=plan: s.experiment.compute(p))
        stages.done(step.stage, f"{step.experiment.key}.json", 1)
    if computes:
        stages.finish(computes[0].stage, ", ".join(s.experiment.key for s in computes) + " on all pairs")
    # effects.parquet, as written; with no patched condition (e.g. shift alone) still the table's columns, which
    # every summary reads
    effects = pd.concat(tables, ignore_index=True) if tables else to_frame([])
    tokens = canonical_tokens(token_parts)  # token_effects.parquet
    summary = (
        summarize_tables(effects, scores, fits, cfg, n_layers=n_layers, d_model=d_model, tokens=tokens)
        if summarize
        else {}
    )
    return SuiteResult(
        scores=scores, effects=effects, summary=summary, lasso=fits.get("lasso"), fits=fits, tokens=tokens
    )

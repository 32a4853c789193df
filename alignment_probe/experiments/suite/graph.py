"""The suite's graph: which registered experiments a run computes, in which stage (an experiment that declares it
``needs`` another's summary runs in the stage after it; whole-data computations come last), their conditions, and
the run's summary as a pure function of its tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from alignment_probe import stats
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import registry
from alignment_probe.experiments.registry import Experiment, Plan, Tables
from alignment_probe.experiments.suite.config import SuiteConfig
from alignment_probe.experiments.verdicts import summary_verdicts


@dataclass(frozen=True)
class Step:
    """One registered experiment in a run: the names it computes (asked for, or needed downstream), the
    names it reports in the summary, and its stage."""

    experiment: Experiment
    computed: tuple[str, ...]
    reported: tuple[str, ...]
    stage: int  # 1, 2, …; whole-data computations: after every patching stage


def plan_steps(cfg: SuiteConfig) -> list[Step]:
    """The experiments of a run, in execution order: by stage, then by their place in a shared engine
    call. A name another experiment ``needs`` is computed (not reported) even when not asked for."""
    asked = set(cfg.experiments)
    computed = set(asked)
    frontier = list(asked)
    while frontier:  # the closure of declared needs
        for need in registry.get(frontier.pop()).needs:
            if need not in computed:
                computed.add(need)
                frontier.append(need)
    stages: dict[str, int] = {}

    def stage_of(exp: Experiment) -> int:
        if exp.key not in stages:
            after = 1 + max((stage_of(registry.get(n)) for n in exp.needs), default=0)
            # a fit runs before its conditions, and stage 1 has none (its conditions share one call with the scores)
            stages[exp.key] = max(after, 2) if exp.fit is not None else after
        return stages[exp.key]

    steps = []
    for exp in registry.experiments():
        names = tuple(n.name for n in exp.names if n.name in computed)
        if names:
            steps.append(Step(exp, names, tuple(n for n in names if n in asked), stage_of(exp)))
    last = max((s.stage for s in steps if s.experiment.compute is None), default=0)
    steps = [s if s.experiment.compute is None else Step(s.experiment, s.computed, s.reported, last + 1) for s in steps]
    return sorted(steps, key=lambda s: (s.stage, s.experiment.spec_order, s.experiment.key))


def _plan(step: Step, cfg: SuiteConfig, n_layers: int, d_model: int, **extra: Any) -> Plan:
    return Plan(cfg=cfg, n_layers=n_layers, d_model=d_model, selected=step.computed, **extra)


def stage_specs(steps: Sequence[Step], cfg: SuiteConfig, n_layers: int, d_model: int, **extra: Any) -> list[PatchSpec]:
    """Every condition of these steps (one stage), in their shared engine call's order."""
    return [
        spec
        for step in steps
        if step.experiment.specs is not None
        for spec in step.experiment.specs(_plan(step, cfg, n_layers, d_model, **extra))
    ]


def per_layer_specs(cfg: SuiteConfig, n_layers: int, d_model: int = 0) -> list[PatchSpec]:
    """Every stage-1 condition (the ones that need nothing upstream), for one shared engine call."""
    return stage_specs(
        [s for s in plan_steps(cfg) if s.stage == 1 and s.experiment.compute is None], cfg, n_layers, d_model
    )


def summarize_tables(
    effects: pd.DataFrame,
    scores: pd.DataFrame,
    fits: Mapping[str, Any],
    cfg: SuiteConfig,
    *,
    n_layers: int,
    d_model: int,
    tokens: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The run's summary, a pure function of its tables: the gain, every reported experiment's entry (in
    execution order) and the verdicts on the paper's claims (``verdicts``: judged ones, ``verdicts_not_run``: the
    claims whose experiment did not run; report/verdicts.py). summary.json is a cache of this."""
    summary: dict[str, Any] = {"n_layers": n_layers} | gain_summary(scores, cfg) | {"experiments": {}}
    for step in plan_steps(cfg):
        if step.reported and (step.experiment.compute is None or step.experiment.key in fits):
            tables = Tables(effects, scores, fits, cfg, n_layers, d_model, selected=step.reported, tokens=tokens)
            summary["experiments"].update(step.experiment.summarize(tables))

    # the findings-vs-paper verdicts are part of the summary: a function of it and of the same tables
    summary.update(summary_verdicts(summary, effects, scores))
    return summary


def gain_summary(scores: pd.DataFrame, cfg: SuiteConfig) -> dict[str, Any]:
    mean, lo, hi = stats.bootstrap_mean_ci(scores.gain.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    pt_mean, pt_lo, pt_hi = stats.bootstrap_mean_ci(scores.gain_per_token.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    return {
        "n_pairs": int(len(scores)),
        "base_delta_logp_mean": float(scores.base_delta_logp.mean()),
        "tuned_delta_logp_mean": float(scores.tuned_delta_logp.mean()),
        "gain_mean": mean,
        "gain_ci": [lo, hi],
        "gain_per_token_mean": pt_mean,
        "gain_per_token_ci": [pt_lo, pt_hi],
        # statistics.md: the per-token mean beside every sum-based headline, and which one verdicts use
        "gain_basis": "sum",
    }

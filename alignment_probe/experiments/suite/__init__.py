"""The suite: a small dependency graph over the registered experiments (see registry.py), in three parts —
:mod:`~alignment_probe.experiments.suite.config` (the options, the experiments' own included, and presets),
:mod:`~alignment_probe.experiments.suite.graph` (stages, conditions, the summary) and
:mod:`~alignment_probe.experiments.suite.runner` (the run: stage by stage, stages.py, into resumable parts,
parts.py)."""

from __future__ import annotations

from alignment_probe.experiments.suite.config import ALL, SuiteConfig, preset_config
from alignment_probe.experiments.suite.graph import (
    Step,
    gain_summary,
    per_layer_specs,
    plan_steps,
    stage_specs,
    summarize_tables,
)
from alignment_probe.experiments.suite.parts import (
    DEFAULT_PAIRS_PER_PART,
    canonical_effects,
    canonical_tokens,
    engine_part,
    group_tag,
    pair_groups,
    per_token_names,
)
from alignment_probe.experiments.suite.runner import SuiteResult, run_suite
from alignment_probe.experiments.suite.stages import ESTIMATOR_ENGINES, estimator_engine

__all__ = [
    "ALL",
    "DEFAULT_PAIRS_PER_PART",
    "ESTIMATOR_ENGINES",
    "Step",
    "SuiteConfig",
    "SuiteResult",
    "canonical_effects",
    "canonical_tokens",
    "engine_part",
    "estimator_engine",
    "gain_summary",
    "group_tag",
    "pair_groups",
    "per_layer_specs",
    "per_token_names",
    "plan_steps",
    "preset_config",
    "run_suite",
    "stage_specs",
    "summarize_tables",
]

"""A run's findings: the rows for the paper's claims (:mod:`.paper_claims`) and the rows every experiment adds for
the claims it answers by registering verdict functions (``Experiment.verdicts``), which :func:`findings` appends;
and their records in the summary. Outcomes, :class:`Finding` and thresholds: :mod:`.verdict_rules`. Every public
name of those two modules is importable from here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from alignment_probe import plotting as F
from alignment_probe.experiments import registry
from alignment_probe.experiments.paper_claims import (
    finding_identity,
    finding_lasso,
    finding_lowrank,
    finding_peak,
    finding_reverse,
)
from alignment_probe.experiments.verdict_rules import (
    AGREES,
    BY_CONSTRUCTION,
    DEPTH_TOLERANCE,
    DIFFERS,
    IDENTITY_TOLERANCE,
    INCONCLUSIVE,
    LASSO_RARE,
    LASSO_STABLE,
    LOWRANK_K,
    NOT_RUN,
    PAPER_N_LAYERS,
    PAPER_PEAK_LAYER,
    PAPER_RELATIVE_DEPTH,
    RATIO_BAND,
    REVERSE_MAX_RATIO,
    VERDICTS,
    Finding,
    interval_vs_band,
    interval_vs_value,
    mid_depth_layers,
    plain,
    relative_depth,
    set_vs_band,
)
from alignment_probe.vocab import LOWRANK_MODES

__all__ = [
    "AGREES",
    "BY_CONSTRUCTION",
    "DEPTH_TOLERANCE",
    "DIFFERS",
    "IDENTITY_TOLERANCE",
    "INCONCLUSIVE",
    "LASSO_RARE",
    "LASSO_STABLE",
    "LOWRANK_K",
    "NOT_RUN",
    "PAPER_N_LAYERS",
    "PAPER_PEAK_LAYER",
    "PAPER_RELATIVE_DEPTH",
    "RATIO_BAND",
    "REVERSE_MAX_RATIO",
    "VERDICTS",
    "Finding",
    "finding_identity",
    "finding_lasso",
    "finding_lowrank",
    "finding_peak",
    "finding_reverse",
    "findings",
    "interval_vs_band",
    "interval_vs_value",
    "mid_depth_layers",
    "plain",
    "relative_depth",
    "set_vs_band",
    "summary_verdicts",
    "verdict_records",
]


def _call(function: Any, summary: Mapping[str, Any], effects: Any, scores: Any) -> Any:
    """An experiment's verdict function, given the per-pair scores when it takes them."""
    try:
        takes_scores = "scores" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        takes_scores = False
    return function(summary, effects, scores=scores) if takes_scores else function(summary, effects)


def findings(
    summary: Mapping[str, Any], effects: pd.DataFrame | None = None, scores: pd.DataFrame | None = None
) -> list[Finding]:
    """The rows of "Findings vs the paper's claims", in order (see the module docstring for the rules). ``scores``
    (the per-pair scores table) goes to the experiments' verdict functions that take it."""
    out = [finding_peak(summary), finding_lasso(summary)]
    modes = [m for m in LOWRANK_MODES if F.experiment(summary, m)] or ["lowrank_reconstruct"]
    out += [finding_lowrank(summary, m) for m in modes]
    out += [finding_identity(summary, effects), finding_reverse(summary)]
    for exp in registry.experiments():  # claims the newer instruments answer, in registry order
        for path in exp.verdicts:
            module, _, attr = path.partition(":")
            found = _call(getattr(importlib.import_module(module), attr), summary, effects, scores)
            if found is not None:
                out.append(found)
    return out


def verdict_records(found: Sequence[Finding]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(summary["verdicts"], summary["verdicts_not_run"])``: the findings with a verdict (``claim``, ``verdict``
    ∈ agrees/differs/inconclusive, ``rule``, ``numbers``, and ``key``, ``by_construction``, ``paper``, ``ours``),
    and the claims no rule could judge (``key``, ``claim``, ``why``)."""
    judged, not_run = [], []
    for f in found:
        if f.verdict in VERDICTS:
            judged.append(
                plain(
                    {
                        "claim": f.claim,
                        "verdict": f.verdict,
                        "rule": f.rule,
                        "numbers": dict(f.numbers),
                        "key": f.key,
                        "by_construction": bool(f.by_construction),
                        "paper": f.paper,
                        "ours": f.ours,
                    }
                )
            )
        else:
            not_run.append({"key": f.key, "claim": f.claim, "why": f.ours})
    return judged, not_run


def summary_verdicts(
    summary: Mapping[str, Any], effects: pd.DataFrame | None = None, scores: pd.DataFrame | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The summary's ``verdicts`` and ``verdicts_not_run`` entries, from the rest of the summary and the tables."""
    judged, not_run = verdict_records(findings(summary, effects, scores))
    return {"verdicts": judged, "verdicts_not_run": not_run}

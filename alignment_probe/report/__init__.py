"""Figures and the self-contained HTML report of a run.

``figures``: one plotly figure per paper figure, drawn from a run's summary dict (summary.json).
``html``: ``render_report`` / ``write_report``, one offline-readable HTML file with every figure, the
headline numbers, the findings-vs-paper table and what was not run.
"""

from alignment_probe.report.figures import (
    MissingExperimentError,
    all_figures,
    alpha_dose_response,
    build_figures,
    controls,
    directionality,
    gain_histogram,
    lasso_coefficients,
    layer_curve,
    lowrank,
    save_static,
    source_variants,
    static_export_available,
)
from alignment_probe.report.html import render_report, write_report
from alignment_probe.report.verdicts import Finding, findings

__all__ = [
    "Finding",
    "MissingExperimentError",
    "all_figures",
    "alpha_dose_response",
    "build_figures",
    "controls",
    "directionality",
    "findings",
    "gain_histogram",
    "lasso_coefficients",
    "layer_curve",
    "lowrank",
    "render_report",
    "save_static",
    "source_variants",
    "static_export_available",
    "write_report",
]

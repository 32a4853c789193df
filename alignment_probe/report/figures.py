"""The paper's figures, as the report draws them: every figure the registered experiments declare
(:data:`FIGURES`, :func:`build_figures`), and static export. The figures themselves are in
:mod:`alignment_probe.experiments.figures` and :mod:`~alignment_probe.experiments.fit_figures`, the primitives in
:mod:`alignment_probe.plotting`; every public name is kept importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from alignment_probe.experiments import registry
from alignment_probe.experiments.figures import (  # the figures themselves; every name kept importable here
    COLORS as COLORS,
)
from alignment_probe.experiments.figures import CONTROL_EXPERIMENTS as CONTROL_EXPERIMENTS
from alignment_probe.experiments.figures import DECOMPOSITION_EXPERIMENTS as DECOMPOSITION_EXPERIMENTS
from alignment_probe.experiments.figures import EFFECT_AXIS as EFFECT_AXIS
from alignment_probe.experiments.figures import HEIGHT as HEIGHT
from alignment_probe.experiments.figures import LABELS as LABELS
from alignment_probe.experiments.figures import LAYER_AXIS as LAYER_AXIS
from alignment_probe.experiments.figures import MAIN as MAIN
from alignment_probe.experiments.figures import REVERSE as REVERSE
from alignment_probe.experiments.figures import VECTOR_EXPERIMENTS as VECTOR_EXPERIMENTS
from alignment_probe.experiments.figures import MissingExperimentError as MissingExperimentError
from alignment_probe.experiments.figures import _FromRegistry
from alignment_probe.experiments.figures import alpha_dose_response as alpha_dose_response
from alignment_probe.experiments.figures import alpha_frame as alpha_frame
from alignment_probe.experiments.figures import controls as controls
from alignment_probe.experiments.figures import directionality as directionality
from alignment_probe.experiments.figures import experiment as experiment
from alignment_probe.experiments.figures import gain_histogram as gain_histogram
from alignment_probe.experiments.figures import has_per_layer as has_per_layer
from alignment_probe.experiments.figures import layer_curve as layer_curve
from alignment_probe.experiments.figures import lowrank_frame as lowrank_frame
from alignment_probe.experiments.figures import n_layers as n_layers
from alignment_probe.experiments.figures import per_layer_frame as per_layer_frame
from alignment_probe.experiments.figures import source_variants as source_variants
from alignment_probe.experiments.fit_figures import PAPER_LOWRANK as PAPER_LOWRANK
from alignment_probe.experiments.fit_figures import lasso_coefficients as lasso_coefficients
from alignment_probe.experiments.fit_figures import lowrank as lowrank
from alignment_probe.vocab import LOWRANK_MODES as LOWRANK_MODES

# --------------------------------------------------------------------------------------------------
# all of them, and static export

# name → (function, what it needs, caption), in the report's order: every figure the registered
# experiments declare (each experiment module names its own figures).
FIGURES: Mapping[str, tuple[Any, tuple[str, ...], str]] = _FromRegistry(
    lambda: {f.name: (f.function(), f.needs, f.caption) for f in registry.figures()}
)


def build_figures(
    summary: Mapping[str, Any], scores: pd.DataFrame | None = None
) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """(figures that can be drawn, name → reason for those that cannot), both in report order.
    A figure that needs no experiment is drawn from the per-pair scores."""
    drawn: dict[str, go.Figure] = {}
    skipped: dict[str, str] = {}
    for fig in registry.figures():
        try:
            drawn[fig.name] = fig.function()(summary if fig.needs else scores)
        except MissingExperimentError as err:
            skipped[fig.name] = f"not run: {', '.join(err.missing)}"
    return drawn, skipped


def all_figures(summary: Mapping[str, Any], scores: pd.DataFrame | None = None) -> dict[str, go.Figure]:
    """Every figure that can be drawn from this summary (and scores), keyed by function name, in report order.
    Figures whose experiments were all not run are left out (:func:`build_figures` also says why)."""
    return build_figures(summary, scores)[0]


def static_export_available() -> bool:
    """Whether kaleido (1.x) can find a Chrome/Chromium to render PNG/SVG. Never raises."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False) is not None
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def save_static(
    fig: go.Figure, path: str | Path, *, scale: float = 2.0, width: int | None = None, height: int | None = None
) -> Path:
    """Write ``fig`` as a static image (format from the suffix: .png, .svg, .pdf, .jpg, .webp) via kaleido.

    Optional: kaleido 1.x drives a headless Chrome/Chromium. When kaleido or the browser is missing this
    raises a RuntimeError that says what to install; the HTML report needs neither.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in {"png", "svg", "pdf", "jpg", "jpeg", "webp"}:
        raise ValueError(f"{path}: unsupported image format {fmt!r}; use .png, .svg, .pdf, .jpg or .webp")
    hint = (
        "Static image export needs kaleido>=1 and a Chrome/Chromium browser: install chromium "
        "(e.g. `apt-get install chromium`, or run `plotly_get_chrome`), or use the HTML report / "
        "fig.write_html instead."
    )
    try:
        import kaleido  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"kaleido is not installed. {hint}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.write_image(str(path), format="jpg" if fmt == "jpeg" else fmt, scale=scale, width=width, height=height)
    except Exception as err:  # noqa: BLE001 - kaleido reports a missing browser in several ways
        text = str(err).lower()
        if any(word in text for word in ("chrome", "chromium", "browser", "kaleido")):
            raise RuntimeError(f"Could not write {path}: {str(err).strip()}\n{hint}") from err
        raise
    return path

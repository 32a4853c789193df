"""Formatting numbers and confidence intervals, one set of helpers for the HTML report and the
Markdown findings tables (docs/findings-*.md)."""

from __future__ import annotations

import html as _html
import math
from typing import Any, Sequence


def esc(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def _num(x: Any) -> float:
    """A float, NaN for None / missing / non-numeric."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number to ``digits`` significant digits; "—" for None/NaN."""
    v = _num(x)
    if not math.isfinite(v):
        return "—"
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def fmt_ci(lo: Any, hi: Any, digits: int = 3) -> str:
    """``95% CI [lo, hi]`` to ``digits`` significant digits ("CI —" when either end is missing)."""
    a, b = _num(lo), _num(hi)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "CI —"
    return f"95% CI [{a:.{digits}g}, {b:.{digits}g}]"


def ci_cell(mean: Any, ci: Sequence[Any], digits: int = 2) -> str:
    """A table cell ``+m [+lo, +hi]`` with ``digits`` decimals (the findings tables' format)."""
    return f"{_num(mean):+.{digits}f} [{_num(ci[0]):+.{digits}f}, {_num(ci[1]):+.{digits}f}]"


def layer_ci_cell(per_layer: Sequence[dict[str, Any]], layer: int, digits: int = 2) -> str:
    """:func:`ci_cell` of ``layer`` in a summary's per-layer rows ("" when that layer was not run)."""
    hit = [x for x in per_layer if x["layer"] == layer]
    return ci_cell(hit[0]["mean"], (hit[0]["ci_low"], hit[0]["ci_high"]), digits) if hit else ""

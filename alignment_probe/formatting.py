"""Formatting numbers and confidence intervals, one set of helpers for the HTML report and the
Markdown findings tables (docs/findings-*.md), and the experiments' verdict rows. A core module: no
imports of its own."""

from __future__ import annotations

import html as _html
import math
from typing import Any, Sequence


def esc(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def num(x: Any) -> float:
    """A float, NaN for None / missing / non-numeric."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number to ``digits`` significant digits; "—" for None/NaN."""
    v = num(x)
    if not math.isfinite(v):
        return "—"
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def fmt_ci(lo: Any, hi: Any, digits: int = 3) -> str:
    """``95% CI [lo, hi]`` to ``digits`` significant digits ("CI —" when either end is missing)."""
    a, b = num(lo), num(hi)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "CI —"
    return f"95% CI [{a:.{digits}g}, {b:.{digits}g}]"


def ci_cell(mean: Any, ci: Sequence[Any], digits: int = 2) -> str:
    """A table cell ``+m [+lo, +hi]`` with ``digits`` decimals (the findings tables' format)."""
    return f"{num(mean):+.{digits}f} [{num(ci[0]):+.{digits}f}, {num(ci[1]):+.{digits}f}]"


def layer_ci_cell(per_layer: Sequence[dict[str, Any]], layer: int, digits: int = 2) -> str:
    """:func:`ci_cell` of ``layer`` in a summary's per-layer rows ("" when that layer was not run)."""
    hit = [x for x in per_layer if x["layer"] == layer]
    return ci_cell(hit[0]["mean"], (hit[0]["ci_low"], hit[0]["ci_high"]), digits) if hit else ""


# --------------------------------------------------------------------------------------------------
# statistics.md's wording: nulls as bounds, undefined ratios, peak sets


def _bound_up(x: float, digits: int = 2) -> float:
    """``x`` rounded *up* to ``digits`` significant digits: a printed bound never claims less than the CI allows."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    up = math.ceil(round(x / scale, 9)) * scale  # round(…, 9): 0.11 must not become 0.12 by float noise
    return float(f"{up:.{digits}g}")


def excludes_zero(lo: Any, hi: Any) -> bool:
    a, b = num(lo), num(hi)
    return math.isfinite(a) and math.isfinite(b) and (a > 0 or b < 0)


def fmt_effect(
    mean: Any, lo: Any, hi: Any, *, unit: str = "nats", digits: int = 3, level: float = 0.95, what: str = "effect"
) -> str:
    """A mean with its CI, or, when the CI includes 0, the bound a finite sample supports (statistics.md: "no
    effect" is never printed as 0): ``+0.52 nats [+0.31, +0.74]`` or ``|effect| < 0.11 nats at 95% (mean +0.02,
    CI [−0.05, +0.11])``. The bound is the larger absolute CI end, rounded up."""
    m, a, b = num(mean), num(lo), num(hi)
    if not math.isfinite(m):
        return "—"
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"{m:+.{digits}g} {unit} (CI —)"
    if a > 0 or b < 0:
        return f"{m:+.{digits}g} {unit} [{a:+.{digits}g}, {b:+.{digits}g}]"
    bound = _bound_up(max(abs(a), abs(b)))
    if bound == 0:  # every resample's mean is 0 (an exact identity, not a finite sample's null)
        return f"0 {unit} in every resample (mean {m:+.{digits}g}, CI [{a:.{digits}g}, {b:.{digits}g}])"
    return f"|{what}| < {bound:.2g} {unit} at {level:.0%} (mean {m:+.{digits}g}, CI [{a:+.{digits}g}, {b:+.{digits}g}])"


def _triple(part: Any) -> tuple[float, float, float]:
    """(mean, lo, hi) from a ``{"mean","ci_low","ci_high"}`` dict, a (mean, lo, hi) sequence or a bare mean."""
    if isinstance(part, dict):
        return num(part.get("mean")), num(part.get("ci_low")), num(part.get("ci_high"))
    if isinstance(part, (list, tuple)):
        vals = [num(v) for v in part] + [math.nan] * 3
        return vals[0], vals[1], vals[2]
    return num(part), math.nan, math.nan


def _nats(part: Any, digits: int = 3) -> str:
    m, a, b = _triple(part)
    if not math.isfinite(m):
        return "—"
    ci = f" [{a:+.{digits}g}, {b:+.{digits}g}]" if math.isfinite(a) and math.isfinite(b) else ""
    return f"{m:+.{digits}g}{ci} nats"


def fmt_ratio(
    ratio: Any,
    lo: Any,
    hi: Any,
    *,
    numerator: Any = None,
    denominator: Any = None,
    digits: int = 3,
    percent: bool = False,
) -> str:
    """A ratio under statistics.md's ratio rule: ``0.986 [0.95, 1.02]`` when defined (finite), else
    ``undefined (denominator CI spans 0): numerator +0.12 [..] nats, denominator +0.01 [..] nats``. Numerator and
    denominator: dicts ``{"mean","ci_low","ci_high"}``, (mean, lo, hi) or bare means."""
    r, a, b = num(ratio), num(lo), num(hi)
    if math.isfinite(r):
        if percent:
            ci = f" [{a:.0%}, {b:.0%}]" if math.isfinite(a) and math.isfinite(b) else " (CI —)"
            return f"{r:.0%}{ci}"
        ci = f" [{a:.{digits}g}, {b:.{digits}g}]" if math.isfinite(a) and math.isfinite(b) else " (CI —)"
        return f"{r:.{digits}g}{ci}"
    text = "undefined (denominator CI spans 0)"
    parts = []
    for name, part in (("numerator", numerator), ("denominator", denominator)):
        if part is not None and math.isfinite(_triple(part)[0]):  # a part the summary does not give is left out
            parts.append(f"{name} {_nats(part, digits)}")
    return text + (": " + ", ".join(parts) if parts else "")


def fmt_layers(layers: Sequence[Any]) -> str:
    """Layer ids as ranges: ``[3, 4, 5, 9]`` → ``3–5, 9`` ("none" when empty)."""
    ids = sorted({int(v) for v in layers})
    if not ids:
        return "none"
    runs, start, prev = [], ids[0], ids[0]
    for v in ids[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(f"{start}" if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs)


def fmt_value(value: Any, digits: int = 3) -> str:
    """One of a verdict's numbers, compactly: floats to ``digits`` significant digits, lists in brackets."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else ("NaN" if math.isnan(value) else str(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v, digits)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        if len(value) > 12:
            return "[" + ", ".join(fmt_value(v, digits) for v in value[:12]) + f", … ({len(value)} in all)]"
        return "[" + ", ".join(fmt_value(v, digits) for v in value) + "]"
    return str(value)


_num = num  # its earlier, private name

"""Markdown cells under statistics.md's rules: CIs, bounds for nulls, undefined ratios, chosen layers and peak sets.

Kept local so the findings tables need nothing beyond a run's summary.json.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from alignment_probe.experiments import registry
from alignment_probe.report.format import ci_cell


def md_row(cells: Sequence[Any]) -> str:
    # a "|" inside a cell (|effect| < B, |AtP − exact|) would split the Markdown cell: escape it
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join([md_row(header), md_row(["---"] * len(header)), *(md_row(r) for r in rows)])


# statistics.md's wording, kept local so the tables need nothing beyond a run's summary.json
UNDEFINED = "undefined (denominator CI spans 0)"


def as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def spans_zero(ci: Sequence[Any] | None) -> bool:
    lo, hi = (as_float(ci[0]), as_float(ci[1])) if ci else (math.nan, math.nan)
    return math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi


def ci_bound(ci: Sequence[Any]) -> float:
    """The larger |CI end|, rounded *up* to 0.01: a printed bound never claims less than the CI allows."""
    return math.ceil(round(max(abs(as_float(ci[0])), abs(as_float(ci[1]))) * 100, 6)) / 100


def ci_or_bound(mean: Any, ci: Sequence[Any], what: str = "effect") -> str:
    """``+m [lo, hi]`` when the CI excludes 0, else the bound it supports: a null is never printed as "0"."""
    cell = ci_cell(mean, ci)
    return f"|{what}| < {ci_bound(ci):.2f} ({cell})" if spans_zero(ci) else cell


def ratio_cell(
    ratio: Any,
    ci: Sequence[Any] | None,
    *,
    denominator_ci: Sequence[Any] | None = None,
    numerator: Any = None,
    denominator: Any = None,
) -> str:
    """A ratio under the ratio rule: only when the denominator's CI excludes 0 (and the ratio is finite); otherwise
    "undefined (denominator CI spans 0)" with numerator and denominator in nats where they are known (each a
    number or a summary entry ``{"mean", "ci_low", "ci_high"}``)."""

    def nats(v: Any) -> str:
        if isinstance(v, dict):
            return (
                entry_ci(v) + " nats"
                if math.isfinite(as_float(v.get("ci_low")))
                else f"{as_float(v.get('mean')):+.2f} nats"
            )
        return f"{as_float(v):+.2f} nats"

    r = as_float(ratio)
    if spans_zero(denominator_ci) or not math.isfinite(r):
        parts = [
            f"{name} {nats(v)}"
            for name, v in (("numerator", numerator), ("denominator", denominator))
            if math.isfinite(as_float(v.get("mean") if isinstance(v, dict) else v))
        ]
        return UNDEFINED + (": " + ", ".join(parts) if parts else "")
    if ci and math.isfinite(as_float(ci[0])) and math.isfinite(as_float(ci[1])):
        return ci_cell(r, ci)
    return f"{r:+.2f} (point; no CI)"


def chosen_cell(res: dict[str, Any], unit: str = "layer") -> str:
    """The data-chosen layer/block and its value on pairs that did not choose it (statistics.md: selection is held
    out): the summary's ``selection`` record when present, else the older ``heldout`` entry."""
    sel = res.get("selection") or {}
    conf = sel.get("confirm") or {}
    if conf and math.isfinite(as_float(conf.get("mean"))):
        return (
            f"{unit} {sel['chosen']} chosen on the explore half ({len(sel.get('explore_pair_ids') or [])} pairs): "
            f"{ci_or_bound(conf['mean'], [conf['ci_low'], conf['ci_high']])} on the confirm half "
            f"({conf.get('n', len(sel.get('confirm_pair_ids') or []))} pairs)"
        )
    held = res.get("heldout") or {}
    if held.get("heldout_ci"):
        return (
            f"{unit} {held['chosen_layer']} chosen on one half: "
            f"{ci_or_bound(held['heldout_mean'], held['heldout_ci'])} on the other half"
        )
    return ""


def peak_set_cell(res: dict[str, Any]) -> str:
    if res.get("peak_set") is None:
        return "— (not in this summary: rerun)"
    swept = res.get("layers_swept") or len(res.get("per_layer") or [])
    return "{" + ", ".join(str(v) for v in res["peak_set"]) + "}" + (f" of {swept} swept" if swept else "")


WINDOWS = ("window_transplant", "window_revert")
HEADS = ("head_patch", "kv_head_patch")
CURVES = (
    "patch_tuned_to_base",
    "patch_base_to_tuned",
    "source_chosen_only",
    "source_rejected_only",
    "random_noise",
    "random_direction",
    "vector_chosen",
    "vector_rejected",
    "vector_contrast",
)


def method_label(name: str) -> str:
    """The registry's method id and label, e.g. "E3 base → tuned" (one numbering everywhere)."""
    return f"{registry.method_id(name)} {registry.label(name)}" if registry.method_id(name) else name


def entry_ci(entry: dict[str, Any] | None) -> str:
    """The CI cell of a summary entry holding ``mean``, ``ci_low``, ``ci_high`` ("" when there is none)."""
    return ci_cell(entry["mean"], [entry["ci_low"], entry["ci_high"]]) if entry else ""


def cell_at_c(rows: Sequence[dict[str, Any]] | None, c: float = 1.0) -> str:
    return entry_ci(next((r for r in rows or [] if abs(float(r["c"]) - c) < 1e-9), None))


def fraction_cell(entry: dict[str, Any] | None, by_c: Any, gain: dict[str, Any], c: float = 1.0) -> str:
    """A recovered (or lost) fraction of ``gain`` under the ratio rule: undefined, with the steering effect at scale
    ``c`` and the gain in nats, when the gain's CI spans 0 (or the summary has no finite fraction)."""
    num = next((r for r in by_c or [] if abs(float(r["c"]) - c) < 1e-9), None)
    if (
        spans_zero([gain.get("ci_low"), gain.get("ci_high")])
        or not entry
        or not math.isfinite(as_float(entry.get("mean")))
    ):
        return ratio_cell(math.nan, None, numerator=num, denominator=gain)
    return entry_ci(entry)


def validation_cells(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return ["", "", ""]
    recall = v.get("topk_recall") or {}
    return [f"{v['spearman']:.2f}", f"{recall.get('3', float('nan')):.2f}", f"{v['max_abs_error']:.3f}"]

"""What every verdict is made of: the outcomes of a rule, the :class:`Finding` row, the thresholds of the paper's
claims and the helpers the rules share.

Each rule has three outcomes (../shared/docs/statistics.md, "Nulls and verdicts"): ``agrees`` when the run's
interval supports the claim, ``differs`` when it excludes it, and ``inconclusive`` when the interval is compatible
with both; ``not run`` when the experiment (or the grid point a rule needs) is absent. Every :class:`Finding` says
its rule and carries the numbers the rule used (``numbers``); a verdict that would hold on any data is labelled
``by_construction`` and is not evidence. The paper's claims and their rules are :mod:`.paper_claims`; the rows of
a run are :func:`alignment_probe.experiments.verdicts.findings`.

*Mid-depth band*: the layers ℓ with |ℓ / (n_layers − 1) − 8/15| ≤ ``DEPTH_TOLERANCE`` (0.10): the paper's peak is
layer 8 of Llama-3.2-1B's 16 (relative depth 8/15 ≈ 0.53; 0 is the first block, 1 the last).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignment_probe.formatting import num as _num

AGREES, DIFFERS, INCONCLUSIVE, NOT_RUN = "agrees", "differs", "inconclusive", "not run"
VERDICTS = (AGREES, DIFFERS, INCONCLUSIVE)  # the three outcomes of a rule (statistics.md); NOT_RUN: no rule applied
BY_CONSTRUCTION = "by construction (not evidence)"  # how a by-construction verdict is shown

PAPER_N_LAYERS = 16
PAPER_PEAK_LAYER = 8
PAPER_RELATIVE_DEPTH = PAPER_PEAK_LAYER / (PAPER_N_LAYERS - 1)
DEPTH_TOLERANCE = 0.10
LOWRANK_K = 4
RATIO_BAND = (0.90, 1.10)
IDENTITY_TOLERANCE = 1e-6
REVERSE_MAX_RATIO = 0.25
LASSO_STABLE = 0.95  # selected in at least this share of bootstraps: stably non-zero
LASSO_RARE = 0.05  # selected in at most this share: stably zero
_EPS = 1e-12  # float slack at a rule's boundary (the boundary itself belongs to the inclusive side)


def relative_depth(layer: float, n_layers: int | None) -> float:
    """layer / (n_layers − 1): 0 = first block, 1 = last block."""
    if n_layers is None or n_layers < 2 or layer is None:
        return math.nan
    return float(layer) / (n_layers - 1)


def _mid_depth(rel: float) -> bool:
    return math.isfinite(rel) and abs(rel - PAPER_RELATIVE_DEPTH) <= DEPTH_TOLERANCE + _EPS


def mid_depth_layers(n_layers: int | None) -> list[int]:
    """The layers of an ``n_layers`` model in the mid-depth band (module docstring)."""
    return [layer for layer in range(n_layers or 0) if _mid_depth(relative_depth(layer, n_layers))]


def set_vs_band(layers: Sequence[int], n_layers: int | None) -> str:
    """AGREES iff every layer of a (non-empty) set is mid-depth, DIFFERS iff none is, else INCONCLUSIVE."""
    inside = [_mid_depth(relative_depth(layer, n_layers)) for layer in layers]
    if not inside or not n_layers:
        return INCONCLUSIVE
    return AGREES if all(inside) else DIFFERS if not any(inside) else INCONCLUSIVE


def interval_vs_band(lo: Any, hi: Any, band: tuple[float, float]) -> str:
    """AGREES iff [lo, hi] lies inside ``band`` (ends included), DIFFERS iff the two are disjoint, else
    INCONCLUSIVE (also for a missing or non-finite interval)."""
    a, b = _num(lo), _num(hi)
    if not (math.isfinite(a) and math.isfinite(b)):
        return INCONCLUSIVE
    if a >= band[0] - _EPS and b <= band[1] + _EPS:
        return AGREES
    if b < band[0] - _EPS or a > band[1] + _EPS:
        return DIFFERS
    return INCONCLUSIVE


def interval_vs_value(lo: Any, hi: Any, value: Any) -> str:
    """``"above"`` iff lo > value, ``"below"`` iff hi < value, else ``"holds"`` (the CI holds the value, or is
    missing)."""
    a, b, v = _num(lo), _num(hi), _num(value)
    if math.isfinite(a) and math.isfinite(v) and a > v:
        return "above"
    if math.isfinite(b) and math.isfinite(v) and b < v:
        return "below"
    return "holds"


def plain(value: Any) -> Any:
    """A JSON-able copy with plain Python types (numpy scalars and arrays, tuples → lists)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------------
# findings vs the paper


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    paper: str
    ours: str
    verdict: str  # one of VERDICTS, or NOT_RUN
    rule: str
    # the numbers the rule used (JSON-able: name → value), printed beside the verdict and kept in the summary
    numbers: Mapping[str, Any] = field(default_factory=dict)
    # True: the claim holds on any data by how the quantity is defined (e.g. a half-maximum onset is mid-depth
    # on any ramp): not evidence, and labelled so
    by_construction: bool = False

    @property
    def shown(self) -> str:
        """The verdict as the report shows it: ``by construction (not evidence)`` for a by-construction one."""
        return BY_CONSTRUCTION if self.by_construction and self.verdict in VERDICTS else self.verdict

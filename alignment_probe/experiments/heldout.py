"""statistics.md's selection and map rules, shared by every experiment that chooses from the data.

* **Selection is always held out.** Whatever an experiment picks by looking at the data (the best window, the
  top heads, the AtP conditions sent to exact confirmation, the split with the largest interaction) is picked
  on the *explore* half of the run's pairs (:func:`alignment_probe.stats.explore_confirm`, the same split for
  every experiment of one seed) and reported on the disjoint *confirm* half. :func:`choose` builds the
  summary's ``selection`` record: which pairs served each role, the chosen cell, its confirm-half mean with a
  CI, the explore half's (in-sample) mean beside it, and the ``top`` cells of the explore ranking each with
  its confirm-half mean.
* **Tops over maps.** A claim about the largest of m cells needs intervals that hold for all m at once:
  :func:`band` adds max-|t| bootstrap bands (:func:`alignment_probe.stats.simultaneous_band`) to a summary's
  cells and returns the ``map`` entry ``{"m", "critical", "rule"}``.
* **Per-token means beside sums.** :func:`per_token_rows` turns rows of the effects table into their per-token
  version (each side's change of log-prob divided by its completion length), for a headline's per-token twin.

Everything here is a pure function of the tables (summaries stay reproducible from a run directory).
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
import pandas as pd

from alignment_probe import stats
from alignment_probe.stats.peaks import _peak_index

TOP = 5  # cells of the explore ranking reported with their confirm-half means


def run_pair_ids(tables: Any, rows: pd.DataFrame | None = None) -> list[int]:
    """The run's pairs, whose explore/confirm split every experiment shares: the scores' pair ids (every pair
    scored), else the pair ids of ``rows``."""
    scores = getattr(tables, "scores", None)
    if scores is not None and "pair_id" in getattr(scores, "columns", ()) and len(scores):
        return sorted(int(p) for p in scores.pair_id)
    source = rows if rows is not None else tables.effects
    return sorted(int(p) for p in set(source.pair_id))


def split(cfg: Any, pair_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(explore, confirm)`` of the run's pairs for the run's seed (empty confirm half with fewer than 2 pairs)."""
    return stats.explore_confirm(sorted(set(int(p) for p in pair_ids)), seed=cfg.seed)


def cell_matrix(rows: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, list[int], list[tuple]]:
    """Rows of the effects table → ``(matrix, pair_ids, cells)``: ``matrix[i, j]`` is pair ``pair_ids[i]``'s effect
    in cell ``cells[j]`` (a tuple of the ``by`` columns' values), pairs and cells sorted. Every pair must be
    measured in every cell once (else :func:`stats.effect_matrix`'s error, naming the hole or the duplicate)."""
    keys = [tuple(_plain(v) for v in t) for t in rows[list(by)].itertuples(index=False, name=None)]
    cells = sorted(set(keys), key=lambda c: tuple((isinstance(v, str), v) for v in c))
    code = {c: i for i, c in enumerate(cells)}
    frame = pd.DataFrame(
        {"pair_id": rows.pair_id.to_numpy(), "layer": [code[k] for k in keys], "effect": rows.effect.to_numpy()}
    )
    matrix, pair_ids, idx = stats.effect_matrix(frame)
    return matrix, pair_ids, [cells[i] for i in idx]


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return int(v) if v.is_integer() else v
    return v


def _cell_stats(values: np.ndarray, cfg: Any) -> dict[str, Any]:
    if values.size == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, lo, hi = stats.bootstrap_mean_ci(values, seed=cfg.seed, n_boot=cfg.n_boot)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(values.size)}


def choose(
    matrix: np.ndarray,
    pair_ids: Sequence[int],
    cells: Sequence[Hashable],
    cfg: Any,
    *,
    explore: Sequence[int],
    confirm: Sequence[int],
    rank: str = "max",
    top: int = TOP,
    what: str = "cell",
) -> dict[str, Any] | None:
    """The cell with the largest explore-half mean (``rank="max"``) or largest |mean| (``"abs"``), measured on
    the confirm half: :func:`stats.selection_record` plus ``m`` (cells ranked), ``rank_by``, ``rule`` and ``top``
    (the explore ranking's first ``top`` cells, chosen first: ``{"cell", "explore_mean", "confirm": {mean,
    ci_low, ci_high, n}}``). Ties among the best explore means are broken at random (seeded), as for peaks.
    ``cells[j]`` labels column j; pairs outside ``explore`` ∪ ``confirm`` are not used. None when either half
    has no pair in ``matrix``."""
    m = np.asarray(matrix, dtype=np.float64)
    row = {int(p): i for i, p in enumerate(pair_ids)}
    ex_rows = [row[p] for p in explore if p in row]
    co_rows = [row[p] for p in confirm if p in row]
    if not ex_rows or not co_rows or m.shape[1] == 0:
        return None
    if rank not in ("max", "abs"):
        raise ValueError(f"rank must be 'max' or 'abs', got {rank!r}")
    ex_mean = m[ex_rows].mean(axis=0)
    score = ex_mean if rank == "max" else np.abs(ex_mean)
    best = int(_peak_index(score[None, :], np.random.default_rng([cfg.seed, 2]))[0])
    order = [best] + [int(j) for j in np.argsort(-score, kind="stable") if j != best]
    ex_ids = [int(pair_ids[i]) for i in ex_rows]
    co_ids = [int(pair_ids[i]) for i in co_rows]
    record = stats.selection_record(
        ex_ids, co_ids, cells[best], m[co_rows, best], seed=cfg.seed, n_boot=cfg.n_boot, in_sample=m[ex_rows, best]
    )
    record["m"] = int(m.shape[1])
    record["rank_by"] = "mean" if rank == "max" else "|mean|"
    record["rule"] = (
        f"the {what} with the largest {record['rank_by']} over the {len(ex_ids)} explore pairs "
        f"(of m = {m.shape[1]}), reported on the {len(co_ids)} disjoint confirm pairs; "
        "'in_sample' is the explore pairs' own mean (optimistic: it chose the cell)"
    )
    record["top"] = [
        {"cell": cells[j], "explore_mean": float(ex_mean[j]), "confirm": _cell_stats(m[co_rows, j], cfg)}
        for j in order[: max(0, top)]
    ]
    return record


def band(matrix: np.ndarray, cfg: Any) -> tuple[dict[str, Any], list[float], list[float]]:
    """Max-|t| simultaneous bands over a pairs × cells ``matrix``: ``(map, band_low, band_high)`` where ``map`` is
    ``{"m", "critical", "rule"}`` (statistics.md: a claim about the largest cell of a map states m)."""
    out = stats.simultaneous_band(matrix, seed=cfg.seed, n_boot=cfg.n_boot)
    return ({"m": out["m"], "critical": out["critical"], "rule": out["rule"]}, out["band_low"], out["band_high"])


def banded(
    rows: pd.DataFrame, by: Sequence[str], cells: list[dict[str, Any]], keys: Sequence[str], cfg: Any
) -> dict[str, Any] | None:
    """Add ``band_low``/``band_high`` to summary ``cells`` (dicts whose ``keys`` values name the effects-table cell
    given by the ``by`` columns) and return the ``map`` entry; None when there is nothing to band."""
    if not len(rows) or not cells:
        return None
    matrix, _, names = cell_matrix(rows, by)
    info, low, high = band(matrix, cfg)
    where = {c: j for j, c in enumerate(names)}
    for cell in cells:
        j = where.get(tuple(_plain(cell[k]) for k in keys))
        if j is not None:
            cell["band_low"], cell["band_high"] = float(low[j]), float(high[j])
    return info


def per_token_rows(rows: pd.DataFrame, scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """``rows`` with ``effect`` per completion token: (patched − clean log p(y+|x)) / |y+| minus the same for y−,
    the per-token version of a Δlogp effect (the gain's is ``gain_per_token``). None when the scores table lacks
    the completion lengths (``n_chosen_tokens``, ``n_rejected_tokens``) or a pair."""
    need = {"n_chosen_tokens", "n_rejected_tokens", "pair_id"}
    if scores is None or not need <= set(scores.columns) or not len(rows):
        return None
    lengths = scores.set_index("pair_id")[["n_chosen_tokens", "n_rejected_tokens"]]
    if not set(rows.pair_id) <= set(lengths.index):
        return None
    n = lengths.reindex(rows.pair_id.to_numpy())
    chosen = (rows.patched_logp_chosen.to_numpy() - rows.clean_logp_chosen.to_numpy()) / n.n_chosen_tokens.to_numpy()
    rejected = (
        rows.patched_logp_rejected.to_numpy() - rows.clean_logp_rejected.to_numpy()
    ) / n.n_rejected_tokens.to_numpy()
    return rows.assign(effect=chosen - rejected)


PER_TOKEN_UNIT = (
    "nats per completion token: each side's change of log-prob divided by its completion length, "
    "chosen minus rejected (the per-token twin of the summed Δlogp effect)"
)
BASIS_NOTE = (
    "'sum': the headline numbers (per_layer, peak, selection) are changes of the summed Δlogp over "
    "completion tokens, as in the paper; 'per_token' holds the same per completion token"
)


def per_token_summary(rows: pd.DataFrame, scores: pd.DataFrame | None, cfg: Any) -> dict[str, Any] | None:
    """The per-layer summary of ``rows`` per completion token: ``{"per_layer", "peak_layer", "peak_layer_ci",
    "onset_layer", "onset_layer_ci", "peak_set", "peak_set_rule", "layers_swept", "unit"}`` (no held-out choice:
    the experiment's own ``selection`` is made on its basis), or None (see :func:`per_token_rows`)."""
    pt = per_token_rows(rows, scores)
    if pt is None:
        return None
    out = stats.summarize_experiment(pt, seed=cfg.seed, n_boot=cfg.n_boot)
    out.pop("heldout", None)
    out.pop("selection", None)
    return out | {"unit": PER_TOKEN_UNIT}

"""E10's summary, a pure function of the effects table: AtP's per-layer and per-head estimates with CIs, their
validation against exact rows of the same conditions, the map's bands and the explore-half selection, and
``--confirm K``'s exact rows beside AtP's (the package docstring says what each entry holds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignment_probe import stats
from alignment_probe.experiments import heldout
from alignment_probe.experiments.atp.conditions import ATP_HEADS, DEFAULT_CONFIRM_K, EXACT, EXACT_HEADS, HEAD_ESTIMATOR
from alignment_probe.experiments.registry import Tables
from alignment_probe.vocab import HEAD_HOOKS, HOOKS

# --------------------------------------------------------------------------------------------------
# validation: pure functions of per-condition means


def topk_recall(exact: Sequence[float], estimate: Sequence[float], k: int) -> float:
    """Of the k conditions with the largest |exact| value, the share that are among the k largest
    |estimate| values (ties broken by position, stably)."""
    exact, estimate = np.abs(np.asarray(exact, float)), np.abs(np.asarray(estimate, float))
    k = min(k, exact.size)
    if k <= 0:
        return math.nan
    top_exact = set(np.argsort(-exact, kind="stable")[:k].tolist())
    top_est = set(np.argsort(-estimate, kind="stable")[:k].tolist())
    return len(top_exact & top_est) / k


def validation(exact: Sequence[float], estimate: Sequence[float]) -> dict[str, Any]:
    """``spearman``, ``topk_recall`` ({"3": …, "10%": …}), ``topk_k`` (the k of each), ``max_abs_error`` and
    ``n_conditions`` of estimated against exact per-condition means (matched by position)."""
    exact, estimate = np.asarray(exact, float), np.asarray(estimate, float)
    n = int(exact.size)
    k10 = max(1, math.ceil(0.1 * n))
    return {
        "spearman": stats.spearman_monotonicity(exact, estimate),
        "topk_recall": {"3": topk_recall(exact, estimate, 3), "10%": topk_recall(exact, estimate, k10)},
        "topk_k": {"3": min(3, n), "10%": min(k10, n)},
        "max_abs_error": float(np.max(np.abs(exact - estimate))) if n else math.nan,
        "n_conditions": n,
    }


def _estimator(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows of one estimator (a table written before the column existed is all exact)."""
    if "estimator" not in rows.columns:
        return rows if value == "exact" else rows.iloc[:0]
    return rows[rows.estimator == value]


def _condition_rows(effects: pd.DataFrame, experiment: str, scope: str, estimator: str) -> pd.DataFrame:
    rows = effects[
        (effects.experiment == experiment)
        & (effects.scope == scope)
        & (effects.split == "all")
        & (effects.sides == "both")
    ]
    return _estimator(rows, estimator)


def _means(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby(["hook", "layer"]).effect.mean()


def confirmed(tables: Tables) -> list[dict[str, Any]]:
    """``atp_confirm``'s exact rows beside AtP's estimate of the same (hook, layer) on the same pairs, in the order
    AtP ranked them on the explore pairs (by |AtP mean|).

    statistics.md: AtP ranks the conditions on the explore pairs and exact patching confirms them on the disjoint
    confirm pairs, so ``exact`` (and ``atp`` beside it) are means over the confirm pairs only (``pairs``:
    "confirm"); ``atp_explore`` is the explore mean that ranked the condition. With fewer than two pairs there
    is no split and everything is in-sample (``pairs``: "all (in-sample)")."""
    cfg = tables.cfg
    exact = _condition_rows(tables.effects, "atp_confirm", cfg.scope, "exact")
    atp = _condition_rows(tables.effects, "atp", cfg.scope, "atp")
    explore, confirm = heldout.split(cfg, heldout.run_pair_ids(tables, atp if len(atp) else exact))
    held_out = bool(explore) and bool(confirm)
    if held_out:  # rows of a run made before the confirmation was held out: its explore pairs are dropped
        exact = exact[exact.pair_id.isin(confirm)]
    out = []
    for (hook, layer), ex in exact.groupby(["hook", "layer"], sort=True):
        est = atp[(atp.hook == hook) & (atp.layer == layer)]
        e_mean, e_lo, e_hi = stats.bootstrap_mean_ci(
            ex.sort_values("pair_id").effect.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot
        )
        row = {
            "hook": str(hook),
            "layer": int(layer),
            "exact": e_mean,
            "exact_ci_low": e_lo,
            "exact_ci_high": e_hi,
            "n": len(ex),
            "pairs": "confirm" if held_out else "all (in-sample)",
        }
        same = est[est.pair_id.isin(set(ex.pair_id))]
        if len(same):
            a_mean, a_lo, a_hi = stats.bootstrap_mean_ci(
                same.sort_values("pair_id").effect.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot
            )
            row |= {"atp": a_mean, "atp_ci_low": a_lo, "atp_ci_high": a_hi}
        ranked_on = est[est.pair_id.isin(explore)] if held_out else est
        if len(ranked_on):
            row["atp_explore"] = float(ranked_on.effect.mean())
        out.append(row)
    return sorted(
        out, key=lambda r: (-abs(r.get("atp_explore", r.get("atp", 0.0))), HOOKS.index(r["hook"]), r["layer"])
    )


def summarize_atp(tables: Tables) -> dict[str, dict[str, Any]]:
    """``atp``: ``by_hook`` (hook → ``per_layer`` estimates with CIs, and ``exact_per_layer`` and
    ``validation`` where exact rows of the same conditions exist), ``validation`` pooled over hooks, and
    ``confirmed`` (``--confirm K``); with ``atp_heads`` the head entries of :func:`summarize_heads`."""
    out: dict[str, Any] = summarize_layers(tables) if "atp" in tables.selected else {}
    if ATP_HEADS in tables.selected:
        out |= summarize_heads(tables)
    return {"atp": out} if out else {}


def summarize_layers(tables: Tables) -> dict[str, Any]:
    """The per-layer entries of ``atp`` (``by_hook``, ``scope``, ``estimator``, ``validation``, ``confirmed``)."""
    cfg = tables.cfg
    atp = _condition_rows(tables.effects, "atp", cfg.scope, "atp")
    exact = _condition_rows(tables.effects, EXACT, cfg.scope, "exact")
    by_hook: dict[str, Any] = {}
    pooled_exact, pooled_atp = [], []
    for hook in [h for h in HOOKS if h in set(atp.hook)]:
        rows = atp[atp.hook == hook]
        entry: dict[str, Any] = {"per_layer": stats.per_layer_summary(rows, seed=cfg.seed, n_boot=cfg.n_boot)}
        entry["peak_set"] = stats.peak_set(*_layer_matrix(rows), seed=cfg.seed, n_boot=cfg.n_boot)["peak_set"]
        ex = exact[(exact.hook == hook) & exact.layer.isin(set(rows.layer)) & exact.pair_id.isin(set(rows.pair_id))]
        if len(ex):
            est = rows[rows.layer.isin(set(ex.layer)) & rows.pair_id.isin(set(ex.pair_id))]
            entry["exact_per_layer"] = stats.per_layer_summary(ex, seed=cfg.seed, n_boot=cfg.n_boot)
            e_means, a_means = ex.groupby("layer").effect.mean(), est.groupby("layer").effect.mean()
            layers = sorted(set(e_means.index) & set(a_means.index))
            entry["validation"] = validation(e_means[layers].to_numpy(), a_means[layers].to_numpy())
            pooled_exact += e_means[layers].tolist()
            pooled_atp += a_means[layers].tolist()
        by_hook[hook] = entry
    out: dict[str, Any] = {"by_hook": by_hook, "scope": cfg.scope, "estimator": "atp"}
    if pooled_exact:
        out["validation"] = validation(pooled_exact, pooled_atp)
    if len(atp):
        _map_and_selection(out, atp, tables)
    conf = confirmed(tables)
    if conf:
        out["confirmed"] = conf
    return out


def _layer_matrix(rows: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    matrix, _, layers = stats.effect_matrix(rows)
    return matrix, layers


def _map_and_selection(out: dict[str, Any], atp: pd.DataFrame, tables: Tables) -> None:
    """statistics.md on AtP's map of (hook, layer) conditions: max-|t| bands over all m of them (``band_low``/
    ``band_high`` in ``by_hook[h]["per_layer"]``, ``map``: {m, critical, rule}), the peak set at the run's hook
    (``peak_set``), and ``selection``: the conditions ranked by |AtP mean| on the explore pairs (distinct patches
    only), the first ``--confirm K`` of them in ``top`` with their AtP means on the confirm pairs — the set
    ``atp_confirm`` patches exactly, on the confirm pairs only."""
    cfg, by_hook = tables.cfg, out["by_hook"]
    cells = [dict(r, hook=h) for h, e in by_hook.items() for r in e["per_layer"]]
    out["map"] = heldout.banded(atp, ("hook", "layer"), cells, ("hook", "layer"), cfg)
    for cell in cells:
        row = next(r for r in by_hook[cell["hook"]]["per_layer"] if r["layer"] == cell["layer"])
        row["band_low"], row["band_high"] = cell.get("band_low"), cell.get("band_high")
    main = cfg.hook if cfg.hook in by_hook else next(iter(by_hook))
    out["peak_set"] = by_hook[main]["peak_set"]
    out["peak_set_hook"] = main
    matrix, pair_ids, conditions = heldout.cell_matrix(atp, ("hook", "layer"))
    present = set(conditions)  # the same tensor twice is one patch (see distinct_conditions)
    keep = [j for j, c in enumerate(conditions) if not (c[0] == "resid_pre" and ("resid_post", c[1] - 1) in present)]
    explore, confirm = heldout.split(cfg, heldout.run_pair_ids(tables, atp))
    k = int(getattr(cfg, "atp_confirm_k", DEFAULT_CONFIRM_K))
    out["selection"] = heldout.choose(
        matrix[:, keep],
        pair_ids,
        [{"hook": conditions[j][0], "layer": conditions[j][1]} for j in keep],
        cfg,
        explore=explore,
        confirm=confirm,
        rank="abs",
        top=k,
        what="condition",
    )


# --------------------------------------------------------------------------------------------------
# heads (atp_heads): per (layer, head) cells, validated against head_patch / kv_head_patch


def head_cells(rows: pd.DataFrame, cfg: Any) -> list[dict[str, Any]]:
    """One cell per (layer, head) (``param`` is the head): the mean over pairs with its bootstrap CI."""
    out = []
    for (layer, head), group in rows.groupby(["layer", "param"], sort=True):
        mean, lo, hi = stats.bootstrap_mean_ci(
            group.sort_values("pair_id").effect.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot
        )
        out.append(
            {"layer": int(layer), "head": int(head), "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(group))}
        )
    return out


def _head_means(estimated: pd.DataFrame, exact: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per-(layer, head) means of both, on the conditions and pairs they share (matched by index)."""
    est = estimated[estimated.pair_id.isin(set(exact.pair_id))].groupby(["layer", "param"]).effect.mean()
    ex = exact[exact.pair_id.isin(set(estimated.pair_id))].groupby(["layer", "param"]).effect.mean()
    common = est.index.intersection(ex.index).sort_values()
    return ex[common], est[common]


def summarize_heads(tables: Tables) -> dict[str, Any]:
    """``by_head``, ``head_estimator`` and, where the exact head experiments ran on the same conditions,
    ``exact_by_head``, ``head_validation`` and ``k_without_qk_fix`` (module docstring)."""
    cfg, effects = tables.cfg, tables.effects
    rows = _condition_rows(effects, ATP_HEADS, "all", HEAD_ESTIMATOR["z"])
    fixed = _condition_rows(effects, ATP_HEADS, "all", HEAD_ESTIMATOR["k"])
    by_head: dict[str, Any] = {}
    exact_by_head: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    pooled_exact: list[float] = []
    pooled_est: list[float] = []
    for hook in HEAD_HOOKS:
        est = fixed if HEAD_ESTIMATOR[hook] == "atp*" else rows
        est = est[est.hook == hook]
        if not len(est):
            continue
        by_head[hook] = head_cells(est, cfg)
        exact = _condition_rows(effects, EXACT_HEADS[hook], "all", "exact")
        exact = exact[(exact.hook == hook) & exact.layer.isin(set(est.layer)) & exact.param.isin(set(est.param))]
        if len(exact):
            exact_by_head[hook] = head_cells(exact, cfg)
            e, a = _head_means(est, exact)
            checks[hook] = validation(e.to_numpy(), a.to_numpy())
            pooled_exact += e.tolist()
            pooled_est += a.tolist()
    out: dict[str, Any] = {"by_head": by_head, "head_estimator": {h: HEAD_ESTIMATOR[h] for h in by_head}}
    head_map = {}
    for hook, cells in by_head.items():  # max-|t| bands over each hook's layer × head map
        est = fixed if HEAD_ESTIMATOR[hook] == "atp*" else rows
        head_map[hook] = heldout.banded(est[est.hook == hook], ("layer", "param"), cells, ("layer", "head"), cfg)
    if head_map:
        out["head_map"] = head_map
    if exact_by_head:
        out["exact_by_head"] = exact_by_head
        out["head_validation"] = checks | {"pooled": validation(pooled_exact, pooled_est)}
    plain_k = rows[rows.hook == "k"]
    if len(plain_k):
        entry: dict[str, Any] = {"by_head": head_cells(plain_k, cfg), "estimator": "atp"}
        exact = _condition_rows(effects, EXACT_HEADS["k"], "all", "exact")
        exact = exact[exact.hook == "k"]
        if len(exact):
            e, a = _head_means(plain_k, exact)
            if len(e):
                entry["validation"] = validation(e.to_numpy(), a.to_numpy())
        out["k_without_qk_fix"] = entry
    return out


def summarize_confirm(tables: Tables) -> dict[str, dict[str, Any]]:
    return {"atp_confirm": {"confirmed": confirmed(tables)}} if "atp_confirm" in tables.selected else {}

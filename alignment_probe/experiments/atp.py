"""E10 — attribution patching (AtP): E1's conditions *estimated* to first order, every layer at once.

``atp`` has E1's conditions (target base, source tuned, ``Replace`` at all positions of the run's
scope) at ``resid_pre``, ``resid_post``, ``attn_out`` and ``mlp_out`` of every swept layer (plus the
run's ``--hook`` / ``--extra-hooks``), run by :class:`~alignment_probe.engine.attribution.AttributionEngine`
(``Experiment.estimator = "atp"``: the suite routes these conditions to it, in parts
``stage1-atp-<first>-<last>``). Its rows are ``experiment = "atp"``, ``estimator = "atp"``: the estimate
Σ_p (a′_p − a_p)·∂Δ/∂a_p of what the exact patch would do.

**Validation, always reported**: where the run also has exact rows of the same conditions
(``patch_tuned_to_base`` at the same hook and scope, e.g. with ``--extra-hooks``), the summary gives
per hook the Spearman ρ between AtP's and the exact per-layer means, top-k recall (of the k conditions
with the largest |exact mean|, the share among AtP's k largest |means|; k = 3 and k = 10 % of the
conditions, at least 1), the largest absolute error of a per-layer mean and the number of conditions
compared; the same pooled over every hook under ``atp.validation``.

``atp_confirm`` (``--confirm K``, stage 2, needs ``atp``) runs *exact* patching for the K conditions
(hook, layer) whose AtP means *over the explore pairs* are largest in absolute value (``atp.selection``), on the
confirm pairs only, and the summary sets both side by side under ``atp.confirmed``: AtP as a prefilter, exact
patching as the confirmation, never on the pairs that ranked the conditions (../shared/docs/statistics.md). The
map of every (hook, layer) condition carries max-|t| bands (``atp.map``; the head maps' ``atp.head_map``).

``atp_heads`` (opt-in, a second name of this experiment; rows ``experiment = "atp_heads"``) estimates E7's
head conditions (experiments/heads.py) at every swept layer, from the same one forward and backward: one
query head's ``z`` (``param`` = head), one key/value head's ``v`` and ``k`` (``param`` = KV head, before
grouped-query attention repeats it), ``ReplaceHead`` at all positions. ``z`` and ``v`` rows are plain AtP
(``estimator = "atp"``); ``k`` rows are AtP* with the QK fix (``"atp*"``: the pattern recomputed exactly,
engine/attribution.py), and the same ``k`` conditions once more as plain AtP (``"atp"``) to show what the
fix changes. Summary, beside ``by_hook`` under ``atp``: ``by_head`` (hook → cells {layer, head, mean,
ci_low, ci_high, n}), ``head_estimator`` (hook → estimator of its cells), and, where ``head_patch`` /
``kv_head_patch`` ran too, ``exact_by_head`` and ``head_validation`` (hook → the same statistics, matched
per (layer, head); ``pooled`` over the three hooks), and ``k_without_qk_fix`` ({by_head, validation}: the
plain-AtP ``k`` cells).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments import heldout
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import (
    Experiment,
    Figure,
    Name,
    Plan,
    Tables,
    register,
)
from alignment_probe.experiments.rows import swept_only
from alignment_probe.interventions import Replace, ReplaceHead
from alignment_probe.vocab import HEAD_HOOKS, HOOKS

ATP_HOOKS: tuple[str, ...] = ("resid_pre", "resid_post", "attn_out", "mlp_out")
EXACT = "patch_tuned_to_base"  # the exact experiment whose conditions AtP estimates
DEFAULT_CONFIRM_K = 5
ATP_HEADS = "atp_heads"  # the head rows' experiment name (and the name that selects them)
# The exact experiment of each head hook's conditions (experiments/heads.py), and how AtP estimates them.
EXACT_HEADS: dict[str, str] = {"z": "head_patch", "v": "kv_head_patch", "k": "kv_head_patch"}
HEAD_ESTIMATOR: dict[str, str] = {"z": "atp", "v": "atp", "k": "atp*"}


def atp_hooks(cfg: Any) -> list[str]:
    """The hooks AtP estimates: the four of E7 and the run's own hook and extra hooks, in HOOKS order."""
    chosen = {*ATP_HOOKS, cfg.hook, *cfg.extra_hooks}
    return [h for h in HOOKS if h in chosen]


def atp_specs(n_layers: int, *, hooks: Sequence[str] = ATP_HOOKS, scopes: Sequence[str] = ("all",)) -> list[PatchSpec]:
    """E1's tuned → base conditions under the name ``atp`` (estimated by the attribution engine)."""
    return layer_sweep("atp", target="base", source="tuned", layers=range(n_layers), hooks=hooks, scopes=scopes)


def n_heads_of(cfg: Any, hook: str) -> int:
    """Heads at a per-head hook of a model with TransformerLens config ``cfg``: query heads at ``z``,
    key/value heads at ``k`` and ``v`` (all heads when the model has no grouped-query attention)."""
    return int(cfg.n_heads if hook == "z" else (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads))


def atp_head_specs(layers: Sequence[int], n_heads: int, n_kv_heads: int) -> list[PatchSpec]:
    """E7's head conditions under the name ``atp_heads``, per layer: ``z`` per query head, ``v`` and ``k`` per
    key/value head (tuned → base, ``ReplaceHead`` at all positions), and the ``k`` ones again as plain AtP."""

    def spec(hook: str, layer: int, head: int, estimator: str = "exact") -> PatchSpec:
        # "exact": the engine's choice for the hook (AtP* at k); "atp": plain AtP asked for explicitly
        return PatchSpec(
            RowKey(ATP_HEADS, "base", "tuned", hook, "all", "both", layer, float(head), "all", estimator),
            ReplaceHead(head),
        )

    specs: list[PatchSpec] = []
    for layer in layers:
        specs += [spec("z", layer, h) for h in range(n_heads)]
        specs += [spec(hook, layer, g) for hook in ("v", "k") for g in range(n_kv_heads)]
        specs += [spec("k", layer, g, "atp") for g in range(n_kv_heads)]
    return specs


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    specs: list[PatchSpec] = []
    if "atp" in plan.selected:
        scopes = list(dict.fromkeys((cfg.scope, *cfg.extra_scopes)))
        specs += swept_only(plan, atp_specs(plan.n_layers, hooks=atp_hooks(cfg), scopes=scopes))
    if ATP_HEADS in plan.selected:
        model = plan.twins.backends()["base"]
        specs += atp_head_specs(cfg.swept_layers(plan.n_layers), model.heads_at("z"), model.heads_at("k"))
    return specs


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


# --------------------------------------------------------------------------------------------------
# --confirm K: exact patching of AtP's top conditions


def ranked_conditions(atp_summary: Mapping[str, Any]) -> list[tuple[str, int, float]]:
    """(hook, layer, AtP mean) of every estimated condition, largest |mean| first (ties: HOOKS order, layer)."""
    items = [
        (hook, int(r["layer"]), float(r["mean"]))
        for hook, entry in (atp_summary.get("by_hook") or {}).items()
        for r in entry.get("per_layer", [])
    ]
    return sorted(items, key=lambda x: (-abs(x[2]), HOOKS.index(x[0]), x[1]))


def distinct_conditions(ranked: Sequence[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    """``ranked`` without the ``resid_pre`` of a block ℓ whose ``resid_post`` of block ℓ − 1 is listed: the two
    are the same tensor, so the same patch (confirming both would spend two of K exact runs on one condition)."""
    have = {(hook, layer) for hook, layer, _ in ranked}
    return [c for c in ranked if not (c[0] == "resid_pre" and ("resid_post", c[1] - 1) in have)]


def _confirm_specs(plan: Plan) -> list[PatchSpec]:
    """Exact patches of the K conditions AtP ranked highest on the explore pairs, run on the confirm pairs only
    (statistics.md: never measured on the pairs that ranked them). With fewer than two pairs (no split): the
    all-pairs ranking, on every pair."""
    cfg = plan.cfg
    k = getattr(cfg, "atp_confirm_k", DEFAULT_CONFIRM_K)
    atp = plan.upstream.get("atp") or {}
    selection = atp.get("selection")
    if selection:
        top = [(c["cell"]["hook"], int(c["cell"]["layer"]), c["explore_mean"]) for c in selection["top"]][:k]
        pairs: frozenset[int] | None = frozenset(int(p) for p in selection["confirm_pair_ids"])
    else:
        top, pairs = distinct_conditions(ranked_conditions(atp))[:k], None
    return [
        PatchSpec(RowKey("atp_confirm", "base", "tuned", hook, cfg.scope, "both", layer), Replace(), pairs)
        for hook, layer, _ in sorted(top, key=lambda x: (HOOKS.index(x[0]), x[1]))
    ]


def summarize_confirm(tables: Tables) -> dict[str, dict[str, Any]]:
    return {"atp_confirm": {"confirmed": confirmed(tables)}} if "atp_confirm" in tables.selected else {}


# --------------------------------------------------------------------------------------------------
# the figure

PALETTE = {
    "resid_pre": "#8c564b",
    "resid_mid": "#9467bd",
    "resid_post": "#1f77b4",
    "attn_out": "#ff7f0e",
    "mlp_out": "#2ca02c",
}


def atp_figure(summary: Mapping[str, Any]) -> Any:
    """AtP per-layer mean (y) against the exact per-layer mean (x), one colour per hook, with y = x;
    the ``--confirm`` conditions as open diamonds."""
    entry = P.experiment(summary, "atp") or {}
    by_hook = {h: e for h, e in (entry.get("by_hook") or {}).items() if e.get("exact_per_layer")}
    conf = [c for c in entry.get("confirmed") or [] if "atp" in c]
    if not by_hook and not conf:
        raise P.MissingExperimentError(
            "atp_vs_exact",
            [
                (
                    "patch_tuned_to_base at AtP's hooks (--experiments "
                    "atp,patch_tuned_to_base --extra-hooks …) or --confirm K"
                )
            ],
        )
    import plotly.graph_objects as go

    fig = go.Figure()
    values: list[float] = []
    for hook, e in by_hook.items():
        est = {int(r["layer"]): r for r in e["per_layer"]}
        ex = [r for r in e["exact_per_layer"] if int(r["layer"]) in est]
        xs, ys = [P.num(r["mean"]) for r in ex], [P.num(est[int(r["layer"])]["mean"]) for r in ex]
        rho = (e.get("validation") or {}).get("spearman")
        name = f"{hook} (ρ = {rho:.2f})" if isinstance(rho, float) and math.isfinite(rho) else hook
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name=name,
                text=[str(r["layer"]) for r in ex],
                textposition="top center",
                marker={"color": PALETTE.get(hook, "#7f7f7f"), "size": 9},
                hovertemplate="layer %{text}<br>exact %{x:.3f}<br>AtP %{y:.3f}<extra>" + hook + "</extra>",
            )
        )
        values += xs + ys
    if conf:
        xs, ys = [P.num(c["exact"]) for c in conf], [P.num(c["atp"]) for c in conf]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="confirmed (--confirm)",
                text=[f"{c['hook']} {c['layer']}" for c in conf],
                marker={"symbol": "diamond-open", "size": 14, "color": "#222"},
                hovertemplate="%{text}<br>exact %{x:.3f}<br>AtP %{y:.3f}<extra></extra>",
            )
        )
        values += xs + ys
    finite = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}, hoverinfo="skip"
        )
    )
    return P.layout(
        fig,
        "Attribution patching vs exact (E10)",
        x_title="exact effect (nats, mean over pairs)",
        y_title="AtP estimate (nats, mean over pairs)",
    )


def atp_map_figure(summary: Mapping[str, Any]) -> Any:
    """The AtP map: per-layer estimates with CIs, one line per hook (left), and the query heads' estimates as a
    layer × head heatmap (right, when the run estimated heads)."""
    entry = P.experiment(summary, "atp") or {}
    by_hook = entry.get("by_hook") or {}
    if not by_hook:
        raise P.MissingExperimentError("atp_map", ["atp"])
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    z_cells = (entry.get("by_head") or {}).get("z") or []
    fig = make_subplots(
        rows=1,
        cols=2 if z_cells else 1,
        column_widths=[0.6, 0.4] if z_cells else None,
        horizontal_spacing=0.12,
        subplot_titles=("per layer, every hook", "per query head (z)") if z_cells else None,
    )
    for hook, e in by_hook.items():
        P.add_curve(
            fig, P.per_layer_frame(e["per_layer"]), name=f"AtP {hook}", color=PALETTE.get(hook, "#7f7f7f"), row=1, col=1
        )
    P.zero_line(fig, row=1, col=1)
    P.layer_ticks(fig, [r["layer"] for e in by_hook.values() for r in e["per_layer"]], row=1, col=1)
    fig.update_xaxes(title_text=P.LAYER_AXIS, row=1, col=1)
    fig.update_yaxes(title_text="AtP estimate (nats, mean over pairs)", row=1, col=1)
    if z_cells:
        layers = sorted({c["layer"] for c in z_cells})
        heads = sorted({c["head"] for c in z_cells})
        cell = {(c["layer"], c["head"]): c for c in z_cells}
        grid = [[P.num(cell[(ly, h)]["mean"]) if (ly, h) in cell else None for h in heads] for ly in layers]
        text = [
            [
                (
                    f"layer {ly} head {h}<br>AtP {P.num(cell[(ly, h)]['mean']):+.3f} "
                    f"[{P.num(cell[(ly, h)]['ci_low']):+.3f}, {P.num(cell[(ly, h)]['ci_high']):+.3f}]"
                )
                if (ly, h) in cell
                else ""
                for h in heads
            ]
            for ly in layers
        ]
        top = max((abs(v) for row in grid for v in row if v is not None and math.isfinite(v)), default=1.0) or 1.0
        fig.add_trace(
            go.Heatmap(
                z=grid,
                x=heads,
                y=layers,
                text=text,
                hoverinfo="text",
                colorscale="RdBu",
                reversescale=True,
                zmin=-top,
                zmax=top,
                colorbar={"title": "nats", "x": 1.0},
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=2)
        fig.update_yaxes(title_text="layer", row=1, col=2)
    P.layout(fig, "Attribution patching map, tuned → base (E10)", x_title=None, y_title=None)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.18, "xanchor": "left"})
    return fig


HEAD_MARKERS = {"z": ("#9467bd", "circle"), "v": ("#8c564b", "square"), "k": ("#17becf", "diamond")}


def atp_heads_figure(summary: Mapping[str, Any]) -> Any:
    """AtP per-(layer, head) mean (y) against the exact head patch's mean (x): query heads (z), value heads
    (v) and key heads (k, AtP* with the QK fix; open diamonds: plain AtP without it), with y = x."""
    entry = P.experiment(summary, "atp") or {}
    exact = entry.get("exact_by_head") or {}
    if not exact:
        raise P.MissingExperimentError(
            "atp_heads_vs_exact",
            [f"{ATP_HEADS} with head_patch or kv_head_patch (--experiments {ATP_HEADS},head_patch,kv_head_patch)"],
        )
    import plotly.graph_objects as go

    fig = go.Figure()
    values: list[float] = []
    checks = entry.get("head_validation") or {}
    series = [
        (hook, entry["by_head"][hook], exact[hook], HEAD_ESTIMATOR[hook], checks.get(hook) or {}, False)
        for hook in HEAD_HOOKS
        if hook in exact and hook in (entry.get("by_head") or {})
    ]
    plain = entry.get("k_without_qk_fix") or {}
    if "k" in exact and plain.get("by_head"):
        series.append(("k", plain["by_head"], exact["k"], "atp", plain.get("validation") or {}, True))
    for hook, est_cells, ex_cells, estimator, check, hollow in series:
        est = {(c["layer"], c["head"]): c for c in est_cells}
        ex = [c for c in ex_cells if (c["layer"], c["head"]) in est]
        xs, ys = [P.num(c["mean"]) for c in ex], [P.num(est[(c["layer"], c["head"])]["mean"]) for c in ex]
        rho = check.get("spearman")
        name = f"{hook} ({estimator}" + (f", ρ = {rho:.2f})" if isinstance(rho, float) and math.isfinite(rho) else ")")
        color, symbol = HEAD_MARKERS[hook]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=name,
                text=[f"layer {c['layer']} head {c['head']}" for c in ex],
                marker={"color": color, "size": 9, "symbol": symbol + ("-open" if hollow else "")},
                hovertemplate="%{text}<br>exact %{x:.3f}<br>" + estimator + " %{y:.3f}<extra>" + hook + "</extra>",
            )
        )
        values += xs + ys
    finite = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}, hoverinfo="skip"
        )
    )
    return P.layout(
        fig,
        "Attribution patching vs exact, per head (E10)",
        x_title="exact effect of one head's patch (nats, mean over pairs)",
        y_title="AtP estimate (nats, mean over pairs)",
    )


register(
    Experiment(
        key="atp",
        method="E10",
        order=90,
        estimator="atp",
        default=False,
        names=(
            Name(
                "atp",
                "AtP (estimate)",
                "#e377c2",
                "Attribution patching: first-order estimate of tuned → base patching at every layer and hook "
                "from one forward and one backward per sequence (E10).",
            ),
            Name(
                ATP_HEADS,
                "AtP per head (estimate)",
                "#bcbd22",
                "Attribution patching of E7's head conditions: one query head's z, one key/value head's v and k "
                "(AtP* with the QK fix) at every layer, from the same forward and backward (E10).",
                per_layer=False,
            ),
        ),
        specs=_specs,
        summarize=summarize_atp,
        figures=(
            Figure(
                "atp_map",
                "alignment_probe.experiments.atp:atp_map_figure",
                "Attribution patching map (E10)",
                "E10. Left: attribution patching's first-order estimate of tuned → base patching at every layer, "
                "one line per hook, mean over pairs with 95 % bootstrap CIs (one forward and one backward per "
                "sequence gives every point). Right, when heads were estimated: the same for one query head's z "
                "at a time, as a layer × head heatmap (red: raises Δlogp). Estimates, not measurements: the "
                "next figure and the summary's validation say how well they track exact patching.",
                needs=("atp",),
                order=94,
            ),
            Figure(
                "atp_vs_exact",
                "alignment_probe.experiments.atp:atp_figure",
                "Attribution patching vs exact (E10)",
                "E10. Each point is one condition (hook, layer): the mean over pairs of attribution patching's "
                "first-order estimate (y) against the exact tuned → base patch (x), one colour per hook; the "
                "dashed line is y = x, the legend gives each hook's Spearman ρ across layers. Open diamonds: "
                "the conditions AtP ranked highest, confirmed by exact patching (--confirm K).",
                needs=("atp",),
                order=95,
            ),
            Figure(
                "atp_heads_vs_exact",
                "alignment_probe.experiments.atp:atp_heads_figure",
                "Attribution patching vs exact, per head (E10)",
                "E10. Each point is one head condition (layer, head): the mean over pairs of attribution "
                "patching's estimate (y) against the exact patch of that head, tuned → base (x; head_patch and "
                "kv_head_patch). Query heads (z) and value heads (v): plain AtP; key heads (k): AtP* with the "
                "QK fix (the attention pattern recomputed with the patched keys), and as open diamonds the same "
                "conditions by plain AtP. The dashed line is y = x; the legend gives each series' Spearman ρ.",
                needs=(ATP_HEADS,),
                order=96,
            ),
        ),
    )
)

register(
    Experiment(
        key="atp_confirm",
        method="E10",
        order=91,
        needs=("atp",),
        default=False,
        names=(
            Name(
                "atp_confirm",
                "AtP top-K, exact",
                "#7f7f7f",
                "Exact tuned → base patching of the K conditions attribution patching ranks highest (--confirm K).",
                per_layer=False,
            ),
        ),
        specs=_confirm_specs,
        summarize=summarize_confirm,
    )
)

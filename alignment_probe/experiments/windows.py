"""E8 — weight transplants: which blocks' *weights* carry the tuning (sufficiency and necessity).

Activation patching asks "what if this layer's output were the tuned one"; a transplant asks "what if this
layer's *weights* were the tuned ones", with the rest of the network computing on its own
(../shared/docs/localization.md, E8). The embedding goes with block 0's owner and the final norm and
unembedding with block L−1's, so a transplant of every block is the tuned model exactly.

* ``window_transplant`` W(a, w): blocks a … a+w−1 from the tuned model inside the base.
  Effect = Δ(hybrid) − Δ(B): how much of the gain those blocks' weights are **sufficient** for.
* ``window_revert`` R(a, w): blocks a … a+w−1 from the base inside the tuned model.
  Reported effect = Δ(T) − Δ(hybrid): how much of the gain is lost without them, i.e. how **necessary**
  they are. (Its rows in the effects table keep the table's convention, effect = patched − clean =
  Δ(hybrid) − Δ(T); the summary reports the negative, so both curves read "gain carried".)

Rows: hook ``blocks``, ``layer`` = the window's first block a, ``param`` = its width w, scope ``all``. The
engines run a window as a patched run from block a with the window's modules swapped in (engine/hybrid.py),
batched and prompt-shared like any patch. Widths: ``--window-widths`` (default 1 and 2; 1 in the default suite,
as issue 12 sets its run: width 2 would add L − 1 windows to the L of width 1); starts: the swept
layers (``--layers``) at which a window fits. ``window_transplant`` also runs the window of every block once,
a check that the hybrid machinery reproduces the tuned model (``every_block``: its mean effect beside the gain).

For a twin tuned in block p only, W(p, 1) = R(p, 1) = gain exactly and every window that misses p gives
exactly 0 (tests/acceptance/test_windows.py): a window of equal weights *is* the target model and a window of
every differing part *is* the source, and the engines reuse those models' clean runs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments import heldout
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, Plan, Tables, register
from alignment_probe.experiments.verdict_rules import (
    AGREES,
    DEPTH_TOLERANCE,
    DIFFERS,
    INCONCLUSIVE,
    PAPER_RELATIVE_DEPTH,
    Finding,
    mid_depth_layers,
    plain,
    relative_depth,
    set_vs_band,
)
from alignment_probe.formatting import fmt_effect, fmt_layers
from alignment_probe.interventions import Transplant

TRANSPLANT, REVERT = "window_transplant", "window_revert"
DIRECTIONS = {TRANSPLANT: ("base", "tuned"), REVERT: ("tuned", "base")}  # name → (target, source)
DEFAULT_WIDTHS = (1, 2)  # when the window experiments are asked for by name
DEFAULT_SUITE_WIDTHS = (1,)  # in the default suite (issue 12: "the default run includes ... w=1 windows")
COLORS = {TRANSPLANT: "#2ca02c", REVERT: "#9467bd"}


def window_widths(cfg: Any) -> tuple[int, ...]:
    return tuple(sorted(set(cfg.window_widths)))


def window_specs(plan: Plan) -> list[PatchSpec]:
    """One transplant (or revert) per (width, start) with the start at a swept layer and the window inside
    the model; the transplant of every block once, as a check."""
    n, specs = plan.n_layers, []
    for name in (TRANSPLANT, REVERT):
        if name not in plan.selected:
            continue
        target, source = DIRECTIONS[name]
        for w in window_widths(plan.cfg):
            specs += [
                PatchSpec(RowKey(name, target, source, "blocks", "all", "both", a, float(w)), Transplant(w))
                for a in plan.cfg.layers_for(name, n)
                if a + w <= n and w < n
            ]
        if name == TRANSPLANT:
            specs.append(PatchSpec(RowKey(name, target, source, "blocks", "all", "both", 0, float(n)), Transplant(n)))
    return specs


def carried(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows with ``effect`` = the gain the window carries: the transplant's own effect, the revert's negative."""
    if name == REVERT:
        rows = rows.assign(effect=-rows["effect"])
    return rows


def summarize_windows(tables: Tables) -> dict[str, dict[str, Any]]:
    """Per name: ``by_window`` (every start and width: mean, CI, n, and ``band_low``/``band_high``, max-|t| bands
    over every window: ``map`` = {m, critical, rule}), ``per_layer`` and the peak/onset/held-out block and peak set
    of the width-1 windows (as for E1), ``by_width`` (the same per width; its ``selection``: the best start chosen
    on the explore pairs, with the explore ranking's ``top`` starts and their confirm-pair means),
    ``selection``: the best window of any width (``chosen`` = {start, width}) chosen on the explore pairs and
    reported on the confirm pairs, the mean gain of the same pairs, and for the transplant ``every_block``: the
    transplant of all blocks beside the gain."""
    cfg, effects, n = tables.cfg, tables.effects, tables.n_layers
    out: dict[str, dict[str, Any]] = {}
    for name in tables.selected:
        rows = carried(effects[(effects.experiment == name) & (effects.hook == "blocks")], name)
        entry: dict[str, Any] = {
            "sign": "Δ(hybrid) − Δ(B)" if name == TRANSPLANT else "Δ(T) − Δ(hybrid)",
            "by_window": [],
            "by_width": {},
        }
        ids = heldout.run_pair_ids(tables, rows)
        explore, confirm = heldout.split(cfg, ids)
        for w in sorted(int(v) for v in set(rows.param) if int(v) < n):
            summary = stats.summarize_experiment(rows[rows.param == w], seed=cfg.seed, n_boot=cfg.n_boot)
            # the best start of this width, chosen on the explore pairs (the same choice as ``heldout``), with the
            # explore ranking's top starts and their confirm-pair means
            matrix, pair_ids, starts = stats.effect_matrix(rows[rows.param == w])
            pick = heldout.choose(matrix, pair_ids, starts, cfg, explore=explore, confirm=confirm, what="window start")
            if pick is not None:
                summary["selection"] = pick
            entry["by_width"][str(w)] = summary
            entry["by_window"] += [
                {
                    "start": r["layer"],
                    "width": w,
                    "mean": r["mean"],
                    "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"],
                    "n": r["n"],
                }
                for r in summary["per_layer"]
            ]
        if "1" in entry["by_width"]:
            entry.update({k: v for k, v in entry["by_width"]["1"].items()})
        windows = rows[rows.param < n]
        if len(windows):
            # every window of every width is one cell of the map: family-wise bands, and the best window chosen on
            # the explore pairs and reported on the confirm pairs
            entry["map"] = heldout.banded(windows, ("layer", "param"), entry["by_window"], ("start", "width"), cfg)
            matrix, pair_ids, cells = heldout.cell_matrix(windows, ("layer", "param"))
            pick = heldout.choose(
                matrix,
                pair_ids,
                [{"start": a, "width": w} for a, w in cells],
                cfg,
                explore=explore,
                confirm=confirm,
                what="window",
            )
            entry["selection"] = pick
        ids = sorted(set(rows.pair_id))
        gain = tables.scores.set_index("pair_id").loc[ids, "gain"].to_numpy() if len(ids) else np.zeros(0)
        if len(gain):
            mean, lo, hi = stats.bootstrap_mean_ci(gain, seed=cfg.seed, n_boot=cfg.n_boot)
            entry["gain"] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(gain))}
        every = rows[rows.param == n]
        if len(every):
            g = tables.scores.set_index("pair_id").loc[every.pair_id, "gain"].to_numpy()
            entry["every_block"] = {
                "mean": float(every.effect.mean()),
                "gain_mean": float(g.mean()),
                "max_abs_error": float(np.max(np.abs(every.effect.to_numpy() - g))),
            }
        out[name] = entry
    return out


def windows_figure(summary: Mapping[str, Any]) -> Any:
    """Per window start: the gain carried by a transplant of the window (sufficiency) and lost by reverting it
    (necessity), one line per width with its CI band; dotted: the mean gain."""
    import plotly.graph_objects as go

    present = [(n, P.experiment(summary, n)) for n in (TRANSPLANT, REVERT)]
    present = [(n, e) for n, e in present if e and e.get("by_window")]
    if not present:
        raise P.MissingExperimentError("windows", [TRANSPLANT, REVERT])
    fig = go.Figure()
    starts: list[int] = []
    gain = math.nan
    for name, entry in present:
        widths = sorted({r["width"] for r in entry["by_window"]})
        for i, w in enumerate(widths):
            frame = pd.DataFrame([r for r in entry["by_window"] if r["width"] == w]).rename(columns={"start": "layer"})
            what = "transplant tuned → base" if name == TRANSPLANT else "revert base → tuned"
            P.add_curve(
                fig,
                frame,
                name=f"{what}, {w} block{'s' if w > 1 else ''}",
                color=COLORS[name],
                group=f"{name}-{w}",
                dash=(None, "dash", "dot", "dashdot")[i % 4],
                x_label="first block",
            )
            starts += frame["layer"].tolist()
        gain = P.num((entry.get("gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(
            y=gain,
            line_dash="dot",
            line_color="#555",
            annotation_text=f"gain {gain:+.3g}",
            annotation_position="top left",
        )
    P.zero_line(fig)
    P.layer_ticks(fig, starts)
    return P.layout(
        fig, "Weight transplants: the gain a window of blocks carries (E8)", x_title="first block of the window"
    )


WINDOW_SHARE = 0.5  # "carried by a block": at least half of the gain


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """ "The gain is carried by a mid-stack block's weights", three ways (experiments/verdicts.py). *Where*: the peak set
    of the width-1 transplants (blocks not significantly below the best) against the mid-depth band. *How much*: the
    block chosen on the explore half, its transplant measured on the confirm half, against half the gain (the
    confirm CI against ``WINDOW_SHARE`` × the gain's CI ends, so the gain's own uncertainty counts). Agrees iff the
    peak set is mid-depth and the confirm CI low ≥ half the gain's CI high; differs iff the peak set is disjoint from
    mid-depth or the confirm CI high < half the gain's CI low; else inconclusive."""
    entry = P.experiment(summary, TRANSPLANT)
    if not entry or not entry.get("per_layer"):
        return None
    n_layers = P.n_layers(summary)
    carriers = [r["layer"] for r in entry["per_layer"] if P.num(r["ci_low"]) > 0]
    sel = entry.get("selection") or {}
    held = entry.get("heldout") or {}
    confirm = sel.get("confirm") or {}
    block = sel.get("chosen", held.get("chosen_layer", entry.get("peak_layer")))
    if isinstance(block, Mapping):  # the selection records a window as {"start", "width"}
        block = block.get("start", block.get("layer"))
    mean = P.num(confirm.get("mean", held.get("heldout_mean")))
    lo, hi = confirm.get("ci_low"), confirm.get("ci_high")
    if lo is None:
        lo, hi = held.get("heldout_ci") or [math.nan, math.nan]
    lo, hi = P.num(lo), P.num(hi)
    n_explore = len(sel.get("explore_pair_ids") or held.get("fit_pairs") or [])
    n_confirm = len(sel.get("confirm_pair_ids") or held.get("heldout_pairs") or [])
    g = entry.get("gain") or {}
    gain, g_lo, g_hi = P.num(g.get("mean")), P.num(g.get("ci_low")), P.num(g.get("ci_high"))
    peak_set = entry.get("peak_set")
    where = set_vs_band(peak_set, n_layers) if peak_set else INCONCLUSIVE
    if math.isfinite(lo) and math.isfinite(g_hi) and lo >= WINDOW_SHARE * g_hi:
        size = "at least half"
    elif math.isfinite(hi) and math.isfinite(g_lo) and hi < WINDOW_SHARE * g_lo:
        size = "less than half"
    else:
        size = "uncertain"
    verdict = (
        AGREES
        if where == AGREES and size == "at least half"
        else DIFFERS
        if where == DIFFERS or size == "less than half"
        else INCONCLUSIVE
    )
    depth = relative_depth(block, n_layers) if block is not None else math.nan
    ours = (
        f"peak set of the one-block transplants: blocks {fmt_layers(peak_set) if peak_set else '— (not in the summary)'}"
        f" (mid-depth blocks {fmt_layers(mid_depth_layers(n_layers))}); block {block} chosen on {n_explore} explore "
        f"pairs (relative depth {depth:.2f}) carries {fmt_effect(mean, lo, hi)} on {n_confirm} confirm pairs, of a "
        f"gain of {fmt_effect(gain, g_lo, g_hi)} ({size} of it); blocks whose own transplant has CI > 0: "
        f"{', '.join(map(str, carriers)) or 'none'}"
    )
    numbers = {
        "peak_set": peak_set,
        "mid_depth_layers": mid_depth_layers(n_layers),
        "chosen_block": block,
        "explore_pairs": n_explore,
        "confirm_pairs": n_confirm,
        "confirm_mean": mean,
        "confirm_ci": [lo, hi],
        "gain_mean": gain,
        "gain_ci": [g_lo, g_hi],
        "share_needed": WINDOW_SHARE,
        "location": where,
        "size": size,
    }
    return Finding(
        "windows",
        "The gain is carried by a mid-stack block's weights (E8)",
        "the paper localizes the gain at layer 8 of 16 by activation patching; weights not tested",
        ours,
        verdict,
        f"agrees iff the one-block transplants' peak set is mid-depth (within {DEPTH_TOLERANCE} of "
        f"{PAPER_RELATIVE_DEPTH:.3f}) and the explore-chosen block's confirm-half CI low ≥ "
        f"{WINDOW_SHARE:g} × the gain's CI high; differs iff the peak set is disjoint from mid-depth or that "
        f"CI high < {WINDOW_SHARE:g} × the gain's CI low; else inconclusive",
        plain(numbers),
    )


def _check_widths(widths: tuple[int, ...], cfg: Any, n_layers: int | None) -> None:
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(
            f"--window-widths {','.join(map(str, widths or ())) or '(empty)'}: give whole "
            "numbers ≥ 1 (blocks per window), e.g. --window-widths 1,2."
        )
    if n_layers is not None and min(widths) >= n_layers:
        raise ConfigError(
            f"--window-widths: every width is ≥ the model's {n_layers} blocks; a window must leave "
            f"some block out, e.g. --window-widths 1,2."
        )


def _check_windows_fit(cfg: Any, n_layers: int) -> None:
    """Named window experiments need a window that starts at a swept layer and ends inside the model."""
    swept = cfg.swept_layers(n_layers)
    windows = [e for e in (TRANSPLANT, REVERT) if e in cfg.experiments]
    widths = sorted(set(cfg.window_widths or ()))
    if windows and not any(a + w <= n_layers and w < n_layers for a in swept for w in widths):
        raise ConfigError(
            f"--layers {','.join(map(str, swept))} with --window-widths {','.join(map(str, widths))}: {windows[0]}'s "
            f"windows start at a swept layer and must end inside the model's {n_layers} blocks "
            f"(start + width ≤ {n_layers}), and none does; sweep an earlier layer (e.g. --layers "
            f"{','.join(map(str, sorted({*swept, n_layers - min(widths)})))}) or narrower windows "
            "(e.g. --window-widths 1)."
        )


register(
    Experiment(
        key="windows",
        options=(
            Option(
                "window_widths",
                "ints",
                None,
                "window_transplant/window_revert (E8): blocks per window, e.g. 1,2 (default: 1 in the "
                "default suite, 1,2 when --experiments names them)",
                check=_check_widths,
                fill=lambda whole_suite: DEFAULT_SUITE_WIDTHS if whole_suite else DEFAULT_WIDTHS,
            ),
        ),
        check=_check_windows_fit,
        method="E8",
        order=33,
        batch_order=49,
        names=(
            Name(
                TRANSPLANT,
                "window transplant (tuned blocks in base)",
                COLORS[TRANSPLANT],
                "Blocks a…a+w−1 of the tuned model inside the base: the gain those blocks' weights are sufficient for.",
            ),
            Name(
                REVERT,
                "window revert (base blocks in tuned)",
                COLORS[REVERT],
                "Blocks a…a+w−1 of the base inside the tuned model: the gain lost without those blocks' weights "
                "(reported as Δ(T) − Δ(hybrid)).",
            ),
        ),
        specs=window_specs,
        summarize=summarize_windows,
        figures=(
            Figure(
                "windows",
                "alignment_probe.experiments.windows:windows_figure",
                "Weight transplants: windows of blocks (E8)",
                "E8. Solid/dashed: the gain carried when a window of w blocks starting at block a runs with the tuned "
                "model's weights inside the base (transplant: sufficiency, Δ(hybrid) − Δ(base)) and the gain lost "
                "when it runs with the base's weights inside the tuned model (revert: necessity, Δ(tuned) − "
                "Δ(hybrid)); the embedding goes with block 0, the final norm and unembedding with the last block. "
                "Dotted: the mean gain. 95% bootstrap CIs over pairs.",
                needs=(TRANSPLANT, REVERT),
                order=40,
            ),
        ),
        verdicts=("alignment_probe.experiments.windows:verdict",),
    )
)

"""E9 — which completion tokens carry an effect: per-token maps of patching and transplant conditions.

For a condition (one patch, one transplant), the **per-token effect** of completion token p of one side is
its patched log-prob minus its clean one. They live in a long table of their own, ``token_effects.parquet``
(pair × condition × side × position; effects.py), beside the per-pair effects table; a side's per-token
effects sum to its change of log p(y|x), so for pair i the **position contribution**
d_i(p) = e⁺_i(p) − e⁻_i(p) (chosen minus rejected; 0 past a side's last token) sums over p to the pair's
effect (../shared/docs/localization.md, E9).

``token_map`` maps, at every swept layer: E1's tuned → base patch (the run's ``--hook`` and ``--scope``), the
width-1 weight transplant of E8 (hook ``blocks``), and the transplant of every block — the tuned model
itself, so its map is the per-token gain. Summaries, with bootstrap CIs over pairs:

* ``by_position``: the mean contribution of each completion position p < ``MAX_POSITION`` (they add up,
  over every position, to the mean effect);
* ``by_bin``: the contribution of the first 1, 2, 4, 8 tokens and of the rest, and its **share** of the
  pair effect (a ratio of means, paired bootstrap).

The engine computes these from the same forwards as any condition (``Experiment.per_token``: the suite asks the
engine for the long table and derives the conditions' per-pair rows from it). Opt-in: ``--experiments
token_map``. Positions are also a patching scope: ``--scope first_completion:K`` patches the first K only.
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
from alignment_probe.experiments.lowrank import ratio_of_means
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, Tables, register
from alignment_probe.experiments.verdict_rules import AGREES, DIFFERS, INCONCLUSIVE, Finding, interval_vs_value, plain
from alignment_probe.formatting import fmt_effect, fmt_ratio
from alignment_probe.interventions import Transplant

NAME = "token_map"
MAX_POSITION = 32  # by_position stops here; by_bin's "rest" pools every later position
BINS = (1, 2, 4, 8)


def token_map_specs(plan: Plan) -> list[PatchSpec]:
    """E1's patch and the width-1 transplant at every swept layer, and the transplant of every block."""
    cfg, n = plan.cfg, plan.n_layers
    layers = cfg.swept_layers(n)
    return (
        layer_sweep(NAME, target="base", source="tuned", layers=layers, hooks=(cfg.hook,), scopes=(cfg.scope,))
        + [PatchSpec(RowKey(NAME, "base", "tuned", "blocks", "all", "both", a, 1.0), Transplant(1)) for a in layers]
        + [PatchSpec(RowKey(NAME, "base", "tuned", "blocks", "all", "both", 0, float(n)), Transplant(n))]
    )


def contributions(tokens: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """One condition's rows of the long table → ``(d, pair_ids)``: ``d[i, p]`` = chosen minus rejected per-token
    effect at completion position p of pair ``pair_ids[i]`` (0 past a side's end)."""
    signed = tokens.effect.to_numpy() * np.where(tokens.side.to_numpy() == "chosen", 1.0, -1.0)
    pair_ids = sorted(int(p) for p in set(tokens.pair_id))
    row = {p: i for i, p in enumerate(pair_ids)}
    d = np.zeros((len(pair_ids), int(tokens.position.max()) + 1 if len(tokens) else 0))
    np.add.at(d, ([row[int(p)] for p in tokens.pair_id], tokens.position.to_numpy()), signed)
    return d, pair_ids


def _label(hook: str, layer: int, width: float, n_layers: int) -> str:
    if hook == "blocks":
        return "every block (the gain)" if int(width) == n_layers else f"transplant block {layer}"
    return f"{hook} {layer}"


def summarize_token_map(tables: Tables) -> dict[str, dict[str, Any]]:
    """``conditions`` (each with its mean pair effect), ``by_position`` and ``by_bin`` (module docstring)."""
    cfg, tokens, n_layers = tables.cfg, tables.tokens, tables.n_layers
    rows = tokens[tokens.experiment == NAME] if tokens is not None and len(tokens) else pd.DataFrame()
    conditions, by_position, by_bin = [], [], []
    for (hook, layer, width), group in (
        rows.groupby(["hook", "layer", "param"], sort=True, dropna=False) if len(rows) else []
    ):
        d, _ = contributions(group)
        where = {"hook": hook, "layer": int(layer), "width": None if math.isnan(width) else int(width)}
        total = d.sum(1)
        mean, lo, hi = stats.bootstrap_mean_ci(total, seed=cfg.seed, n_boot=cfg.n_boot)
        conditions.append(
            {
                **where,
                "label": _label(hook, int(layer), width, n_layers),
                "mean": mean,
                "ci_low": lo,
                "ci_high": hi,
                "n": int(len(total)),
            }
        )
        shown = d[:, :MAX_POSITION]
        boots = stats.bootstrap_means(shown, seed=cfg.seed, n_boot=cfg.n_boot)
        low, high = np.percentile(boots, (2.5, 97.5), axis=0)
        present = group.groupby("position").pair_id.nunique().reindex(range(shown.shape[1]), fill_value=0)
        by_position += [
            {
                **where,
                "position": p,
                "mean": float(shown[:, p].mean()),
                "ci_low": float(low[p]),
                "ci_high": float(high[p]),
                "n": int(len(shown)),
                "n_with_position": int(present[p]),
            }
            for p in range(shown.shape[1])
        ]
        positions = group.position.to_numpy()
        n_tokens = len(positions)
        for first in (*BINS, "rest"):
            part = d[:, BINS[-1] :].sum(1) if first == "rest" else d[:, :first].sum(1)
            m, lo_, hi_ = stats.bootstrap_mean_ci(part, seed=cfg.seed, n_boot=cfg.n_boot)
            share, s_lo, s_hi = ratio_of_means(part, total, seed=cfg.seed, n_boot=cfg.n_boot)
            in_bin = (positions >= BINS[-1]) if first == "rest" else (positions < first)
            by_bin.append(
                {
                    **where,
                    "first": first,
                    "mean": m,
                    "ci_low": lo_,
                    "ci_high": hi_,
                    "share": share,
                    "share_ci": [s_lo, s_hi],
                    "n": int(len(part)),
                    "token_share": float(in_bin.sum() / n_tokens) if n_tokens else math.nan,
                }
            )
    return {
        NAME: {
            "max_position": MAX_POSITION,
            "conditions": conditions,
            "by_position": by_position,
            "by_bin": by_bin,
            "token_share_note": TOKEN_SHARE_NOTE,
        }
    }


TOKEN_SHARE_NOTE = (
    "by_bin's token_share: the share of all completion tokens (chosen and rejected, every pair) at "
    "those positions, i.e. the share of the effect the bin would carry if every token carried the "
    "same; a share of the effect is front-loaded only if it exceeds this"
)


def token_map_figure(summary: Mapping[str, Any]) -> Any:
    """Heatmaps condition × completion position of the mean contribution to Δlogp (hover: the CI), one for E1's
    patch and one for the transplants, the gain's own row on top of the latter."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    entry = P.experiment(summary, NAME)
    if not entry or not entry.get("by_position"):
        raise P.MissingExperimentError("token_map", [NAME])
    cells = entry["by_position"]
    conditions = entry["conditions"]
    panels = [
        ("activation patch, tuned → base", [c for c in conditions if c["hook"] != "blocks"]),
        ("weight transplant, tuned block in base", [c for c in conditions if c["hook"] == "blocks"]),
    ]
    panels = [(t, cs) for t, cs in panels if cs]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels], horizontal_spacing=0.18)
    span = max((abs(c["mean"]) for c in cells), default=1.0) or 1.0
    for col, (_, conds) in enumerate(panels, start=1):
        # the gain's row (every block) first, i.e. at the bottom of the heatmap, then by layer upwards
        conds = sorted(conds, key=lambda c: (c["width"] != P.n_layers(summary), c["layer"]))
        positions = sorted({c["position"] for c in cells})
        lookup = {(c["hook"], c["layer"], c["width"], c["position"]): c for c in cells}
        z, text = [], []
        for c in conds:
            row = [lookup.get((c["hook"], c["layer"], c["width"], p)) for p in positions]
            z.append([r["mean"] if r else None for r in row])
            text.append([f"{r['mean']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]" if r else "" for r in row])
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=positions,
                y=[f"{c['label']} · Σ {c['mean']:+.3g}" for c in conds],
                text=text,
                zmid=0,
                zmin=-span,
                zmax=span,
                colorscale="RdBu_r",
                showscale=col == len(panels),
                colorbar={"title": "nats"},
                hovertemplate="%{y}<br>position %{x}: %{text}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="position in the completion (0 = first token)", row=1, col=col)
    height = max(P.HEIGHT, 80 + 24 * max(len(cs) for _, cs in panels))
    return P.layout(
        fig,
        "Where in the completion: per-token contributions to the effect (E9)",
        height=height,
        x_title=None,
        y_title=None,
    )


EARLY = 8  # "the first few tokens": the claim's reading


def token_share(scores: Any, first: int) -> float:
    """The null of "front-loading": the share of all completion tokens (chosen and rejected, every pair) that sit in
    the first ``first`` positions, Σ min(L, first) / Σ L. If every token carried the same change, the first tokens'
    share of the gain would be this. NaN without the scores' token counts."""
    cols = ("n_chosen_tokens", "n_rejected_tokens")
    if scores is None or not len(scores) or not all(c in scores for c in cols):
        return math.nan
    lengths = np.concatenate([scores[c].to_numpy(dtype=float) for c in cols])
    total = lengths.sum()
    return float(np.minimum(lengths, first).sum() / total) if total > 0 else math.nan


def verdict(summary: Mapping[str, Any], effects: Any = None, scores: Any = None) -> Any:
    """ "Tuning mostly changes the first few completion tokens" (URIAL; Qi et al. 2024), three ways: the share of the
    per-token gain (the transplant of every block) in the first ``EARLY`` tokens against the null share, those
    tokens' share of all tokens (:func:`token_share`; a ``token_share`` in the summary's cell wins). Agrees iff the
    share's CI low is above the null; differs iff its CI high is below it; inconclusive when the CI holds the null,
    when the share is undefined (the gain's CI spans 0, statistics.md's ratio rule) or when the null is unknown."""

    entry = P.experiment(summary, NAME)
    n_layers = P.n_layers(summary)
    cell = next(
        (
            b
            for b in (entry or {}).get("by_bin") or []
            if b["hook"] == "blocks" and b["width"] == n_layers and b["first"] == EARLY
        ),
        None,
    )
    if cell is None:
        return None
    total: Mapping[str, Any] = next(
        (c for c in (entry or {}).get("conditions") or [] if c["hook"] == "blocks" and c["width"] == n_layers), {}
    )
    null = P.num(cell["token_share"]) if "token_share" in cell else token_share(scores, EARLY)
    share, (lo, hi) = P.num(cell["share"]), (P.num(cell["share_ci"][0]), P.num(cell["share_ci"][1]))
    side = interval_vs_value(lo, hi, null) if math.isfinite(share) and math.isfinite(null) else "holds"
    verdict = AGREES if side == "above" else DIFFERS if side == "below" else INCONCLUSIVE
    share_text = fmt_ratio(
        share,
        lo,
        hi,
        percent=True,
        numerator=(cell["mean"], cell.get("ci_low"), cell.get("ci_high")),
        denominator=(total.get("mean"), total.get("ci_low"), total.get("ci_high")) if total else None,
    )
    ours = (
        f"the first {EARLY} completion tokens carry {share_text} of the gain "
        f"({fmt_effect(cell['mean'], cell.get('ci_low'), cell.get('ci_high'))} of "
        f"{fmt_effect(total.get('mean'), total.get('ci_low'), total.get('ci_high')) if total else '—'}); "
        + (
            f"they are {null:.0%} of all completion tokens (the null share)"
            if math.isfinite(null)
            else "the null share (their share of all tokens) is unknown: no token counts"
        )
    )
    numbers = {
        "first_k": EARLY,
        "share": share,
        "share_ci": [lo, hi],
        "defined": math.isfinite(share),
        "null_share": null,
        "first_k_mean_nats": P.num(cell["mean"]),
        "gain_mean_nats": P.num(total.get("mean")) if total else math.nan,
    }
    return Finding(
        "token_map",
        "The gain sits in the first few completion tokens (E9)",
        "not in the paper; URIAL (arXiv 2312.01552) and Qi et al. (arXiv 2406.05946): the first few tokens",
        ours,
        verdict,
        f"agrees iff the share of the per-token gain in the first {EARLY} tokens has CI low above those "
        f"tokens' share of all tokens (the null); differs iff its CI high is below it; else inconclusive "
        f"(also when the share is undefined)",
        plain(numbers),
    )


register(
    Experiment(
        key="token_map",
        method="E9",
        order=57,
        batch_order=50,
        default=False,
        per_token=True,
        names=(
            Name(
                NAME,
                "per-token map",
                "#bcbd22",
                "Per completion token: the change of its log-prob under E1's patch and E8's one-block transplant at "
                "every layer, and under the tuned model itself (the per-token gain).",
                per_layer=False,
            ),
        ),
        specs=token_map_specs,
        summarize=summarize_token_map,
        figures=(
            Figure(
                "token_map",
                "alignment_probe.experiments.token_map:token_map_figure",
                "Where in the completion: per-token maps (E9)",
                "E9. Each cell: the mean over pairs of a completion position's contribution to the effect on Δlogp "
                "(the chosen token's change of log-prob minus the rejected token's at the same position; 0 past a "
                "completion's end), so a row sums to the condition's mean effect (Σ). Left: E1's tuned → base patch "
                "at each layer; right: one tuned block transplanted into the base, and every block (the tuned model: "
                "the per-token gain). Hover for 95% bootstrap CIs.",
                needs=(NAME,),
                order=77,
            ),
        ),
        verdicts=("alignment_probe.experiments.token_map:verdict",),
    )
)

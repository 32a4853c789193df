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

The package: :mod:`.conditions` (what is estimated and confirmed), :mod:`.summary` (validation, maps, selection,
confirmation), :mod:`.figures`; this module registers ``atp`` and ``atp_confirm``.
"""

from __future__ import annotations

from typing import Any

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.atp.conditions import (
    ATP_HEADS,
    ATP_HOOKS,
    DEFAULT_CONFIRM_K,
    EXACT,
    EXACT_HEADS,
    HEAD_ESTIMATOR,
    _confirm_specs,
    _specs,
    atp_head_specs,
    atp_hooks,
    atp_specs,
    distinct_conditions,
    n_heads_of,
    ranked_conditions,
)
from alignment_probe.experiments.atp.figures import HEAD_MARKERS, PALETTE, atp_figure, atp_heads_figure, atp_map_figure
from alignment_probe.experiments.atp.summary import (
    confirmed,
    head_cells,
    summarize_atp,
    summarize_confirm,
    summarize_heads,
    summarize_layers,
    topk_recall,
    validation,
)
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, register

__all__ = [
    "ATP_HEADS",
    "ATP_HOOKS",
    "DEFAULT_CONFIRM_K",
    "EXACT",
    "EXACT_HEADS",
    "HEAD_ESTIMATOR",
    "HEAD_MARKERS",
    "PALETTE",
    "atp_figure",
    "atp_head_specs",
    "atp_heads_figure",
    "atp_hooks",
    "atp_map_figure",
    "atp_specs",
    "confirmed",
    "distinct_conditions",
    "head_cells",
    "n_heads_of",
    "ranked_conditions",
    "summarize_atp",
    "summarize_confirm",
    "summarize_heads",
    "summarize_layers",
    "topk_recall",
    "validation",
]


def _check_confirm(k: int, cfg: Any, n_layers: int | None) -> None:
    if k < 1:
        raise ConfigError(f"--confirm must be at least 1, got {k}.")


register(
    Experiment(
        key="atp",
        options=(
            Option(
                "atp_confirm_k",
                "int",
                DEFAULT_CONFIRM_K,
                "atp (E10, opt-in): also patch exactly the K conditions attribution patching ranks highest "
                "(adds atp and atp_confirm to --experiments)",
                flag="--confirm",
                metavar="K",
                implies=("atp", "atp_confirm"),
                check=_check_confirm,
            ),
        ),
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
                "alignment_probe.experiments.atp.figures:atp_map_figure",
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
                "alignment_probe.experiments.atp.figures:atp_figure",
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
                "alignment_probe.experiments.atp.figures:atp_heads_figure",
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

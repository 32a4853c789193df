"""E11 — steering with the localized direction, as revised on 2026-12-07 (../shared/docs/localization.md, E11;
docs/method.md).

**Positions.** A sequence's *predicting positions* are its last prompt token through its second-to-last
completion token: the positions whose next-token distributions score the completion. They fall in three
classes (``interventions.predicting_classes``): LP, the last prompt token; F, the first K = 8 predicting
completion positions; R, the rest. BOS, the earlier prompt and the last completion token are never steered.

**Halves.** ``stats.explore_confirm`` (= ``stats.split_halves``, the split E1 and E6 use) splits the pairs into a
*fit* (explore) half and a *held-out* (confirm) half. Every vector, the layer ℓ and the scale a come from the fit
half; every number reported as a result is measured once on the held-out half.

**The tuning shift** at layer ℓ (``--hook``, default ``resid_post``) and class c: v_ℓ,c = the mean over the fit
pairs, both runs, of h_T − h_B at the class-c positions. **Steering** the base at ℓ with scale a adds a·v_ℓ,c at
exactly the class-c positions (``AddByClass``, scope ``predicting``); a = 1 adds the mean shift itself.
Effect = Δ(steered B) − Δ(B); recovered fraction = mean effect / mean gain (``stats.ratio_ci``: undefined, NaN,
when the gain's CI spans 0).

**Selection** (``steer_scan``, run before ``steer`` on the fit half): v_ℓ at every swept layer and every scale
of ``--steer-c`` (default 0.5, 1, 2, 4; a = 1 is always included); the chosen (ℓ, a) is the cell whose fit-half
mean effect comes closest to the fit-half mean gain (steering is to reproduce the tuned model's preference; an
overshoot past it is not more of it), ties broken at random (seeded). ``--steer-layer`` fixes ℓ (the scan then
chooses only a; with a single scale there is nothing to choose and no scan). The summary records it as
``selection`` (``stats.selection_record``: the pair ids of both halves, chosen = {layer, scale}, the held-out
value and the fit half's in-sample value beside it).

**Null.** :data:`N_NULL` (100) random directions with the same per-class norms (‖a·v_ℓ,c‖ per class, a Gaussian
direction per class, seeded by (seed, ℓ, draw)) steer the held-out half at the chosen (ℓ, a) (rows
``steer_null``, ``param`` = the draw's index). The summary locates v's held-out mean effect in that null
(``null``: n, percentile, one-sided p = (1 + #draws at or above it)/(n + 1), the null's quantiles). Verdict
"steers" iff the held-out recovered fraction's CI excludes 0 and the effect exceeds the null's 95th percentile.
Each null condition is one forward per sequence from block ℓ + 1 (the fast engine starts at the patched layer).

**Conditions on the held-out half** at the chosen ℓ (``split = "heldout"``, ``param`` = a, every scale of the
grid, scope ``predicting``): ``steer`` (a·v_ℓ,c), and at equal per-class norms ``steer_random`` (draw 0 of the
null), ``steer_contrast`` (E5's v± — the tuned model's mean chosen-completion activation minus its mean
rejected-completion activation — scaled to ‖a·v_ℓ,c‖ per class) and ``steer_lowrank`` (v_ℓ,c projected onto the
top-k principal directions of the fit half's H_T − H_B at the predicting positions, E6's ``difference`` subspace,
renormalised per class); ``steer_pooled``: one vector a·v_ℓ (the shift pooled over all predicting positions) at
every predicting position — what a single vector does; ``steer_reverse`` / ``steer_reverse_random``: the tuned
model with a·v_ℓ,c (the random draw) *subtracted*. At the chosen a only: the class parts ``steer_last_prompt``,
``steer_first``, ``steer_rest`` (v_ℓ,c at one class's positions, nothing elsewhere) and the null.
**Transfer** (``--transfer-data``): ``steer``, ``steer_random``, ``steer_reverse`` with the same vectors on the
other data's pairs (``split = "transfer"``; their gain is tuned − base clean Δlogp read from the rows).
**KL** (computed with the fit, read by the summary): on the held-out half, the mean over predicting positions of
KL(T ‖ B) and KL(T ‖ steered B) at the chosen (ℓ, a); the fraction of KL(T ‖ B) closed = 1 − ratio of the means.

Opt-in (``default=False``): name it, e.g. ``--experiments patch_tuned_to_base,steer`` (``steer`` brings
``steer_scan`` and E1 with it; E1's fit-half peak is recorded for comparison, not used: for tuned → base
``resid_post`` at every position it is the last layer by construction).

The package: :mod:`.common` (names, options, halves), :mod:`.shift` (the tuning shift, the directions and the
conditions, the shift for E12 and the exports), :mod:`.fit` (the scan's and steering's fits), :mod:`.measures` and
:mod:`.summary` (pure functions of the tables), :mod:`.figures`, :mod:`.verdicts`; this module registers
``steer_scan`` and ``steer``.
"""

from __future__ import annotations

from typing import Any

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, register
from alignment_probe.experiments.steering.common import (
    BASELINES,
    CLASS_ONLY,
    COLORS,
    CONTRAST,
    CURVES,
    DEFAULT_CS,
    DEFAULT_K,
    DEFAULT_SCALES,
    FIRST,
    FIRST_K,
    LABELS,
    LAST_PROMPT,
    LOWRANK,
    MAIN,
    N_NULL,
    NULL,
    POOLED,
    RANDOM,
    REST,
    REVERSE,
    REVERSE_RANDOM,
    RULE_OVERRIDE,
    RULE_SCALE,
    RULE_SCAN,
    SCAN,
    SCAN_RANDOM,
    SCOPE,
    SIDES,
    TARGET,
    TRANSFER,
    TRANSFER_CONDITIONS,
    e1_layer,
    halves,
    steer_cs,
    steer_k,
    steer_scales,
)
from alignment_probe.experiments.steering.figures import figure, scan_figure
from alignment_probe.experiments.steering.fit import fit_scan, fit_steering, kl_to_tuned, scan_layers, steer_choice
from alignment_probe.experiments.steering.measures import kl_summary, null_location, null_summary, ratio_difference
from alignment_probe.experiments.steering.shift import (
    Shift,
    class_shifts,
    class_spec,
    curve_specs,
    directions,
    export_steering_vectors,
    fit_steer_shifts,
    null_specs,
    predicting_batches,
    random_units,
)
from alignment_probe.experiments.steering.summary import scan_landscape, summarize_scan, summarize_steering
from alignment_probe.experiments.steering.verdicts import (
    steer_numbers,
    steer_outcome,
    transfer_numbers,
    transfer_outcome,
    verdict,
    verdict_transfer,
)

__all__ = [
    "BASELINES",
    "CLASS_ONLY",
    "COLORS",
    "CONTRAST",
    "CURVES",
    "DEFAULT_CS",
    "DEFAULT_K",
    "DEFAULT_SCALES",
    "FIRST",
    "FIRST_K",
    "LABELS",
    "LAST_PROMPT",
    "LOWRANK",
    "MAIN",
    "NULL",
    "N_NULL",
    "POOLED",
    "RANDOM",
    "REST",
    "REVERSE",
    "REVERSE_RANDOM",
    "RULE_OVERRIDE",
    "RULE_SCALE",
    "RULE_SCAN",
    "SCAN",
    "SCAN_RANDOM",
    "SCOPE",
    "SIDES",
    "TARGET",
    "TRANSFER",
    "TRANSFER_CONDITIONS",
    "class_shifts",
    "class_spec",
    "curve_specs",
    "directions",
    "e1_layer",
    "export_steering_vectors",
    "figure",
    "fit_scan",
    "fit_steer_shifts",
    "fit_steering",
    "halves",
    "kl_summary",
    "kl_to_tuned",
    "null_location",
    "null_specs",
    "null_summary",
    "predicting_batches",
    "random_units",
    "scan_layers",
    "ratio_difference",
    "scan_figure",
    "scan_landscape",
    "Shift",
    "steer_choice",
    "steer_cs",
    "steer_k",
    "steer_numbers",
    "steer_outcome",
    "steer_scales",
    "summarize_scan",
    "summarize_steering",
    "transfer_numbers",
    "transfer_outcome",
    "verdict",
    "verdict_transfer",
]


register(
    Experiment(
        key="steer_scan",
        method="E11",
        order=105,
        needs=("patch_tuned_to_base",),
        default=False,
        emits=(SCAN_RANDOM,),
        names=(
            Name(
                SCAN,
                "steering scan: v_ℓ,c per layer and scale (fit half)",
                COLORS[SCAN],
                "Add a·v_ℓ,c (the per-class mean tuning shift) at the predicting positions at every swept layer and "
                "scale to the base on the fit half, beside a random direction at a = 1; chooses steer's (ℓ, a) (the "
                "cell closest to the fit-half gain). Run by steer.",
                per_layer=False,
            ),
        ),
        fit=fit_scan,
        specs=lambda plan: plan.fitted.specs,
        summarize=summarize_scan,
    )
)


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}.")


def _check_steer_cs(cs: tuple[float, ...] | None, cfg: Any, n_layers: int | None) -> None:
    if cs is not None and len(cs) == 0:
        raise ConfigError("--steer-c is empty; give at least one coefficient, e.g. --steer-c 0.5,1,2,4.")


register(
    Experiment(
        key="steer",
        options=(
            Option(
                "steer_layer",
                "layer",
                None,
                "steer (E11, opt-in): fix the steering layer (default: chosen with the scale on the fit half)",
            ),
            Option(
                "steer_cs",
                "floats",
                None,
                "steer: the scale grid a (a·v_ℓ,c is added; a = 1 is the mean "
                "shift itself), e.g. 0.5,1,2,4 (the default; 1 is always added)",
                flag="--steer-c",
                check=_check_steer_cs,
            ),
            Option(
                "steer_k",
                "int",
                None,
                "steer: rank of the low-rank baseline (default: 4)",
                check=lambda k, cfg, n: _at_least_one("--steer-k", k),
            ),
            Option(
                "transfer_data",
                "str",
                None,
                "steer: also evaluate the vectors on this data source's pairs (a file or hub name)",
                needs_experiment=True,
            ),
        ),
        method="E11",
        order=110,
        needs=("patch_tuned_to_base", SCAN),
        default=False,
        emits=(RANDOM, CONTRAST, LOWRANK, POOLED, REVERSE, REVERSE_RANDOM, NULL, LAST_PROMPT, FIRST, REST),
        names=(
            Name(
                MAIN,
                "steering: v_ℓ,c",
                COLORS[MAIN],
                "Add a·v_ℓ,c (the mean tuning shift per position class — last prompt token, first 8, rest — at the "
                "layer and scale chosen on one half) at the predicting positions of the base on the other half; "
                "located in a null of 100 random directions with the same per-class norms; baselines: rank-k (E6), "
                "v± (E5), one pooled vector; reverse: subtract it from the tuned model.",
                per_layer=False,
            ),
        ),
        fit=fit_steering,
        specs=lambda plan: plan.fitted.specs,
        summarize=summarize_steering,
        figures=(
            Figure(
                "steer",
                "alignment_probe.experiments.steering.figures:figure",
                "Steering with the localized direction (E11)",
                "E11. Effect on Δlogp of adding a·v_ℓ,c (v_ℓ,c: the fit half's mean tuning shift at the steering "
                "layer over the positions of class c — the last prompt token, the first 8 predicting completion "
                "positions, the rest) to the base at exactly the predicting positions, on the held-out half, "
                "against a; the rank-k and v± directions and one random direction at the same per-class norms, "
                "and the pooled shift as one vector; dashed: the tuned model with a·v_ℓ,c (or the random "
                "direction) subtracted. At the chosen a: the null of 100 random directions (median, 5–95 %) and "
                "each class's vector alone (×). Dotted: the held-out gain (and its negative).",
                needs=(MAIN,),
                order=110,
            ),
            Figure(
                "steer_layers",
                "alignment_probe.experiments.steering.figures:scan_figure",
                "Steering layer and scale scan (E11)",
                "E11. The steering layer ℓ and scale a are chosen on the fit half: at every layer and scale, the "
                "effect on Δlogp of adding a·v_ℓ,c to the base at the predicting positions (and of a random "
                "direction at a = 1), with 95% bootstrap CIs over the fit-half pairs. The cell whose mean is "
                "closest to the fit-half gain (dotted) is evaluated once on the held-out half (the figure above). "
                "E1's fit-half peak is marked for comparison.",
                needs=(MAIN,),
                order=111,
            ),
        ),
        verdicts=(
            "alignment_probe.experiments.steering.verdicts:verdict",
            "alignment_probe.experiments.steering.verdicts:verdict_transfer",
        ),
    )
)

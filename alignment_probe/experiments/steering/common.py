"""E11's names, colours, labels and rules (the package docstring defines them), its options read from the
configuration, and the fit and held-out halves."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from alignment_probe import stats
from alignment_probe.errors import ConfigError
from alignment_probe.interventions import POSITION_CLASSES
from alignment_probe.vocab import HOOKS

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_CS = DEFAULT_SCALES  # the old name of the grid (--steer-c)
DEFAULT_K = 4  # rank of the low-rank baseline (--steer-k)
FIRST_K = 8  # class F: the first K predicting completion positions (localization.md's K = 8)
N_NULL = 100  # random directions in the null (statistics.md: at least 100)
SCOPE = "predicting"
SIDES = "both"

MAIN, RANDOM, CONTRAST, LOWRANK, POOLED = "steer", "steer_random", "steer_contrast", "steer_lowrank", "steer_pooled"
REVERSE, REVERSE_RANDOM, NULL = "steer_reverse", "steer_reverse_random", "steer_null"
SCAN, SCAN_RANDOM = "steer_scan", "steer_scan_random"
LAST_PROMPT, FIRST, REST = "steer_last_prompt", "steer_first", "steer_rest"
CLASS_ONLY = dict(zip(POSITION_CLASSES, (LAST_PROMPT, FIRST, REST)))  # class → its condition
BASELINES = {"random": RANDOM, "contrast": CONTRAST, "lowrank": LOWRANK, "pooled": POOLED}
CURVES = (MAIN, RANDOM, CONTRAST, LOWRANK, POOLED, REVERSE, REVERSE_RANDOM)  # every scale of the grid
TRANSFER = "transfer"  # the extra pair set (and split) of the transfer rows
TRANSFER_CONDITIONS = (MAIN, RANDOM, REVERSE)
TARGET = {REVERSE: "tuned", REVERSE_RANDOM: "tuned"}  # every other condition steers the base

COLORS = {
    MAIN: "#d62728",
    LOWRANK: "#ff7f0e",
    CONTRAST: "#17becf",
    RANDOM: "#7f7f7f",
    POOLED: "#8c564b",
    REVERSE: "#9467bd",
    REVERSE_RANDOM: "#c5b0d5",
    LAST_PROMPT: "#2ca02c",
    FIRST: "#bcbd22",
    REST: "#e377c2",
    NULL: "#aaaaaa",
    SCAN: "#d62728",
    SCAN_RANDOM: "#7f7f7f",
}
LABELS = {
    MAIN: "v_ℓ,c (per-class tuning shift)",
    LOWRANK: "rank-k (E6)",
    CONTRAST: "v± (E5)",
    RANDOM: "random direction (null draw 0)",
    POOLED: "pooled v_ℓ (one vector)",
    REVERSE: "tuned − a·v_ℓ,c",
    REVERSE_RANDOM: "tuned − a·random",
    LAST_PROMPT: "v_ℓ,LP at the last prompt token only",
    FIRST: "v_ℓ,F at the first K positions only",
    REST: "v_ℓ,R at the rest only",
    NULL: "null: random directions",
    SCAN: "v_ℓ,c (fit half)",
    SCAN_RANDOM: "random direction (fit half, a = 1)",
}
RULE_SCAN = (
    "(ℓ, a) whose fit-half mean effect is closest to the fit-half mean gain over the swept layers and "
    "scales (ties at random), reported on the held-out half"
)
RULE_SCALE = "--steer-layer; a whose fit-half mean effect is closest to the fit-half mean gain"
RULE_OVERRIDE = "--steer-layer (one scale: nothing chosen)"


def steer_scales(cfg: Any) -> list[float]:
    """The scale grid a: ``--steer-c`` (default 0.5, 1, 2, 4), always with a = 1 (the mean shift itself)."""
    scales = {float(a) for a in (cfg.steer_cs if cfg.steer_cs is not None else DEFAULT_SCALES)} | {1.0}
    bad = [a for a in scales if not math.isfinite(a) or a < 0]
    if bad:
        raise ConfigError(
            f"--steer-c: the scales a must be finite and ≥ 0 (the reverse is steer_reverse), got "
            f"{', '.join(map(str, sorted(bad)))}; e.g. --steer-c 0.5,1,2,4."
        )
    return sorted(scales)


steer_cs = steer_scales  # the old name


def steer_k(cfg: Any) -> int:
    return int(cfg.steer_k) if cfg.steer_k is not None else DEFAULT_K


def _check_hook(hook: str) -> None:
    if hook not in HOOKS:
        raise ConfigError(
            f"steer adds [d_model] vectors to a residual-shaped hook point ({', '.join(HOOKS)}); got --hook {hook!r}."
        )


def e1_layer(upstream: Mapping[str, Any]) -> int | None:
    """E1's peak chosen on the fit half (recorded beside the steering layer, not used to choose it)."""
    e1 = upstream.get("patch_tuned_to_base") or {}
    if e1.get("heldout"):
        return int(e1["heldout"]["chosen_layer"])
    return int(e1["peak_layer"]) if e1.get("peak_layer") is not None else None


def halves(cfg: Any, pair_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fit (explore) and held-out (confirm) halves: E1's and E6's split of the same pairs, same seed."""
    fit, held = stats.explore_confirm(list(pair_ids), seed=cfg.seed)
    if not fit or not held:
        raise ConfigError(
            f"steer needs at least 2 pairs (a fit half and a held-out half); got {len(pair_ids)}. Raise --n-pairs."
        )
    return fit, held

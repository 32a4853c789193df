"""E10's conditions: E1's tuned → base patches under the name ``atp`` (every swept layer, AtP's hooks), E7's head
conditions under ``atp_heads``, and ``atp_confirm``'s exact patches of the conditions AtP ranked highest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.registry import Plan
from alignment_probe.experiments.rows import swept_only
from alignment_probe.interventions import Replace, ReplaceHead
from alignment_probe.vocab import HOOKS

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

"""E11 — steering with the localized direction (../shared/docs/localization.md E11; docs/method.md).

**Halves.** The run's pairs are split into a *fit* half and a *held-out* half (``stats.split_halves``, the
split E1's held-out peak and E6 use). Everything data-chosen — the vectors, their norms and the layer — comes
from the fit half; every number the summary reports as a result is measured on the held-out half.

**Tuning shift.** At layer ℓ (``--hook``, default ``resid_post``), v_ℓ = the mean of h_tuned − h_base over the
completion positions of both runs of the fit-half pairs, and s_ℓ = the mean ‖h_tuned − h_base‖ over the same
positions. The base is steered by adding the fixed vector c · s_ℓ · v_ℓ/‖v_ℓ‖ at every position
(``AddFixed``); the effect is Δ(steered base) − Δ(base), a dose curve over c.

**Layer rule** (``steer_scan``, run before ``steer``): at every swept layer, v_ℓ and a random direction at the
same norm (c = 1) steer the *fit* half; the steering layer is the layer whose v_ℓ raises the fit half's mean
Δlogp most (``layer_rule`` in the summary). ``--steer-layer`` overrides it (and skips the scan). E1's
fit-half peak is recorded beside it for comparison but not used: for tuned → base ``resid_post`` at every
position that peak is the last layer by construction (its residual *is* the tuned model's output), so it
localizes nothing.

**Conditions at the steering layer, on the held-out half** (``split = "heldout"``, ``param = c``), each a unit
direction scaled to the same norm c · s_ℓ and added at every position:

* ``steer``: v_ℓ;
* ``steer_lowrank``: v_ℓ projected onto the top-k principal directions of H_tuned − H_base (E6's
  ``difference`` subspace, :func:`lowrank.fit_subspace`, centred as E6 is), renormalised;
* ``steer_contrast``: E5's v± = the tuned model's mean chosen-completion activation minus its mean
  rejected-completion activation;
* ``steer_random``: a seeded random direction.

A **position variant** (``steer_last_prompt``) takes the tuning shift at the *last prompt position* instead
(the token before the reply, where the reply's first token is predicted): v_ℓ^lp = the mean of
h_tuned − h_base there over both runs of the fit-half pairs, s_ℓ^lp its mean norm, and
c · s_ℓ^lp · v_ℓ^lp/‖v_ℓ^lp‖ is added at that position only; its control ``steer_last_prompt_random`` adds the
random direction there at the same norm. (On the bundled organisms the completion-position v_ℓ recovers no
more of the gain than a random direction at any layer, while the last-prompt variant does; docs/method.md.)

**Recovered fraction** = mean effect / mean gain over the held-out pairs at c = 1 (a ratio of means with a
paired bootstrap CI, :func:`lowrank.ratio_of_means`); ``per_token`` gives the same with per-token Δlogp
(each side's log-prob change divided by its completion length), since chosen and rejected completions differ
in length. **Reverse** (``steer_reverse``): the tuned model with c · s_ℓ · v_ℓ/‖v_ℓ‖ *subtracted*; fraction
lost = −effect / gain; its control (``steer_reverse_random``) subtracts the random direction at the same norm.
**Transfer** (with ``--transfer-data``): the same vectors (fitted on the run's pairs) steer the other data's
pairs (``split = "transfer"``; the gain there is the tuned minus the base model's clean Δlogp, both read from
the rows themselves).

The c grid always contains 1 (where the recovered fraction is read); c = 0 adds the zero vector, so
its effect is exactly 0. Opt-in (``default=False``): neither ``steer`` nor ``steer_scan`` is part of the
default suite; name it, e.g. ``--experiments patch_tuned_to_base,steer`` (``steer`` brings ``steer_scan``
and E1 with it).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from alignment_probe import stats
from alignment_probe.effects import RowKey
from alignment_probe.engine.spec import PatchSpec, hook_name
from alignment_probe.experiments.lowrank import fit_subspace, ratio_of_means
from alignment_probe.experiments.registry import Experiment, Figure, Fitted, Name, Plan, Tables, register
from alignment_probe.interventions import AddFixed
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences

DEFAULT_CS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_K = 4
SCAN_C = 1.0  # the dose at which the scan compares layers (the dose the recovered fraction is read at)
MAIN, REVERSE, REVERSE_RANDOM = "steer", "steer_reverse", "steer_reverse_random"
LAST_PROMPT, LAST_PROMPT_RANDOM = "steer_last_prompt", "steer_last_prompt_random"
SCAN, SCAN_RANDOM = "steer_scan", "steer_scan_random"
BASELINES = {"random": "steer_random", "contrast": "steer_contrast", "lowrank": "steer_lowrank"}
TRANSFER = "transfer"  # the extra pair set (and split) of the transfer rows
SIDES = "both"
# condition → (direction, norm, position scope, target model, sign): c · norm · direction is added (sign +1)
# to the target's activation at the scope's positions, or subtracted (sign −1)
CONDITIONS: dict[str, tuple[str, str, str, str, float]] = {
    MAIN: ("v", "s", "all", "base", 1.0),
    "steer_random": ("random", "s", "all", "base", 1.0),
    "steer_contrast": ("contrast", "s", "all", "base", 1.0),
    "steer_lowrank": ("lowrank", "s", "all", "base", 1.0),
    REVERSE: ("v", "s", "all", "tuned", -1.0),
    REVERSE_RANDOM: ("random", "s", "all", "tuned", -1.0),
    LAST_PROMPT: ("v_last_prompt", "s_last_prompt", "last_prompt", "base", 1.0),
    LAST_PROMPT_RANDOM: ("random", "s_last_prompt", "last_prompt", "base", 1.0),
    SCAN: ("v", "s", "all", "base", 1.0),
    SCAN_RANDOM: ("random", "s", "all", "base", 1.0),
}
HELDOUT_CONDITIONS = (MAIN, *BASELINES.values(), REVERSE, REVERSE_RANDOM, LAST_PROMPT, LAST_PROMPT_RANDOM)
TRANSFER_CONDITIONS = (MAIN, "steer_random", REVERSE, LAST_PROMPT, LAST_PROMPT_RANDOM)
COLORS = {MAIN: "#d62728", "steer_lowrank": "#ff7f0e", "steer_contrast": "#17becf", "steer_random": "#7f7f7f",
          REVERSE: "#9467bd", REVERSE_RANDOM: "#c5b0d5", LAST_PROMPT: "#2ca02c", LAST_PROMPT_RANDOM: "#98df8a",
          SCAN: "#d62728", SCAN_RANDOM: "#7f7f7f"}
LABELS = {MAIN: "v_ℓ (tuning shift)", "steer_lowrank": "rank-k (E6)", "steer_contrast": "v± (E5)",
          "steer_random": "random direction", REVERSE: "tuned − c·v_ℓ", REVERSE_RANDOM: "tuned − c·random",
          LAST_PROMPT: "v_ℓ at the last prompt position", LAST_PROMPT_RANDOM: "random at the last prompt position",
          SCAN: "v_ℓ (fit half)", SCAN_RANDOM: "random direction (fit half)"}
RULE_SCAN = ("steering scan: the layer whose v_ℓ (c = 1) raises the fit half's mean Δlogp most, "
             "evaluated on the held-out half")
RULE_OVERRIDE = "--steer-layer"
RULE_E1 = "E1's peak chosen on the fit half (no steering scan rows)"


def steer_cs(cfg: Any) -> list[float]:
    """The dose grid: ``--steer-c`` (default 0.5, 1, 2, 4), always with c = 1."""
    return sorted({float(c) for c in (cfg.steer_cs if cfg.steer_cs is not None else DEFAULT_CS)} | {1.0})


def steer_k(cfg: Any) -> int:
    return int(cfg.steer_k) if cfg.steer_k is not None else DEFAULT_K


def e1_layer(upstream: Mapping[str, Any]) -> int | None:
    """E1's peak chosen on the fit half (its ``heldout.chosen_layer``; its peak with too few pairs to split)."""
    e1 = upstream.get("patch_tuned_to_base") or {}
    if e1.get("heldout"):
        return int(e1["heldout"]["chosen_layer"])
    return int(e1["peak_layer"]) if e1.get("peak_layer") is not None else None


def steer_layer(plan: Plan) -> tuple[int, str]:
    """The steering layer and the rule that chose it: ``--steer-layer``, else the steering scan's choice on
    the fit half (``steer_scan``'s ``chosen_layer``), else (no scan rows) E1's fit-half peak."""
    if plan.cfg.steer_layer is not None:
        return int(plan.cfg.steer_layer), RULE_OVERRIDE
    scan = plan.upstream.get(SCAN) or {}
    if scan.get("chosen_layer") is not None:
        return int(scan["chosen_layer"]), RULE_SCAN
    layer = e1_layer(plan.upstream)
    if layer is None:
        raise ValueError("steer: no steering layer: the scan has no rows and E1 no peak; pass --steer-layer")
    return layer, RULE_E1


def halves(cfg: Any, pair_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fit and evaluation halves: E1's and E6's split of the same pairs, same seed."""
    return stats.split_halves(list(pair_ids), seed=cfg.seed)


@torch.inference_mode()
def completion_activations(twins: Any, tokenized: Sequence[TokenizedPair], *, layer: int, hook: str = "resid_post",
                           pairs_per_batch: int = 8) -> dict[str, Tensor]:
    """Both models' activations at one hook point, stacked over the runs (chosen and rejected) of every pair:
    at the completion positions ``{"base", "tuned": [rows, d_model], "pair_id", "chosen": [rows]}`` (chosen: 1 for
    the chosen run, 0 for the rejected one), and at each run's last prompt position ``{"last_prompt_base",
    "last_prompt_tuned": [runs, d_model], "last_prompt_pair_id": [runs]}``."""
    name = hook_name(layer, hook)
    out: dict[str, list[Tensor]] = {"base": [], "tuned": [], "last_prompt_base": [], "last_prompt_tuned": []}
    owner: list[Tensor] = []
    chosen: list[Tensor] = []
    lp_owner: list[int] = []
    for lo in range(0, len(tokenized), pairs_per_batch):
        seqs = pair_sequences(tokenized[lo: lo + pairs_per_batch])
        batch = make_batch(seqs)
        for s in seqs:
            n = s.length - s.completion_start
            owner.append(torch.full((n,), s.pair_id, dtype=torch.long))
            chosen.append(torch.full((n,), int(s.side == "chosen"), dtype=torch.long))
            lp_owner.append(s.pair_id)
        for m in ("base", "tuned"):
            model = twins.models()[m]
            _, cache = model.run_with_cache(batch.tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
            acts = cache[name].float().cpu()
            out[m] += [acts[i, s.completion_start: s.length] for i, s in enumerate(seqs)]
            out[f"last_prompt_{m}"] += [acts[i, s.completion_start - 1] for i, s in enumerate(seqs)]
    return {"base": torch.cat(out["base"]), "tuned": torch.cat(out["tuned"]), "pair_id": torch.cat(owner),
            "chosen": torch.cat(chosen), "last_prompt_base": torch.stack(out["last_prompt_base"]),
            "last_prompt_tuned": torch.stack(out["last_prompt_tuned"]),
            "last_prompt_pair_id": torch.tensor(lp_owner, dtype=torch.long)}


def _unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-30)


def random_unit(d_model: int, *, seed: int, layer: int) -> Tensor:
    """The random direction at one layer (float64, unit norm), seeded by (seed, layer): the same in the scan and
    at the steering layer."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer))
    return _unit(torch.randn(d_model, generator=gen, dtype=torch.float64))


def tuning_shift(acts: Mapping[str, Tensor]) -> dict[str, Any]:
    """v_ℓ and s_ℓ over the completion positions, v_ℓ^lp and s_ℓ^lp over the last prompt positions (float64)."""
    diff = (acts["tuned"] - acts["base"]).double()
    lp = (acts["last_prompt_tuned"] - acts["last_prompt_base"]).double()
    return {"v": diff.mean(0), "s": float(diff.norm(dim=-1).mean()), "v_last_prompt": lp.mean(0),
            "s_last_prompt": float(lp.norm(dim=-1).mean()), "positions": int(diff.shape[0]), "runs": int(lp.shape[0])}


def steering_directions(acts: Mapping[str, Tensor], *, k: int, centre: bool, seed: int, layer: int
                        ) -> tuple[dict[str, Tensor], dict[str, float], dict[str, Any]]:
    """Unit directions (float64, [d_model]) of v_ℓ, the baselines and the last-prompt variant from (fit-half)
    activations, their norms ``{"s", "s_last_prompt"}``, and a JSON record of their norms and cosine similarities."""
    shift = tuning_shift(acts)
    diff = (acts["tuned"] - acts["base"]).double()
    v = shift["v"]
    basis = fit_subspace(diff.float(), centre=centre).top(min(k, diff.shape[1])).double()
    projected = basis @ (basis.T @ v)
    is_chosen = acts["chosen"] == 1
    tuned = acts["tuned"].double()
    contrast = tuned[is_chosen].mean(0) - tuned[~is_chosen].mean(0)
    random = random_unit(v.shape[0], seed=seed, layer=layer)
    raw = {"v": v, "lowrank": projected, "contrast": contrast, "random": random, "v_last_prompt": shift["v_last_prompt"]}
    units = {name: _unit(x) for name, x in raw.items()}
    names = list(units)
    cosine = {f"{a}~{b}": float(units[a] @ units[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    norms = {"s": shift["s"], "s_last_prompt": shift["s_last_prompt"]}
    record = {"norm": shift["s"], "norm_last_prompt": shift["s_last_prompt"],
              "raw_norms": {name: float(x.norm()) for name, x in raw.items()},
              "lowrank_kept": float(projected.norm() / v.norm().clamp_min(1e-30)), "cosine": cosine,
              "fit_positions": shift["positions"], "fit_runs": shift["runs"]}
    return units, norms, record


def steer_specs(units: Mapping[str, Tensor], norms: Mapping[str, float], *, layer: int, hook: str,
                cs: Sequence[float], pair_ids: Sequence[int], split: str, experiments: Sequence[str]) -> list[PatchSpec]:
    """Fixed-vector conditions (:data:`CONDITIONS`) on ``pair_ids``: c · norm · direction added to (or, for the
    reverse, subtracted from) the target's activation at the condition's positions."""
    ids = frozenset(int(p) for p in pair_ids)
    specs = []
    for name in experiments:
        direction, norm, scope, target, sign = CONDITIONS[name]
        source = "tuned" if target == "base" else "base"
        for c in cs:
            vector = (sign * float(c) * float(norms[norm]) * units[direction]).float()
            specs.append(PatchSpec(RowKey(name, target, source, hook, scope, SIDES, layer, float(c), split),
                                   AddFixed(vector), ids))
    return specs


# --------------------------------------------------------------------------------------------------
# the steering scan: v_ℓ and a random direction at every swept layer, on the fit half (chooses the layer)


def fit_scan(plan: Plan) -> Fitted:
    """v_ℓ, s_ℓ and the random direction at every swept layer from the fit half, as c = 1 conditions on the fit
    half. With ``--steer-layer`` there is nothing to choose: no conditions."""
    cfg = plan.cfg
    if cfg.steer_layer is not None:
        return Fitted([], {"layers": [], "skipped": RULE_OVERRIDE})
    fit_ids, _ = halves(cfg, [t.pair_id for t in plan.tokenized])
    fit_pairs = [t for t in plan.tokenized if t.pair_id in set(fit_ids)]
    specs: list[PatchSpec] = []
    norms: dict[str, float] = {}
    for layer in cfg.swept_layers(plan.n_layers):
        shift = tuning_shift(completion_activations(plan.twins, fit_pairs, layer=layer, hook=cfg.hook))
        units = {"v": _unit(shift["v"]), "random": random_unit(shift["v"].shape[0], seed=cfg.seed, layer=layer)}
        specs += steer_specs(units, {"s": shift["s"]}, layer=layer, hook=cfg.hook, cs=(SCAN_C,), pair_ids=fit_ids,
                             split="fit", experiments=(SCAN, SCAN_RANDOM))
        norms[str(layer)] = shift["s"]
    return Fitted(specs, {"layers": [int(x) for x in cfg.swept_layers(plan.n_layers)], "norm": norms,
                          "fit_pairs": len(fit_ids)})


def scan_landscape(effects: pd.DataFrame, scores: pd.DataFrame, cfg: Any) -> dict[str, Any]:
    """Per swept layer, the fit half's mean effect of v_ℓ and of the random direction at c = 1 (bootstrap CIs)
    and their recovered fractions; ``chosen_layer`` = the layer of the largest mean v_ℓ effect (the lowest
    such layer on a tie), None without scan rows."""
    rows = effects[effects.experiment.isin((SCAN, SCAN_RANDOM))] if len(effects) else effects
    fit_ids, _ = halves(cfg, scores.pair_id.tolist())
    gain = scores.set_index("pair_id").gain.reindex(fit_ids)
    by_layer = []
    for layer in sorted({int(x) for x in rows.layer}) if len(rows) else []:
        at = rows[rows.layer == layer]
        entry: dict[str, Any] = {"layer": layer}
        for key, name in (("v", SCAN), ("random", SCAN_RANDOM)):
            values = at[at.experiment == name].set_index("pair_id").effect.sort_index()
            entry[key] = _mean_ci(values, cfg) | {"recovered_fraction": _fraction(values, gain, cfg)}
        by_layer.append(entry)
    chosen = None
    if by_layer:
        best = max(r["v"]["mean"] for r in by_layer)
        chosen = next(r["layer"] for r in by_layer if r["v"]["mean"] == best)
    return {"rule": RULE_SCAN, "c": SCAN_C, "split": "fit", "by_layer": by_layer, "chosen_layer": chosen}


def summarize_scan(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer_scan": {rule, c, split, by_layer, chosen_layer}}`` (:func:`scan_landscape`)."""
    return {SCAN: scan_landscape(tables.effects, tables.scores, tables.cfg)}


# --------------------------------------------------------------------------------------------------
# steering at the chosen layer, on the held-out half (and the transfer pairs)


def fit_steering(plan: Plan) -> Fitted:
    """v_ℓ, the baselines and the last-prompt variant at the steering layer, from the fit half; conditions on the
    held-out half (and on the transfer pairs, when given)."""
    cfg = plan.cfg
    layer, rule = steer_layer(plan)
    cs, k = steer_cs(cfg), steer_k(cfg)
    fit_ids, held_ids = halves(cfg, [t.pair_id for t in plan.tokenized])
    acts = completion_activations(plan.twins, [t for t in plan.tokenized if t.pair_id in set(fit_ids)],
                                  layer=layer, hook=cfg.hook)
    units, norms, record = steering_directions(acts, k=k, centre=cfg.lowrank_centre, seed=cfg.seed, layer=layer)
    specs = steer_specs(units, norms, layer=layer, hook=cfg.hook, cs=cs, pair_ids=held_ids, split="heldout",
                        experiments=HELDOUT_CONDITIONS)
    transfer = list(plan.extra_pairs.get(TRANSFER, ()))
    if transfer:
        specs += steer_specs(units, norms, layer=layer, hook=cfg.hook, cs=cs, pair_ids=[t.pair_id for t in transfer],
                             split=TRANSFER, experiments=TRANSFER_CONDITIONS)
    return Fitted(specs, {"layer": layer, "layer_rule": rule, "layer_source": rule, "e1_layer": e1_layer(plan.upstream),
                          "hook": cfg.hook, "scope": CONDITIONS[MAIN][2], "cs": cs, "k": k,
                          "centre": bool(cfg.lowrank_centre), "fit_pairs": len(fit_ids), "heldout_pairs": len(held_ids),
                          "transfer_pairs": len(transfer), **record})


# --------------------------------------------------------------------------------------------------
# the summary: a pure function of the effects, the scores and the fit record


def _per_pair(effects: pd.DataFrame, name: str, split: str, c: float, column: str = "effect") -> pd.Series:
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, c)]
    return rows.set_index("pair_id")[column].sort_index()


def _per_token_effect(effects: pd.DataFrame, name: str, split: str, c: float, scores: pd.DataFrame) -> pd.Series:
    """The effect on per-token Δlogp: each side's log-prob change divided by its completion length."""
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, c)]
    rows = rows.set_index("pair_id").sort_index()
    n = scores.set_index("pair_id").reindex(rows.index)
    return ((rows.patched_logp_chosen - rows.clean_logp_chosen) / n.n_chosen_tokens
            - (rows.patched_logp_rejected - rows.clean_logp_rejected) / n.n_rejected_tokens)


def _mean_ci(values: pd.Series, cfg: Any) -> dict[str, Any]:
    if len(values) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, lo, hi = stats.bootstrap_mean_ci(values.to_numpy(), seed=cfg.seed, n_boot=cfg.n_boot)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(values))}


def _fraction(num: pd.Series, gain: pd.Series, cfg: Any, sign: float = 1.0) -> dict[str, float]:
    if len(num) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean, lo, hi = ratio_of_means(sign * num.to_numpy(dtype=np.float64),
                                  gain.reindex(num.index).to_numpy(dtype=np.float64), seed=cfg.seed, n_boot=cfg.n_boot)
    return {"mean": mean, "ci_low": lo, "ci_high": hi}


def _curve(effects: pd.DataFrame, name: str, split: str, cs: Sequence[float], gain: pd.Series, cfg: Any, *,
           fraction: str = "recovered_fraction", sign: float = 1.0) -> dict[str, Any]:
    by_c = [{"c": float(c)} | _mean_ci(_per_pair(effects, name, split, c), cfg) for c in cs]
    return {"by_c": by_c, fraction: _fraction(_per_pair(effects, name, split, 1.0), gain, cfg, sign)}


def _excess(effects: pd.DataFrame, name: str, control: str, split: str, gain: pd.Series, cfg: Any) -> dict[str, float]:
    """The fraction of the gain recovered beyond the control direction at c = 1, paired by pair: mean(effect −
    control effect) / mean gain, with a paired bootstrap CI (a more sensitive comparison than two separate CIs)."""
    num, ctl = _per_pair(effects, name, split, 1.0), _per_pair(effects, control, split, 1.0)
    return _fraction((num - ctl.reindex(num.index)).dropna(), gain, cfg)


def summarize_steering(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer": {layer, layer_rule, by_c, recovered_fraction, excess_over_random, baselines, variants, per_token,
    reverse, gain, layer_choice, fit, [transfer]}, "steer_scan": …}`` (the scan's entry, :func:`scan_landscape`, when
    it ran)."""
    cfg, effects, scores = tables.cfg, tables.effects, tables.scores
    record = tables.fits["steer"]
    cs = [float(c) for c in record["cs"]]
    _, held = halves(cfg, scores.pair_id.tolist())
    gain = scores.set_index("pair_id").gain.reindex(held)
    gain_pt = scores.set_index("pair_id").gain_per_token.reindex(held)
    rule = record.get("layer_rule", record.get("layer_source"))
    scan = scan_landscape(effects, scores, cfg)
    main = _curve(effects, MAIN, "heldout", cs, gain, cfg)
    per_token = {key: _fraction(_per_token_effect(effects, name, "heldout", 1.0, scores), gain_pt, cfg)
                 for key, name in (("v", MAIN), ("random", "steer_random"), ("last_prompt", LAST_PROMPT),
                                   ("last_prompt_random", LAST_PROMPT_RANDOM))}
    out: dict[str, Any] = {
        "layer": int(record["layer"]), "layer_rule": rule, **main,
        "excess_over_random": _excess(effects, MAIN, "steer_random", "heldout", gain, cfg),
        "baselines": {key: _curve(effects, name, "heldout", cs, gain, cfg) for key, name in BASELINES.items()},
        "variants": {"last_prompt": _curve(effects, LAST_PROMPT, "heldout", cs, gain, cfg)
                     | {"random": _curve(effects, LAST_PROMPT_RANDOM, "heldout", cs, gain, cfg),
                        "excess_over_random": _excess(effects, LAST_PROMPT, LAST_PROMPT_RANDOM, "heldout", gain, cfg),
                        "scope": CONDITIONS[LAST_PROMPT][2], "norm": record.get("norm_last_prompt")}},
        "per_token": per_token | {"gain": _mean_ci(gain_pt, cfg)},
        "reverse": _curve(effects, REVERSE, "heldout", cs, gain, cfg, fraction="lost_fraction", sign=-1.0)
        | {"random": _curve(effects, REVERSE_RANDOM, "heldout", cs, gain, cfg, fraction="lost_fraction", sign=-1.0)},
        "gain": _mean_ci(gain, cfg),
        "layer_choice": scan | {"rule": rule, "layer": int(record["layer"]), "e1_layer": record.get("e1_layer")},
        "fit": {key: record.get(key) for key in ("layer_source", "hook", "scope", "k", "centre", "norm",
                                                 "norm_last_prompt", "cosine", "fit_pairs", "heldout_pairs",
                                                 "fit_positions", "fit_runs", "lowrank_kept")},
    }
    if record.get("transfer_pairs"):
        base = _per_pair(effects, MAIN, TRANSFER, 1.0, "clean_delta_logp")
        tuned = _per_pair(effects, REVERSE, TRANSFER, 1.0, "clean_delta_logp")
        t_gain = (tuned - base.reindex(tuned.index)).sort_index()
        out["transfer"] = (_curve(effects, MAIN, TRANSFER, cs, t_gain, cfg)
                           | {"random": _curve(effects, "steer_random", TRANSFER, cs, t_gain, cfg),
                              "excess_over_random": _excess(effects, MAIN, "steer_random", TRANSFER, t_gain, cfg),
                              "reverse": _curve(effects, REVERSE, TRANSFER, cs, t_gain, cfg, fraction="lost_fraction",
                                                sign=-1.0),
                              "variants": {"last_prompt": _curve(effects, LAST_PROMPT, TRANSFER, cs, t_gain, cfg)
                                           | {"random": _curve(effects, LAST_PROMPT_RANDOM, TRANSFER, cs, t_gain, cfg),
                                              "excess_over_random": _excess(effects, LAST_PROMPT, LAST_PROMPT_RANDOM,
                                                                            TRANSFER, t_gain, cfg)}},
                              "gain": _mean_ci(t_gain, cfg), "n_pairs": int(record["transfer_pairs"])})
    # the scan ran for steer (it chose the layer): its own entry too, as if named (absent with --steer-layer)
    return {MAIN: out} | ({SCAN: scan} if scan["by_layer"] else {})


# --------------------------------------------------------------------------------------------------
# the figures and the verdicts (drawn from the summary)


def figure(summary: Mapping[str, Any]) -> Any:
    """Dose curves (effect vs c, 95% CI bands) of v_ℓ, the three baselines and the last-prompt variant (with its
    random control) on the held-out half, the reverse (tuned − c·v_ℓ), and a dotted line at the held-out gain."""
    import plotly.graph_objects as go

    from alignment_probe.report import figures as F

    entry = F.experiment(summary, MAIN)
    if not entry or not entry.get("by_c"):
        raise F.MissingExperimentError("steer", [MAIN])
    curves = [(MAIN, entry)] + [(BASELINES[k], v) for k, v in (entry.get("baselines") or {}).items()]
    last = (entry.get("variants") or {}).get("last_prompt") or {}
    curves += [(LAST_PROMPT, last), (LAST_PROMPT_RANDOM, last.get("random") or {})]
    curves.append((REVERSE, entry.get("reverse") or {}))
    curves.append((REVERSE_RANDOM, (entry.get("reverse") or {}).get("random") or {}))
    fig = go.Figure()
    for name, data in curves:
        rows = data.get("by_c") or []
        if not rows:
            continue
        x = [float(r["c"]) for r in rows]
        color, label = COLORS[name], LABELS[name]
        band = F._band(x, [F._num(r.get("ci_low")) for r in rows], [F._num(r.get("ci_high")) for r in rows],
                       name=label, color=color, group=name)
        if band is not None:
            fig.add_trace(band)
        dash = "dash" if name in (REVERSE, REVERSE_RANDOM) else "dot" if name == LAST_PROMPT_RANDOM else "solid"
        fig.add_trace(go.Scatter(x=x, y=[F._num(r.get("mean")) for r in rows], mode="lines+markers", name=label,
                                 legendgroup=name, line={"color": color, "width": 2, "dash": dash},
                                 hovertemplate=f"<b>{label}</b><br>c = %{{x}}<br>effect %{{y:.3f}} nats<extra></extra>"))
    gain = F._num((entry.get("gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(y=gain, line={"dash": "dot", "color": "#444", "width": 1.5},
                      annotation_text=f"held-out gain {gain:+.3f}", annotation_position="top left")
        fig.add_hline(y=-gain, line={"dash": "dot", "color": "#9467bd", "width": 1})
    fig.add_hline(y=0, line={"color": "#bbb", "width": 1})
    fig.update_layout(title=f"Steering at layer {entry.get('layer')} (held-out pairs)", height=F.HEIGHT,
                      xaxis_title="c (multiples of the mean ‖h_tuned − h_base‖ at the positions steered)",
                      yaxis_title="effect on Δlogp (nats)", template="plotly_white")
    return fig


def scan_figure(summary: Mapping[str, Any]) -> Any:
    """The steering scan on the fit half: per layer, the mean effect (95% CI) of v_ℓ and of the random direction
    at c = 1; the chosen steering layer and E1's fit-half peak marked."""
    import plotly.graph_objects as go

    from alignment_probe.report import figures as F

    entry = F.experiment(summary, MAIN)
    choice = (entry or {}).get("layer_choice") or {}
    rows = choice.get("by_layer") or []
    if not rows:
        raise F.MissingExperimentError("steer_layers", [f"{SCAN} (the steering layer was given: --steer-layer)"])
    fig = go.Figure()
    for key, name in (("v", SCAN), ("random", SCAN_RANDOM)):
        frame = F.per_layer_frame([{"layer": r["layer"], **r[key]} for r in rows])
        F._add_curve(fig, frame, name=LABELS[name], color=COLORS[name], group=name)
    if choice.get("layer") is not None:
        fig.add_vline(x=int(choice["layer"]), line={"dash": "dot", "color": COLORS[MAIN]},
                      annotation_text=f"steering layer {choice['layer']}", annotation_position="top left")
    if choice.get("e1_layer") is not None:
        fig.add_vline(x=int(choice["e1_layer"]), line={"dash": "dot", "color": "#1f77b4", "width": 1},
                      annotation_text=f"E1 fit-half peak {choice['e1_layer']}", annotation_position="bottom right")
    F._zero_line(fig)
    F._layer_ticks(fig, [int(r["layer"]) for r in rows])
    return F._layout(fig, "Steering scan: v_ℓ vs a random direction at c = 1, fit half (E11)")


def _holds(rec: Mapping[str, Any], rnd: Mapping[str, Any]) -> bool:
    from alignment_probe.report import figures as F

    lo, r_hi = F._num(rec.get("ci_low")), F._num(rnd.get("ci_high"))
    return math.isfinite(lo) and lo > 0 and (not math.isfinite(r_hi) or lo > r_hi)


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """"A vector at the localized layer recovers the gain": agrees iff the recovered fraction's CI lies above 0
    and above the random direction's CI (at c = 1, held-out pairs)."""
    from alignment_probe.report import figures as F
    from alignment_probe.report.format import fmt_ci
    from alignment_probe.report.verdicts import AGREES, DIFFERS, Finding

    entry = F.experiment(summary, MAIN)
    if not entry:
        return None
    rec = entry.get("recovered_fraction") or {}
    rnd = ((entry.get("baselines") or {}).get("random") or {}).get("recovered_fraction") or {}
    ours = (f"layer {entry.get('layer')} ({entry.get('layer_rule') or 'rule not recorded'}): recovered fraction "
            f"{F._num(rec.get('mean')):.2f} ({fmt_ci(rec.get('ci_low'), rec.get('ci_high'))}); random direction "
            f"{F._num(rnd.get('mean')):.2f} ({fmt_ci(rnd.get('ci_low'), rnd.get('ci_high'))})")
    return Finding("steer", "A vector at the localized layer recovers the gain (E11)",
                   "not in the paper (the localization spec's E11)", ours, AGREES if _holds(rec, rnd) else DIFFERS,
                   "agrees iff the recovered fraction at c = 1 has CI low > 0 and above the random direction's CI high")


def verdict_last_prompt(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """The position variant: the tuning shift at the last prompt position, added there, recovers the gain above a
    random direction at the same norm and position (the same rule as :func:`verdict`)."""
    from alignment_probe.report import figures as F
    from alignment_probe.report.format import fmt_ci
    from alignment_probe.report.verdicts import AGREES, DIFFERS, Finding

    entry = F.experiment(summary, MAIN)
    last = ((entry or {}).get("variants") or {}).get("last_prompt") or {}
    if not last.get("by_c"):
        return None
    rec = last.get("recovered_fraction") or {}
    rnd = (last.get("random") or {}).get("recovered_fraction") or {}
    ours = (f"layer {entry.get('layer')}: recovered fraction {F._num(rec.get('mean')):.2f} "
            f"({fmt_ci(rec.get('ci_low'), rec.get('ci_high'))}); random direction at the same position "
            f"{F._num(rnd.get('mean')):.2f} ({fmt_ci(rnd.get('ci_low'), rnd.get('ci_high'))})")
    return Finding("steer_last_prompt", "The tuning shift at the last prompt position steers the base (E11 variant)",
                   "not in the paper (a position variant of the localization spec's E11)", ours,
                   AGREES if _holds(rec, rnd) else DIFFERS,
                   "agrees iff the recovered fraction at c = 1 has CI low > 0 and above the random direction's CI high")


register(Experiment(
    key="steer_scan", method="E11", order=105, needs=("patch_tuned_to_base",), default=False,
    emits=(SCAN_RANDOM,),
    names=(Name(SCAN, "steering scan: v_ℓ per layer (fit half)", COLORS[SCAN],
                "Add s·v_ℓ/‖v_ℓ‖ (c = 1) at every swept layer to the base on the fit half, beside a random direction at "
                "the same norm; chooses steer's layer (the largest mean effect). Run by steer unless --steer-layer.",
                per_layer=False),),
    fit=fit_scan, specs=lambda plan: plan.fitted.specs, summarize=summarize_scan,
))

register(Experiment(
    key="steer", method="E11", order=110, needs=("patch_tuned_to_base", SCAN), default=False,
    emits=("steer_random", "steer_contrast", "steer_lowrank", REVERSE, REVERSE_RANDOM, LAST_PROMPT, LAST_PROMPT_RANDOM),
    names=(Name("steer", "steering: v_ℓ", COLORS[MAIN],
                "Add c·s·v_ℓ/‖v_ℓ‖ (the mean tuning shift at the steering layer, chosen and fitted on one half) to the "
                "base on the other half; baselines: rank-k (E6), v± (E5), random; variant: the shift at the last prompt "
                "position; reverse: subtract it from the tuned model.",
                per_layer=False),),
    fit=fit_steering, specs=lambda plan: plan.fitted.specs, summarize=summarize_steering,
    figures=(Figure("steer", "alignment_probe.experiments.steering:figure",
                    "Steering with the localized direction (E11)",
                    "E11. Effect on Δlogp of adding c·s·v_ℓ/‖v_ℓ‖ to the base residual at the steering layer (v_ℓ: "
                    "the mean tuning shift over the fit half's completion positions; s: the mean ‖h_tuned − h_base‖) at "
                    "every position, on the held-out half, against c; the rank-k, v± and random directions at the same "
                    "norm; green: the shift at the last prompt position added there only (dotted: a random direction "
                    "there); dashed: the tuned model with v_ℓ (or the random direction) subtracted. Dotted: the "
                    "held-out gain (and its negative).",
                    needs=(MAIN,), order=110),
             Figure("steer_layers", "alignment_probe.experiments.steering:scan_figure",
                    "Steering layer scan (E11)",
                    "E11. The steering layer is chosen on the fit half: at every layer, the effect on Δlogp of adding "
                    "s·v_ℓ/‖v_ℓ‖ (c = 1) to the base, and of a random direction at the same norm, with 95% bootstrap "
                    "CIs over the fit-half pairs. The layer with the largest mean effect of v_ℓ is then evaluated on "
                    "the held-out half (the figure above). E1's fit-half peak is marked for comparison.",
                    needs=(MAIN,), order=111)),
    verdicts=("alignment_probe.experiments.steering:verdict", "alignment_probe.experiments.steering:verdict_last_prompt"),
))

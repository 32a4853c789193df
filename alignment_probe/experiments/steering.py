"""E11 — steering with the localized direction (../shared/docs/localization.md E11; docs/method.md).

At the layer ℓ the run localized (E1's peak, chosen on the *fit* half of the pairs; or
``--steer-layer``), the **tuning shift** is v_ℓ = the mean of h_tuned − h_base (``resid_post``) over
the completion positions of both runs of the fit-half pairs, and s = the mean ‖h_tuned − h_base‖
over the same positions. On the *held-out* half, the base model is steered by adding the fixed
vector c · s · v_ℓ/‖v_ℓ‖ to its residual at ℓ at every position (``AddFixed``); the effect is
Δ(steered base) − Δ(base), a dose curve over c (``steer``, ``param = c``, ``split = "heldout"``).

Baselines, each a unit direction scaled to the same norm c · s, fitted on the same fit half:

* ``steer_lowrank``: v_ℓ projected onto the top-k principal directions of H_tuned − H_base (E6's
  ``difference`` subspace, :func:`lowrank.fit_subspace`, centred as E6 is), renormalised;
* ``steer_contrast``: E5's v± = the tuned model's mean chosen-completion activation minus its mean
  rejected-completion activation;
* ``steer_random``: a seeded random direction.

**Recovered fraction** = mean effect / mean gain over the held-out pairs at c = 1 (a ratio of means
with a paired bootstrap CI, :func:`lowrank.ratio_of_means`). **Reverse** (``steer_reverse``): the
tuned model with c · s · v_ℓ/‖v_ℓ‖ *subtracted*; fraction lost = −effect / gain; its control
(``steer_reverse_random``) subtracts the random direction at the same norm. **Transfer** (with
``--transfer-data``): the same vectors (fitted on the run's pairs) steer the other data's pairs
(``split = "transfer"``; the gain there is the tuned minus the base model's clean Δlogp, both read from
the rows themselves).

The c grid always contains 1 (where the recovered fraction is read); c = 0 adds the zero vector, so
its effect is exactly 0. Opt-in (``default=False``): it is not part of the default suite; name it,
e.g. ``--experiments patch_tuned_to_base,steer``.
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
from alignment_probe.experiments.lowrank import fit_subspace, ratio_of_means, rows_of
from alignment_probe.experiments.registry import Experiment, Figure, Fitted, Name, Plan, Tables, register
from alignment_probe.interventions import AddFixed
from alignment_probe.tokens import TokenizedPair, make_batch, pair_sequences

DEFAULT_CS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_K = 4
MAIN, REVERSE, REVERSE_RANDOM = "steer", "steer_reverse", "steer_reverse_random"
BASELINES = {"random": "steer_random", "contrast": "steer_contrast", "lowrank": "steer_lowrank"}
DIRECTIONS = {MAIN: "v", **{name: key for key, name in BASELINES.items()}}  # experiment → direction
TRANSFER = "transfer"  # the extra pair set (and split) of the transfer rows
SCOPE, SIDES = "all", "both"
COLORS = {MAIN: "#d62728", "steer_lowrank": "#ff7f0e", "steer_contrast": "#17becf", "steer_random": "#7f7f7f",
          REVERSE: "#9467bd", REVERSE_RANDOM: "#c5b0d5"}
LABELS = {MAIN: "v_ℓ (tuning shift)", "steer_lowrank": "rank-k (E6)", "steer_contrast": "v± (E5)",
          "steer_random": "random direction", REVERSE: "tuned − c·v_ℓ", REVERSE_RANDOM: "tuned − c·random"}


def steer_cs(cfg: Any) -> list[float]:
    """The dose grid: ``--steer-c`` (default 0.5, 1, 2, 4), always with c = 1."""
    return sorted({float(c) for c in (cfg.steer_cs if cfg.steer_cs is not None else DEFAULT_CS)} | {1.0})


def steer_k(cfg: Any) -> int:
    return int(cfg.steer_k) if cfg.steer_k is not None else DEFAULT_K


def steer_layer(plan: Plan) -> tuple[int, str]:
    """``--steer-layer``, else E1's peak chosen on the fit half (its ``heldout.chosen_layer``)."""
    if plan.cfg.steer_layer is not None:
        return int(plan.cfg.steer_layer), "--steer-layer"
    e1 = plan.upstream["patch_tuned_to_base"]
    if e1.get("heldout"):
        return int(e1["heldout"]["chosen_layer"]), "E1 peak chosen on the fit half"
    return int(e1["peak_layer"]), "E1 peak (too few pairs for a held-out choice)"


def halves(cfg: Any, pair_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fit and evaluation halves: E1's and E6's split of the same pairs, same seed."""
    return stats.split_halves(list(pair_ids), seed=cfg.seed)


@torch.inference_mode()
def completion_activations(twins: Any, tokenized: Sequence[TokenizedPair], *, layer: int, hook: str = "resid_post",
                           pairs_per_batch: int = 8) -> dict[str, Tensor]:
    """Both models' activations at one hook point over the completion positions of both runs of every pair,
    stacked: ``{"base", "tuned": [rows, d_model], "pair_id", "chosen": [rows] (1: chosen run, 0: rejected)}``."""
    name = hook_name(layer, hook)
    out: dict[str, list[Tensor]] = {"base": [], "tuned": []}
    owner: list[Tensor] = []
    chosen: list[Tensor] = []
    for lo in range(0, len(tokenized), pairs_per_batch):
        seqs = pair_sequences(tokenized[lo: lo + pairs_per_batch])
        batch = make_batch(seqs)
        for s in seqs:
            n = s.length - s.completion_start
            owner.append(torch.full((n,), s.pair_id, dtype=torch.long))
            chosen.append(torch.full((n,), int(s.side == "chosen"), dtype=torch.long))
        for m in out:
            model = twins.models()[m]
            _, cache = model.run_with_cache(batch.tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
            acts = cache[name].float().cpu()
            out[m] += [acts[i, s.completion_start: s.length] for i, s in enumerate(seqs)]
    return {m: torch.cat(v) for m, v in out.items()} | {"pair_id": torch.cat(owner), "chosen": torch.cat(chosen)}


def _unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-30)


def steering_directions(acts: Mapping[str, Tensor], *, k: int, centre: bool, seed: int, layer: int
                        ) -> tuple[dict[str, Tensor], float, dict[str, Any]]:
    """Unit directions (float64, [d_model]) of v_ℓ and the baselines from (fit-half) completion activations,
    the norm s = mean ‖h_tuned − h_base‖, and a JSON record of their norms and cosine similarities."""
    diff = (acts["tuned"] - acts["base"]).double()
    v = diff.mean(0)
    s = float(diff.norm(dim=-1).mean())
    basis = fit_subspace(diff.float(), centre=centre).top(min(k, diff.shape[1])).double()
    projected = basis @ (basis.T @ v)
    is_chosen = acts["chosen"] == 1
    tuned = acts["tuned"].double()
    contrast = tuned[is_chosen].mean(0) - tuned[~is_chosen].mean(0)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer))
    random = torch.randn(v.shape[0], generator=gen, dtype=torch.float64)
    raw = {"v": v, "lowrank": projected, "contrast": contrast, "random": random}
    units = {name: _unit(x) for name, x in raw.items()}
    names = list(units)
    cosine = {f"{a}~{b}": float(units[a] @ units[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    record = {"norm": s, "raw_norms": {name: float(x.norm()) for name, x in raw.items()},
              "lowrank_kept": float(projected.norm() / v.norm().clamp_min(1e-30)), "cosine": cosine,
              "fit_positions": int(diff.shape[0])}
    return units, s, record


def steer_specs(units: Mapping[str, Tensor], norm: float, *, layer: int, hook: str, cs: Sequence[float],
                pair_ids: Sequence[int], split: str, experiments: Sequence[str]) -> list[PatchSpec]:
    """Fixed-vector conditions c · norm · direction on ``pair_ids``: the base steered along each direction of
    ``experiments``, and (``steer_reverse``) the tuned model with v_ℓ subtracted."""
    ids = frozenset(int(p) for p in pair_ids)
    specs = []
    for name in experiments:
        reverse = name in (REVERSE, REVERSE_RANDOM)
        target, source, sign = ("tuned", "base", -1.0) if reverse else ("base", "tuned", 1.0)
        unit = units["v" if name == REVERSE else "random" if name == REVERSE_RANDOM else DIRECTIONS[name]]
        for c in cs:
            vector = (sign * float(c) * norm * unit).float()
            specs.append(PatchSpec(RowKey(name, target, source, hook, SCOPE, SIDES, layer, float(c), split),
                                   AddFixed(vector), ids))
    return specs


def fit_steering(plan: Plan) -> Fitted:
    """v_ℓ and the baselines at the steering layer, from the fit half; conditions on the held-out half
    (and on the transfer pairs, when given)."""
    cfg = plan.cfg
    layer, source = steer_layer(plan)
    cs, k = steer_cs(cfg), steer_k(cfg)
    fit_ids, held_ids = halves(cfg, [t.pair_id for t in plan.tokenized])
    acts = completion_activations(plan.twins, [t for t in plan.tokenized if t.pair_id in set(fit_ids)],
                                  layer=layer, hook=cfg.hook)
    units, norm, record = steering_directions(rows_of(acts, fit_ids), k=k, centre=cfg.lowrank_centre, seed=cfg.seed,
                                              layer=layer)
    specs = steer_specs(units, norm, layer=layer, hook=cfg.hook, cs=cs, pair_ids=held_ids, split="heldout",
                        experiments=(MAIN, *BASELINES.values(), REVERSE, REVERSE_RANDOM))
    transfer = list(plan.extra_pairs.get(TRANSFER, ()))
    if transfer:
        specs += steer_specs(units, norm, layer=layer, hook=cfg.hook, cs=cs, pair_ids=[t.pair_id for t in transfer],
                             split=TRANSFER, experiments=(MAIN, "steer_random", REVERSE))
    return Fitted(specs, {"layer": layer, "layer_source": source, "hook": cfg.hook, "scope": SCOPE, "cs": cs, "k": k,
                          "centre": bool(cfg.lowrank_centre), "fit_pairs": len(fit_ids), "heldout_pairs": len(held_ids),
                          "transfer_pairs": len(transfer), **record})


# --------------------------------------------------------------------------------------------------
# the summary: a pure function of the effects, the scores and the fit record


def _per_pair(effects: pd.DataFrame, name: str, split: str, c: float, column: str = "effect") -> pd.Series:
    rows = effects[(effects.experiment == name) & (effects.split == split) & np.isclose(effects.param, c)]
    return rows.set_index("pair_id")[column].sort_index()


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


def summarize_steering(tables: Tables) -> dict[str, dict[str, Any]]:
    """``{"steer": {layer, by_c, recovered_fraction, baselines, reverse, gain, fit, [transfer]}}``."""
    cfg, effects = tables.cfg, tables.effects
    record = tables.fits["steer"]
    cs = [float(c) for c in record["cs"]]
    _, held = halves(cfg, tables.scores.pair_id.tolist())
    gain = tables.scores.set_index("pair_id").gain.reindex(held)
    main = _curve(effects, MAIN, "heldout", cs, gain, cfg)
    out: dict[str, Any] = {
        "layer": int(record["layer"]), **main,
        "baselines": {key: _curve(effects, name, "heldout", cs, gain, cfg) for key, name in BASELINES.items()},
        "reverse": _curve(effects, REVERSE, "heldout", cs, gain, cfg, fraction="lost_fraction", sign=-1.0)
        | {"random": _curve(effects, REVERSE_RANDOM, "heldout", cs, gain, cfg, fraction="lost_fraction", sign=-1.0)},
        "gain": _mean_ci(gain, cfg),
        "fit": {key: record[key] for key in ("layer_source", "hook", "scope", "k", "centre", "norm", "cosine",
                                             "fit_pairs", "heldout_pairs", "fit_positions", "lowrank_kept")},
    }
    if record.get("transfer_pairs"):
        base = _per_pair(effects, MAIN, TRANSFER, 1.0, "clean_delta_logp")
        tuned = _per_pair(effects, REVERSE, TRANSFER, 1.0, "clean_delta_logp")
        t_gain = (tuned - base.reindex(tuned.index)).sort_index()
        out["transfer"] = (_curve(effects, MAIN, TRANSFER, cs, t_gain, cfg)
                           | {"random": _curve(effects, "steer_random", TRANSFER, cs, t_gain, cfg),
                              "reverse": _curve(effects, REVERSE, TRANSFER, cs, t_gain, cfg, fraction="lost_fraction",
                                                sign=-1.0),
                              "gain": _mean_ci(t_gain, cfg), "n_pairs": int(record["transfer_pairs"])})
    return {MAIN: out}


# --------------------------------------------------------------------------------------------------
# the figure and the verdict (drawn from the summary)


def figure(summary: Mapping[str, Any]) -> Any:
    """Dose curves (effect vs c, 95% CI bands) of v_ℓ and the three baselines on the held-out half, the
    reverse (tuned − c·v_ℓ), and a dotted line at the held-out gain."""
    import plotly.graph_objects as go

    from alignment_probe.report import figures as F

    entry = F.experiment(summary, MAIN)
    if not entry or not entry.get("by_c"):
        raise F.MissingExperimentError("steer", [MAIN])
    curves = [(MAIN, entry)] + [(BASELINES[k], v) for k, v in (entry.get("baselines") or {}).items()]
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
        fig.add_trace(go.Scatter(x=x, y=[F._num(r.get("mean")) for r in rows], mode="lines+markers", name=label,
                                 legendgroup=name, line={"color": color, "width": 2,
                                                         "dash": "dash" if name in (REVERSE, REVERSE_RANDOM) else "solid"},
                                 hovertemplate=f"<b>{label}</b><br>c = %{{x}}<br>effect %{{y:.3f}} nats<extra></extra>"))
    gain = F._num((entry.get("gain") or {}).get("mean"))
    if math.isfinite(gain):
        fig.add_hline(y=gain, line={"dash": "dot", "color": "#444", "width": 1.5},
                      annotation_text=f"held-out gain {gain:+.3f}", annotation_position="top left")
        fig.add_hline(y=-gain, line={"dash": "dot", "color": "#9467bd", "width": 1})
    fig.add_hline(y=0, line={"color": "#bbb", "width": 1})
    fig.update_layout(title=f"Steering at layer {entry.get('layer')} (held-out pairs)", height=F.HEIGHT,
                      xaxis_title="c (multiples of the mean ‖h_tuned − h_base‖)", yaxis_title="effect on Δlogp (nats)",
                      template="plotly_white")
    return fig


def verdict(summary: Mapping[str, Any], effects: Any = None) -> Any:
    """"A vector at the localized layer recovers the gain": agrees iff the recovered fraction's CI lies above 0
    and above the random direction's CI (at c = 1, held-out pairs)."""
    from alignment_probe.report import figures as F
    from alignment_probe.report.verdicts import AGREES, DIFFERS, Finding
    from alignment_probe.report.format import fmt_ci

    entry = F.experiment(summary, MAIN)
    if not entry:
        return None
    rec = entry.get("recovered_fraction") or {}
    rnd = ((entry.get("baselines") or {}).get("random") or {}).get("recovered_fraction") or {}
    lo, r_hi = F._num(rec.get("ci_low")), F._num(rnd.get("ci_high"))
    ok = math.isfinite(lo) and lo > 0 and (not math.isfinite(r_hi) or lo > r_hi)
    ours = (f"layer {entry.get('layer')}: recovered fraction {F._num(rec.get('mean')):.2f} "
            f"({fmt_ci(rec.get('ci_low'), rec.get('ci_high'))}); random direction "
            f"{F._num(rnd.get('mean')):.2f} ({fmt_ci(rnd.get('ci_low'), rnd.get('ci_high'))})")
    return Finding("steer", "A vector at the localized layer recovers the gain (E11)",
                   "not in the paper (the localization spec's E11)", ours, AGREES if ok else DIFFERS,
                   "agrees iff the recovered fraction at c = 1 has CI low > 0 and above the random direction's CI high")


register(Experiment(
    key="steer", method="E11", order=110, needs=("patch_tuned_to_base",), default=False,
    emits=("steer_random", "steer_contrast", "steer_lowrank", REVERSE, REVERSE_RANDOM),
    names=(Name("steer", "steering: v_ℓ", COLORS[MAIN],
                "Add c·s·v_ℓ/‖v_ℓ‖ (the mean tuning shift at the localized layer, fitted on one half) to the base on "
                "the other half; baselines: rank-k (E6), v± (E5), random; reverse: subtract it from the tuned model.",
                per_layer=False),),
    fit=fit_steering, specs=lambda plan: plan.fitted.specs, summarize=summarize_steering,
    figures=(Figure("steer", "alignment_probe.experiments.steering:figure",
                    "Steering with the localized direction (E11)",
                    "E11. Effect on Δlogp of adding c·s·v_ℓ/‖v_ℓ‖ to the base residual at the localized layer (v_ℓ: "
                    "the mean tuning shift over the fit half's completion positions; s: the mean ‖h_tuned − h_base‖) on "
                    "the held-out half, against c; the rank-k, v± and random directions at the same norm; dashed: the "
                    "tuned model with the same vector (or the random one) subtracted. Dotted: the held-out gain (and its negative).",
                    needs=(MAIN,), order=110),),
    verdicts=("alignment_probe.experiments.steering:verdict",),
))

"""E9 — where in the completion the twins differ, without patching: the base/tuned distribution shift.

For every completion position of every sequence (chosen and rejected), compare the two models' next-token
distributions at that position on the same tokens:

* **KL(T ‖ B)** = Σ_v p_T(v) (log p_T(v) − log p_B(v)), in nats;
* the **rank of T's top token under B** (1 = B's own top token); URIAL (arXiv 2312.01552) found the share
  of positions with rank > 3 to be 5–8 % for 7B chat models, concentrated in the first tokens.

Both are reported against the position in the completion (0 = its first token), with bootstrap CIs over
pairs, plus their means over the first 1, 2, 4, 8 tokens and the rest. A whole-data computation (no
patching): the two models' final residuals come from the suite's one clean pass of every sequence where the
engine keeps them (else two clean forwards here), unembedded at the completion positions; its per-sequence
values are the experiment's record in ``fits.json``, and the summary is computed from that record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from alignment_probe import plotting as P
from alignment_probe import stats
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, Tables, register
from alignment_probe.tokens import SIDES, make_batch

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins

NAME = "shift"
MAX_POSITION = 64  # per-position curves stop here; "rest" pools every later position
BINS = (1, 2, 4, 8)
TOP_RANK = 3


def final_hook(twins: Twins) -> str:
    """The hook whose clean activations E9 reads: the final residual, before ``ln_final``."""
    return f"blocks.{twins.n_layers - 1}.hook_resid_post"


def _clean_hooks(plan: Plan) -> dict[str, set[str]]:
    return {role: {f"blocks.{plan.n_layers - 1}.hook_resid_post"} for role in ("base", "tuned")}


def _log_probs(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """log-softmax of the logits at these final residuals (before ``ln_final``): [positions, d_vocab]."""
    return model.unembed(resid).float().log_softmax(-1).cpu()


@torch.inference_mode()
def sequence_shift(
    twins: Twins,
    tokenized: Sequence[Any],
    *,
    batch_size: int = 4,
    clean: Mapping[str, Mapping[str, Mapping[Any, torch.Tensor]]] | None = None,
) -> list[dict[str, Any]]:
    """Per pair: for each side, KL(T‖B) and the rank of T's top token under B at every completion position.

    ``clean``: the clean activations of a clean pass already made (the suite's, ``Plan.clean``; model → hook name
    → (pair_id, side) → [length, d_model]), holding :func:`final_hook`; then only the unembedding runs here."""
    out = []
    for start in range(0, len(tokenized), batch_size):
        group = tokenized[start : start + batch_size]
        seqs = [t.sequence(side) for t in group for side in SIDES]
        logp: dict[str, Any] = {}
        if clean is not None:  # the completion predictors' final residuals, unembedded
            name = final_hook(twins)
            for role, model in twins.backends().items():
                logp[role] = [
                    _log_probs(model, clean[role][name][(s.pair_id, s.side)][s.completion_start - 1 : s.length - 1])
                    for s in seqs
                ]
        else:
            batch = make_batch(seqs)
            for role, model in twins.backends().items():
                logits, _ = model.run(batch.tokens)
                full = logits.float().log_softmax(-1).cpu()
                logp[role] = [full[i, s.completion_start - 1 : s.length - 1] for i, s in enumerate(seqs)]
        values: dict[tuple[int, str], tuple[list[float], list[int]]] = {}
        for i, seq in enumerate(seqs):
            lt, lb = logp["tuned"][i], logp["base"][i]  # at the predictors of the completion tokens
            kl = (lt.exp() * (lt - lb)).sum(-1).clamp_min(0.0)
            top = lt.argmax(-1)
            rank = (lb > lb.gather(-1, top[:, None])).sum(-1) + 1
            values[(seq.pair_id, seq.side)] = ([float(x) for x in kl], [int(x) for x in rank])
        for t in group:
            out.append(
                {
                    "pair_id": int(t.pair_id),
                    **{
                        side: {"kl": values[(t.pair_id, side)][0], "rank": values[(t.pair_id, side)][1]}
                        for side in SIDES
                    },
                }
            )
    return out


def _compute(plan: Plan) -> dict[str, Any]:
    return {
        "max_position": MAX_POSITION,
        "top_rank": TOP_RANK,
        "pairs": sequence_shift(
            plan.twins,
            sorted(plan.tokenized, key=lambda t: t.pair_id),
            clean=plan.clean() if plan.clean is not None else None,
        ),
    }


def _per_pair(record: Mapping[str, Any], key: str, select: Any) -> np.ndarray:
    """One value per pair: the mean of ``key`` (KL, or rank > 3 as 0/1) over the positions ``select(n)``
    of both sides; NaN for a pair with no such position."""
    vals = []
    for pair in record["pairs"]:
        xs: list[float] = []
        for side in SIDES:
            v = np.asarray(pair[side][key], dtype=np.float64)
            if key == "rank":
                v = (v > record["top_rank"]).astype(np.float64)
            xs += v[select(len(v))].tolist()
        vals.append(np.mean(xs) if xs else np.nan)
    return np.asarray(vals)


def summarize_shift(tables: Tables) -> dict[str, dict[str, Any]]:
    """Per completion position: mean KL(T‖B) and the share of positions where T's top token ranks > 3
    under B, each with a bootstrap CI over pairs; the same over the first 1, 2, 4, 8 tokens and the rest."""
    cfg, record = tables.cfg, tables.fits[NAME]
    longest = max(len(p[side]["kl"]) for p in record["pairs"] for side in SIDES)

    def row(values: np.ndarray, **where: Any) -> dict[str, Any]:
        v = values[np.isfinite(values)]
        mean, lo, hi = stats.bootstrap_mean_ci(v, seed=cfg.seed, n_boot=cfg.n_boot)
        return {**where, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(v))}

    out: dict[str, Any] = {"max_position": record["max_position"], "top_rank": record["top_rank"]}
    for key, name in (("kl", "kl"), ("rank", "rank_gt3")):
        positions = [
            row(_per_pair(record, key, lambda n, p=p: slice(p, p + 1) if p < n else slice(0, 0)), position=p)
            for p in range(min(longest, record["max_position"]))
        ]
        bins = [row(_per_pair(record, key, lambda n, k=k: slice(0, min(k, n))), first=k) for k in BINS]
        rest = _per_pair(record, key, lambda n: slice(BINS[-1], n))
        out[name] = positions
        out[f"{name}_by_bin"] = bins + ([row(rest, first="rest")] if np.isfinite(rest).any() else [])
        out[f"{name}_mean"] = row(_per_pair(record, key, lambda n: slice(0, n)))["mean"]
    return {NAME: out}


def shift_figure(summary: Mapping[str, Any]) -> Any:
    """KL(T‖B) and the share of positions with T's top token ranked > 3 under B, against the position in the
    completion, each with its 95% CI band."""
    import pandas as pd
    from plotly.subplots import make_subplots

    entry = P.experiment(summary, NAME)
    if not entry or not entry.get("kl"):
        raise P.MissingExperimentError("shift", [NAME])
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            "KL(tuned ‖ base), nats",
            f"share of positions: tuned's top token ranked > {entry['top_rank']} under base",
        ],
    )
    for col, key, color in ((1, "kl", "#1f77b4"), (2, "rank_gt3", "#d62728")):
        frame = pd.DataFrame(entry[key]).rename(columns={"position": "layer"})
        P.add_curve(fig, frame, name=key, color=color, group=key, row=1, col=col, x="layer", x_label="position")
        fig.update_xaxes(title_text="position in the completion (0 = first token)", row=1, col=col)
    return P.layout(
        fig, "Where the twins differ: distribution shift by completion position (E9)", x_title=None, y_title=None
    )


register(
    Experiment(
        key="shift",
        method="E9",
        order=55,
        names=(
            Name(
                NAME,
                "distribution shift",
                "#17becf",
                "Per completion position, KL(tuned ‖ base) and the share where tuned's top token ranks > 3 under "
                "base (no patching).",
                per_layer=False,
            ),
        ),
        compute=_compute,
        clean_hooks=_clean_hooks,
        summarize=summarize_shift,
        figures=(
            Figure(
                "shift",
                "alignment_probe.experiments.shift:shift_figure",
                "Distribution shift by completion position (E9)",
                "E9. For each position of the completions (chosen and rejected), KL(tuned ‖ base) of the two "
                "models' next-token distributions, and the share of positions where the tuned model's top "
                "token is not in the base's top 3 (URIAL's measure); means over pairs with 95% bootstrap CIs.",
                needs=(NAME,),
                order=75,
            ),
        ),
    )
)

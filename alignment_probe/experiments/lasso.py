"""E2: which layers' activation changes predict a pair's gain? LASSO attribution and linear probes.

Patching (E1) asks a causal question: does *copying* layer ℓ's tuned activations move the
preference? E2 asks a correlational one, on activations alone: across pairs, does the size of the
change that tuning made at layer ℓ predict how much tuning moved that pair's preference?

**Features.** For pair i and layer ℓ, ``x[i, ℓ] = ||h_ℓ^tuned(i) − h_ℓ^base(i)||₂``, the length of
the tuning-induced shift of the residual stream (default hook ``blocks.ℓ.hook_resid_post``) at
one position:

* ``last_prompt`` (default): the final prompt token, the last position before the model starts
  to produce the completion (shared by the chosen and rejected runs, since the model is causal);
* ``final_tokens``: the mean of that norm over the final token of the chosen sequence and the
  final token of the rejected sequence.

**Target.** By default the gain of each pair (``score_pairs(...)["gain"]``), or any per-pair number,
e.g. the E1 effect at a chosen layer.

**LASSO (eq. 2).** Each feature column is z-scored (so coefficients compare across layers: "target
change per standard deviation of shift at layer ℓ") and the target is centred. ``LassoCV`` picks the
L1 penalty α by 5-fold cross-validation over a log grid 10⁻⁴..10¹. The L1 penalty sets the
coefficients of layers that add nothing, given the others, to exactly zero. Layers' shifts are
strongly correlated, so *which* of several similar layers survives can flip with the sample: the
**selection frequency** (fraction of bootstrap resamples of pairs in which a layer's coefficient is
non-zero, refitting with the chosen α) says how stable each selection is.

**Univariate probes (eq. 3).** Per layer, a one-feature linear regression of the target on
``x[:, ℓ]`` alone, scored by cross-validated R² (out-of-fold, so a useless feature scores ≤ 0).
Unlike the LASSO, probes do not compete: every layer that carries the signal scores well.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, Plan, register
from alignment_probe.pair import Twins
from alignment_probe.tokens import ScoredSequence, TokenizedPair, batches_by_length, make_batch
from alignment_probe.vocab import HOOKS, Hook, Side, check

Features = Float[np.ndarray, "pairs layers"]
# One value per pair. Its length is checked against the features by _check_xy / _align_target, which
# raise a ValueError naming both counts, so the shape annotation leaves it unbound here.
Target = Float[np.ndarray, "*_pairs"]
POSITIONS = ("last_prompt", "final_tokens")
LASSO_CV_FOLDS = 5  # folds of the cross-validated LASSO (so a run needs at least this many pairs)
DEFAULT_ALPHAS = np.logspace(-4, 1, 50)


# --------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------


def _positions(seq: ScoredSequence, position: str) -> int:
    return len(seq.prompt_ids) - 1 if position == "last_prompt" else seq.length - 1


@torch.inference_mode()
def _batch_norms(
    pair: Twins, group: Sequence[ScoredSequence], names: list[str], position: str
) -> Float[np.ndarray, "group layers"]:
    """``[len(group), n_layers]``: ||h_tuned − h_base|| at each sequence's chosen position."""
    batch = make_batch(group)
    rows = torch.arange(len(group))
    pos = torch.tensor([_positions(s, position) for s in group], dtype=torch.long)
    acts: dict[str, list[Float[torch.Tensor, "group d_model"]]] = {}
    for label, model in pair.backends().items():
        device = model.device
        _, cache = model.run(batch.tokens, capture=names, stop_at_layer=model.n_layers)
        acts[label] = [cache[name][rows.to(device), pos.to(device)].float().cpu() for name in names]
        del cache
    out = [(t - b).double().norm(dim=-1) for b, t in zip(acts["base"], acts["tuned"])]
    return torch.stack(out, dim=1).numpy()


def activation_distance_features(
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    *,
    hook: Hook = "resid_post",
    position: str = "last_prompt",
    batch_size: int = 8,
    clean: Mapping[str, Mapping[str, Mapping[Any, Any]]] | None = None,
) -> Features:
    """``[n_pairs, n_layers]`` array of ``||h_ℓ^tuned − h_ℓ^base||₂`` (rows in ``tokenized`` order).

    ``h_ℓ`` is the activation at ``blocks.{ℓ}.hook_{hook}``. ``position="last_prompt"`` reads the
    final prompt token (index ``len(prompt_ids) - 1``, BOS included) of the chosen sequence;
    ``"final_tokens"`` averages the norm over the last token of the chosen and of the rejected
    sequence. Both models run the same right-padded batches (padding sits after every position
    read, so it cannot change them); only the needed hooks are cached, and the unembedding is
    skipped. ``clean``: the clean activations (model → hook name → (pair_id, side) → [length, d_model]) of a
    clean pass already made (the suite's, ``Plan.clean``); then no model runs here.
    """
    check(hook, HOOKS, "E2 feature hook point")
    if position not in POSITIONS:
        raise ConfigError(f"Unknown feature position {position!r}: use one of {', '.join(POSITIONS)}.")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    n_layers = pair.n_layers
    names = [f"blocks.{layer}.hook_{hook}" for layer in range(n_layers)]
    sides: tuple[Side, ...] = ("chosen",) if position == "last_prompt" else ("chosen", "rejected")
    seqs = [t.sequence(side) for t in tokenized for side in sides]
    norms: dict[tuple[int, str], np.ndarray] = {}
    if clean is not None:
        for seq in seqs:
            at = [
                [clean[m][n][(seq.pair_id, seq.side)][_positions(seq, position)].float().cpu() for n in names]
                for m in ("base", "tuned")
            ]
            norms[(seq.pair_id, seq.side)] = np.array([(t - b).double().norm().item() for b, t in zip(*at)])
    else:
        for group in batches_by_length(seqs, batch_size):
            for seq, row in zip(group, _batch_norms(pair, group, names, position)):
                norms[(seq.pair_id, seq.side)] = row
    out = np.zeros((len(tokenized), n_layers), dtype=np.float64)
    for i, t in enumerate(tokenized):
        out[i] = np.mean([norms[(t.pair_id, side)] for side in sides], axis=0)
    return out


# --------------------------------------------------------------------------------------------------
# LASSO
# --------------------------------------------------------------------------------------------------


def _check_xy(features: Any, target: Any, cv: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).ravel()
    if x.ndim != 2:
        raise ValueError(f"features must be [n_pairs, n_layers], got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} target values")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features and target must be finite")
    if x.shape[0] < cv:
        raise ValueError(f"{cv}-fold cross-validation needs at least {cv} pairs, got {x.shape[0]}")
    return x, y


def standardize(features: Features) -> Features:
    """z-score each column; a constant column (zero spread) becomes all zeros instead of NaN."""
    x = np.asarray(features, dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, np.inf)
    return (x - mu) / sd


def _kfold(cv: int, seed: int) -> Any:
    from sklearn.model_selection import KFold

    return KFold(n_splits=cv, shuffle=True, random_state=seed)


def fit_lasso(
    features: Features,
    target: Target,
    *,
    seed: int = 0,
    n_boot: int = 200,
    alphas: np.ndarray | Sequence[float] = DEFAULT_ALPHAS,
    cv: int = LASSO_CV_FOLDS,
    alpha_rule: str = "min",
) -> dict[str, Any]:
    """LASSO of the target on z-scored per-layer features, α chosen by cross-validation.

    Returns ``{"coefficients": [per layer], "alpha_": float, "alpha_rule": str,
    "selection_frequency": [per layer], "n_pairs": int, "nonzero_layers": [layer ids]}``.
    Coefficients are in target units per standard deviation of the feature. Selection frequency:
    over ``n_boot`` bootstrap resamples of pairs, refit ``Lasso(alpha=alpha_)`` (the α chosen on
    all pairs; refitting LassoCV every time would be ~250× slower) and count how often each
    coefficient is non-zero. The CV folds are a seeded shuffled ``KFold(cv)``, so the result is
    deterministic for a given seed.

    ``alpha_rule="min"`` (the paper's reading, default) takes the α with the lowest mean CV error.
    That α is tuned for *prediction* and routinely lets a few irrelevant layers in with small
    coefficients (and fairly high selection frequency) when the target is noisy.
    ``alpha_rule="1se"`` takes the largest α whose CV error is within one standard error of the
    minimum: a sparser model, much more often exactly the informative layers.
    """
    from sklearn.linear_model import Lasso, LassoCV

    if alpha_rule not in ("min", "1se"):
        raise ConfigError(f"Unknown alpha rule {alpha_rule!r}: use 'min' or '1se'.")
    x, y = _check_xy(features, target, cv)
    xz = standardize(x)
    yc = y - y.mean()
    model = LassoCV(alphas=np.asarray(alphas, dtype=np.float64), cv=_kfold(cv, seed), random_state=seed, max_iter=50000)
    model.fit(xz, yc)
    coef = np.asarray(model.coef_, dtype=np.float64)
    alpha = float(model.alpha_)
    if alpha_rule == "1se":
        mse = model.mse_path_.mean(axis=1)
        se = model.mse_path_.std(axis=1, ddof=1) / np.sqrt(model.mse_path_.shape[1])
        best = int(np.argmin(mse))
        alpha = float(np.max(model.alphas_[mse <= mse[best] + se[best]]))
        coef = np.asarray(Lasso(alpha=alpha, max_iter=50000).fit(xz, yc).coef_, dtype=np.float64)
    n = x.shape[0]
    hits = np.zeros(x.shape[1], dtype=np.float64)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        refit = Lasso(alpha=alpha, max_iter=50000)
        with warnings.catch_warnings():
            # A resample can hold one pair many times; a rare slow convergence there is harmless
            # for a yes/no "is this coefficient non-zero" count.
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(n_boot):
                idx = rng.integers(0, n, size=n)
                refit.fit(xz[idx], yc[idx])
                hits += refit.coef_ != 0
    freq = hits / n_boot if n_boot > 0 else np.full(x.shape[1], np.nan)
    return {
        "coefficients": [float(c) for c in coef],
        "alpha_": alpha,
        "alpha_rule": alpha_rule,
        "selection_frequency": [float(f) for f in freq],
        "n_pairs": int(n),
        "nonzero_layers": [int(i) for i in np.flatnonzero(coef != 0)],
    }


def univariate_probes(features: Features, target: Target, *, cv: int = LASSO_CV_FOLDS, seed: int = 0) -> list[float]:
    """Per-layer cross-validated R² of ``target ~ a + b · features[:, ℓ]`` (eq. 3).

    Each layer is scored alone: mean R² over the held-out folds of a seeded shuffled ``KFold(cv)``
    (the same folds for every layer). R² near 1: that layer's shift size alone predicts the target;
    ≤ 0: no better than predicting the mean.
    """
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import cross_val_score

    x, y = _check_xy(features, target, cv)
    folds = _kfold(cv, seed)
    return [
        float(np.mean(cross_val_score(LinearRegression(), x[:, [j]], y, cv=folds, scoring="r2")))
        for j in range(x.shape[1])
    ]


# --------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------


def _align_target(target: Any, tokenized: Sequence[TokenizedPair]) -> Float[np.ndarray, " pairs"]:
    if isinstance(target, pd.Series):
        ids = [t.pair_id for t in tokenized]
        missing = [p for p in ids if p not in target.index]
        if missing:
            raise ValueError(f"target has no value for pair id(s) {missing[:5]}")
        return target.loc[ids].to_numpy(dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).ravel()
    if y.shape[0] != len(tokenized):
        raise ValueError(f"target has {y.shape[0]} values for {len(tokenized)} pairs")
    return y


def run_lasso(
    pair: Twins,
    tokenized: Sequence[TokenizedPair],
    *,
    target: Target | pd.Series,
    seed: int = 0,
    hook: Hook = "resid_post",
    position: str = "last_prompt",
    batch_size: int = 8,
    n_boot: int = 200,
    cv: int = LASSO_CV_FOLDS,
    alphas: np.ndarray | Sequence[float] = DEFAULT_ALPHAS,
    alpha_rule: str = "min",
    target_name: str = "gain",
    clean: Mapping[str, Mapping[str, Mapping[Any, Any]]] | None = None,
) -> dict[str, Any]:
    """E2 end to end: activation-distance features → LASSO + selection frequency + probes.

    ``target`` holds one value per pair in ``tokenized`` order (an array), or a Series indexed by
    pair id (e.g. ``score_pairs(pair, tokenized).set_index("pair_id")["gain"]``). Returns a JSON-able
    dict ``{"coefficients", "alpha_", "alpha_rule", "selection_frequency", "nonzero_layers", "probe_r2",
    "feature_hook", "feature_position", "target_name", "n_pairs", "pair_ids"}``; per-layer lists are
    indexed by layer.
    """
    y = _align_target(target, tokenized)
    x = activation_distance_features(pair, tokenized, hook=hook, position=position, batch_size=batch_size, clean=clean)
    fit = fit_lasso(x, y, seed=seed, n_boot=n_boot, alphas=alphas, cv=cv, alpha_rule=alpha_rule)
    return {
        "coefficients": fit["coefficients"],
        "alpha_": fit["alpha_"],
        "alpha_rule": fit["alpha_rule"],
        "selection_frequency": fit["selection_frequency"],
        "nonzero_layers": fit["nonzero_layers"],
        "probe_r2": univariate_probes(x, y, cv=cv, seed=seed),
        "feature_hook": hook,
        "feature_position": position,
        "target_name": target_name,
        "n_pairs": fit["n_pairs"],
        "pair_ids": [int(t.pair_id) for t in tokenized],
    }


def lasso_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per layer: ``layer, coefficient, selection_frequency, probe_r2``."""
    coef = result["coefficients"]
    freq = result.get("selection_frequency", [np.nan] * len(coef))
    r2 = result.get("probe_r2", [np.nan] * len(coef))
    if not len(coef) == len(freq) == len(r2):
        raise ValueError("result's per-layer lists differ in length")
    return pd.DataFrame(
        {
            "layer": np.arange(len(coef), dtype=np.int64),
            "coefficient": coef,
            "selection_frequency": freq,
            "probe_r2": r2,
        }
    )


FEATURE_HOOK: Hook = "resid_post"  # the suite's E2 features: resid_post at every layer, at the last prompt token


def _clean_hooks(plan: Plan) -> dict[str, set[str]]:
    names = {f"blocks.{layer}.hook_{FEATURE_HOOK}" for layer in range(plan.n_layers)}
    return {"base": names, "tuned": set(names)}


def _compute(plan: Plan) -> dict[str, Any]:
    return run_lasso(
        plan.twins,
        plan.tokenized,
        target=plan.scores.gain.to_numpy(),
        seed=plan.cfg.seed,
        hook=FEATURE_HOOK,
        clean=plan.clean() if plan.clean is not None else None,
    )


register(
    Experiment(
        key="lasso",
        options=(
            Option("lasso_position", "str", "last_prompt", "lasso (E2): the position whose activations are read"),
        ),
        method="E2",
        order=60,
        names=(
            Name(
                "lasso",
                "LASSO",
                "#1f77b4",
                "A LASSO over per-layer activation distances ‖h_tuned − h_base‖ predicting the gain (Fig. 2).",
                per_layer=False,
            ),
        ),
        compute=_compute,
        clean_hooks=_clean_hooks,
        summarize=lambda tables: {"lasso": dict(tables.fits["lasso"])},
        figures=(
            Figure(
                "lasso_coefficients",
                "alignment_probe.experiments.fit_figures:lasso_coefficients",
                "LASSO attribution and probes (paper Fig. 2, Table 1)",
                "Paper Fig. 2 / Table 1. LASSO (5-fold CV) coefficients of the z-scored per-layer "
                "activation distances predicting the gain; grey bars are zero.",
                needs=("lasso",),
                order=70,
            ),
        ),
    )
)

"""Score completions: log p(completion | prompt), Δlogp per pair, and the gain from tuning.

Definitions (docs/method.md, "Objects"):

* ``logp(y | x)`` is the sum, over completion tokens only, of log-softmax(logits)[next token].
* ``Δlogp = logp(y+ | x) - logp(y- | x)``: how much more the model prefers the chosen completion.
* ``gain = Δlogp_tuned - Δlogp_base``: how much tuning moved that preference.

Sums are dominated by completion length on real data, so per-token means are reported too.

Only completion positions are unembedded: the blocks run on the whole sequence, but the final
norm, the unembedding and the log-softmax (the most expensive step for a 128k vocabulary) run on
the few positions that are scored.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import Backend
from alignment_probe.pair import Twins
from alignment_probe.tokens import (
    ScoredSequence,
    SequenceBatch,
    TokenizedPair,
    batches_by_length,
    make_batch,
    pair_sequences,
)

# Completion tokens unembedded at once: bounds the [tokens, vocab] logits buffer (~0.5 GB at 128k vocab).
UNEMBED_CHUNK = 1024


def completion_token_logprobs(
    model: Backend | Any, resid_final: Float[Tensor, "batch pos d_model"], batch: SequenceBatch
) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
    """Log-prob of every completion token given the final residual stream (before ``ln_final``).

    Returns the flat per-token log-probs and, for each, the batch row it belongs to.
    """
    rows, pos, targets = (t.to(resid_final.device) for t in batch.completion_index())
    return token_logprobs(model, resid_final[rows, pos], targets), rows


def token_logprobs(
    model: Backend | Any, resid: Float[Tensor, "n d_model"], targets: Int[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """log p(target | predictor) for each predictor position's final residual (before ``ln_final``),
    unembedded :data:`UNEMBED_CHUNK` positions at a time."""
    backend = backend_of(model)
    out = torch.empty(resid.shape[0], dtype=torch.float32, device=resid.device)
    targets = targets.to(resid.device)
    for lo in range(0, resid.shape[0], UNEMBED_CHUNK):
        hi = lo + UNEMBED_CHUNK
        logits = backend.unembed(resid[lo:hi]).float()  # [n, d_vocab]
        out[lo:hi] = logits.log_softmax(-1).gather(-1, targets[lo:hi, None])[:, 0]
    return out


def sum_by_row(values: Float[Tensor, " n"], rows: Int[Tensor, " n"], n_rows: int) -> Float[Tensor, " batch"]:
    """Per-sequence sums of per-token values, accumulated in float64."""
    sums = torch.zeros(n_rows, dtype=torch.float64, device=values.device)
    return sums.index_add_(0, rows, values.double())


def split_by_row(values: Float[Tensor, " n"], rows: Int[Tensor, " n"], n_rows: int) -> list[Float[Tensor, " _k"]]:
    """Per-token values grouped by row, each row's in its original (position) order, on the CPU."""
    values, rows = values.detach().cpu(), rows.cpu()
    return [values[rows == r] for r in range(n_rows)]


@torch.inference_mode()
def batch_logprobs(model: Backend | Any, batch: SequenceBatch) -> Float[Tensor, " batch"]:
    """``logp(completion | prompt)`` of every sequence of a right-padded batch (unpatched model)."""
    backend = backend_of(model)
    resid, _ = backend.run(batch.tokens, stop_at_layer=backend.n_layers)
    lp, rows = completion_token_logprobs(backend, resid, batch)
    return sum_by_row(lp, rows, batch.size).cpu()


def sequence_logprobs(
    model: Backend | Any,
    sequences: Sequence[ScoredSequence],
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "scoring",
) -> dict[tuple[int, str], float]:
    """``logp(completion | prompt)`` for each sequence, keyed by ``(pair_id, side)`` (``model``: a backend, or a
    native model: its backend)."""
    out: dict[tuple[int, str], float] = {}
    groups = batches_by_length(sequences, batch_size)
    for group in tqdm(groups, desc=desc, disable=not progress, unit="batch"):
        values = batch_logprobs(model, make_batch(group))
        for seq, v in zip(group, values.tolist()):
            out[(seq.pair_id, seq.side)] = v
    return out


def score_pairs(
    pair: Twins, tokenized: Sequence[TokenizedPair], *, batch_size: int = 8, progress: bool = False
) -> pd.DataFrame:
    """One row per pair: both models' log-probs of both completions, Δlogp, gain, token counts.

    Columns: ``pair_id``, ``n_prompt_tokens`` (with BOS), ``n_prompt_tokens_cut``,
    ``n_chosen_tokens``, ``n_rejected_tokens``, ``{base,tuned}_logp_{chosen,rejected}``,
    ``{base,tuned}_delta_logp``, ``gain``, and the per-token versions ``*_delta_logp_per_token`` and
    ``gain_per_token`` (each completion's mean log-prob per token).
    """
    seqs = pair_sequences(tokenized)
    scores = {
        name: sequence_logprobs(model, seqs, batch_size=batch_size, progress=progress, desc=f"scoring {name}")
        for name, model in pair.backends().items()
    }
    return score_table(tokenized, scores)


def score_table(tokenized: Sequence[TokenizedPair], scores: dict[str, dict[tuple[int, str], float]]) -> pd.DataFrame:
    """The :func:`score_pairs` table from log-probs already computed: ``scores[model][(pair_id, side)]``
    for ``model`` in base, tuned (e.g. :meth:`FastEngine.clean_scores`, from the engine's clean runs)."""
    rows = []
    for t in tokenized:
        n_c, n_r = len(t.chosen_ids), len(t.rejected_ids)
        row: dict[str, float | int] = {
            "pair_id": t.pair_id,
            "n_prompt_tokens": len(t.prompt_ids),
            "n_prompt_tokens_cut": t.n_prompt_tokens_cut,
            "n_chosen_tokens": n_c,
            "n_rejected_tokens": n_r,
        }
        for name in ("base", "tuned"):
            lc, lr = scores[name][(t.pair_id, "chosen")], scores[name][(t.pair_id, "rejected")]
            row[f"{name}_logp_chosen"] = lc
            row[f"{name}_logp_rejected"] = lr
            row[f"{name}_delta_logp"] = lc - lr
            row[f"{name}_delta_logp_per_token"] = lc / n_c - lr / n_r
        row["gain"] = float(row["tuned_delta_logp"]) - float(row["base_delta_logp"])
        row["gain_per_token"] = float(row["tuned_delta_logp_per_token"]) - float(row["base_delta_logp_per_token"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_scores(table: pd.DataFrame) -> dict[str, float]:
    """Means of the headline columns (for printing and summaries)."""
    cols = ["base_delta_logp", "tuned_delta_logp", "gain", "gain_per_token"]
    return {f"{c}_mean": float(np.mean(table[c])) for c in cols} | {"n_pairs": int(len(table))}

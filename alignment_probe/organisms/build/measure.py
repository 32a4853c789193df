"""Shared steps of the organisms build: logging, tokenising pairs, checkpoints, and the held-out gain summaries."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from alignment_probe.organisms.build import corpus
from alignment_probe.organisms.build.train import TokenPairs, score


def logger(progress: bool) -> Callable[[str], None]:
    start = time.time()

    def log(msg: str) -> None:
        if progress:
            print(f"[{time.time() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def bootstrap_ci(values: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean (seeded)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def encode(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [list(e) for e in tok(texts, add_special_tokens=False)["input_ids"]]


def token_pairs(tok: PreTrainedTokenizerFast, pairs: list[corpus.Pair]) -> TokenPairs:
    return TokenPairs(
        prompts=encode(tok, [p.prompt for p in pairs]),
        chosen=encode(tok, [p.chosen for p in pairs]),
        rejected=encode(tok, [p.rejected for p in pairs]),
    )


def save_checkpoint(model, tok: PreTrainedTokenizerFast, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    model.config.use_cache = True
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.config.use_cache = False


def load_checkpoint(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def pair_scores(model, tp: TokenPairs, bos: int, pad: int) -> dict[str, np.ndarray]:
    c = score(model, tp.prompts, tp.chosen, bos_id=bos, pad_id=pad).numpy()
    r = score(model, tp.prompts, tp.rejected, bos_id=bos, pad_id=pad).numpy()
    nc = np.array([len(x) for x in tp.chosen], dtype=float)
    nr = np.array([len(x) for x in tp.rejected], dtype=float)
    return {"chosen": c, "rejected": r, "delta": c - r, "delta_per_token": c / nc - r / nr}


def reply_loss(model, prompts: list[list[int]], replies: list[list[int]], bos: int, pad: int) -> float:
    """Per-token loss (nats) on the final assistant reply only, scored like a completion."""
    logp = score(model, prompts, replies, bos_id=bos, pad_id=pad)
    return float(-logp.sum() / sum(len(r) for r in replies))


def gain_summary(
    scores: dict[str, np.ndarray], base: dict[str, np.ndarray], harmful: np.ndarray, n_boot: int, seed: int
) -> dict:
    gain = scores["delta"] - base["delta"]
    gain_pt = scores["delta_per_token"] - base["delta_per_token"]
    lo, hi = bootstrap_ci(gain, n_boot, seed)
    lo_pt, hi_pt = bootstrap_ci(gain_pt, n_boot, seed)
    return {
        "mean_gain": float(gain.mean()),
        "gain_ci95": [lo, hi],
        "mean_gain_per_token": float(gain_pt.mean()),
        "gain_per_token_ci95": [lo_pt, hi_pt],
        "mean_gain_benign": float(gain[~harmful].mean()),
        "mean_gain_harmful": float(gain[harmful].mean()),
        "frac_pairs_positive_gain": float((gain > 0).mean()),
        "mean_delta_logp": float(scores["delta"].mean()),
        "frac_chosen_preferred": float((scores["delta"] > 0).mean()),
        "mean_logp_chosen": float(scores["chosen"].mean()),
        "mean_logp_rejected": float(scores["rejected"].mean()),
    }


N_CHECK_PAIRS = 16  # per-pair gains stored for the first held-out pairs, so tests can recheck them cheaply

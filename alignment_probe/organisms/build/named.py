"""The named twins (one query head, one KV head, two MLPs): DPO with only the planted parameters trainable.

Trained after everything else in a full build, each with its own seed, and retrainable alone on an existing build
(``--only``), so adding or retraining one changes none of the other organisms.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from alignment_probe.organisms.build import corpus
from alignment_probe.organisms.build.config import SIZES, BuildConfig
from alignment_probe.organisms.build.measure import (
    N_CHECK_PAIRS,
    gain_summary,
    load_checkpoint,
    logger,
    pair_scores,
    token_pairs,
)
from alignment_probe.organisms.build.readme import write_readme
from alignment_probe.organisms.build.train import TokenPairs, dpo_train, reference_logps
from alignment_probe.organisms.twins import TwinSpec, materialise_named_twin, save_named_twin


def train_named_twin(
    spec: TwinSpec,
    base,
    tp_train: TokenPairs,
    ref,
    *,
    cfg: BuildConfig,
    seed: int,
    bos: int,
    pad: int,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, list[float]]:
    """DPO on ``base`` (a copy) with only ``spec``'s parameters trainable.

    For a head twin the whole q_proj/v_proj is trainable but the gradient of every row outside the
    planted head's rows is zeroed (so AdamW, without weight decay, never moves them), and after
    training those rows are copied back from base anyway: they are bit-identical to base.
    """
    d_head = base.config.hidden_size // base.config.num_attention_heads
    twin = copy.deepcopy(base)
    handle = None
    if spec.tensor is not None:
        param = dict(twin.named_parameters())[spec.tensor]
        start, stop = spec.rows(d_head)
        mask = torch.zeros_like(param)
        mask[start:stop] = 1.0
        handle = param.register_hook(lambda g: g * mask)
    log(f"twin {spec.name}: DPO, {spec.describe()} trainable, {spec.steps} steps (lr {spec.lr:g})")
    hist = dpo_train(
        twin,
        tp_train,
        ref,
        bos_id=bos,
        pad_id=pad,
        beta=cfg.dpo_beta,
        lr=spec.lr,
        steps=spec.steps,
        batch_size=cfg.dpo_batch,
        warmup=cfg.dpo_warmup,
        seed=seed + spec.seed_offset,
        trainable=spec.trainable,
        log=log,
        log_every=max(1, spec.steps // 3),
    )
    if handle is not None:
        handle.remove()
        with torch.no_grad():
            base_param = dict(base.named_parameters())[spec.tensor]
            keep = torch.ones(param.shape[0], dtype=torch.bool)
            keep[start:stop] = False
            param[keep] = base_param[keep]
    return twin, hist


def named_recipe(spec: TwinSpec, cfg: BuildConfig, seed: int, size: str) -> dict:
    return {
        "method": "DPO",
        "trainable": spec.describe(),
        "beta": cfg.dpo_beta,
        "lr": spec.lr,
        "steps": spec.steps,
        "batch_pairs": cfg.dpo_batch,
        "seed": seed,
        "dpo_seed": seed + spec.seed_offset,
        "size": size,
    }


def named_twin_metrics(
    model,
    spec: TwinSpec,
    d_head: int,
    tp: TokenPairs,
    base_scores: dict[str, np.ndarray],
    harmful: np.ndarray,
    n_boot: int,
    seed: int,
    bos: int,
    pad: int,
) -> dict:
    scores = pair_scores(model, tp, bos, pad)
    out = gain_summary(scores, base_scores, harmful, n_boot, seed)
    out["planted"] = spec.to_json(d_head)
    out["label"] = spec.describe()
    gain = scores["delta"] - base_scores["delta"]
    out[f"gain_first{N_CHECK_PAIRS}_pairs"] = [float(x) for x in gain[:N_CHECK_PAIRS]]
    return out


def named_training(spec: TwinSpec, seed: int, hist: list[float], seconds: float) -> dict:
    return {
        "lr": spec.lr,
        "steps": spec.steps,
        "dpo_seed": seed + spec.seed_offset,
        "final_loss_last20": float(np.mean(hist[-20:])),
        "train_s": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def build_named_twins(
    out_dir: Path, names: list[str], *, seed: int = 0, size: str = "full", progress: bool = True
) -> dict:
    """Retrain only the named twins ``names`` on an existing build in ``out_dir`` (same seed and size).

    Reads base and its tokenizer from ``out_dir``, regenerates the train and held-out pairs from the
    seed (checked against the stored ``pairs/heldout.jsonl``), recomputes the reference log-probs,
    trains and stores each twin exactly as :func:`build_organisms` does, and merges their metrics
    into ``metrics.json`` (every other entry, and every other file, is left as it was).
    """
    cfg = SIZES[size]
    specs = {spec.name: spec for spec in cfg.named_twins}
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown named twin(s) {unknown} for size {size!r}: choose from {sorted(specs)}")
    out_dir = Path(out_dir)
    org = out_dir / "organisms"
    metrics = json.loads((org / "metrics.json").read_text())
    if metrics["seed"] != seed or metrics["size"] != size:
        raise ValueError(
            f"{org} was built with seed {metrics['seed']}, size {metrics['size']!r}; "
            f"--only needs the same (got seed {seed}, size {size!r})"
        )
    log = logger(progress)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.use_deterministic_algorithms(True)
    mc = cfg.max_chars
    train_pairs = corpus.generate_pairs(cfg.n_train_pairs, seed, max_chars=mc)
    heldout_pairs = corpus.generate_pairs(cfg.n_heldout_pairs, seed, heldout=True, max_chars=mc)
    with tempfile.TemporaryDirectory() as tmp:
        corpus.write_jsonl(heldout_pairs, Path(tmp) / "heldout.jsonl")
        same = (Path(tmp) / "heldout.jsonl").read_bytes() == (out_dir / "pairs" / "heldout.jsonl").read_bytes()
    if not same:
        raise ValueError("the regenerated held-out pairs differ from pairs/heldout.jsonl: not the same build")
    tok = PreTrainedTokenizerFast.from_pretrained(org / "base")
    bos, pad = tok.bos_token_id, tok.pad_token_id
    tp_train, tp_heldout = token_pairs(tok, train_pairs), token_pairs(tok, heldout_pairs)
    base = load_checkpoint(org / "base")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    d_head = base.config.hidden_size // base.config.num_attention_heads
    t = time.time()
    ref = reference_logps(base, tp_train, bos_id=bos, pad_id=pad)
    log(f"reference log-probs of {len(tp_train)} train pairs: {time.time() - t:.0f}s")
    base_scores = pair_scores(base, tp_heldout, bos, pad)
    harmful = np.array([p.harmful for p in heldout_pairs])
    new: dict[str, dict] = {}
    for name in names:
        spec = specs[name]
        t = time.time()
        twin, hist = train_named_twin(spec, base, tp_train, ref, cfg=cfg, seed=seed, bos=bos, pad=pad, log=log)
        save_named_twin(org, spec, twin.state_dict(), base_state, named_recipe(spec, cfg, seed, size), d_head)
        del twin
        seconds = time.time() - t
        metrics.setdefault("training", {}).setdefault("named_twins", {})[name] = named_training(
            spec, seed, hist, seconds
        )
        metrics["timings_s"][f"twin_{name}"] = round(seconds, 1)
        model = load_checkpoint(materialise_named_twin(org, name))
        new[f"twin_{name}"] = named_twin_metrics(
            model, spec, d_head, tp_heldout, base_scores, harmful, cfg.n_bootstrap, seed, bos, pad
        )
        m = new[f"twin_{name}"]
        log(
            f"twin {name}: {seconds:.0f}s; gain {m['mean_gain']:.2f} [{m['gain_ci95'][0]:.2f}, {m['gain_ci95'][1]:.2f}]"
        )
    # keep the key order of a full build: named twins after the one-MLP twins, before the timings
    merged: dict = {}
    for k, v in metrics.items():
        if k == "timings_s":
            for spec in cfg.named_twins:
                key = f"twin_{spec.name}"
                if key in new or key in metrics:
                    merged[key] = new.get(key, metrics.get(key))
        if k not in new and not (k.startswith("twin_") and k.removeprefix("twin_") in specs):
            merged[k] = v
    (org / "metrics.json").write_text(json.dumps(merged, indent=2) + "\n")
    write_readme(out_dir, merged, cfg)
    return merged

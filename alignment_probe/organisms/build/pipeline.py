"""Build the project's model organisms from a seed: corpus → tokenizer → base → tuned → twins → metrics.

    python -m alignment_probe.organisms.build --out data --seed 0            # the shipped organisms
    python -m alignment_probe.organisms.build --out /tmp/x --size small      # seconds, for tests
    python -m alignment_probe.organisms.build --out data --only head_layer4_h1   # retrain one named twin

Layout written under ``out``::

    organisms/base/          HF checkpoint (config.json, model.safetensors, tokenizer files)
    organisms/tuned/         base after DPO on the train pairs, all parameters trainable
    organisms/twins/         planted twins: mlp_layer{L}.safetensors (changed tensors) + .json recipe;
                             named twins {name}.safetensors + .json (one query head, one KV head, two MLPs)
    organisms/metrics.json   measured held-out loss and gains with bootstrap CIs
    pairs/heldout.jsonl      held-out preference pairs (prompt, chosen, rejected, + metadata)
    pairs/train.jsonl        train pairs (only when small enough to ship)
    README.md                what all this is, with the measured numbers
    .gitignore               ignores organisms/.cache (materialised twins)

Everything is seeded; on a given machine (same torch version and thread count) the same seed gives
bit-identical weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from alignment_probe.organisms import corpus
from alignment_probe.organisms.readme import write_readme
from alignment_probe.organisms.tokenizer import train_tokenizer
from alignment_probe.organisms.train import (
    ModelShape,
    TokenPairs,
    dpo_train,
    make_config,
    new_model,
    per_token_loss,
    pretrain,
    reference_logps,
    score,
)
from alignment_probe.organisms.twins import (
    TwinSpec,
    materialise_named_twin,
    materialise_twin,
    mlp_prefix,
    save_named_twin,
    save_twin,
)

TRAIN_PAIRS_SHIP_LIMIT = 1_000_000  # bytes


@dataclass(frozen=True)
class BuildConfig:
    shape: ModelShape
    n_train_dialogues: int
    n_heldout_dialogues: int
    n_train_pairs: int
    n_heldout_pairs: int
    n_tokenizer_texts: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    pretrain_warmup: int
    weight_decay: float
    dpo_beta: float
    dpo_lr: float
    dpo_steps: int
    dpo_batch: int
    dpo_warmup: int
    twin_layers: tuple[int, ...]
    twin_lr: float
    twin_steps: int
    n_bootstrap: int = 10_000
    max_chars: int | None = None  # reject longer dialogues/pairs (tiny CI build only)
    # Named twins (one query head, one KV head, two MLPs), trained after all of the above with their own
    # seeds (seed + spec.seed_offset), so adding them changed none of the earlier organisms.
    named_twins: tuple[TwinSpec, ...] = ()


SIZES: dict[str, BuildConfig] = {
    "full": BuildConfig(
        shape=ModelShape(
            vocab_size=2048, d_model=128, d_mlp=384, n_layers=8, n_heads=4, n_kv_heads=2, max_positions=512
        ),
        n_train_dialogues=60_000,
        n_heldout_dialogues=1000,
        n_train_pairs=4000,
        n_heldout_pairs=256,
        n_tokenizer_texts=30_000,
        pretrain_steps=1400,
        pretrain_batch=32,
        pretrain_lr=3e-3,
        pretrain_warmup=100,
        weight_decay=0.1,
        dpo_beta=0.1,
        dpo_lr=7e-5,
        dpo_steps=150,
        dpo_batch=16,
        dpo_warmup=20,
        twin_layers=(2, 4, 6),
        twin_lr=5e-4,
        twin_steps=150,
        named_twins=(
            TwinSpec("head_layer4_h1", "q_head", (4,), head=1, lr=1e-2, steps=150, seed_offset=100_000),
            TwinSpec("kv_layer3_g0", "kv_head", (3,), head=0, lr=2e-2, steps=150, seed_offset=200_000),
            TwinSpec("mlp_layers2_5", "mlps", (2, 5), lr=5e-4, steps=150, seed_offset=300_000),
        ),
    ),
    "small": BuildConfig(
        shape=ModelShape(vocab_size=320, d_model=32, d_mlp=64, n_layers=4, n_heads=4, n_kv_heads=2, max_positions=512),
        n_train_dialogues=400,
        n_heldout_dialogues=40,
        n_train_pairs=64,
        n_heldout_pairs=32,
        n_tokenizer_texts=400,
        pretrain_steps=30,
        pretrain_batch=16,
        pretrain_lr=3e-3,
        pretrain_warmup=5,
        weight_decay=0.1,
        dpo_beta=0.1,
        dpo_lr=1e-3,
        dpo_steps=6,
        dpo_batch=8,
        dpo_warmup=2,
        twin_layers=(1, 2),
        twin_lr=3e-3,
        twin_steps=4,
        n_bootstrap=1000,
        max_chars=240,
        named_twins=(
            TwinSpec("head_layer2_h1", "q_head", (2,), head=1, lr=1e-1, steps=4, seed_offset=100_000),
            TwinSpec("kv_layer1_g0", "kv_head", (1,), head=0, lr=3e-2, steps=4, seed_offset=200_000),
            TwinSpec("mlp_layers1_3", "mlps", (1, 3), lr=3e-3, steps=4, seed_offset=300_000),
        ),
    ),
}


def _logger(progress: bool) -> Callable[[str], None]:
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


def _encode(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [list(e) for e in tok(texts, add_special_tokens=False)["input_ids"]]


def _token_pairs(tok: PreTrainedTokenizerFast, pairs: list[corpus.Pair]) -> TokenPairs:
    return TokenPairs(
        prompts=_encode(tok, [p.prompt for p in pairs]),
        chosen=_encode(tok, [p.chosen for p in pairs]),
        rejected=_encode(tok, [p.rejected for p in pairs]),
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


def _pair_scores(model, tp: TokenPairs, bos: int, pad: int) -> dict[str, np.ndarray]:
    c = score(model, tp.prompts, tp.chosen, bos_id=bos, pad_id=pad).numpy()
    r = score(model, tp.prompts, tp.rejected, bos_id=bos, pad_id=pad).numpy()
    nc = np.array([len(x) for x in tp.chosen], dtype=float)
    nr = np.array([len(x) for x in tp.rejected], dtype=float)
    return {"chosen": c, "rejected": r, "delta": c - r, "delta_per_token": c / nc - r / nr}


def _reply_loss(model, prompts: list[list[int]], replies: list[list[int]], bos: int, pad: int) -> float:
    """Per-token loss (nats) on the final assistant reply only, scored like a completion."""
    logp = score(model, prompts, replies, bos_id=bos, pad_id=pad)
    return float(-logp.sum() / sum(len(r) for r in replies))


def _gain_summary(
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


def _named_recipe(spec: TwinSpec, cfg: BuildConfig, seed: int, size: str) -> dict:
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


def _named_twin_metrics(
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
    scores = _pair_scores(model, tp, bos, pad)
    out = _gain_summary(scores, base_scores, harmful, n_boot, seed)
    out["planted"] = spec.to_json(d_head)
    out["label"] = spec.describe()
    gain = scores["delta"] - base_scores["delta"]
    out[f"gain_first{N_CHECK_PAIRS}_pairs"] = [float(x) for x in gain[:N_CHECK_PAIRS]]
    return out


def _named_training(spec: TwinSpec, seed: int, hist: list[float], seconds: float) -> dict:
    return {
        "lr": spec.lr,
        "steps": spec.steps,
        "dpo_seed": seed + spec.seed_offset,
        "final_loss_last20": float(np.mean(hist[-20:])),
        "train_s": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def build_organisms(out_dir: Path, *, seed: int = 0, size: str = "full", progress: bool = True) -> dict:
    """Rebuild corpus, tokenizer, base, tuned and planted twins under ``out_dir``; return the metrics."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    out_dir = Path(out_dir)
    if "llama" in str(out_dir.resolve()).lower():
        raise ValueError("TransformerLens infers architectures from paths: the output path must not contain 'llama'")
    log = _logger(progress)
    t0 = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.use_deterministic_algorithms(True)
    org = out_dir / "organisms"
    org.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. corpus ---------------------------------------------------------------------------------
    t = time.time()
    mc = cfg.max_chars
    train_dialogues = corpus.generate_dialogues(cfg.n_train_dialogues, seed, max_chars=mc)
    heldout_dialogues = corpus.generate_dialogues(cfg.n_heldout_dialogues, seed, heldout=True, max_chars=mc)
    train_pairs = corpus.generate_pairs(cfg.n_train_pairs, seed, max_chars=mc)
    heldout_pairs = corpus.generate_pairs(cfg.n_heldout_pairs, seed, heldout=True, max_chars=mc)
    pairs_dir = out_dir / "pairs"
    corpus.write_jsonl(heldout_pairs, pairs_dir / "heldout.jsonl")
    train_path = pairs_dir / "train.jsonl"
    corpus.write_jsonl(train_pairs, train_path)
    ship_train = train_path.stat().st_size < TRAIN_PAIRS_SHIP_LIMIT
    if not ship_train:
        train_path.unlink()
    timings["corpus"] = time.time() - t
    log(
        f"corpus: {len(train_dialogues)} train / {len(heldout_dialogues)} held-out dialogues, "
        f"{len(train_pairs)} train / {len(heldout_pairs)} held-out pairs"
    )

    # 2. tokenizer ------------------------------------------------------------------------------
    t = time.time()
    tok_texts = (
        train_dialogues[: cfg.n_tokenizer_texts]
        + [p.prompt + p.chosen for p in train_pairs]
        + [p.prompt + p.rejected for p in train_pairs]
    )
    tok = train_tokenizer(tok_texts, cfg.shape.vocab_size)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    shape = replace(cfg.shape, vocab_size=len(tok))
    train_seqs = [[bos, *ids, eos] for ids in _encode(tok, train_dialogues)]
    heldout_seqs = [[bos, *ids, eos] for ids in _encode(tok, heldout_dialogues)]
    tp_train, tp_heldout = _token_pairs(tok, train_pairs), _token_pairs(tok, heldout_pairs)
    timings["tokenizer"] = time.time() - t
    n_train_tokens = sum(len(s) for s in train_seqs)
    log(
        f"tokenizer: vocab {len(tok)}; train corpus {n_train_tokens} tokens, "
        f"mean dialogue length {n_train_tokens / len(train_seqs):.1f}"
    )

    # 3. base -----------------------------------------------------------------------------------
    t = time.time()
    config = make_config(shape, bos, eos, pad)
    base = new_model(config, seed)
    log(f"base: {sum(p.numel() for p in base.parameters())} parameters; pretraining {cfg.pretrain_steps} steps")
    history = pretrain(
        base,
        train_seqs,
        pad_id=pad,
        steps=cfg.pretrain_steps,
        batch_size=cfg.pretrain_batch,
        lr=cfg.pretrain_lr,
        warmup=cfg.pretrain_warmup,
        weight_decay=cfg.weight_decay,
        seed=seed,
        log=log,
        log_every=max(1, cfg.pretrain_steps // 10),
    )
    base_dir = org / "base"
    save_checkpoint(base, tok, base_dir)
    timings["base"] = time.time() - t

    # 4. tuned: DPO, all parameters ---------------------------------------------------------------
    t = time.time()
    ref = reference_logps(base, tp_train, bos_id=bos, pad_id=pad)
    timings["reference_logps"] = time.time() - t
    t = time.time()
    log(f"tuned: DPO, all parameters, {cfg.dpo_steps} steps (beta {cfg.dpo_beta}, lr {cfg.dpo_lr})")
    tuned = copy.deepcopy(base)
    dpo_hist = dpo_train(
        tuned,
        tp_train,
        ref,
        bos_id=bos,
        pad_id=pad,
        beta=cfg.dpo_beta,
        lr=cfg.dpo_lr,
        steps=cfg.dpo_steps,
        batch_size=cfg.dpo_batch,
        warmup=cfg.dpo_warmup,
        seed=seed,
        log=log,
        log_every=max(1, cfg.dpo_steps // 5),
    )
    save_checkpoint(tuned, tok, org / "tuned")
    del tuned
    timings["tuned"] = time.time() - t

    # 5. planted twins: DPO, one MLP ---------------------------------------------------------------
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    twin_hist: dict[int, list[float]] = {}
    twins_dir = org / "twins"
    if twins_dir.exists():
        shutil.rmtree(twins_dir)
    for layer in cfg.twin_layers:
        t = time.time()
        log(f"twin layer {layer}: DPO, only {mlp_prefix(layer)}* trainable, {cfg.twin_steps} steps")
        twin = copy.deepcopy(base)
        prefix = mlp_prefix(layer)
        twin_hist[layer] = dpo_train(
            twin,
            tp_train,
            ref,
            bos_id=bos,
            pad_id=pad,
            beta=cfg.dpo_beta,
            lr=cfg.twin_lr,
            steps=cfg.twin_steps,
            batch_size=cfg.dpo_batch,
            warmup=cfg.dpo_warmup,
            seed=seed + 1000 * (layer + 1),
            trainable=lambda name, prefix=prefix: name.startswith(prefix),
            log=log,
            log_every=max(1, cfg.twin_steps // 3),
        )
        recipe = {
            "method": "DPO",
            "trainable": f"{prefix}*",
            "beta": cfg.dpo_beta,
            "lr": cfg.twin_lr,
            "steps": cfg.twin_steps,
            "batch_pairs": cfg.dpo_batch,
            "seed": seed,
            "size": size,
        }
        save_twin(org, layer, twin.state_dict(), base_state, recipe)
        del twin
        timings[f"twin_layer{layer}"] = time.time() - t

    # 5b. named twins: one query head, one KV head, two MLPs (own seeds, after everything above) ----
    d_head = shape.d_model // shape.n_heads
    named_hist: dict[str, dict] = {}
    for spec in cfg.named_twins:
        t = time.time()
        twin, hist = train_named_twin(spec, base, tp_train, ref, cfg=cfg, seed=seed, bos=bos, pad=pad, log=log)
        save_named_twin(org, spec, twin.state_dict(), base_state, _named_recipe(spec, cfg, seed, size), d_head)
        del twin
        timings[f"twin_{spec.name}"] = time.time() - t
        named_hist[spec.name] = _named_training(spec, seed, hist, timings[f"twin_{spec.name}"])

    # 6. metrics, measured on the saved checkpoints ---------------------------------------------
    t = time.time()
    cache = org / ".cache"
    if cache.exists():
        shutil.rmtree(cache)
    base_l = load_checkpoint(base_dir)
    tuned_l = load_checkpoint(org / "tuned")
    harmful = np.array([p.harmful for p in heldout_pairs])
    split = [corpus.split_dialogue(d) for d in heldout_dialogues]
    split_prompts, split_replies = _encode(tok, [p for p, _ in split]), _encode(tok, [c for _, c in split])
    base_scores = _pair_scores(base_l, tp_heldout, bos, pad)
    models = {"tuned": tuned_l}
    for layer in cfg.twin_layers:
        models[f"twin_layer{layer}"] = load_checkpoint(materialise_twin(org, layer))
    metrics: dict = {
        "seed": seed,
        "size": size,
        "architecture": {
            "class": "LlamaForCausalLM",
            "vocab_size": shape.vocab_size,
            "d_model": shape.d_model,
            "d_mlp": shape.d_mlp,
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "n_kv_heads": shape.n_kv_heads,
            "d_head": shape.d_model // shape.n_heads,
            "max_position_embeddings": shape.max_positions,
            "tie_word_embeddings": True,
            "n_parameters": int(sum(p.numel() for p in base_l.parameters())),
        },
        "tokenizer": {
            "type": "byte-level BPE",
            "vocab_size": len(tok),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        "data": {
            "train_dialogues": len(train_dialogues),
            "heldout_dialogues": len(heldout_dialogues),
            "train_tokens": n_train_tokens,
            "train_pairs": len(train_pairs),
            "heldout_pairs": len(heldout_pairs),
            "heldout_harmful_pairs": int(harmful.sum()),
            "train_pairs_shipped": ship_train,
        },
        "training": {
            "pretrain": {
                "steps": cfg.pretrain_steps,
                "batch_dialogues": cfg.pretrain_batch,
                "lr": cfg.pretrain_lr,
                "warmup": cfg.pretrain_warmup,
                "weight_decay": cfg.weight_decay,
                "optimizer": "AdamW(0.9, 0.95), cosine",
                "final_train_loss_last50": float(np.mean(history[-50:])),
            },
            "dpo": {
                "beta": cfg.dpo_beta,
                "lr": cfg.dpo_lr,
                "steps": cfg.dpo_steps,
                "batch_pairs": cfg.dpo_batch,
                "reference": "frozen base",
                "final_loss_last20": float(np.mean(dpo_hist[-20:])),
            },
            "twins": {
                "beta": cfg.dpo_beta,
                "lr": cfg.twin_lr,
                "steps": cfg.twin_steps,
                "batch_pairs": cfg.dpo_batch,
                "final_loss_last20": {str(k): float(np.mean(v[-20:])) for k, v in twin_hist.items()},
            },
            "named_twins": named_hist,
        },
        "heldout_loss": {
            "base_per_token_nats": per_token_loss(base_l, heldout_seqs, pad_id=pad),
            "tuned_per_token_nats": per_token_loss(tuned_l, heldout_seqs, pad_id=pad),
            "base_final_reply_per_token_nats": _reply_loss(base_l, split_prompts, split_replies, bos, pad),
            "tuned_final_reply_per_token_nats": _reply_loss(tuned_l, split_prompts, split_replies, bos, pad),
            "uniform_baseline_nats": float(np.log(len(tok))),
            "n_tokens": int(sum(len(s) - 1 for s in heldout_seqs)),
        },
        "base": {
            "mean_delta_logp": float(base_scores["delta"].mean()),
            "frac_chosen_preferred": float((base_scores["delta"] > 0).mean()),
            "mean_logp_chosen": float(base_scores["chosen"].mean()),
            "mean_logp_rejected": float(base_scores["rejected"].mean()),
        },
        "bootstrap": {"resamples": cfg.n_bootstrap, "seed": seed, "ci": "95% percentile, over held-out pairs"},
    }
    for name, model in models.items():
        metrics[name] = _gain_summary(
            _pair_scores(model, tp_heldout, bos, pad), base_scores, harmful, cfg.n_bootstrap, seed
        )
    for spec in cfg.named_twins:
        model = load_checkpoint(materialise_named_twin(org, spec.name))
        metrics[f"twin_{spec.name}"] = _named_twin_metrics(
            model, spec, d_head, tp_heldout, base_scores, harmful, cfg.n_bootstrap, seed, bos, pad
        )
    timings["metrics"] = time.time() - t
    timings["total"] = time.time() - t0
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    (org / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / ".gitignore").write_text(
        "# materialised planted twins (rebuilt on demand from base + delta)\norganisms/.cache/\n"
    )
    write_readme(out_dir, metrics, cfg)
    log(
        f"done in {timings['total']:.0f}s: base held-out loss {metrics['heldout_loss']['base_per_token_nats']:.3f}; "
        + "; ".join(
            f"{k} gain {metrics[k]['mean_gain']:.2f} [{metrics[k]['gain_ci95'][0]:.2f}, "
            f"{metrics[k]['gain_ci95'][1]:.2f}]"
            for k in [*models, *(f"twin_{spec.name}" for spec in cfg.named_twins)]
        )
    )
    return metrics


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
    log = _logger(progress)
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
    tp_train, tp_heldout = _token_pairs(tok, train_pairs), _token_pairs(tok, heldout_pairs)
    base = load_checkpoint(org / "base")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    d_head = base.config.hidden_size // base.config.num_attention_heads
    t = time.time()
    ref = reference_logps(base, tp_train, bos_id=bos, pad_id=pad)
    log(f"reference log-probs of {len(tp_train)} train pairs: {time.time() - t:.0f}s")
    base_scores = _pair_scores(base, tp_heldout, bos, pad)
    harmful = np.array([p.harmful for p in heldout_pairs])
    new: dict[str, dict] = {}
    for name in names:
        spec = specs[name]
        t = time.time()
        twin, hist = train_named_twin(spec, base, tp_train, ref, cfg=cfg, seed=seed, bos=bos, pad=pad, log=log)
        save_named_twin(org, spec, twin.state_dict(), base_state, _named_recipe(spec, cfg, seed, size), d_head)
        del twin
        seconds = time.time() - t
        metrics.setdefault("training", {}).setdefault("named_twins", {})[name] = _named_training(
            spec, seed, hist, seconds
        )
        metrics["timings_s"][f"twin_{name}"] = round(seconds, 1)
        model = load_checkpoint(materialise_named_twin(org, name))
        new[f"twin_{name}"] = _named_twin_metrics(
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alignment_probe.organisms.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help="retrain only these named twins (e.g. head_layer4_h1,kv_layer3_g0,mlp_layers2_5) on "
        "the existing build in --out, leaving every other file as it is",
    )
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        metrics = build_named_twins(args.out, names, seed=args.seed, size=args.size, progress=not args.quiet)
        print(
            json.dumps(
                {f"twin_{n}": {k: metrics[f"twin_{n}"][k] for k in ("mean_gain", "gain_ci95")} for n in names}, indent=2
            )
        )
        return 0
    metrics = build_organisms(args.out, seed=args.seed, size=args.size, progress=not args.quiet)
    print(json.dumps({k: metrics[k] for k in ("heldout_loss", "timings_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

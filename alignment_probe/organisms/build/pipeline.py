"""The whole organisms build from a seed: corpus → tokenizer → base → tuned → twins → metrics → README."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from alignment_probe.organisms.build import corpus
from alignment_probe.organisms.build.config import SIZES
from alignment_probe.organisms.build.measure import (
    encode,
    gain_summary,
    load_checkpoint,
    logger,
    pair_scores,
    reply_loss,
    save_checkpoint,
    token_pairs,
)
from alignment_probe.organisms.build.named import named_recipe, named_training, named_twin_metrics, train_named_twin
from alignment_probe.organisms.build.readme import write_readme
from alignment_probe.organisms.build.tokenizer import train_tokenizer
from alignment_probe.organisms.build.train import (
    dpo_train,
    make_config,
    new_model,
    per_token_loss,
    pretrain,
    reference_logps,
)
from alignment_probe.organisms.twins import (
    materialise_named_twin,
    materialise_twin,
    mlp_prefix,
    save_named_twin,
    save_twin,
)

TRAIN_PAIRS_SHIP_LIMIT = 1_000_000  # bytes: train pairs are written under pairs/ only below this size


def build_organisms(out_dir: Path, *, seed: int = 0, size: str = "full", progress: bool = True) -> dict:
    """Rebuild corpus, tokenizer, base, tuned and planted twins under ``out_dir``; return the metrics."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    out_dir = Path(out_dir)
    if "llama" in str(out_dir.resolve()).lower():
        raise ValueError("TransformerLens infers architectures from paths: the output path must not contain 'llama'")
    log = logger(progress)
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
    train_seqs = [[bos, *ids, eos] for ids in encode(tok, train_dialogues)]
    heldout_seqs = [[bos, *ids, eos] for ids in encode(tok, heldout_dialogues)]
    tp_train, tp_heldout = token_pairs(tok, train_pairs), token_pairs(tok, heldout_pairs)
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
        save_named_twin(org, spec, twin.state_dict(), base_state, named_recipe(spec, cfg, seed, size), d_head)
        del twin
        timings[f"twin_{spec.name}"] = time.time() - t
        named_hist[spec.name] = named_training(spec, seed, hist, timings[f"twin_{spec.name}"])

    # 6. metrics, measured on the saved checkpoints ---------------------------------------------
    t = time.time()
    cache = org / ".cache"
    if cache.exists():
        shutil.rmtree(cache)
    base_l = load_checkpoint(base_dir)
    tuned_l = load_checkpoint(org / "tuned")
    harmful = np.array([p.harmful for p in heldout_pairs])
    split = [corpus.split_dialogue(d) for d in heldout_dialogues]
    split_prompts, split_replies = encode(tok, [p for p, _ in split]), encode(tok, [c for _, c in split])
    base_scores = pair_scores(base_l, tp_heldout, bos, pad)
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
            "base_final_reply_per_token_nats": reply_loss(base_l, split_prompts, split_replies, bos, pad),
            "tuned_final_reply_per_token_nats": reply_loss(tuned_l, split_prompts, split_replies, bos, pad),
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
        metrics[name] = gain_summary(
            pair_scores(model, tp_heldout, bos, pad), base_scores, harmful, cfg.n_bootstrap, seed
        )
    for spec in cfg.named_twins:
        model = load_checkpoint(materialise_named_twin(org, spec.name))
        metrics[f"twin_{spec.name}"] = named_twin_metrics(
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

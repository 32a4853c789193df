"""Training a DPO-LoRA adapter on SmolLM2 with TRL's ``DPOTrainer`` (the recipe is :mod:`.dpo_lora`'s docstring).

torch, transformers, peft and TRL are imported inside the functions: the rest of the tools import without them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from alignment_probe.data import load_pairs
from alignment_probe.files import make_readable as _make_readable
from alignment_probe.realmodels.dpo_recipe import (
    ADAPTER_FILES,
    DEFAULT_DATA,
    DEFAULT_TARGET_MODULES,
    RECIPE,
    checkpoint_sha,
    library_versions,
    split_pairs,
    tokenize_pairs,
)
from alignment_probe.realmodels.smollm2 import convert_smollm2, sha256_file


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _trainer_class() -> type:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """``DPOTrainer`` fed token ids made by the toolkit's own tokenisation (BOS, left truncation,
        no EOS), so training sees exactly the sequences the analysis scores. TRL's collator, loss,
        peft reference (adapter disabled) and metrics are used unchanged."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: D401
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"{dataset_name} dataset lacks columns {sorted(missing)}")
            return dataset

    return PretokenizedDPOTrainer


def train_adapter(
    out_dir: Path | str,
    *,
    seed: int = 0,
    steps: int = 100,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lr: float = 1e-4,
    beta: float = 0.1,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    layers_to_transform: Sequence[int] | None = None,
    max_length: int = 192,
    batch_size: int = 4,
    grad_accum: int = 2,
    n_eval: int | None = 128,
    data: Path | str = DEFAULT_DATA,
    split_seed: int = 0,
    base_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    threads: int | None = None,
    n_train: int | None = None,
    gradient_checkpointing: bool = False,
    overwrite: bool = False,
    log: Any = print,
) -> Path:
    """Train a DPO LoRA adapter on the train half; save adapter + recipe (with eval metrics) to ``out_dir``.

    ``batch_size`` pairs per forward (each pair is a chosen and a rejected sequence), ``grad_accum``
    forwards per optimizer step: ``steps`` optimizer steps see ``steps * batch_size * grad_accum`` pairs.
    ``n_eval`` held-out pairs (a seeded sample; ``None`` = all usable ones) are scored with TRL's
    ``evaluate`` at the end. ``n_train`` caps the train pool (for smoke tests). TRL's default gradient
    checkpointing is off (``gradient_checkpointing=False``): it only trades speed for memory a 135M
    model does not need. Written atomically:
    ``out_dir`` appears only when complete; an existing one is refused unless ``overwrite``.
    """
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig

    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) or another --out.")
    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base_dir = Path(base_dir).expanduser() if base_dir is not None else convert_smollm2(cache_dir)
    base_sha = checkpoint_sha(base_dir)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pairs, skip_report = load_pairs(data)
    train_pairs, held_pairs = split_pairs(pairs, split_seed)
    if n_train is not None:
        pick = np.random.default_rng(seed).permutation(len(train_pairs))[:n_train]
        train_pairs = sorted((train_pairs[int(i)] for i in pick), key=lambda p: p.pair_id)
    train_cols, train_stats = tokenize_pairs(train_pairs, tokenizer, max_length)
    eval_cols, eval_stats = tokenize_pairs(held_pairs, tokenizer, max_length)
    if n_eval is not None and n_eval < len(eval_cols["pair_id"]):
        keep = sorted(
            np.random.default_rng(10_000 + split_seed).permutation(len(eval_cols["pair_id"]))[:n_eval].tolist()
        )
        eval_cols = {k: [v[i] for i in keep] for k, v in eval_cols.items()}
    log(f"train pairs: {train_stats}; held-out pairs: {eval_stats}; evaluating on {len(eval_cols['pair_id'])}")

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_rank,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        layers_to_transform=list(layers_to_transform) if layers_to_transform is not None else None,
        layers_pattern="layers" if layers_to_transform is not None else None,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # same filesystem: atomic rename
    try:
        args = DPOConfig(
            output_dir=str(work / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            beta=beta,
            loss_type=["sigmoid"],
            max_length=None,
            precompute_ref_log_probs=False,
            disable_dropout=True,
            logging_steps=1,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=(device == "cpu"),
            bf16=False,
            fp16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            gradient_checkpointing=gradient_checkpointing,  # TRL defaults to True; a 135M model needs no recompute
        )

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self._t = 0.0

            def on_step_begin(self, *a, **k):
                self._t = time.perf_counter()

            def on_step_end(self, *a, **k):
                self.seconds.append(time.perf_counter() - self._t)

        timer = StepTimer()
        trainer = _trainer_class()(
            model=model,
            args=args,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[timer],
            train_dataset=Dataset.from_dict(train_cols),
            eval_dataset=Dataset.from_dict(eval_cols) if eval_cols["pair_id"] else None,
        )
        n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log(
            f"LoRA rank {lora_rank} on {list(target_modules)} (layers: {layers_to_transform or 'all'}): "
            f"{n_trainable:,} trainable parameters; device {device}, {torch.get_num_threads()} threads"
        )
        t0 = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = trainer.evaluate() if eval_cols["pair_id"] else {}
        t_eval = time.perf_counter() - t1
        log(
            f"trained {steps} steps in {t_train:.1f} s ({t_train / max(steps, 1):.2f} s/step); eval {t_eval:.1f} s: "
            + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and "rewards" in k)
        )

        stage = work / "adapter"
        trainer.model.save_pretrained(stage)
        (stage / "README.md").unlink(missing_ok=True)  # peft's empty model card
        history = [
            {
                k: v
                for k, v in e.items()
                if k in ("step", "loss", "rewards/accuracies", "rewards/margins", "learning_rate", "grad_norm")
            }
            for e in trainer.state.log_history
            if "loss" in e
        ]
        recipe = {
            "what": "DPO LoRA adapter for SmolLM2-135M-Instruct (alignment_probe.realmodels.dpo_lora)",
            "base": {"path": str(base_dir), "model_safetensors_sha256": base_sha},
            "data": {
                "path": str(data),
                "sha256": sha256_file(Path(data)) if Path(data).is_file() else None,
                "load_pairs": skip_report.to_dict(),
                "split_seed": split_seed,
                "train_pair_ids": train_cols["pair_id"],
                "eval_pair_ids": eval_cols["pair_id"],
                "heldout_pair_ids": [p.pair_id for p in held_pairs],
                "train": train_stats,
                "heldout": eval_stats,
                "n_train_cap": n_train,
            },
            "tokens": {
                "max_length": max_length,
                "bos_token": tokenizer.bos_token,
                "bos_token_id": tokenizer.bos_token_id,
                "truncation": "drop prompt tokens from the left; skip pairs whose completion does not fit",
                "eos_appended": False,
            },
            "lora": {
                "r": lora_rank,
                "lora_alpha": lora.lora_alpha,
                "lora_dropout": 0.0,
                "target_modules": list(target_modules),
                "layers_to_transform": list(layers_to_transform) if layers_to_transform is not None else None,
                "n_trainable_parameters": n_trainable,
            },
            "dpo": {
                "trainer": "trl.DPOTrainer (pre-tokenised)",
                "loss_type": "sigmoid",
                "beta": beta,
                "reference": "base model (adapter disabled)",
                "steps": steps,
                "batch_size": batch_size,
                "grad_accum": grad_accum,
                "pairs_per_step": batch_size * grad_accum,
                "lr": lr,
                "schedule": "cosine, 10% warm-up",
                "optimizer": "adamw_torch, wd 0, clip 1.0",
                "seed": seed,
                "gradient_checkpointing": gradient_checkpointing,
            },
            "device": device,
            "threads": torch.get_num_threads(),
            "versions": library_versions(),
            "timing": {
                "train_seconds": round(t_train, 2),
                "eval_seconds": round(t_eval, 2),
                "seconds_per_step": [round(s, 3) for s in timer.seconds],
            },
            "train_log": history,
            "eval_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "adapter_sha256": {f: sha256_file(stage / f) for f in ADAPTER_FILES},
        }
        (stage / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
        if out_dir.exists():
            if not overwrite and any(out_dir.iterdir()):
                raise FileExistsError(f"{out_dir} appeared while training; not overwriting it.")
            aside = work / "old"
            os.replace(out_dir, aside)
        _make_readable(stage)
        os.replace(stage, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir

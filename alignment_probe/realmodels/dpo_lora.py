"""The tuned twin of SmolLM2-135M-Instruct, made the way practitioners make one: DPO with LoRA.

Recipe (every choice is written to ``dpo_lora_recipe.json`` beside the adapter):

* **base / reference**: the float32 checkpoint from :func:`~alignment_probe.realmodels.smollm2.convert_smollm2`.
  The reference model is the base itself: with a peft model TRL's ``DPOTrainer`` computes reference
  log-probs by disabling the adapter, so no second copy is held.
* **data**: HH-RLHF harmless-base (``shared/data/hh-rlhf/harmless-base/test.jsonl.gz``, 2312 pairs),
  read with :func:`alignment_probe.data.load_pairs` and split in two halves by a fixed seed
  (:func:`split_pairs`, ``split_seed=0``): the *train* half tunes the adapter, the *held-out* half
  (:func:`heldout_pairs`) evaluates it and is what the localisation analysis should run on.
* **tokens**: exactly the toolkit's scoring convention (:func:`alignment_probe.tokens.tokenize_pair`):
  ``[BOS] + prompt + completion`` with BOS = ``<|im_start|>``, prompt and completion tokenised
  separately, sequences cut to ``max_length`` (192) by dropping *prompt* tokens from the left;
  pairs whose completion alone does not fit are skipped (counted in the recipe). No EOS is appended
  (TRL would add one to raw text; we hand it token ids, so training sees what analysis scores).
* **training**: TRL ``DPOTrainer`` (sigmoid loss, ``beta``), LoRA adapters (``lora_rank``,
  ``lora_alpha = 2 * rank``) on ``target_modules`` of every layer, or only of ``layers_to_transform``
  (a *planted* twin whose change lives in known layers). AdamW, cosine schedule with 10 % warm-up,
  gradient clipping 1.0, dropout disabled (TRL's default), seeded.
* **output**: only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, ~10 MB at
  rank 8 on all linear layers) and the recipe. :func:`materialise_tuned` merges it into the base
  (peft ``merge_and_unload``) and caches a full checkpoint directory that
  :func:`alignment_probe.pair.load_local_model` / ``load_twins`` load.

Command line::

    python -m alignment_probe.realmodels.dpo_lora train --out runs/smollm2-dpo-lora --steps 100
    python -m alignment_probe.realmodels.dpo_lora materialise runs/smollm2-dpo-lora
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from alignment_probe.adapters import merge_adapter
from alignment_probe.data import PreferencePair, load_pairs
from alignment_probe.files import make_readable as _make_readable
from alignment_probe.realmodels.smollm2 import MARKER, WEIGHTS, convert_smollm2, sha256_file
from alignment_probe.tokens import tokenize_pair

HH_DIR_ENV = "ALIGNMENT_PROBE_HH_DIR"


def default_hh_dir() -> Path:
    """The real HH-RLHF data folder (``harmless-base/``, ``helpful-base/``): ``$ALIGNMENT_PROBE_HH_DIR``,
    else ``../shared/data/hh-rlhf`` beside the repository (what the tests look up too)."""
    env = os.environ.get(HH_DIR_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf"


DEFAULT_DATA = default_hh_dir() / "harmless-base" / "test.jsonl.gz"
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RECIPE = "dpo_lora_recipe.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TUNED_MARKER = "alignment-probe-merge.json"
TUNED_PREFIX = "smollm2-135m-instruct-dpo-lora-"  # must not contain "llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def split_pairs(
    pairs: Sequence[PreferencePair], split_seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train half, held-out half): a seeded permutation cut in the middle, each half sorted by pair_id."""
    import numpy as np

    order = np.random.default_rng(split_seed).permutation(len(pairs))
    half = len(pairs) // 2
    train = sorted((pairs[int(i)] for i in order[:half]), key=lambda p: p.pair_id)
    held = sorted((pairs[int(i)] for i in order[half:]), key=lambda p: p.pair_id)
    return train, held


def heldout_pairs(data: Path | str = DEFAULT_DATA, split_seed: int = 0) -> list[PreferencePair]:
    """The pairs the adapter was *not* trained on: evaluate (and localise) on these."""
    return split_pairs(load_pairs(data)[0], split_seed)[1]


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int
) -> tuple[dict[str, list], dict[str, int]]:
    """Columns ``prompt_ids`` (with BOS), ``chosen_ids``, ``rejected_ids``, ``pair_id`` for TRL, plus counts."""
    cols: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "pair_id": []}
    stats = {"n_pairs": len(pairs), "n_used": 0, "n_skipped_too_long": 0, "n_prompt_truncated": 0}
    for pair in pairs:
        try:
            tp = tokenize_pair(pair, tokenizer, max_length)
        except ValueError:
            stats["n_skipped_too_long"] += 1
            continue
        cols["prompt_ids"].append(list(tp.prompt_ids))
        cols["chosen_ids"].append(list(tp.chosen_ids))
        cols["rejected_ids"].append(list(tp.rejected_ids))
        cols["pair_id"].append(pair.pair_id)
        stats["n_used"] += 1
        stats["n_prompt_truncated"] += tp.n_prompt_tokens_cut > 0
    return cols, stats


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


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }


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
    base_sha = _checkpoint_sha(base_dir)

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
            "versions": _versions(),
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


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------
def _checkpoint_sha(path: Path) -> str:
    """sha256 of a checkpoint's model.safetensors, taken from the conversion marker when there is one."""
    for marker_name in (MARKER, TUNED_MARKER):
        try:
            return json.loads((path / marker_name).read_text())["files"][WEIGHTS]["sha256"]
        except (OSError, ValueError, KeyError):
            continue
    return sha256_file(path / WEIGHTS)


def materialise_tuned(
    adapter_dir: Path | str, cache_dir: Path | str | None = None, *, base_dir: Path | str | None = None
) -> Path:
    """Base + adapter merged (peft ``merge_and_unload``) into a full float32 checkpoint directory, cached.

    The directory is ``<cache root>/smollm2-135m-instruct-dpo-lora-<hash of base + adapter files>``
    (default root ``~/.cache/alignment-probe``); it is written atomically with a marker and reused
    on later calls. The base is ``base_dir``, else the checkpoint the recipe was trained on (if it
    is still there, same sha256), else :func:`convert_smollm2` into the same cache root. Refuses an
    adapter whose recipe names a different base checkpoint.
    """
    adapter_dir = Path(adapter_dir).expanduser().resolve()
    for f in ADAPTER_FILES:
        if not (adapter_dir / f).is_file():
            raise FileNotFoundError(f"{adapter_dir} holds no {f}: pass the directory train_adapter wrote.")
    recipe = json.loads((adapter_dir / RECIPE).read_text()) if (adapter_dir / RECIPE).is_file() else {}
    want = recipe.get("base", {}).get("model_safetensors_sha256")
    if base_dir is None:  # the base it was trained on, if still there; else (re)convert into this cache
        trained_on = Path(recipe.get("base", {}).get("path", "/nonexistent"))
        base_dir = (
            trained_on
            if (trained_on / WEIGHTS).is_file() and _checkpoint_sha(trained_on) == want
            else convert_smollm2(cache_dir)
        )
    base_dir = Path(base_dir).expanduser()
    base_sha = _checkpoint_sha(base_dir)
    if want not in (None, base_sha):
        raise ValueError(
            f"The adapter in {adapter_dir} was trained on a base with model.safetensors sha256 {want[:12]}…, "
            f"but {base_dir} has {base_sha[:12]}…: not its base model."
        )
    recipe_file = adapter_dir / RECIPE
    # One merge implementation (alignment_probe.adapters); the base is identified by its weights' sha256
    # above, so the adapter's recorded base name (a cache path on the training machine) is not checked.
    return merge_adapter(
        base_dir,
        adapter_dir,
        cache_dir=cache_dir,
        check_name=False,
        prefix=TUNED_PREFIX,
        base_sha=base_sha,
        extra_files=(recipe_file,) if recipe_file.is_file() else (),
        extra_marker={"base_model_safetensors_sha256": base_sha, "versions": _versions()},
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="DPO LoRA twin of SmolLM2-135M-Instruct")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train an adapter (saves adapter + recipe)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--lora-rank", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--beta", type=float, default=0.1)
    t.add_argument("--target-modules", default=",".join(DEFAULT_TARGET_MODULES))
    t.add_argument("--layers", default=None, help="comma-separated layer indices (a planted twin); default all")
    t.add_argument("--max-length", type=int, default=192)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--grad-accum", type=int, default=2)
    t.add_argument("--n-eval", type=int, default=128, help="held-out pairs to evaluate on (0: none, -1: all)")
    t.add_argument("--n-train", type=int, default=None, help="cap the train pool (smoke tests)")
    t.add_argument("--data", type=Path, default=DEFAULT_DATA)
    t.add_argument("--cache-dir", type=Path, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("materialise", help="merge an adapter into a cached full checkpoint; prints its path")
    m.add_argument("adapter_dir", type=Path)
    m.add_argument("--cache-dir", type=Path, default=None)
    a = parser.parse_args(argv)
    if a.cmd == "train":
        out = train_adapter(
            a.out,
            seed=a.seed,
            steps=a.steps,
            lora_rank=a.lora_rank,
            lr=a.lr,
            beta=a.beta,
            target_modules=[s for s in a.target_modules.split(",") if s],
            layers_to_transform=[int(x) for x in a.layers.split(",")] if a.layers else None,
            max_length=a.max_length,
            batch_size=a.batch_size,
            grad_accum=a.grad_accum,
            n_eval=None if a.n_eval < 0 else a.n_eval,
            n_train=a.n_train,
            data=a.data,
            cache_dir=a.cache_dir,
            device=a.device,
            threads=a.threads,
            overwrite=a.overwrite,
        )
        print(out)
    else:
        print(materialise_tuned(a.adapter_dir, a.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

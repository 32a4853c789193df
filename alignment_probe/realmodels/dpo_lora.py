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
from pathlib import Path
from typing import Sequence

from alignment_probe.adapters import merge_adapter
from alignment_probe.realmodels.dpo_recipe import (
    ADAPTER_FILES,
    DEFAULT_DATA,
    DEFAULT_TARGET_MODULES,
    HH_DIR_ENV,
    RECIPE,
    TOKENIZER_FILES,
    TUNED_MARKER,
    TUNED_PREFIX,
    checkpoint_sha,
    default_hh_dir,
    heldout_pairs,
    library_versions,
    split_pairs,
    tokenize_pairs,
)
from alignment_probe.realmodels.dpo_train import train_adapter
from alignment_probe.realmodels.smollm2 import WEIGHTS, convert_smollm2

__all__ = [
    "ADAPTER_FILES",
    "DEFAULT_DATA",
    "DEFAULT_TARGET_MODULES",
    "HH_DIR_ENV",
    "RECIPE",
    "TOKENIZER_FILES",
    "TUNED_MARKER",
    "TUNED_PREFIX",
    "default_hh_dir",
    "heldout_pairs",
    "main",
    "materialise_tuned",
    "split_pairs",
    "tokenize_pairs",
    "train_adapter",
]


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------
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
            if (trained_on / WEIGHTS).is_file() and checkpoint_sha(trained_on) == want
            else convert_smollm2(cache_dir)
        )
    base_dir = Path(base_dir).expanduser()
    base_sha = checkpoint_sha(base_dir)
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
        extra_marker={"base_model_safetensors_sha256": base_sha, "versions": library_versions()},
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
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
    raise SystemExit(main())

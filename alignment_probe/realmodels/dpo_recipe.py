"""The DPO-LoRA recipe's fixed parts: where the HH-RLHF data lives, how it is split and tokenised, the file names
an adapter directory holds, and what identifies a base checkpoint and the libraries (see :mod:`.dpo_lora`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from alignment_probe.data import PreferencePair, load_pairs
from alignment_probe.realmodels.smollm2 import MARKER, WEIGHTS, sha256_file
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


def library_versions() -> dict[str, str]:
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


def checkpoint_sha(path: Path) -> str:
    """sha256 of a checkpoint's model.safetensors, taken from the conversion marker when there is one."""
    for marker_name in (MARKER, TUNED_MARKER):
        try:
            return json.loads((path / marker_name).read_text())["files"][WEIGHTS]["sha256"]
        except (OSError, ValueError, KeyError):
            continue
    return sha256_file(path / WEIGHTS)

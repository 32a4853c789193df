"""Checks of checkpoint folders, adapter folders and hub names that need no model code.

Everything here reads only small files (``config.json``, shard indexes, ``adapter_config.json``) and
imports neither torch nor TransformerLens, so the command line refuses a missing or broken checkpoint
in well under a second, before any weights (or heavy libraries) load. pair.py re-exports these names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alignment_probe.errors import AdapterError, CheckpointError, IncompatiblePairError
from alignment_probe.hub import official_name

# What a local checkpoint directory must hold (at least one file of each group).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter_dir(spec: Any) -> bool:
    path = Path(str(spec)).expanduser()
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(
            f"{adapter_dir / ADAPTER_CONFIG} cannot be read ({exc}); save the adapter again with "
            "peft's model.save_pretrained(dir)."
        ) from None
    if not any((adapter_dir / w).is_file() for w in ADAPTER_WEIGHTS):
        raise AdapterError(
            f"The adapter folder {adapter_dir} has {ADAPTER_CONFIG} but no adapter weights "
            f"({' or '.join(ADAPTER_WEIGHTS)}); copy them too."
        )
    return cfg


def is_local_checkpoint(spec: str | os.PathLike[str]) -> bool:
    """A spec is a local checkpoint if the path exists or it does not look like a hub name.

    Hub names are ``owner/name`` (or a bare TransformerLens alias such as ``gpt2``); anything
    starting with ``.``, ``/`` or ``~`` or holding more than one ``/`` is a path, so a mistyped
    local path gets a "does not exist" error instead of a hub download attempt.
    """
    s = str(spec)
    if Path(s).expanduser().exists():
        return True
    return s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith("/")


def check_checkpoint_dir(path: Path) -> None:
    """Refuse, with the fix, a local checkpoint directory that cannot be loaded (cheap: reads only
    config.json and the shard index, never the weights)."""
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint directory {path} does not exist. Pass a Hugging Face checkpoint "
            "directory (config.json + weights + tokenizer files) or a hub model name."
        )
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory: pass the folder that holds config.json.")
    missing = []
    if not (path / "config.json").exists():
        missing.append("config.json")
    if not any((path / f).exists() for f in _WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json)")
    if missing:
        raise CheckpointError(
            f"Checkpoint directory {path} is missing {', '.join(missing)}. Save the model with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir) into the same folder."
        )
    config = read_checkpoint_config(path)
    if "model_type" not in config:
        raise CheckpointError(
            f"{path / 'config.json'} has no 'model_type', so the architecture is unknown: it is "
            "not a transformers model config. Save the model with model.save_pretrained(dir)."
        )
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if not index.exists():
            continue
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{index} is not a valid shard index ({type(exc).__name__}: {exc}); save the checkpoint again."
            ) from None
        absent = [s for s in shards if not (path / s).exists()]
        if absent:
            raise CheckpointError(
                f"Checkpoint directory {path} is missing {len(absent)} of its {len(shards)} weight "
                f"shards listed in {index_name}: {', '.join(absent[:5])}"
                f"{' ...' if len(absent) > 5 else ''}. Copy or download the missing files."
            )


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict, or a CheckpointError naming the problem."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path / 'config.json'} is not valid JSON ({exc}); the file may be truncated. "
            "Save the model again with model.save_pretrained(dir)."
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'} must hold a JSON object, not {type(config).__name__}.")
    return config


# config.json fields that must agree for two checkpoints' activations to be interchangeable.
# (name in config.json, the TransformerLens name used in messages)
_HF_CONFIG_FIELDS = (
    ("model_type", "architecture"),
    ("architectures", "architectures"),
    ("hidden_size", "d_model"),
    ("num_hidden_layers", "n_layers"),
    ("num_attention_heads", "n_heads"),
    ("num_key_value_heads", "n_key_value_heads"),
    ("intermediate_size", "d_mlp"),
    ("vocab_size", "d_vocab"),
    ("n_embd", "d_model"),
    ("n_layer", "n_layers"),
    ("n_head", "n_heads"),
)


def precheck_pair(base: str | os.PathLike[str], tuned: str | os.PathLike[str]) -> None:
    """Before any weights load: both local checkpoint directories exist and are complete, and their
    config.json files agree on architecture and size; a hub name is one TransformerLens knows; an
    adapter folder holds its config and weights. Everything else is checked at load."""
    local = {}
    for role, spec in (("base", base), ("tuned", tuned)):
        if role == "tuned" and is_adapter_dir(spec):  # merged onto base at load; its fit is checked then
            read_adapter_config(Path(spec).expanduser())
            continue
        if not is_local_checkpoint(spec):
            try:
                official_name(str(spec))
            except CheckpointError as exc:
                raise type(exc)(f"--{role}: {exc}") from None
            continue
        if is_local_checkpoint(spec):
            path = Path(spec).expanduser().resolve()
            try:
                check_checkpoint_dir(path)
            except CheckpointError as exc:
                raise CheckpointError(f"--{role}: {exc}") from None
            local[role] = read_checkpoint_config(path)
    if len(local) < 2:
        return
    problems = [
        f"{name}: base={local['base'].get(k)!r} tuned={local['tuned'].get(k)!r} (config.json {k})"
        for k, name in _HF_CONFIG_FIELDS
        if local["base"].get(k) != local["tuned"].get(k)
    ]
    if problems:
        raise IncompatiblePairError(
            f"Base {base} and tuned {tuned} are not a compatible pair, so their activations cannot be patched "
            "into each other (from their config.json files):\n  - "
            + "\n  - ".join(problems)
            + "\nPass a base model and a checkpoint fine-tuned from it (same architecture, size and tokenizer)."
        )

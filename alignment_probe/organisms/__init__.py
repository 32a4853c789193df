"""The project's model organisms: small Llama-family models trained here and shipped in ``data/``.

* ``base``: a causal LM pretrained from scratch on a synthetic HH-RLHF-style corpus in which every
  assistant behaviour (helpful, harmful compliance, polite refusal, rude, unhelpful) is equally likely.
* ``tuned``: ``base`` after DPO on preference pairs from the same generator (reference = frozen base).
* planted twins: ``base`` after DPO with only ``model.layers.{L}.mlp.*`` trainable, for L in
  :data:`PLANTED_LAYERS`; they differ from base in that one MLP, so a localisation method has a
  known answer. Stored as deltas; :func:`planted_twin_path` materialises a full checkpoint.

All are plain Hugging Face checkpoint directories, loadable offline with
``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.
See ``data/README.md`` for how they were built and what was measured, and
:func:`alignment_probe.organisms.build.build_organisms` to rebuild them.

This module is import-light (no torch); heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_DATA_DIR: Path = Path(__file__).resolve().parents[2] / "data"
PLANTED_LAYERS: tuple[int, ...] = (2, 4, 6)

_REBUILD_HINT = "rebuild with: python -m alignment_probe.organisms.build --out data --seed 0"


def organisms_dir(data_dir: Path | None = None) -> Path:
    return Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / "organisms"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"bundled {what} not found at {path}; {_REBUILD_HINT}")
    return path


def bundled_pair_paths(data_dir: Path | None = None) -> tuple[Path, Path]:
    """(base, tuned) checkpoint directories of the bundled model pair."""
    org = organisms_dir(data_dir)
    return (_require(org / "base", "base model"), _require(org / "tuned", "tuned model"))


def bundled_pairs_path(data_dir: Path | None = None) -> Path:
    """The held-out preference pairs (JSON lines with keys prompt, chosen, rejected)."""
    return _require(Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / "pairs" / "heldout.jsonl",
                    "held-out pairs")


def planted_layers(data_dir: Path | None = None) -> tuple[int, ...]:
    """Layers for which a planted twin is stored."""
    from alignment_probe.organisms.twins import twin_layers

    return tuple(twin_layers(organisms_dir(data_dir)))


def planted_twin_path(layer: int, data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Checkpoint directory of the planted twin whose layer-``layer`` MLP alone was DPO-tuned.

    Built from base + stored delta on first use, into ``cache_dir`` (default
    ``data/organisms/.cache``, or ``$XDG_CACHE_HOME/alignment_probe/organisms`` if that is not
    writable), then reused.
    """
    from alignment_probe.organisms.twins import materialise_twin

    return materialise_twin(organisms_dir(data_dir), int(layer), cache_dir=cache_dir)


def bundled_metrics(data_dir: Path | None = None) -> dict:
    """The metrics measured when the bundled organisms were built (``organisms/metrics.json``)."""
    return json.loads(_require(organisms_dir(data_dir) / "metrics.json", "metrics").read_text())


__all__ = [
    "DEFAULT_DATA_DIR",
    "PLANTED_LAYERS",
    "bundled_metrics",
    "bundled_pair_paths",
    "bundled_pairs_path",
    "organisms_dir",
    "planted_layers",
    "planted_twin_path",
]

"""The project's model organisms: small Llama-family models trained here and shipped in ``data/``.

* ``base``: a causal LM pretrained from scratch on a synthetic HH-RLHF-style corpus in which every
  assistant behaviour (helpful, harmful compliance, polite refusal, rude, unhelpful) is equally likely.
* ``tuned``: ``base`` after DPO on preference pairs from the same generator (reference = frozen base).
* planted twins: ``base`` after DPO with only ``model.layers.{L}.mlp.*`` trainable, for L in
  :data:`PLANTED_LAYERS`; they differ from base in that one MLP, so a localisation method has a
  known answer. Stored as deltas; :func:`planted_twin_path` materialises a full checkpoint.
* named planted twins, the same DPO with a smaller or different part trainable:
  :func:`head_twin_path` (only query head :data:`HEAD_TWIN_SITE` = (layer 4, head 1): rows 32…63
  of ``model.layers.4.self_attn.q_proj.weight``), :func:`kv_twin_path` (only KV head
  :data:`KV_TWIN_SITE` = (layer 3, KV head 0): rows 0…31 of ``model.layers.3.self_attn.v_proj.weight``,
  shared by query heads 0 and 1) and :func:`two_block_twin_path` (only the MLPs of layers
  :data:`TWO_BLOCK_LAYERS` = (2, 5)); :func:`twin_path` takes any twin's name.

All are plain Hugging Face checkpoint directories, loadable offline with
``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.
See ``data/README.md`` for how they were built and what was measured, and
:func:`alignment_probe.organisms.build.build_organisms` to rebuild them.

This module is import-light (no torch); heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR: Path = Path(__file__).resolve().parents[2] / "data"
PLANTED_LAYERS: tuple[int, ...] = (2, 4, 6)
# The named twins of the bundled (full-size) build; the functions below read the stored recipes, so they
# also work on a ``--size small`` build (whose sites differ).
HEAD_TWIN_SITE: tuple[int, int] = (4, 1)  # (layer, query head)
KV_TWIN_SITE: tuple[int, int] = (3, 0)  # (layer, KV head)
TWO_BLOCK_LAYERS: tuple[int, int] = (2, 5)

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
    return _require(
        Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / "pairs" / "heldout.jsonl", "held-out pairs"
    )


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


def twin_names(data_dir: Path | None = None) -> tuple[str, ...]:
    """Names of every stored planted twin: ``mlp_layer{L}`` and the named ones (e.g. ``head_layer4_h1``)."""
    from alignment_probe.organisms.twins import named_twins, twin_layers

    org = organisms_dir(data_dir)
    return tuple([f"mlp_layer{layer}" for layer in twin_layers(org)] + sorted(named_twins(org)))


def twin_recipe(name: str, data_dir: Path | None = None) -> dict[str, Any]:
    """The stored recipe of twin ``name`` (for named twins: ``kind``, ``layers``, ``head``, ``tensor``, ``rows``, ...)."""
    from alignment_probe.organisms.twins import twin_recipe as _recipe

    return _recipe(organisms_dir(data_dir), name)


def twin_path(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Checkpoint directory of the planted twin ``name`` (see :func:`twin_names`), built like :func:`planted_twin_path`."""
    from alignment_probe.organisms.twins import materialise_named_twin

    return materialise_named_twin(organisms_dir(data_dir), name, cache_dir=cache_dir)


def _of_kind(kind: str, data_dir: Path | None) -> str:
    from alignment_probe.organisms.twins import twin_of_kind

    return twin_of_kind(organisms_dir(data_dir), kind)


def head_twin_name(data_dir: Path | None = None) -> str:
    return _of_kind("q_head", data_dir)


def kv_twin_name(data_dir: Path | None = None) -> str:
    return _of_kind("kv_head", data_dir)


def two_block_twin_name(data_dir: Path | None = None) -> str:
    return _of_kind("mlps", data_dir)


def head_twin_path(data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The twin in which only one query head's q_proj rows were DPO-tuned (bundled: layer 4, head 1)."""
    return twin_path(head_twin_name(data_dir), data_dir, cache_dir)


def kv_twin_path(data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The twin in which only one KV head's v_proj rows were DPO-tuned (bundled: layer 3, KV head 0)."""
    return twin_path(kv_twin_name(data_dir), data_dir, cache_dir)


def two_block_twin_path(data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The twin in which only two MLPs were DPO-tuned (bundled: layers 2 and 5)."""
    return twin_path(two_block_twin_name(data_dir), data_dir, cache_dir)


def head_twin_site(data_dir: Path | None = None) -> tuple[int, int]:
    """(layer, query head) of the head twin, read from its recipe."""
    r = twin_recipe(head_twin_name(data_dir), data_dir)
    return int(r["layers"][0]), int(r["head"])


def kv_twin_site(data_dir: Path | None = None) -> tuple[int, int]:
    """(layer, KV head) of the KV twin, read from its recipe. Query heads ``kv_head * n_heads // n_kv_heads``
    up to the next KV head's share it."""
    r = twin_recipe(kv_twin_name(data_dir), data_dir)
    return int(r["layers"][0]), int(r["head"])


def two_block_layers(data_dir: Path | None = None) -> tuple[int, ...]:
    """The layers whose MLPs the two-block twin tuned, read from its recipe."""
    return tuple(int(x) for x in twin_recipe(two_block_twin_name(data_dir), data_dir)["layers"])


def bundled_metrics(data_dir: Path | None = None) -> dict[str, Any]:
    """The metrics measured when the bundled organisms were built (``organisms/metrics.json``)."""
    return json.loads(_require(organisms_dir(data_dir) / "metrics.json", "metrics").read_text())


__all__ = [
    "DEFAULT_DATA_DIR",
    "HEAD_TWIN_SITE",
    "KV_TWIN_SITE",
    "PLANTED_LAYERS",
    "TWO_BLOCK_LAYERS",
    "bundled_metrics",
    "bundled_pair_paths",
    "bundled_pairs_path",
    "head_twin_name",
    "head_twin_path",
    "head_twin_site",
    "kv_twin_name",
    "kv_twin_path",
    "kv_twin_site",
    "organisms_dir",
    "planted_layers",
    "planted_twin_path",
    "twin_names",
    "twin_path",
    "twin_recipe",
    "two_block_layers",
    "two_block_twin_name",
    "two_block_twin_path",
]

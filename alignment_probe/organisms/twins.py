"""Planted twins: the base model DPO-tuned with only one layer's MLP trainable.

A twin is stored compactly as the tensors that changed (``model.layers.{L}.mlp.*``) plus a JSON
recipe, next to the base checkpoint::

    organisms/twins/mlp_layer{L}.safetensors
    organisms/twins/mlp_layer{L}.json

:func:`materialise_twin` rebuilds a full Hugging Face checkpoint directory (base weights with the
delta tensors substituted, plus base's config and tokenizer files) in a cache directory. The
result is deterministic (same bytes for the same base and delta) and cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignment_probe.checkpoints import publish_directory

WEIGHTS = "model.safetensors"
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")


def mlp_prefix(layer: int) -> str:
    return f"model.layers.{layer}.mlp."


def twin_files(organisms_dir: Path, layer: int) -> tuple[Path, Path]:
    twins = Path(organisms_dir) / "twins"
    return twins / f"mlp_layer{layer}.safetensors", twins / f"mlp_layer{layer}.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_twin(organisms_dir: Path, layer: int, twin_state: dict[str, torch.Tensor],
              base_state: dict[str, torch.Tensor], recipe: dict) -> tuple[Path, Path]:
    """Store the tensors of ``twin_state`` that differ from ``base_state``; they must all be layer ``layer``'s MLP."""
    changed = {k: v.detach().contiguous().clone() for k, v in twin_state.items()
               if k in base_state and not torch.equal(v, base_state[k])}
    stray = sorted(k for k in changed if not k.startswith(mlp_prefix(layer)))
    if stray:
        raise ValueError(f"twin for layer {layer} changed tensors outside its MLP: {stray}")
    if not changed:
        raise ValueError(f"twin for layer {layer} is identical to base")
    delta_path, recipe_path = twin_files(organisms_dir, layer)
    delta_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(changed, str(delta_path), metadata={"format": "pt", "layer": str(layer)})
    full = dict(recipe)
    full.update({
        "layer": layer,
        "base": "base",
        "base_sha256": sha256_file(Path(organisms_dir) / "base" / WEIGHTS),
        "delta": delta_path.name,
        "delta_sha256": sha256_file(delta_path),
        "tensors": sorted(changed),
    })
    recipe_path.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return delta_path, recipe_path


def twin_layers(organisms_dir: Path) -> list[int]:
    """Layers for which a planted twin is stored."""
    twins = Path(organisms_dir) / "twins"
    return sorted(int(p.stem.removeprefix("mlp_layer")) for p in twins.glob("mlp_layer*.json"))


def default_cache_dir(organisms_dir: Path) -> Path:
    """``organisms/.cache`` when writable, else a per-user cache directory."""
    local = Path(organisms_dir) / ".cache"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "alignment_probe" / "organisms"


def materialise_twin(organisms_dir: Path, layer: int, cache_dir: Path | None = None) -> Path:
    """A full HF checkpoint directory for the planted twin of ``layer`` (built once, then cached)."""
    organisms_dir = Path(organisms_dir)
    delta_path, recipe_path = twin_files(organisms_dir, layer)
    if not recipe_path.exists():
        available = twin_layers(organisms_dir)
        raise FileNotFoundError(f"no planted twin for layer {layer} in {organisms_dir} (available: {available})")
    recipe = json.loads(recipe_path.read_text())
    base_dir = organisms_dir / recipe.get("base", "base")
    base_sha = sha256_file(base_dir / WEIGHTS)
    delta_sha = sha256_file(delta_path)
    if recipe.get("base_sha256") not in (None, base_sha):
        raise ValueError(f"twin {recipe_path} was made from a different base checkpoint")
    if recipe.get("delta_sha256") not in (None, delta_sha):
        raise ValueError(f"delta {delta_path} does not match its recipe")
    key = hashlib.sha256(f"{base_sha}:{delta_sha}:{layer}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(organisms_dir)
    target = cache / f"twin_mlp_layer{layer}_{key}"
    if (target / WEIGHTS).exists() and (target / "config.json").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    state = load_file(str(base_dir / WEIGHTS))
    delta = load_file(str(delta_path))
    for name, tensor in delta.items():
        if not name.startswith(mlp_prefix(layer)):
            raise ValueError(f"delta tensor {name} is outside layer {layer}'s MLP")
        if name not in state or state[name].shape != tensor.shape:
            raise ValueError(f"delta tensor {name} does not fit the base checkpoint")
        state[name] = tensor
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_twin{layer}_", dir=cache))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for fname in CHECKPOINT_FILES:
            if (base_dir / fname).exists():
                shutil.copyfile(base_dir / fname, tmp / fname)
        (tmp / "twin_recipe.json").write_text(recipe_path.read_text())
        publish_directory(tmp, target, is_complete=lambda d: (d / WEIGHTS).exists(), replace_stale=False)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

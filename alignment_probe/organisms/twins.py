"""Planted twins: the base model DPO-tuned with only a known part of it trainable.

One-MLP twins (``mlp_layer{L}``) and named twins (:class:`TwinSpec`: one query head's q_proj rows,
one KV head's v_proj rows, or several MLPs) are stored the same way.

A twin is stored compactly as the tensors that changed (e.g. ``model.layers.{L}.mlp.*``) plus a JSON
recipe, next to the base checkpoint::

    organisms/twins/mlp_layer{L}.safetensors
    organisms/twins/mlp_layer{L}.json
    organisms/twins/{name}.safetensors, {name}.json      (named twins)

:func:`materialise_twin` rebuilds a full Hugging Face checkpoint directory (base weights with the
delta tensors substituted, plus base's config and tokenizer files) in a cache directory. The
result is deterministic (same bytes for the same base and delta) and cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignment_probe.checkpoints import publish_directory
from alignment_probe.manifest import sha256_file

WEIGHTS = "model.safetensors"
_MLP_TWIN = re.compile(r"mlp_layer(\d+)")
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def mlp_prefix(layer: int) -> str:
    return f"model.layers.{layer}.mlp."


def twin_files(organisms_dir: Path, layer: int) -> tuple[Path, Path]:
    twins = Path(organisms_dir) / "twins"
    return twins / f"mlp_layer{layer}.safetensors", twins / f"mlp_layer{layer}.json"


def save_twin(
    organisms_dir: Path,
    layer: int,
    twin_state: dict[str, torch.Tensor],
    base_state: dict[str, torch.Tensor],
    recipe: dict,
) -> tuple[Path, Path]:
    """Store the tensors of ``twin_state`` that differ from ``base_state``; they must all be layer ``layer``'s MLP."""
    changed = {
        k: v.detach().contiguous().clone()
        for k, v in twin_state.items()
        if k in base_state and not torch.equal(v, base_state[k])
    }
    stray = sorted(k for k in changed if not k.startswith(mlp_prefix(layer)))
    if stray:
        raise ValueError(f"twin for layer {layer} changed tensors outside its MLP: {stray}")
    if not changed:
        raise ValueError(f"twin for layer {layer} is identical to base")
    delta_path, recipe_path = twin_files(organisms_dir, layer)
    return write_delta(
        organisms_dir,
        delta_path,
        recipe_path,
        changed,
        {**recipe, "layer": layer},
        metadata={"format": "pt", "layer": str(layer)},
    )


def write_delta(
    organisms_dir: Path, delta_path: Path, recipe_path: Path, changed: dict, recipe: dict, *, metadata: dict[str, str]
) -> tuple[Path, Path]:
    """Write a twin's changed tensors and its recipe (with the SHA-256 of base and delta), for any twin."""
    delta_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(changed, str(delta_path), metadata=metadata)
    full = dict(recipe)
    full.update(
        {
            "base": "base",
            "base_sha256": sha256_file(Path(organisms_dir) / "base" / WEIGHTS),
            "delta": delta_path.name,
            "delta_sha256": sha256_file(delta_path),
            "tensors": sorted(changed),
        }
    )
    recipe_path.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return delta_path, recipe_path


def twin_layers(organisms_dir: Path) -> list[int]:
    """Layers for which a planted twin is stored."""
    twins = Path(organisms_dir) / "twins"
    return sorted(int(m.group(1)) for p in twins.glob("mlp_layer*.json") if (m := _MLP_TWIN.fullmatch(p.stem)))


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

    def check(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
        for name in delta:
            if not name.startswith(mlp_prefix(layer)):
                raise ValueError(f"delta tensor {name} is outside layer {layer}'s MLP")

    return _materialise(
        organisms_dir, recipe, delta_path, recipe_path, f"twin_mlp_layer{layer}", layer, check, cache_dir
    )


def _materialise(
    organisms_dir: Path,
    recipe: dict,
    delta_path: Path,
    recipe_path: Path,
    stem: str,
    key_tag,
    check,
    cache_dir: Path | None,
) -> Path:
    """Base weights with the delta substituted, plus base's config/tokenizer files, published atomically
    into ``cache/{stem}_{hash}`` (the hash covers base, delta and ``key_tag``)."""
    base_dir = organisms_dir / recipe.get("base", "base")
    base_sha = sha256_file(base_dir / WEIGHTS)
    delta_sha = sha256_file(delta_path)
    if recipe.get("base_sha256") not in (None, base_sha):
        raise ValueError(f"twin {recipe_path} was made from a different base checkpoint")
    if recipe.get("delta_sha256") not in (None, delta_sha):
        raise ValueError(f"delta {delta_path} does not match its recipe")
    key = hashlib.sha256(f"{base_sha}:{delta_sha}:{key_tag}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(organisms_dir)
    target = cache / f"{stem}_{key}"
    if (target / WEIGHTS).exists() and (target / "config.json").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    state = load_file(str(base_dir / WEIGHTS))
    delta = load_file(str(delta_path))
    for name, tensor in delta.items():
        if name not in state or state[name].shape != tensor.shape:
            raise ValueError(f"delta tensor {name} does not fit the base checkpoint")
    check(state, delta)
    state.update(delta)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{stem}_", dir=cache))
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


# --------------------------------------------------------------------------------------------
# Named twins: one attention head's rows, or several MLPs
# --------------------------------------------------------------------------------------------
KINDS = ("q_head", "kv_head", "mlps")


@dataclass(frozen=True)
class TwinSpec:
    """What a named planted twin may change, and how it was trained.

    ``kind``:

    * ``"q_head"``: rows ``head·d_head … (head+1)·d_head`` of ``model.layers.{L}.self_attn.q_proj.weight``
      (one query head's projection; at layer L only that head's attention pattern, hence its ``z``, differs);
    * ``"kv_head"``: rows ``head·d_head … (head+1)·d_head`` of ``model.layers.{L}.self_attn.v_proj.weight``
      (one key/value head's values; with grouped-query attention the query heads that share it all see them);
    * ``"mlps"``: every tensor of ``model.layers.{L}.mlp.*`` for each L in ``layers``.
    """

    name: str
    kind: str
    layers: tuple[int, ...]
    head: int | None = None
    lr: float = 5e-4
    steps: int = 150
    seed_offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.head is None) != (self.kind == "mlps"):
            raise ValueError("q_head/kv_head twins need a head; mlps twins take none")
        if self.kind != "mlps" and len(self.layers) != 1:
            raise ValueError("a head twin lives in exactly one layer")

    @property
    def tensor(self) -> str | None:
        """The one row-restricted tensor of a head twin (None for an MLP twin)."""
        if self.kind == "mlps":
            return None
        proj = "q_proj" if self.kind == "q_head" else "v_proj"
        return f"model.layers.{self.layers[0]}.self_attn.{proj}.weight"

    def rows(self, d_head: int) -> tuple[int, int] | None:
        """``(start, stop)`` of the planted rows of :attr:`tensor`."""
        return None if self.head is None else (self.head * d_head, (self.head + 1) * d_head)

    def trainable(self, name: str) -> bool:
        if self.kind == "mlps":
            return any(name.startswith(mlp_prefix(layer)) for layer in self.layers)
        return name == self.tensor

    def describe(self) -> str:
        if self.kind == "q_head":
            return f"layer {self.layers[0]} query head {self.head} (q_proj rows) only"
        if self.kind == "kv_head":
            return f"layer {self.layers[0]} KV head {self.head} (v_proj rows) only"
        return f"MLPs of layers {' and '.join(map(str, self.layers))} only"

    def to_json(self, d_head: int) -> dict:
        out = {"name": self.name, "kind": self.kind, "layers": list(self.layers)}
        if self.head is not None:
            out.update({"head": self.head, "tensor": self.tensor, "rows": list(self.rows(d_head)), "d_head": d_head})
        return out


def named_twin_files(organisms_dir: Path, name: str) -> tuple[Path, Path]:
    twins = Path(organisms_dir) / "twins"
    return twins / f"{name}.safetensors", twins / f"{name}.json"


def check_planted(
    changed: dict[str, torch.Tensor],
    base_state: dict[str, torch.Tensor],
    spec: "TwinSpec | dict",
    d_head: int | None = None,
) -> None:
    """Raise unless ``changed`` touches only what ``spec`` plants (for head twins: only the planted rows)."""
    if isinstance(spec, dict):
        d_head = spec.get("d_head")
        spec = TwinSpec(name=spec["name"], kind=spec["kind"], layers=tuple(spec["layers"]), head=spec.get("head"))
    stray = sorted(k for k in changed if not spec.trainable(k))
    if stray:
        raise ValueError(f"twin {spec.name} changed tensors outside {spec.describe()}: {stray}")
    if spec.tensor is not None and spec.tensor in changed:
        start, stop = spec.rows(d_head)
        new, old = changed[spec.tensor], base_state[spec.tensor]
        outside = torch.ones(new.shape[0], dtype=torch.bool)
        outside[start:stop] = False
        if not torch.equal(new[outside], old[outside]):
            bad = [i for i in range(new.shape[0]) if outside[i] and not torch.equal(new[i], old[i])]
            raise ValueError(
                f"twin {spec.name} changed rows {bad} of {spec.tensor}, outside the planted rows {start}…{stop - 1}"
            )


def save_named_twin(
    organisms_dir: Path,
    spec: TwinSpec,
    twin_state: dict[str, torch.Tensor],
    base_state: dict[str, torch.Tensor],
    recipe: dict,
    d_head: int,
) -> tuple[Path, Path]:
    """Store the tensors of ``twin_state`` that differ from base (whole tensors; for a head twin the whole
    q_proj/v_proj, of which only the planted rows differ) and the recipe ``twins/{name}.json``."""
    changed = {
        k: v.detach().contiguous().clone()
        for k, v in twin_state.items()
        if k in base_state and not torch.equal(v, base_state[k])
    }
    if not changed:
        raise ValueError(f"twin {spec.name} is identical to base")
    check_planted(changed, base_state, spec, d_head)
    delta_path, recipe_path = named_twin_files(organisms_dir, spec.name)
    # one metadata key only: safetensors writes metadata in hash order, so two keys could swap between runs
    return write_delta(
        organisms_dir, delta_path, recipe_path, changed, {**recipe, **spec.to_json(d_head)}, metadata={"format": "pt"}
    )


def named_twins(organisms_dir: Path) -> dict[str, dict]:
    """Recipes of the stored named twins (head, KV-head and multi-MLP twins), by name."""
    twins = Path(organisms_dir) / "twins"
    out = {}
    for p in sorted(twins.glob("*.json")):
        if _MLP_TWIN.fullmatch(p.stem):
            continue
        recipe = json.loads(p.read_text())
        if recipe.get("kind") in KINDS:
            out[p.stem] = recipe
    return out


def twin_recipe(organisms_dir: Path, name: str) -> dict:
    _, recipe_path = named_twin_files(organisms_dir, name)
    if not recipe_path.exists():
        m = _MLP_TWIN.fullmatch(name)
        if m:
            return json.loads(twin_files(organisms_dir, int(m.group(1)))[1].read_text())
        raise FileNotFoundError(
            f"no planted twin {name!r} in {organisms_dir} "
            f"(available: {[f'mlp_layer{x}' for x in twin_layers(organisms_dir)] + sorted(named_twins(organisms_dir))})"
        )
    return json.loads(recipe_path.read_text())


def twin_of_kind(organisms_dir: Path, kind: str) -> str:
    """Name of the one stored named twin of ``kind`` (``q_head``, ``kv_head`` or ``mlps``)."""
    names = [n for n, r in named_twins(organisms_dir).items() if r["kind"] == kind]
    if len(names) != 1:
        raise FileNotFoundError(
            f"expected one {kind} twin in {organisms_dir}, found {names}; "
            "rebuild with: python -m alignment_probe.organisms.build --out data --seed 0"
        )
    return names[0]


def materialise_named_twin(organisms_dir: Path, name: str, cache_dir: Path | None = None) -> Path:
    """A full HF checkpoint directory for the planted twin ``name`` (``mlp_layer{L}`` or a named twin)."""
    m = _MLP_TWIN.fullmatch(name)
    if m:
        return materialise_twin(organisms_dir, int(m.group(1)), cache_dir=cache_dir)
    organisms_dir = Path(organisms_dir)
    recipe = twin_recipe(organisms_dir, name)
    delta_path, recipe_path = named_twin_files(organisms_dir, name)

    def check(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
        check_planted(delta, state, recipe)

    return _materialise(organisms_dir, recipe, delta_path, recipe_path, f"twin_{name}", name, check, cache_dir)

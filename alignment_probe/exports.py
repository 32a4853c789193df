"""Exports other tools read: paired clean activations of base and tuned for crosscoder or SAE-diff training, and
E11's tuning-shift vectors (safetensors keyed by layer; a llama.cpp control vector where ``gguf`` is installed).

Paired activations (:func:`export_activations`): for every pair and side, both models run on the same tokens
and the activations at the chosen hook points are written row-aligned — row i of ``base.<hook>`` and of
``tuned.<hook>`` is the same token of the same sequence — with index tensors ``pair_id``, ``side`` (0 chosen,
1 rejected), ``position`` (in the sequence) and ``token_id``. Loading::

    from safetensors.torch import load_file
    acts = load_file("acts.safetensors")
    x_base, x_tuned = acts["base.blocks.4.hook_resid_post"], acts["tuned.blocks.4.hook_resid_post"]  # [rows, d_model]
    completion_rows = acts["position"] >= acts["completion_start"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from alignment_probe.errors import ConfigError
from alignment_probe.tokens import SIDES
from alignment_probe.vocab import HOOKS

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins

POSITIONS = ("all", "completion", "prompt")


def _hook_names(hooks: Sequence[str], layers: Sequence[int], n_layers: int) -> list[str]:
    names = []
    for hook in hooks:
        if hook not in HOOKS:
            raise ConfigError(f"hook {hook!r} cannot be exported; use one of {', '.join(HOOKS)}")
        for layer in layers:
            if not 0 <= int(layer) < n_layers:
                raise ConfigError(f"layer {layer} is outside the model's layers 0…{n_layers - 1}")
            names.append(f"blocks.{int(layer)}.hook_{hook}")
    return names


@torch.inference_mode()
def export_activations(
    twins: Twins,
    pairs: Sequence[Any],
    out: str | Path,
    *,
    hooks: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    positions: str = "all",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write paired clean activations of ``pairs`` (tokenised, e.g. ``ap.load_pairs``) to ``out`` (safetensors);
    returns its path. ``positions``: ``all``, ``completion`` (the completion tokens only) or ``prompt``."""
    from safetensors.torch import save_file

    if positions not in POSITIONS:
        raise ConfigError(f"positions={positions!r}; use one of {', '.join(POSITIONS)}")
    layers = list(range(twins.n_layers)) if layers is None else [int(x) for x in layers]
    names = _hook_names(hooks, layers, twins.n_layers)
    cols: dict[str, list[torch.Tensor]] = {f"{role}.{n}": [] for role in ("base", "tuned") for n in names}
    index: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("pair_id", "side", "position", "token_id", "completion_start")
    }
    for pair in sorted(pairs, key=lambda p: p.pair_id):
        for s, side in enumerate(SIDES):
            seq = pair.sequence(side)
            ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
            start = seq.completion_start
            keep = {"all": slice(0, seq.length), "completion": slice(start, seq.length), "prompt": slice(0, start)}[
                positions
            ]
            for role, model in twins.backends().items():
                _, cache = model.run(ids, capture=names, stop_at_layer=max(layers) + 1)
                for n in names:
                    cols[f"{role}.{n}"].append(cache[n][0, keep].to("cpu", dtype))
            n_rows = keep.stop - keep.start
            index["pair_id"].append(torch.full((n_rows,), pair.pair_id, dtype=torch.int64))
            index["side"].append(torch.full((n_rows,), s, dtype=torch.int64))
            index["position"].append(torch.arange(keep.start, keep.stop, dtype=torch.int64))
            index["token_id"].append(ids[0, keep].to(torch.int64))
            index["completion_start"].append(torch.full((n_rows,), start, dtype=torch.int64))
    tensors = {k: torch.cat(v).contiguous() for k, v in {**cols, **index}.items()}
    meta = {
        "format": "alignment-probe paired activations v1",
        "hooks": json.dumps(names),
        "positions": positions,
        "base": str(twins.base_source),
        "tuned": str(twins.tuned_source),
        "base_fingerprint": str(twins.base_fingerprint),
        "tuned_fingerprint": str(twins.tuned_fingerprint),
        "sides": json.dumps(list(SIDES)),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def export_shift_vectors(
    vectors: dict[int, torch.Tensor],
    out: str | Path,
    *,
    model_hint: str = "",
    metadata: dict[str, str] | None = None,
    by_class: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Path]:
    """E11's tuning-shift vectors (layer → [d_model], e.g. a position class's v_ℓ) as safetensors keyed
    ``layer.<ℓ>``; with the ``gguf`` package installed, also a llama.cpp control vector (``.gguf``, tensors
    ``direction.<ℓ+1>``: llama.cpp numbers the layers whose output it shifts from 1)."""
    from safetensors.torch import save_file

    if not vectors:
        raise ConfigError("no shift vectors to export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"layer.{int(k)}": v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(vectors.items())}
    extra = {
        f"layer.{int(k)}.{c}": v.detach().to("cpu", torch.float32).contiguous()
        for k, classes in sorted((by_class or {}).items())
        for c, v in classes.items()
    }
    save_file(
        {**tensors, **extra}, str(out), metadata={"format": "alignment-probe shift vectors v1", **(metadata or {})}
    )
    files = {"safetensors": out}
    try:
        import gguf  # noqa: F401
    except ImportError:
        return files
    files["gguf"] = _write_control_vector(tensors, out.with_suffix(".gguf"), model_hint)
    return files


def _write_control_vector(tensors: dict[str, torch.Tensor], path: Path, model_hint: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint or "unknown")
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for key, value in tensors.items():
        writer.add_tensor(f"direction.{int(key.split('.')[1]) + 1}", value.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

"""E0's computation: ΔW = W_tuned − W_base per block and module, read from the two models' weights or from a LoRA
adapter, as the rows of the record (``by_module``: ‖ΔW‖_F, relative size, share, top singular values, stable rank).
The package docstring says what each number is."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch

from alignment_probe.backends import backend_of

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins


TOP_K = 4  # singular values kept per module
EXACT_SVD_MAX = 2**22  # elements; larger matrices (a 1B model's MLP, any embedding) get a seeded randomized top-k SVD

# TransformerLens parameter name (after "blocks.{l}.") → (module, is the module's main weight matrix)
_BLOCK_PARAMS = {
    "attn.W_Q": ("q", True),
    "attn.b_Q": ("q", False),
    "attn.W_K": ("k", True),
    "attn._W_K": ("k", True),
    "attn.b_K": ("k", False),
    "attn._b_K": ("k", False),
    "attn.W_V": ("v", True),
    "attn._W_V": ("v", True),
    "attn.b_V": ("v", False),
    "attn._b_V": ("v", False),
    "attn.W_O": ("o", True),
    "attn.b_O": ("o", False),
    "mlp.W_in": ("mlp_in", True),
    "mlp.b_in": ("mlp_in", False),
    "mlp.W_gate": ("mlp_gate", True),
    "mlp.W_out": ("mlp_out", True),
    "mlp.b_out": ("mlp_out", False),
}
_TOP_PARAMS = {
    "embed.W_E": ("embed", True),
    "pos_embed.W_pos": ("pos_embed", True),
    "unembed.W_U": ("unembed", True),
    "unembed.b_U": ("unembed", False),
}
MODULE_ORDER = (
    "embed",
    "pos_embed",
    "ln1",
    "q",
    "k",
    "v",
    "o",
    "ln2",
    "mlp_in",
    "mlp_gate",
    "mlp_out",
    "ln_final",
    "unembed",
)

# peft target module (last name component) → our module; fused ones split their output rows
_LORA_MODULES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_in",
    "down_proj": "mlp_out",
    "fc1": "mlp_in",
    "fc2": "mlp_out",
    "dense_h_to_4h": "mlp_in",
    "dense_4h_to_h": "mlp_out",
    "c_fc": "mlp_in",
    "out_proj": "o",
}
_LORA_KEY = re.compile(r"layers?\.(\d+)\..*?([A-Za-z0-9_]+)\.lora_([AB])(?:\.default)?\.weight$")


def module_of(name: str) -> tuple[int | None, str, bool] | None:
    """``(layer, module, main weight?)`` of a TransformerLens parameter name; None for what E0 skips."""
    m = re.match(r"blocks\.(\d+)\.(.+)$", name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if rest in _BLOCK_PARAMS:
            return (layer, *_BLOCK_PARAMS[rest])
        norm = re.match(r"(ln\w*)\.(w|b)$", rest)  # ln1, ln2 and the post-norms some families have
        if norm:
            return layer, norm.group(1), False
        return layer, rest.rsplit(".", 1)[0], False  # anything else a family adds: by its own module name
    if name in _TOP_PARAMS:
        return (None, *_TOP_PARAMS[name])
    norm = re.match(r"(ln_final)\.(w|b)$", name)
    return (None, norm.group(1), False) if norm else (None, name.rsplit(".", 1)[0], False)


def as_matrix(name: str, tensor: torch.Tensor) -> torch.Tensor | None:
    """A weight as the 2-D matrix its singular values are taken of (TransformerLens's per-head layouts joined
    back into Hugging Face's ``[in, out]`` matrix); None for vectors."""
    if tensor.ndim == 2:
        return tensor
    if tensor.ndim == 3:
        heads, a, b = tensor.shape
        if name.endswith("W_O"):  # [heads, d_head, d_model] → [heads·d_head, d_model]
            return tensor.reshape(heads * a, b)
        return tensor.permute(1, 0, 2).reshape(a, heads * b)  # [heads, d_model, d_head] → [d_model, heads·d_head]
    return None


def _top_singular_values(matrix: torch.Tensor, k: int = TOP_K) -> list[float]:
    m = matrix.double()
    if m.numel() <= EXACT_SVD_MAX:
        return torch.linalg.svdvals(m)[:k].tolist()
    with torch.random.fork_rng(devices=[]):  # seeded: the same weights give the same numbers
        torch.manual_seed(0)
        _, s, _ = torch.svd_lowrank(m, q=min(k + 10, *m.shape), niter=6)
    return s[:k].tolist()


def _row(
    layer: int | None, module: str, sq_diff: float, sq_base: float, singular: list[float], n_params: int
) -> dict[str, Any]:
    frob = math.sqrt(sq_diff)
    return {
        "layer": layer,
        "module": module,
        "frob": frob,
        "rel": frob / math.sqrt(sq_base) if sq_base > 0 else (0.0 if frob == 0 else math.inf),
        "share": 0.0,
        "top_singular_values": [float(s) for s in singular if s > 0],
        "stable_rank": (sq_diff / singular[0] ** 2) if singular and singular[0] > 0 else None,
        "n_params": int(n_params),
    }


def _order(row: Mapping[str, Any]) -> tuple[int, int, str]:
    layer = row["layer"]
    module = row["module"]
    pos = MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
    if layer is None:  # the embeddings before block 0, the final norm and unembedding after the last
        return (-1 if module in ("embed", "pos_embed") else 10**9, pos, module)
    return (layer, pos, module)


def _finish(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    total = sum(r["frob"] ** 2 for r in rows)
    for r in rows:
        r["share"] = r["frob"] ** 2 / total if total > 0 else 0.0
    return sorted(rows, key=_order)


def _weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """A model's parameters under HookedTransformer's names, on either backend (the seam's ``named_weights``)."""

    return backend_of(model).named_weights()


@torch.inference_mode()
def weight_diff_from_models(base: torch.nn.Module, tuned: torch.nn.Module) -> list[dict[str, Any]]:
    """``by_module`` rows from two loaded models' parameters (the merged path)."""
    tuned_params = dict(_weights(tuned))
    groups: dict[tuple[int | None, str], dict[str, Any]] = {}
    for name, wb in _weights(base):
        where = module_of(name)
        if where is None:
            continue
        layer, module, main = where
        wt = tuned_params[name]
        diff = wt.detach().float() - wb.detach().float()
        g = groups.setdefault((layer, module), {"sq_diff": 0.0, "sq_base": 0.0, "n": 0, "matrix": None})
        g["sq_diff"] += float(diff.double().pow(2).sum())
        g["sq_base"] += float(wb.detach().double().pow(2).sum())
        g["n"] += wb.numel()
        if main:
            g["matrix"] = as_matrix(name, diff)
    rows = []
    for (layer, module), g in groups.items():
        matrix = g["matrix"]
        singular = _top_singular_values(matrix) if matrix is not None and g["sq_diff"] > 0 else []
        rows.append(_row(layer, module, g["sq_diff"], g["sq_base"], singular, g["n"]))
    return _finish(rows)


def _lora_scale(cfg: Mapping[str, Any], r: int, target: str) -> float:
    alpha = (cfg.get("alpha_pattern") or {}).get(target, cfg.get("lora_alpha", r))
    rank = (cfg.get("rank_pattern") or {}).get(target, r)
    return float(alpha) / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def _read_lora(adapter: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save"):
        return None
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return cfg, load_file(str(path))


def weight_diff_from_adapter(base: torch.nn.Module, adapter: str | Path) -> list[dict[str, Any]] | None:
    """``by_module`` rows read from a LoRA adapter (ΔW = scale·B·A), the base's weights only for ``rel``; None
    when the adapter holds something this cannot map (then the merged weights are read instead)."""
    read = _read_lora(Path(adapter))
    if read is None:
        return None
    cfg, tensors = read
    factors: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _LORA_KEY.search(key)
        if m is None:
            if "lora_" in key:
                return None  # a LoRA factor outside the decoder layers (embedding, head): not mapped here
            continue
        layer, target, which = int(m.group(1)), m.group(2), m.group(3)
        if target not in _LORA_MODULES:
            return None  # a fused module (c_attn, query_key_value, W_pack …): read the merged weights
        factors.setdefault((layer, target), {})[which] = value.double()
    if not factors:
        return None
    # every base module, with the LoRA-changed ones filled in; the rest have ΔW = 0 exactly
    sq_base: dict[tuple[int | None, str], float] = {}
    counts: dict[tuple[int | None, str], int] = {}
    for name, wb in _weights(base):
        where = module_of(name)
        if where is None:
            continue
        key = where[:2]
        sq_base[key] = sq_base.get(key, 0.0) + float(wb.detach().double().pow(2).sum())
        counts[key] = counts.get(key, 0) + wb.numel()
    changed: dict[tuple[int | None, str], tuple[float, list[float]]] = {}
    for (layer, target), ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            return None
        a, b = ab["A"], ab["B"]  # [r, in], [out, r]
        scale = _lora_scale(cfg, a.shape[0], target)
        # ‖s·B·A‖ and its singular values from the r × r core: B = Q_B R_B, Aᵀ = Q_A R_A ⇒ s·B·A = Q_B (s R_B R_Aᵀ) Q_Aᵀ
        core = scale * torch.linalg.qr(b)[1] @ torch.linalg.qr(a.T)[1].T
        singular = torch.linalg.svdvals(core).tolist()
        key = (layer, _LORA_MODULES[target])
        if key not in sq_base:
            return None
        changed[key] = (float(core.pow(2).sum()), singular[:TOP_K])
    rows = []
    for key, sq in sq_base.items():
        sq_diff, singular = changed.get(key, (0.0, []))
        rows.append(_row(key[0], key[1], sq_diff, sq, singular, counts[key]))
    return _finish(rows)


def weight_diff(twins: Twins, *, use_adapter: bool = True) -> dict[str, Any]:
    """E0's record for loaded twins: ``{"source": "adapter" | "weights", "adapter", "by_module": [...]}``."""
    adapter = getattr(twins, "tuned_adapter", None)
    rows = weight_diff_from_adapter(twins.base, adapter) if (adapter and use_adapter) else None
    if rows is not None:
        return {"source": "adapter", "adapter": str(adapter), "by_module": rows}
    return {
        "source": "weights",
        "adapter": str(adapter) if adapter else None,
        "by_module": weight_diff_from_models(twins.base, twins.tuned),
    }

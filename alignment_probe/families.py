"""TransformerLens configs for every model family, built from a checkpoint's own config.json.

TransformerLens 3.9 converts a family's *weights* for many architectures, but builds some
families' *configs* only from its table of official hub names (``google/gemma-2-2b`` ...), and
reads a field transformers 5 no longer has for GPT-2. A fine-tuned or random checkpoint of such a
family would be refused ("GemmaForCausalLM is not currently supported") or crash. This module is
the one seam where that is fixed:

* :data:`BUILDERS` — families whose config we build here from config.json, field by field the way
  TransformerLens's official-name table writes it: Gemma's ``sqrt(d_model)`` embedding scale and
  ``1 + w`` RMSNorm live in TransformerLens's weight conversion (we only pick the architecture),
  Gemma-2's soft-capping, alternating sliding windows, ``query_pre_attn_scalar`` attention scale and
  norms before *and* after each sublayer, Gemma-3's QK-norm and per-layer-type rotary bases,
  OLMo-2's post-norms and full-width QK-norm, GPT-2's context length.
* every other family goes through TransformerLens's own ``convert_hf_model_config`` (which reads
  config.json for GPT-Neo, GPT-NeoX/Pythia, OPT, Llama, Mistral, Qwen2/2.5, Qwen3, Phi-3 ...).

:func:`build_config` returns a ``HookedTransformerConfig`` ready for ``HookedTransformer(cfg)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from alignment_probe.errors import ArchitectureNotSupportedError

# Families TransformerLens converts (weights), as the architectures[0] name in config.json.
SUPPORTED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "GPTNeoForCausalLM",
    "GPTNeoXForCausalLM",
    "GPTJForCausalLM",
    "OPTForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Olmo2ForCausalLM",
    "Olmo3ForCausalLM",
    "BloomForCausalLM",
    "ApertusForCausalLM",
)


def _get(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if hf.get(n) is not None:
            return hf[n]
    return default


def _rope_theta(hf: dict[str, Any], layer_type: str | None = None, default: float = 10000.0) -> float:
    """rope_theta: top level (transformers < 5), ``rope_parameters`` (5), or per layer type (5, Gemma-3)."""
    if hf.get("rope_theta") is not None:
        return hf["rope_theta"]
    params = hf.get("rope_parameters") or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type].get("rope_theta", default)
    return params.get("rope_theta", default) if isinstance(params, dict) else default


def _attn_types(hf: dict[str, Any], n_layers: int, default_pattern: Callable[[int], str]) -> list[str]:
    layer_types = hf.get("layer_types")
    if layer_types:
        return ["local" if t == "sliding_attention" else "global" for t in layer_types]
    return [default_pattern(i) for i in range(n_layers)]


def _gpt2(hf: dict[str, Any]) -> dict[str, Any]:
    # TransformerLens 3.9 reads hf_config.n_ctx, which GPT2Config no longer has under transformers 5
    # (AttributeError, also for the hub name "gpt2"); n_positions is the same number. n_inner, which
    # TransformerLens ignores, sets the MLP width when present.
    d = hf["n_embd"]
    return {
        "d_model": d,
        "d_head": d // hf["n_head"],
        "n_heads": hf["n_head"],
        "d_mlp": hf.get("n_inner") or 4 * d,
        "n_layers": hf["n_layer"],
        "n_ctx": _get(hf, "n_positions", "n_ctx", default=1024),
        "eps": hf.get("layer_norm_epsilon", 1e-5),
        "d_vocab": hf["vocab_size"],
        "act_fn": hf.get("activation_function", "gelu_new"),
        "use_attn_scale": hf.get("scale_attn_weights", True),
        "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN",
    }


def _gemma_common(hf: dict[str, Any]) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    return {
        "d_model": hf["hidden_size"],
        "d_head": d_head,
        "n_heads": n_heads,
        "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_ctx": hf.get("max_position_embeddings", 8192),
        "eps": hf.get("rms_norm_eps", 1e-6),
        "d_vocab": hf["vocab_size"],
        # transformers' Gemma MLPs use hidden_activation (gelu_pytorch_tanh); hidden_act is legacy.
        "act_fn": _get(hf, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"),
        "initializer_range": hf.get("initializer_range", 0.02),
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf),
        "rotary_dim": d_head,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        # Always set, even without grouping: TransformerLens's Gemma conversion writes _W_K/_W_V.
        "n_key_value_heads": hf.get("num_key_value_heads") or n_heads,
        "gated_mlp": True,
        "final_rms": True,
    }


def _query_scale(hf: dict[str, Any], cfg: dict[str, Any]) -> None:
    # HF scales scores by query_pre_attn_scalar**-0.5, not d_head**-0.5 (gemma-2-27b: 144 vs 128).
    q = hf.get("query_pre_attn_scalar")
    if q is not None:
        cfg["attn_scale"] = math.sqrt(q)


def _sliding(hf: dict[str, Any], cfg: dict[str, Any], default_pattern: Callable[[int], str]) -> None:
    types = _attn_types(hf, cfg["n_layers"], default_pattern)
    window = hf.get("sliding_window")
    if window and "local" in types:
        cfg.update(window_size=int(window), use_local_attn=True, attn_types=types)


def _gemma(hf: dict[str, Any]) -> dict[str, Any]:
    return _gemma_common(hf)


def _gemma2(hf: dict[str, Any]) -> dict[str, Any]:
    cfg = _gemma_common(hf)
    cfg["use_normalization_before_and_after"] = True
    _query_scale(hf, cfg)
    _sliding(hf, cfg, lambda i: "local" if i % 2 == 0 else "global")  # HF: even layers slide
    if hf.get("attn_logit_softcapping"):
        cfg["attn_scores_soft_cap"] = float(hf["attn_logit_softcapping"])
    if hf.get("final_logit_softcapping"):
        cfg["output_logits_soft_cap"] = float(hf["final_logit_softcapping"])
    return cfg


def _gemma3(hf: dict[str, Any]) -> dict[str, Any]:
    cfg = _gemma2(hf)
    cfg["use_qk_norm"] = True
    # transformers 5 keeps one rope setting per layer type: global layers (theta 1e6, maybe linear
    # scaling), sliding layers (theta 1e4); older configs use rope_theta + rope_local_base_freq.
    params = hf.get("rope_parameters") or {}
    full = params.get("full_attention") if isinstance(params.get("full_attention"), dict) else params
    cfg["rotary_base"] = _get(full or {}, "rope_theta", default=hf.get("rope_theta", 1_000_000.0))
    local: dict[str, Any] = params["sliding_attention"] if isinstance(params.get("sliding_attention"), dict) else {}
    cfg["rotary_base_local"] = _get(local, "rope_theta", default=hf.get("rope_local_base_freq", 10000.0))
    scaling: dict[str, Any] = full if full and full.get("rope_type") == "linear" else (hf.get("rope_scaling") or {})
    if scaling.get("rope_type", scaling.get("type")) == "linear" and scaling.get("factor"):
        cfg["rotary_scaling_factor"] = float(scaling["factor"])
    # Gemma-3 1B: five sliding layers, then a global one.
    _sliding(hf, cfg, lambda i: "global" if (i + 1) % hf.get("sliding_window_pattern", 6) == 0 else "local")
    return cfg


def _olmo2(hf: dict[str, Any]) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    if (hf.get("num_key_value_heads") or n_heads) != n_heads:
        raise ArchitectureNotSupportedError(
            f"This OLMo-2 checkpoint uses grouped-query attention ({hf['num_key_value_heads']} key/value heads for "
            f"{n_heads} query heads); TransformerLens 3.9 converts OLMo-2 only with one key/value head per query "
            "head, as the released OLMo-2 models have. Use such a checkpoint, or a family that supports grouping."
        )
    return {
        "d_model": hf["hidden_size"],
        "d_head": hf["hidden_size"] // n_heads,
        "n_heads": n_heads,
        "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_ctx": hf.get("max_position_embeddings", 4096),
        "eps": hf.get("rms_norm_eps", 1e-6),
        "d_vocab": hf["vocab_size"],
        "act_fn": hf.get("hidden_act", "silu"),
        "initializer_range": hf.get("initializer_range", 0.02),
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf, default=500000.0),
        "attn_types": ["global"] * hf["num_hidden_layers"],
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
    }


# architectures[0] -> builder, for the families TransformerLens configures only by official name
# (Gemma 1/2/3, OLMo-2) or reads wrongly under transformers 5 (GPT-2).
BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "GPT2LMHeadModel": _gpt2,
    "GemmaForCausalLM": _gemma,
    "Gemma2ForCausalLM": _gemma2,
    "Gemma3ForCausalLM": _gemma3,
    "Olmo2ForCausalLM": _olmo2,
}


def architecture_of(hf: dict[str, Any]) -> str | None:
    archs = hf.get("architectures") or []
    return archs[0] if archs else None


def config_dict(path: str | Path, hf: dict[str, Any]) -> dict[str, Any]:
    """The TransformerLens config dict (before common processing) for the checkpoint in ``path``."""
    from transformer_lens import loading_from_pretrained as loading

    arch = architecture_of(hf)
    if arch in BUILDERS:
        cfg = BUILDERS[arch](hf)
        cfg["original_architecture"] = arch
        cfg["tokenizer_name"] = str(path)
        cfg["quantization_method"] = (hf.get("quantization_config") or {}).get("quant_method")
        return cfg
    check_architecture(hf, str(path))
    try:
        return loading.convert_hf_model_config(str(path))
    except (NotImplementedError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ArchitectureNotSupportedError(
            f"TransformerLens cannot build a config for this {arch} checkpoint ({type(exc).__name__}: {exc}). Its "
            "config.json may hold a variant TransformerLens does not convert; --debug shows the traceback."
        ) from exc


def build_config(path: str | Path, hf: dict[str, Any], *, device: str, dtype: torch.dtype) -> Any:
    """A ``HookedTransformerConfig`` for the checkpoint in ``path`` (whose config.json is ``hf``).

    Families in :data:`BUILDERS` get their dict here; the rest come from TransformerLens. The common
    processing (name, device, dtype, no weight init, no checkpoint, vocab from config.json) is what
    ``get_pretrained_model_config`` does for any model.
    """
    from transformer_lens import HookedTransformerConfig

    cfg = config_dict(path, hf)
    cfg.update(
        model_name=Path(str(path)).name,
        init_weights=False,
        device=device,
        dtype=dtype,
        n_devices=1,
        from_checkpoint=False,
        d_vocab=hf.get("vocab_size", cfg["d_vocab"]),
    )
    cfg.setdefault("default_prepend_bos", True)
    cfg["load_in_4bit"] = (hf.get("quantization_config") or {}).get("load_in_4bit", False)
    if cfg.get("original_architecture") == "Qwen2ForCausalLM":  # as get_pretrained_model_config does
        cfg["rotary_base"] = _rope_theta(hf, default=cfg["rotary_base"])
    return HookedTransformerConfig.from_dict(cfg)


def check_architecture(hf: dict[str, Any], source: str) -> str:
    """The checkpoint's architecture, or :class:`ArchitectureNotSupportedError` (cheap: config.json only)."""
    arch = architecture_of(hf)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ArchitectureNotSupportedError(
            f"TransformerLens cannot convert the architecture {arch or hf.get('model_type')!r} of {source} (config.json "
            f"'architectures'). Families it converts: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}. Pass a checkpoint "
            "of one of those (a fine-tune keeps its base model's architecture)."
        )
    return arch

"""Loading a local checkpoint as an unprocessed ``TransformerBridge`` (TransformerLens 4.x), and the load-time
check that the layer runner (:mod:`~alignment_probe.backends.bridge_runner`) reproduces the model's own forward.
:func:`alignment_probe.backends.bridge.load` puts the two together behind the seam."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from alignment_probe.backends.base import Backend
from alignment_probe.backends.loading import check_finite_weights, load_tokenizer, quiet_loading, resolve_dtype
from alignment_probe.checkpoint_files import check_checkpoint_dir
from alignment_probe.errors import ArchitectureNotSupportedError, CheckpointError, ConfigError

# Tokens the load-time check runs through both routes; the tolerance it allows (float32 rounding of a
# different summation order is ~1e-6; a missing soft-cap or scale is far larger).
_SELF_CHECK_TOKENS = 8
_SELF_CHECK_ATOL = {torch.float32: 1e-4, torch.float64: 1e-8}


def _bridge_config(path: str, source: str) -> Any:
    """The Bridge's config for the checkpoint in ``path`` (its config.json only), refusing what it cannot adapt."""
    from transformer_lens.model_bridge.sources.transformers import (  # type: ignore[attr-defined,unused-ignore]  # 4.x
        source as tf_source,
    )
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # unreadable or unknown model_type
        raise CheckpointError(
            f"The config.json of {source} cannot be read by transformers ({type(exc).__name__}: {exc})."
        ) from exc
    try:
        arch = tf_source.determine_architecture_from_hf_config(hf_config)  # type: ignore[no-untyped-call,unused-ignore]
        cfg = tf_source.build_bridge_config_from_hf(hf_config, arch, path, torch.float32)
        tf_source.architecture_adapter_factory.ArchitectureAdapterFactory.select_architecture_adapter(cfg)
    except (ValueError, NotImplementedError, KeyError, AttributeError) as exc:
        raise ArchitectureNotSupportedError(
            f"TransformerLens's TransformerBridge cannot adapt the checkpoint {source} ({type(exc).__name__}: "
            f"{exc}). Pass a checkpoint of an architecture it supports (transformer_lens.supported_models)."
        ) from exc
    return cfg


def _resident(model: torch.nn.Module) -> torch.nn.Module:
    """The parameters that hold data here (a ``disk`` device map leaves offloaded ones on the meta device until
    their block runs), under their names, for the finite-weights check."""
    holder = torch.nn.Module()
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.device.type != "meta":
            holder.register_parameter(f"p{i}", p)
            holder._parameters[name] = holder._parameters.pop(f"p{i}")  # the name in messages, dots and all
    return holder


def checkpoint_shape(path: str, source: str) -> tuple[int | None, int]:
    """(n_ctx, n_layers) the Bridge gives the checkpoint in ``path`` (its config only, no weights read)."""
    cfg = _bridge_config(path, source)
    return getattr(cfg, "n_ctx", None), int(cfg.n_layers)


def self_check(backend: Backend, source: str) -> None:
    """The layer runner's logits equal the Hugging Face model's own forward on a few tokens, else refuse."""
    atol = _SELF_CHECK_ATOL.get(backend.dtype)
    if atol is None:  # half precision: the two routes round differently; float32 is where the check means something
        return
    vocab = backend.d_vocab
    ids = (torch.arange(_SELF_CHECK_TOKENS) * 7919 % vocab)[None].to(backend.device)
    with torch.inference_mode():
        ours, _ = backend.run(ids)
        hf: Any = backend.model.original_model  # the Hugging Face model inside the Bridge
        theirs = hf(input_ids=ids).logits.to(ours.device)
    err = (ours.float().log_softmax(-1) - theirs.float().log_softmax(-1)).abs().max().item()
    if not err <= atol:
        raise ArchitectureNotSupportedError(
            f"{source}: running this {backend.facts.architecture}'s decoder layers one by one (what start-at-layer "
            f"needs) does not reproduce its own forward (log-prob error {err:.2e}); its forward does something the "
            "TransformerBridge backend does not model. Use the HookedTransformer line (--backend hooked) for it."
        )


def boot(
    path: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
    tokenizer: Any = None,
    device_map: Any = None,
) -> tuple[Any, Any, str]:
    """(the ``TransformerBridge``, its tokenizer, the source's name) for the checkpoint in ``path``, unprocessed
    and in compatibility mode; the arguments are :func:`alignment_probe.backends.bridge.load`'s."""
    from transformer_lens.model_bridge import TransformerBridge

    real = Path(path).expanduser().resolve()
    check_checkpoint_dir(real)
    source = source or str(real)
    torch_dtype = resolve_dtype(dtype)
    _bridge_config(str(real), source)  # refuses an unsupported architecture before any weights load
    if tokenizer is None:
        tokenizer = load_tokenizer(real, source)
    where: dict[str, Any] = {"device_map": device_map} if device_map is not None else {"device": device}
    try:
        with quiet_loading():
            bridge = TransformerBridge.boot_transformers(
                str(real), dtype=torch_dtype, tokenizer=copy.deepcopy(tokenizer), **where
            )
    except (ArchitectureNotSupportedError, CheckpointError):
        raise
    except ValueError as exc:  # a device map accelerate or the Bridge refuses
        if device_map is not None:
            raise ConfigError(f"--device-map {device_map!r} cannot place {source}: {exc}") from exc
        raise CheckpointError(f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}).") from exc
    except Exception as exc:  # truncated weights, shapes that disagree with config.json
        raise CheckpointError(
            f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}). The weight files "
            "may be truncated (an interrupted copy or download) or disagree with config.json; save "
            "or download the checkpoint again (--debug shows the traceback)."
        ) from exc
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.eval()
    if getattr(bridge.cfg, "original_architecture", None) is None:  # HookedTransformer's config names the class
        bridge.cfg.original_architecture = (getattr(bridge.original_model.config, "architectures", None) or [None])[0]
    check_finite_weights(_resident(bridge), source)
    return bridge, tokenizer, source

"""Load a base model and its tuned twin as two TransformerLens ``HookedTransformer``s.

Cross-model patching copies an activation computed by one model into the forward pass of the
other. That is only meaningful when both residual streams live in the same basis, so both models
are loaded *the same way*: by default with no weight processing at all (no LayerNorm folding, no
centring). For Llama-family models TransformerLens's processing would leave the residual stream in
the raw Hugging Face basis anyway, but it costs memory and changes logits by a per-position
constant; unprocessed loading is the simple, always-sound choice (see docs/method.md).

Where a model comes from:

* a **local Hugging Face checkpoint directory** (config.json + weights + tokenizer files), fully
  offline, for every family TransformerLens converts, named or not: the TransformerLens config is
  built from the checkpoint's own config.json (:mod:`alignment_probe.families`);
* a **hub name** TransformerLens knows (``meta-llama/Llama-3.2-1B``, ``Qwen/Qwen2.5-0.5B``, ``gpt2``...):
  its snapshot folder in the Hugging Face cache (downloaded if the hub can be reached), loaded the same
  way (:mod:`alignment_probe.hub`);
* for the tuned twin, a **peft adapter folder** (adapter_config.json): merged onto the base into a
  cached checkpoint folder first (:mod:`alignment_probe.adapters`).

Models load one at a time, each one's Hugging Face copy released before the next loads.

Before any compute, :func:`check_compatible` refuses pairs that differ in architecture, size or
tokenizer behaviour.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from transformer_lens import HookedTransformer

from alignment_probe.adapters import is_adapter_dir, merge_adapter

# The cheap checks of checkpoint folders and hub names (no torch, no TransformerLens), kept importable here.
from alignment_probe.checkpoint_files import (  # noqa: F401
    _HF_CONFIG_FIELDS,
    _TOKENIZER_FILES,
    _WEIGHT_FILES,
    check_checkpoint_dir,
    is_local_checkpoint,
    precheck_pair,
    read_checkpoint_config,
)
from alignment_probe.errors import ArchitectureNotSupportedError, CheckpointError, ConfigError, IncompatiblePairError
from alignment_probe.families import build_config, check_architecture
from alignment_probe.hub import resolve_snapshot

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}

# A probe string that exercises spaces, punctuation, digits, newlines and the HH turn markers.
TOKENIZER_PROBE = "\n\nHuman: Can you help me, please? It's 3:45pm.\n\nAssistant: Sure — here's how."


@dataclass
class LoadedModel:
    """One loaded model plus what is needed to tell it apart from others."""

    model: HookedTransformer
    tokenizer: Any
    source: str  # the hub name or the resolved local path it was loaded from
    fingerprint: str = field(default="")


@dataclass
class Twins:
    """The ``base`` model and its ``tuned`` twin, checked compatible, sharing one tokenizer.

    (Named for what it holds: ``load_pairs`` in data.py loads preference *pairs*; this is the
    model twins. ``ModelPair``/``load_pair`` remain as aliases for old code.)"""

    base: HookedTransformer
    tuned: HookedTransformer
    tokenizer: Any
    base_source: str
    tuned_source: str
    base_fingerprint: str
    tuned_fingerprint: str
    # the peft adapter folder the tuned twin was merged from, if it was one (E0 reads ΔW = scale·B·A from it)
    tuned_adapter: str | None = None

    @property
    def n_layers(self) -> int:
        return self.base.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.base.cfg.d_model

    def models(self) -> dict[str, HookedTransformer]:
        return {"base": self.base, "tuned": self.tuned}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of what was loaded, for manifests."""
        cfg = self.base.cfg
        return {
            "base": {"source": self.base_source, "fingerprint": self.base_fingerprint},
            "tuned": {"source": self.tuned_source, "fingerprint": self.tuned_fingerprint},
            "architecture": cfg.original_architecture,
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "n_key_value_heads": cfg.n_key_value_heads,
            "d_mlp": cfg.d_mlp,
            "d_vocab": cfg.d_vocab,
            "dtype": str(cfg.dtype).replace("torch.", ""),
            "device": str(cfg.device),
        }


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.") from None


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu.")
    if not (device == "cpu" or device.startswith(("cuda", "mps"))):
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N.")
    return device


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Refuse a model with NaN or inf in its weights (a broken save or an overflowed conversion)."""
    # Parameters only: buffers such as the attention mask's IGNORE value are -inf by design.
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(
            f"The checkpoint {source} has NaN or inf in {len(bad)} weight tensor(s): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. The file is broken (or was "
            "converted to a dtype too narrow for its values); re-save or re-download it."
        )


# Substrings that make TransformerLens read a family from a *path* instead of its config.json.
_NAME_GUESSES = ("llama", "gemma")


def _name_safe_path(path: Path) -> Path:
    """TransformerLens guesses the architecture from any path containing "llama" (or "gemma") and then
    ignores the checkpoint's config. Reach such a directory through a neutrally named symlink instead."""
    if not any(g in str(path).lower() for g in _NAME_GUESSES):
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    link = Path(tempfile.gettempdir()) / f"alignment-probe-ckpt-{digest}"
    if link.is_symlink() and link.resolve() != path:
        link.unlink()
    if not link.exists():
        link.symlink_to(path, target_is_directory=True)
    return link


class _SoftCappedUnembed(torch.nn.Module):
    """Unembed, then ``cap * tanh(logits / cap)`` (Gemma-2's final logit soft-capping).

    TransformerLens applies the cap in ``forward()`` after ``model.unembed``; scoring unembeds only
    the completion positions by calling ``model.unembed`` itself and would skip it. Moving the cap into
    the module (and switching it off in the config) gives both routes HF's logits exactly once.
    Parameters keep their names (``unembed.W_U``, ``unembed.b_U``), so fingerprints are unchanged."""

    def __init__(self, unembed: Any, cap: float) -> None:  # TransformerLens's Unembed
        super().__init__()
        self.W_U: torch.Tensor = unembed.W_U
        self.b_U: torch.Tensor = unembed.b_U
        self.cap = cap

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        logits = residual @ self.W_U + self.b_U
        return self.cap * torch.tanh(logits / self.cap)


def _move_soft_cap_into_unembed(model: HookedTransformer) -> None:
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    if cap is not None and cap > 0:
        model.unembed = _SoftCappedUnembed(model.unembed, float(cap))  # type: ignore[assignment]  # its forward, W_U and b_U
        model.cfg.output_logits_soft_cap = -1.0


def load_tokenizer(path: str | os.PathLike[str], source: str | None = None) -> Any:
    """The tokenizer of a local checkpoint directory (offline; no weights read)."""
    from transformers import AutoTokenizer

    real = Path(path).expanduser().resolve()
    try:
        return AutoTokenizer.from_pretrained(str(_name_safe_path(real)))
    except Exception as exc:  # corrupt or incompatible tokenizer files: a problem with the checkpoint
        raise CheckpointError(
            f"The tokenizer files in {source or real} cannot be loaded ({type(exc).__name__}: {exc}). "
            "Save them again with tokenizer.save_pretrained(dir) (--debug shows the traceback)."
        ) from exc


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hugging Face's "Loading weights" progress bar off while a checkpoint loads (a run shows one progress display
    per stage), then put back as it was; its warnings and errors still show."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


@contextmanager
def _conversion_errors(source: str, arch: str) -> Iterator[None]:
    """TransformerLens's failures to build a config or convert weights, as one error that names the checkpoint."""
    try:
        yield
    except ArchitectureNotSupportedError as exc:
        raise ArchitectureNotSupportedError(f"{source}: {exc}") from exc
    except (NotImplementedError, ValueError, KeyError, AttributeError, AssertionError) as exc:
        raise ArchitectureNotSupportedError(
            f"TransformerLens cannot convert the {arch} checkpoint {source} ({type(exc).__name__}: {exc}). It supports "
            "the released variants of each family; use one (--debug shows the traceback)."
        ) from exc


def load_local_model(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
    tokenizer: Any = None,
) -> LoadedModel:
    """Load a local Hugging Face checkpoint directory as an unprocessed ``HookedTransformer``.

    Builds the TransformerLens config from the checkpoint's own config.json (never from a
    built-in table; :mod:`alignment_probe.families` for the families TransformerLens configures only
    by official name), converts the Hugging Face weights, and loads them with every processing
    flag off, so logits equal the Hugging Face model's. The Hugging Face copy is released before this
    returns, so a pair peaks at one Hugging Face model plus two converted ones. ``source`` names the
    model in messages and manifests (default: the resolved path). ``tokenizer``: the checkpoint's
    tokenizer when the caller loaded it already (:func:`open_checkpoints`).
    """
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    real = Path(path).expanduser().resolve()
    check_checkpoint_dir(real)
    source = source or str(real)
    torch_dtype = resolve_dtype(dtype)
    safe = str(_name_safe_path(real))
    arch = check_architecture(read_checkpoint_config(real), source)  # before reading any weights
    if tokenizer is None:
        tokenizer = load_tokenizer(real, source)
    try:
        with _quiet_loading():
            hf_model = AutoModelForCausalLM.from_pretrained(safe, dtype=torch_dtype)
    except Exception as exc:  # truncated weights, shapes that disagree with config.json, unknown model_type
        raise CheckpointError(
            f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}). The weight files "
            "may be truncated (an interrupted copy or download) or disagree with config.json; save "
            "or download the checkpoint again (--debug shows the traceback)."
        ) from exc
    with _conversion_errors(source, arch):
        cfg = build_config(safe, hf_model.config.to_dict(), device=device, dtype=torch_dtype)
        state_dict = loading.get_pretrained_state_dict(safe, cfg, hf_model, dtype=torch_dtype)
    del hf_model  # the state dict still views its tensors; they go when it is emptied below
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(  # empties state_dict key by key, releasing the Hugging Face tensors
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    del state_dict
    gc.collect()
    _move_soft_cap_into_unembed(model)
    model.to(device, print_details=False)  # TransformerLens would print "Moving model to device" for each model
    model.eval()
    check_finite_weights(model, source)
    store_weights_column_major(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, fingerprint=model_fingerprint(model))


# The attention's 3-D weights, stored so that TransformerLens's rearrangement into a ``[out, in]`` matrix
# is a view: the axes permutation that takes the stored (contiguous) tensor to the parameter's shape.
_ATTENTION_LAYOUT = {
    "W_Q": (0, 2, 1),
    "W_K": (0, 2, 1),
    "W_V": (0, 2, 1),
    "_W_K": (0, 2, 1),
    "_W_V": (0, 2, 1),
    "W_O": (1, 2, 0),
}


def store_weights_column_major(model: torch.nn.Module) -> None:
    """Store every weight in the memory layout TransformerLens's matrix products read (same values).

    TransformerLens multiplies activations by ``W`` through ``W.T``-shaped kernels; with a row-major
    ``W`` PyTorch copies ``W.T.contiguous()`` on every call, which on a CPU costs about as much as the
    matrix product itself (measured: a 1B forward 10–13 s → 5.5 s). Likewise the attention rearranges
    ``W_Q``/``W_K``/``W_V`` ``[head, d_model, d_head]`` into ``[(head d_head), d_model]`` and ``W_O``
    ``[head, d_head, d_model]`` into ``[d_model, (head d_head)]`` on every call, a copy unless the memory
    already has that order. The products then read the same values in the same layout as the copies
    they replace: outputs are bit-identical.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            order = _ATTENTION_LAYOUT.get(name.rsplit(".", 1)[-1])
            if p.dim() == 2 and p.is_contiguous():
                p.data = p.data.T.contiguous().T
            elif p.dim() == 3 and order is not None and p.is_contiguous():
                inverse = tuple(order.index(i) for i in range(3))  # stored axes: the parameter's, permuted
                p.data = p.data.permute(*inverse).contiguous().permute(*order)


def load_hub_model(name: str, *, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load a model TransformerLens knows by name: its snapshot folder in the Hugging Face cache
    (downloaded when the hub can be reached, as is offline), through the local-checkpoint route.

    Errors say which case it is (:mod:`alignment_probe.hub`): unknown to TransformerLens, not cached
    and no network, gated or private, an architecture TransformerLens cannot convert."""
    official, path = resolve_snapshot(name)
    return load_local_model(path, device=device, dtype=dtype, source=official)


def resolve_tuned(
    base: str | os.PathLike[str], tuned: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str | os.PathLike[str], str | None]:
    """``tuned``, or, when it is a peft adapter folder, the cached folder of it merged onto ``base``,
    with a description of what was merged (for messages and manifests)."""

    if not is_adapter_dir(tuned):
        return tuned, None
    base_dir = Path(base).expanduser().resolve() if is_local_checkpoint(base) else resolve_snapshot(str(base))[1]
    merged = merge_adapter(base_dir, tuned, cache_dir=cache_dir, base_spec=str(base))
    return merged, f"{base} + adapter {Path(tuned).expanduser().resolve()}"


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
) -> LoadedModel:
    """Load one model from a local checkpoint directory or a hub name."""
    device = resolve_device(device)
    if is_local_checkpoint(spec):
        return load_local_model(spec, device=device, dtype=dtype, source=source)
    return load_hub_model(str(spec), device=device, dtype=dtype)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: two loads of the same weights agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


_CFG_FIELDS = (
    "original_architecture",
    "n_layers",
    "d_model",
    "n_heads",
    "n_key_value_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "normalization_type",
    "positional_embedding_type",
    "act_fn",
)


def tokenizer_problems(tb: Any, tt: Any) -> list[str]:
    """How two tokenizers differ in what scoring depends on (vocabulary size, BOS, how text splits); [] if not."""
    problems = []
    if len(tb) != len(tt):
        problems.append(f"tokenizer vocabulary size: base={len(tb)} tuned={len(tt)}")
    if tb.bos_token_id != tt.bos_token_id:
        problems.append(f"BOS token id: base={tb.bos_token_id} tuned={tt.bos_token_id}")
    eb = tb.encode(TOKENIZER_PROBE, add_special_tokens=False)
    et = tt.encode(TOKENIZER_PROBE, add_special_tokens=False)
    if eb != et:
        problems.append(
            f"tokenizers split the probe string {TOKENIZER_PROBE!r} differently ({len(eb)} vs {len(et)} tokens)"
        )
    return problems


def _refuse_incompatible(base_source: str, tuned_source: str, problems: list[str]) -> None:
    if problems:
        raise IncompatiblePairError(
            f"Base {base_source} and tuned {tuned_source} are not a compatible pair, so their activations "
            "cannot be patched into each other:\n  - "
            + "\n  - ".join(problems)
            + "\nPass a base model and a checkpoint fine-tuned from it (same architecture, size and tokenizer)."
        )


def check_compatible(base: LoadedModel, tuned: LoadedModel) -> None:
    """Refuse a pair whose activations cannot be swapped: different architecture, size or tokenizer."""
    problems = []
    for name in _CFG_FIELDS:
        b, t = getattr(base.model.cfg, name, None), getattr(tuned.model.cfg, name, None)
        if b != t:
            problems.append(f"{name}: base={b!r} tuned={t!r}")
    _refuse_incompatible(base.source, tuned.source, problems + tokenizer_problems(base.tokenizer, tuned.tokenizer))


@dataclass
class Checkpoints:
    """Everything about a pair but its weights: the checkpoint folders, the tokenizers and the context.

    :func:`open_checkpoints` reads it, so that data can be tokenised, sampled and refused before any
    weights load; :func:`load_twins` then loads the weights from the same folders with the same tokenizers."""

    base: Path
    base_source: str
    tuned: Path | None  # None: a peft adapter folder, merged onto the base when the weights load
    tuned_source: str | None
    tokenizer: Any  # the base's; the pair shares it (the tuned one is checked to behave the same)
    tuned_tokenizer: Any
    n_ctx: int | None  # the context TransformerLens gives the model (``cfg.n_ctx``)
    n_layers: int


def _checkpoint_dir(spec: str | os.PathLike[str]) -> tuple[Path, str]:
    """(folder, name for messages) of a local checkpoint or a hub name (its cached snapshot)."""
    if is_local_checkpoint(spec):
        real = Path(spec).expanduser().resolve()
        check_checkpoint_dir(real)
        return real, str(real)
    official, path = resolve_snapshot(str(spec))
    return Path(path), official


def open_checkpoints(base: str | os.PathLike[str], tuned: str | os.PathLike[str]) -> Checkpoints:
    """Find both checkpoints, load their tokenizers, check the tokenizers behave the same and read the
    model's context from its config: no weights are read (a hub model is fetched into the cache if absent).
    A ``tuned`` adapter folder is merged onto the base later, by :func:`load_twins`."""
    from transformers import AutoConfig

    precheck_pair(base, tuned)  # cheap: missing files and mismatched configs
    base_dir, base_source = _checkpoint_dir(base)
    arch = check_architecture(read_checkpoint_config(base_dir), base_source)
    tokenizer = load_tokenizer(base_dir, base_source)
    tuned_dir = tuned_source = tuned_tokenizer = None
    if not is_adapter_dir(tuned):
        tuned_dir, tuned_source = _checkpoint_dir(tuned)
        tuned_tokenizer = load_tokenizer(tuned_dir, tuned_source)
        _refuse_incompatible(base_source, tuned_source, tokenizer_problems(tokenizer, tuned_tokenizer))
    safe = str(_name_safe_path(base_dir))
    with _conversion_errors(base_source, arch):
        cfg = build_config(safe, AutoConfig.from_pretrained(safe).to_dict(), device="cpu", dtype=torch.float32)
    return Checkpoints(
        base_dir,
        base_source,
        tuned_dir,
        tuned_source,
        tokenizer,
        tuned_tokenizer,
        getattr(cfg, "n_ctx", None),
        cfg.n_layers,
    )


def load_twins(
    base: str | os.PathLike[str],
    tuned: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    dtype: str | torch.dtype = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoints: Checkpoints | None = None,
) -> Twins:
    """Load ``base`` and ``tuned`` with identical (no) weight processing and check they are compatible.

    ``tuned`` may be a peft adapter folder: it is merged onto ``base`` first (cached in ``cache_dir``,
    default ``$ALIGNMENT_PROBE_CACHE`` or ``~/.cache/alignment-probe``). One model is loaded at a time,
    each one's Hugging Face copy released before the next loads (peak: two converted models plus one
    Hugging Face copy). ``checkpoints``: what :func:`open_checkpoints` already read of this pair."""
    ck = checkpoints or open_checkpoints(base, tuned)
    device = resolve_device(device)
    tuned_dir, tuned_source, tuned_tokenizer = ck.tuned, ck.tuned_source, ck.tuned_tokenizer
    adapter = None
    if tuned_dir is None:  # an adapter: merged (or found merged in the cache) before any weights load here
        merged, tuned_source = resolve_tuned(base, tuned, cache_dir=cache_dir)
        tuned_dir, adapter = Path(merged), str(Path(tuned).expanduser().resolve())
    b = load_local_model(ck.base, device=device, dtype=dtype, source=ck.base_source, tokenizer=ck.tokenizer)
    t = load_local_model(tuned_dir, device=device, dtype=dtype, source=tuned_source, tokenizer=tuned_tokenizer)
    check_compatible(b, t)
    return Twins(
        base=b.model,
        tuned=t.model,
        tokenizer=b.tokenizer,
        base_source=b.source,
        tuned_source=t.source,
        base_fingerprint=b.fingerprint,
        tuned_fingerprint=t.fingerprint,
        tuned_adapter=adapter,
    )


# Old names, kept so existing scripts keep working.
ModelPair = Twins
load_pair = load_twins

"""Load a base model and its tuned twin through a backend (:mod:`alignment_probe.backends`): two TransformerLens
``HookedTransformer``s (3.9) or ``TransformerBridge``s (4.x).

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

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignment_probe import backends
from alignment_probe.adapters import is_adapter_dir, merge_adapter
from alignment_probe.backends.base import Backend

# The loading helpers both backends share, kept importable here (old scripts import them from pair).
from alignment_probe.backends.loading import DTYPES as DTYPES
from alignment_probe.backends.loading import check_finite_weights as check_finite_weights
from alignment_probe.backends.loading import load_tokenizer as load_tokenizer
from alignment_probe.backends.loading import name_safe_path as _name_safe_path  # noqa: F401
from alignment_probe.backends.loading import resolve_dtype as resolve_dtype

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
from alignment_probe.errors import ConfigError, IncompatiblePairError
from alignment_probe.hub import resolve_snapshot

# A probe string that exercises spaces, punctuation, digits, newlines and the HH turn markers.
TOKENIZER_PROBE = "\n\nHuman: Can you help me, please? It's 3:45pm.\n\nAssistant: Sure — here's how."


@dataclass
class LoadedModel:
    """One loaded model plus what is needed to tell it apart from others."""

    model: Any  # the native TransformerLens model (HookedTransformer or TransformerBridge)
    tokenizer: Any
    source: str  # the hub name or the resolved local path it was loaded from
    fingerprint: str = field(default="")

    @property
    def backend(self) -> Backend:
        return backends.backend_of(self.model)


@dataclass
class Twins:
    """The ``base`` model and its ``tuned`` twin, checked compatible, sharing one tokenizer.

    ``base``/``tuned`` are the native TransformerLens models (``run_with_cache``, ``run_with_hooks`` work on
    both lines); the engine and the experiments reach them through :meth:`backends` (the seam).

    (Named for what it holds: ``load_pairs`` in data.py loads preference *pairs*; this is the
    model twins. ``ModelPair``/``load_pair`` remain as aliases for old code.)"""

    base: Any
    tuned: Any
    tokenizer: Any
    base_source: str
    tuned_source: str
    base_fingerprint: str
    tuned_fingerprint: str
    # the peft adapter folder the tuned twin was merged from, if it was one (E0 reads ΔW = scale·B·A from it)
    tuned_adapter: str | None = None

    @property
    def n_layers(self) -> int:
        return backends.backend_of(self.base).n_layers

    @property
    def d_model(self) -> int:
        return backends.backend_of(self.base).d_model

    @property
    def backend(self) -> str:
        """Which backend runs the twins: ``hooked`` or ``bridge``."""
        return backends.backend_of(self.base).name

    def models(self) -> dict[str, Any]:
        """The native models by role (for notebooks: ``run_with_cache``, ``run_with_hooks``)."""
        return {"base": self.base, "tuned": self.tuned}

    def backends(self) -> dict[str, Backend]:
        """The models by role behind the seam (what the engine and the experiments call)."""
        return {"base": backends.backend_of(self.base), "tuned": backends.backend_of(self.tuned)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of what was loaded, for manifests."""
        return {
            "base": {"source": self.base_source, "fingerprint": self.base_fingerprint},
            "tuned": {"source": self.tuned_source, "fingerprint": self.tuned_fingerprint},
            **backends.backend_of(self.base).facts.describe(),
            "backend": self.backend,  # which TransformerLens line ran the models, and its version
            "transformer_lens": backends.transformer_lens_version(),
        }


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu.")
    if not (device == "cpu" or device.startswith(("cuda", "mps"))):
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N.")
    return device


def load_local_model(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    source: str | None = None,
    tokenizer: Any = None,
    backend: str = "auto",
    device_map: Any = None,
) -> LoadedModel:
    """Load a local Hugging Face checkpoint directory through ``backend`` (backends.load_model), unprocessed
    (logits equal the Hugging Face model's). ``source`` names the model in messages and manifests (default: the
    resolved path). ``tokenizer``: the checkpoint's tokenizer when the caller loaded it already
    (:func:`open_checkpoints`)."""
    real = Path(path).expanduser().resolve()
    check_checkpoint_dir(real)
    loaded = backends.load_model(
        real, backend=backend, device=device, dtype=dtype, device_map=device_map, source=source, tokenizer=tokenizer
    )
    return LoadedModel(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        source=source or str(real),
        fingerprint=model_fingerprint(loaded.model),
    )


def load_hub_model(
    name: str, *, device: str = "cpu", dtype: str | torch.dtype = "float32", backend: str = "auto"
) -> LoadedModel:
    """Load a model TransformerLens knows by name: its snapshot folder in the Hugging Face cache
    (downloaded when the hub can be reached, as is offline), through the local-checkpoint route.

    Errors say which case it is (:mod:`alignment_probe.hub`): unknown to TransformerLens, not cached
    and no network, gated or private, an architecture TransformerLens cannot convert."""
    official, path = resolve_snapshot(name)
    return load_local_model(path, device=device, dtype=dtype, source=official, backend=backend)


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
    backend: str = "auto",
) -> LoadedModel:
    """Load one model from a local checkpoint directory or a hub name."""
    device = resolve_device(device)
    if is_local_checkpoint(spec):
        return load_local_model(spec, device=device, dtype=dtype, source=source, backend=backend)
    return load_hub_model(str(spec), device=device, dtype=dtype, backend=backend)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: two loads of the same weights agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


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
    fb, ft = base.backend.facts.shape_fields(), tuned.backend.facts.shape_fields()
    for name in fb:
        b, t = fb[name], ft[name]
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


def open_checkpoints(
    base: str | os.PathLike[str], tuned: str | os.PathLike[str], *, backend: str = "auto"
) -> Checkpoints:
    """Find both checkpoints, load their tokenizers, check the tokenizers behave the same and read the
    model's context from its config: no weights are read (a hub model is fetched into the cache if absent).
    A ``tuned`` adapter folder is merged onto the base later, by :func:`load_twins`. ``backend``: whose
    conversion reads the config (it refuses an architecture it cannot convert, before any weights load)."""
    precheck_pair(base, tuned)  # cheap: missing files and mismatched configs
    base_dir, base_source = _checkpoint_dir(base)
    n_ctx, n_layers = backends.checkpoint_shape(base_dir, base_source, backend)
    tokenizer = load_tokenizer(base_dir, base_source)
    tuned_dir = tuned_source = tuned_tokenizer = None
    if not is_adapter_dir(tuned):
        tuned_dir, tuned_source = _checkpoint_dir(tuned)
        tuned_tokenizer = load_tokenizer(tuned_dir, tuned_source)
        _refuse_incompatible(base_source, tuned_source, tokenizer_problems(tokenizer, tuned_tokenizer))
    return Checkpoints(base_dir, base_source, tuned_dir, tuned_source, tokenizer, tuned_tokenizer, n_ctx, n_layers)


def load_twins(
    base: str | os.PathLike[str],
    tuned: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    dtype: str | torch.dtype = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoints: Checkpoints | None = None,
    backend: str = "auto",
    device_map: Any = None,
) -> Twins:
    """Load ``base`` and ``tuned`` with identical (no) weight processing and check they are compatible.

    ``tuned`` may be a peft adapter folder: it is merged onto ``base`` first (cached in ``cache_dir``,
    default ``$ALIGNMENT_PROBE_CACHE`` or ``~/.cache/alignment-probe``). One model is loaded at a time,
    each one's Hugging Face copy released before the next loads (peak: two converted models plus one
    Hugging Face copy). ``checkpoints``: what :func:`open_checkpoints` already read of this pair.

    ``backend``: ``auto`` (the installed TransformerLens line), ``hooked`` (HookedTransformer, 3.9) or ``bridge``
    (TransformerBridge, 4.x). ``device_map`` (Bridge only): ``auto``, ``balanced`` or a dict of module name →
    device, splitting each model over devices (checked before anything loads)."""
    backend = backends.resolve_backend(backend)
    device_map = backends.parse_device_map(device_map)
    backends.check_device_map(backend, device_map)
    ck = checkpoints or open_checkpoints(base, tuned, backend=backend)
    device = resolve_device(device)
    tuned_dir, tuned_source, tuned_tokenizer = ck.tuned, ck.tuned_source, ck.tuned_tokenizer
    adapter = None
    if tuned_dir is None:  # an adapter: merged (or found merged in the cache) before any weights load here
        merged, tuned_source = resolve_tuned(base, tuned, cache_dir=cache_dir)
        tuned_dir, adapter = Path(merged), str(Path(tuned).expanduser().resolve())
    common: dict[str, Any] = {"device": device, "dtype": dtype, "backend": backend, "device_map": device_map}
    b = load_local_model(ck.base, source=ck.base_source, tokenizer=ck.tokenizer, **common)
    t = load_local_model(tuned_dir, source=tuned_source, tokenizer=tuned_tokenizer, **common)
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

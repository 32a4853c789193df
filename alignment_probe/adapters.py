"""A tuned twin given as a peft adapter: merged onto its base into a cached checkpoint folder.

``--tuned`` may be a folder holding ``adapter_config.json`` (+ ``adapter_model.safetensors``), as
peft's ``save_pretrained`` writes it (LoRA, DoRA, IA³ ...). :func:`merge_adapter` merges it onto the
base checkpoint folder with peft's ``merge_and_unload`` and writes a full checkpoint directory,
keyed by the sha256 of the base weights and the adapter files, atomically, into the cache
(``$ALIGNMENT_PROBE_CACHE``, else ``~/.cache/alignment-probe``); a second call reuses it. The merged
folder then loads like any checkpoint and is fingerprinted by its weights.

Refused before merging (:class:`~alignment_probe.errors.AdapterError`): an adapter whose
``base_model_name_or_path`` names a different model than ``--base``, and one whose shapes do not
fit the base (a LoRA of another size or family).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# the cheap folder checks live with the checkpoint checks (a lower layer, no torch); importable here as before
from alignment_probe.checkpoint_files import ADAPTER_CONFIG as ADAPTER_CONFIG  # kept importable here
from alignment_probe.checkpoint_files import ADAPTER_WEIGHTS as ADAPTER_WEIGHTS
from alignment_probe.checkpoint_files import is_adapter_dir as is_adapter_dir
from alignment_probe.checkpoint_files import read_adapter_config as read_adapter_config
from alignment_probe.checkpoints import publish_directory
from alignment_probe.errors import AdapterError
from alignment_probe.files import default_cache_root, make_readable
from alignment_probe.manifest import sha256_file

MERGE_MARKER = "alignment-probe-merge.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def _weights_sha(folder: Path) -> str:
    """sha256 over a checkpoint's weight files (recorded in a merge marker when there is one)."""
    marker = folder / MERGE_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text())["files"][WEIGHTS]["sha256"]
        except (ValueError, KeyError):
            pass
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


def check_base_name(adapter_dir: Path, adapter_cfg: dict[str, Any], base_spec: str, base_dir: Path) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` names another model than ``--base``.

    Accepted: no recorded base; the same string; the same folder; the same final name component
    (``Qwen/Qwen2.5-0.5B`` and ``./models/Qwen2.5-0.5B``); or a recorded folder with the same weights."""
    named = adapter_cfg.get("base_model_name_or_path")
    if not named:
        return
    candidates = {str(base_spec), str(base_dir)}
    if named in candidates or Path(named).name.lower() in {Path(c).name.lower() for c in candidates}:
        return
    try:
        if Path(named).expanduser().resolve() == base_dir.resolve():
            return
        named_dir = Path(named).expanduser()
        if named_dir.is_dir() and _weights_sha(named_dir) == _weights_sha(base_dir):
            return
    except OSError:
        pass
    raise AdapterError(
        f"The adapter {adapter_dir} was trained on {named!r} (base_model_name_or_path in {ADAPTER_CONFIG}), but --base is "
        f"{base_spec}. Pass --base {named}, or, if {base_spec} really is that model under another name, set "
        f"base_model_name_or_path in {ADAPTER_CONFIG} to it."
    )


def merge_adapter(
    base_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_spec: str | None = None,
    check_name: bool = True,
    prefix: str = "merged-",
    extra_files: tuple[Path, ...] = (),
    extra_marker: dict[str, Any] | None = None,
    base_sha: str | None = None,
) -> Path:
    """The folder of ``base_dir`` + ``adapter_dir`` merged (float32), made once and cached.

    ``check_name`` refuses an adapter that names another base (:func:`check_base_name`); callers that
    identify the base otherwise (by weight hash, as :mod:`alignment_probe.realmodels.dpo_lora` does)
    pass False. ``extra_files`` are copied beside the merged weights (e.g. a training recipe);
    ``base_sha`` saves re-hashing base weights whose sha256 is already known.
    The folder name never contains "llama" (TransformerLens would read the family from it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir = Path(base_dir).expanduser().resolve(), Path(adapter_dir).expanduser().resolve()
    adapter_cfg = read_adapter_config(adapter_dir)
    if check_name:
        check_base_name(adapter_dir, adapter_cfg, base_spec or str(base_dir), base_dir)
    base_sha = base_sha or _weights_sha(base_dir)
    adapter_sha = {
        p.name: sha256_file(p)
        for p in sorted(adapter_dir.iterdir())
        if p.is_file() and (p.name == ADAPTER_CONFIG or p.name in ADAPTER_WEIGHTS)
    }
    key = hashlib.sha256(json.dumps([base_sha, adapter_sha], sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / f"{prefix.replace('llama', 'lm')}{key}"
    marker = _read_json(target / MERGE_MARKER)
    if (
        marker
        and marker.get("key") == key
        and all((target / n).is_file() and (target / n).stat().st_size == i["size"] for n, i in marker["files"].items())
    ):
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    make_readable(tmp)
    try:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        merged = _merge(base, adapter_dir, base_dir)
        del base
        merged.save_pretrained(tmp, safe_serialization=True)
        del merged
        for name in TOKENIZER_FILES:  # byte-identical tokenizer: the pair's compatibility check must pass
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp / name)
        for f in extra_files:
            shutil.copyfile(f, tmp / f.name)
        info = {
            "key": key,
            "base": str(base_dir),
            "base_weights_sha256": base_sha,
            "adapter": str(adapter_dir),
            "adapter_sha256": adapter_sha,
            **(extra_marker or {}),
            "files": {
                f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                for f in sorted(tmp.iterdir())
                if f.is_file()
            },
        }
        (tmp / MERGE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        publish_directory(tmp, target, is_complete=lambda d: (d / MERGE_MARKER).is_file())
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _merge(base: Any, adapter_dir: Path, base_dir: Path) -> Any:
    """peft ``merge_and_unload``, with a shape mismatch or a missing target module as an AdapterError."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is an optional dependency (the train extra): say how to get it
        raise AdapterError(
            f"--tuned {adapter_dir} is a peft adapter, and merging it onto the base needs the peft "
            "package, which is not installed: pip install peft (or pip install 'alignment-probe[train]'), "
            "or pass the merged checkpoint folder as --tuned."
        ) from None

    try:
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch; target modules not found
        reason = str(exc) if len(str(exc)) <= 400 else str(exc)[:400] + " ..."
        raise AdapterError(
            f"The adapter {adapter_dir} does not fit the base {base_dir} ({type(exc).__name__}: {reason}). "
            "It was trained on a model of another size or family; pass the base it was trained on."
        ) from exc
    leftovers = [n for n in merged.state_dict() if "lora_" in n or "base_layer" in n]
    if leftovers:
        raise RuntimeError(f"merge_and_unload left adapter tensors behind: {leftovers[:3]}")
    return merged


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

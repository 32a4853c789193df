"""What loading a checkpoint needs on either backend: dtypes, the tokenizer, a quiet Hugging Face load, a path
TransformerLens does not misread, a check for broken weights."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alignment_probe.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.") from None


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


def name_safe_path(path: Path) -> Path:
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


def load_tokenizer(path: str | os.PathLike[str], source: str | None = None) -> Any:
    """The tokenizer of a local checkpoint directory (offline; no weights read)."""
    from transformers import AutoTokenizer

    real = Path(path).expanduser().resolve()
    try:
        return AutoTokenizer.from_pretrained(str(name_safe_path(real)))
    except Exception as exc:  # corrupt or incompatible tokenizer files: a problem with the checkpoint
        raise CheckpointError(
            f"The tokenizer files in {source or real} cannot be loaded ({type(exc).__name__}: {exc}). "
            "Save them again with tokenizer.save_pretrained(dir) (--debug shows the traceback)."
        ) from exc


@contextmanager
def quiet_loading() -> Iterator[None]:
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


def load_hf_model(path: str, dtype: torch.dtype, source: str, **kwargs: Any) -> Any:
    """The Hugging Face causal LM in ``path`` (quietly), refusing a broken checkpoint with a message that says so."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_loading():
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except Exception as exc:  # truncated weights, shapes that disagree with config.json, unknown model_type
        raise CheckpointError(
            f"The model in {source} cannot be loaded ({type(exc).__name__}: {exc}). The weight files "
            "may be truncated (an interrupted copy or download) or disagree with config.json; save "
            "or download the checkpoint again (--debug shows the traceback)."
        ) from exc

"""Hub names: resolve a name TransformerLens knows to a checkpoint folder in the Hugging Face cache.

A hub model is loaded exactly like a local checkpoint folder (:func:`alignment_probe.pair.load_local_model`:
config from its config.json, every family of :mod:`alignment_probe.families`, no weight processing),
from the snapshot folder the Hugging Face cache holds for it (``models--owner--name/snapshots/<hash>/``).
That folder is downloaded when the hub can be reached, and used as it is offline (``HF_HUB_OFFLINE=1``).
One route for both means the same fixes apply (GPT-2's context length under transformers 5, Gemma's
configs, freeing the Hugging Face copy before the next model loads).

Every way this can fail is its own error, with the fix:

* :class:`HubModelUnknownError` — TransformerLens has no official entry for the name;
* :class:`HubModelNotCachedError` — not in the cache, and the hub cannot be reached;
* :class:`HubAccessError` — gated or private, and this account has no access;
* :class:`ArchitectureNotSupportedError` — the family is one TransformerLens cannot convert.
"""

from __future__ import annotations

import os
from pathlib import Path

from alignment_probe.errors import HubAccessError, HubModelNotCachedError, HubModelUnknownError

# What a snapshot needs for loading: configs, safetensors weights, tokenizer files (never TF/Flax/ONNX).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
BIN_PATTERNS = ["*.json", "pytorch_model*.bin", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def official_name(name: str) -> str:
    """TransformerLens's official spelling of ``name`` (aliases such as ``gpt2-small`` resolve), or
    :class:`HubModelUnknownError`. Cheap: a table look-up, no network."""
    import importlib

    # TransformerLens's alias table: in loading_from_pretrained on 3.x, rehomed to supported_models on 4.x
    for where in ("transformer_lens.loading_from_pretrained", "transformer_lens.supported_models"):
        try:
            get_official_model_name = importlib.import_module(where).get_official_model_name
            break
        except (ImportError, AttributeError):
            continue
    try:
        return str(get_official_model_name(name))
    except ValueError:
        raise HubModelUnknownError(
            f"{name!r} is neither a local folder nor a model TransformerLens knows by name. If it is a local "
            "checkpoint, check the path (it does not exist). If it is a hub model of a family TransformerLens "
            f"converts (a fine-tune, say), download it to a folder - `hf download {name} --local-dir DIR` - and pass "
            "DIR; folders load for every supported family, named or not."
        ) from None


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_snapshot(name: str) -> tuple[str, Path]:
    """(official name, the folder holding its files): from the cache offline, downloaded otherwise."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    official = official_name(name)
    token = os.environ.get("HF_TOKEN") or None
    where = f"the Hugging Face cache ({cache_dir()})"
    try:
        path = Path(snapshot_download(official, allow_patterns=ALLOW_PATTERNS, token=token))
        if not any(path.glob("*.safetensors")):  # an older repo with PyTorch pickles only
            path = Path(snapshot_download(official, allow_patterns=BIN_PATTERNS, token=token))
    except GatedRepoError:
        raise HubAccessError(
            f"{official} is a gated model and this account has no access to it. Accept its licence on "
            f"https://huggingface.co/{official} while logged in, then log in here (`hf auth login`, or set HF_TOKEN); "
            "or pass a local folder that holds the checkpoint."
        ) from None
    except RepositoryNotFoundError:
        raise HubAccessError(
            f"The hub says {official} does not exist or is private to an account you are not logged in as. Log in "
            "with an account that can read it (`hf auth login`, or set HF_TOKEN), or pass a local checkpoint folder."
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
        offline = constants.HF_HUB_OFFLINE
        raise HubModelNotCachedError(
            f"{official} is not in {where} and the hub cannot be reached "
            f"({'HF_HUB_OFFLINE=1' if offline else f'{type(exc).__name__}: {exc}'}). Download it once where there is "
            f"network (`hf download {official}`, into this cache or one HF_HUB_CACHE points to), "
            f"{'unset HF_HUB_OFFLINE, ' if offline else ''}or pass a local checkpoint folder."
        ) from None
    return official, path

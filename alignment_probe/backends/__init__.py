"""Which TransformerLens line runs the models, and loading through it (the seam itself: :mod:`.base`).

* ``hooked``: ``HookedTransformer``, the TransformerLens 3.9 line (:mod:`.hooked`);
* ``bridge``: ``TransformerBridge``, the TransformerLens 4.x line (:mod:`.bridge`): it also splits a model
  over devices (``device_map``).

Only one line can be installed at a time (the package is ``transformer-lens`` either way), so ``auto`` picks
the installed one. This module imports no torch and no TransformerLens at the top: the CLI checks
``--backend`` and ``--device-map`` before anything heavy loads.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment_probe.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from alignment_probe.backends.base import Backend

BACKENDS = ("hooked", "bridge")
CHOICES = ("auto", *BACKENDS)
INSTALL = {
    "hooked": "pip install 'transformer-lens>=3.9,<4'",
    "bridge": "pip install 'transformer-lens>=4.3,<5'",
}
LINE = {"hooked": "TransformerLens 3.x (HookedTransformer)", "bridge": "TransformerLens 4.x (TransformerBridge)"}
DEVICE_MAP_STRATEGIES = ("auto", "balanced")  # accelerate's named strategies this accepts


def transformer_lens_version() -> str | None:
    """The installed transformer-lens version (read from its metadata, nothing imported); None if absent."""
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        return None


def _line_of(version: str | None) -> str | None:
    if version is None:
        return None
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return None
    return "hooked" if major < 4 else "bridge"


def available_backends() -> tuple[str, ...]:
    """The backends the installed TransformerLens line provides: ``("hooked",)`` on 3.x (HookedTransformer),
    ``("bridge",)`` on 4.x (TransformerBridge only), ``()`` without TransformerLens."""
    line = _line_of(transformer_lens_version())
    return () if line is None else (line,)


def resolve_backend(name: str = "auto") -> str:
    """``name`` (``auto``, ``hooked`` or ``bridge``) as the backend to use: ``auto`` is the installed line's; a
    forced one that is not installed is refused, saying what to install."""
    if name not in CHOICES:
        raise ConfigError(f"--backend {name!r} is not a backend: use one of {', '.join(CHOICES)}.")
    have = available_backends()
    if not have:
        raise ConfigError(
            "TransformerLens is not installed: install one line, "
            f"{INSTALL['hooked']} (HookedTransformer) or {INSTALL['bridge']} (TransformerBridge)."
        )
    if name == "auto":
        return have[0]
    if name not in have:
        raise ConfigError(
            f"--backend {name} needs {LINE[name]}, but transformer-lens {transformer_lens_version()} is installed "
            f"({LINE[have[0]]}). Use --backend {have[0]} (or auto), or install the other line: {INSTALL[name]}."
        )
    return name


def parse_device_map(spec: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``--device-map``: ``auto`` or ``balanced`` (accelerate places the blocks), a JSON object of module name →
    device (``{"model.layers.0": 0, "lm_head": "cpu"}``), or the path of a file holding one. Checked before any
    model loads; returns the strategy name or the dict."""
    if spec is None or isinstance(spec, dict):
        return _checked_map(spec, "device_map") if isinstance(spec, dict) else None
    text = str(spec).strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--device-map is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}.") from None
        return _checked_map(value, "--device-map")
    path = Path(text).expanduser()
    if path.is_file():
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--device-map file {path} does not hold a JSON object ({exc}).") from None
        return _checked_map(value, f"--device-map file {path}")
    raise ConfigError(
        f"--device-map {text!r} is neither {' nor '.join(DEVICE_MAP_STRATEGIES)}, nor a JSON object of module name "
        'to device (\'{"model.layers.0": 0, "lm_head": "cpu"}\'), nor the path of a file holding one.'
    )


def _checked_map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where} must be a non-empty JSON object of module name to device, got {value!r}.")
    for module, device in value.items():
        ok = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or (
            isinstance(device, str) and (device in ("cpu", "disk", "mps") or device.startswith("cuda"))
        )
        if not ok:
            raise ConfigError(
                f"{where}: module {module!r} is mapped to {device!r}; a device is a GPU index (0, 1 …), "
                "'cuda:N', 'cpu' or 'disk'."
            )
    return dict(value)


def check_device_map(backend: str, device_map: Any) -> None:
    """Refuse a device map on a backend that cannot split a model (the HookedTransformer line)."""
    if device_map is not None and backend != "bridge":
        raise ConfigError(
            "--device-map needs the TransformerBridge backend (transformer-lens 4.x): HookedTransformer's n_devices "
            f"split is not supported here. Install {INSTALL['bridge']} and pass --backend bridge (or auto), or "
            "leave --device-map out to load each model on one device."
        )


def _module(backend: str) -> Any:
    if backend == "hooked":
        from alignment_probe.backends import hooked

        return hooked
    from alignment_probe.backends import bridge  # type: ignore[attr-defined,unused-ignore]  # the other line's module

    return bridge


def load_model(
    path_or_name: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    device_map: Any = None,
    source: str | None = None,
    tokenizer: Any = None,
) -> Backend:
    """One model through the chosen backend: a local Hugging Face checkpoint folder, or a hub name (its cached
    snapshot folder). Unprocessed weights (logits equal Hugging Face's), eval mode. ``source`` names it in
    messages and manifests; ``tokenizer``: its tokenizer when the caller read it already."""
    from alignment_probe.checkpoint_files import is_local_checkpoint
    from alignment_probe.hub import resolve_snapshot

    name = resolve_backend(backend)
    device_map = parse_device_map(device_map)
    check_device_map(name, device_map)
    if is_local_checkpoint(path_or_name):
        path = str(Path(path_or_name).expanduser().resolve())
    else:
        official, path = resolve_snapshot(str(path_or_name))
        source = source or official
    loaded: Backend = _module(name).load(
        path, device=device, dtype=dtype, source=source or path, tokenizer=tokenizer, device_map=device_map
    )
    return loaded


def checkpoint_shape(path: str | os.PathLike[str], source: str, backend: str = "auto") -> tuple[int | None, int]:
    """(context length, layers) the backend gives the checkpoint folder ``path``, from its config only."""
    result: tuple[int | None, int] = _module(resolve_backend(backend)).checkpoint_shape(str(path), source)
    return result


def backend_of(model: Any) -> Backend:
    """The :class:`~alignment_probe.backends.base.Backend` of a loaded native model (``twins.base``): the one
    :func:`load_model` made, else a new one wrapping it (a model built by hand, e.g. ``HookedTransformer(cfg)``)."""
    from alignment_probe.backends.base import Backend

    if isinstance(model, Backend):
        return model
    found = getattr(model, "__dict__", {}).get(_ATTRIBUTE)
    if found is None:
        names = {c.__name__ for c in type(model).__mro__}
        if "HookedTransformer" in names:
            from alignment_probe.backends.hooked import HookedBackend

            found = HookedBackend(model, getattr(model, "tokenizer", None))
        elif "TransformerBridge" in names:
            found = _module("bridge").wrap(model)
        else:
            raise TypeError(
                f"{type(model).__name__} is no TransformerLens model (HookedTransformer or TransformerBridge)"
            )
        register(found)
    return found


def register(backend: Backend) -> None:
    """Remember ``backend`` as the one of its native model (so :func:`backend_of` finds it). Kept on the model
    itself: a cycle the garbage collector frees with the model (a weak map would keep the model alive)."""
    backend.model.__dict__[_ATTRIBUTE] = backend


_ATTRIBUTE = "_alignment_probe_backend"

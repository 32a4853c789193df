"""How patched runs are executed. Experiments build :class:`PatchSpec`s; an engine runs them.

* :class:`ReferenceEngine` — one pair, one condition, one hooked full forward at a time (the paper's way).
* :class:`FastEngine` — cached clean runs, shared prompts (the model's key/value cache), start at the patched
  block, batched conditions, completion-only unembedding; every forward goes through the backend seam
  (``alignment_probe.backends``: TransformerLens's own modules). The same numbers.

Imports are lazy: ``from alignment_probe.engine import make_engine`` loads neither torch's model
code nor TransformerLens until an engine is built (the CLI refuses bad input before that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

ENGINES = ("fast", "reference")

if TYPE_CHECKING:
    from alignment_probe.engine.fast import FastEngine
    from alignment_probe.engine.reference import ReferenceEngine
    from alignment_probe.engine.spec import HOOKS, Engine, PatchSpec, hook_name

_LAZY = {
    "FastEngine": "fast",
    "ReferenceEngine": "reference",
    "HOOKS": "spec",
    "Engine": "spec",
    "PatchSpec": "spec",
    "hook_name": "spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"alignment_probe.engine.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alignment_probe.engine' has no attribute {name!r}")


def make_engine(name: str = "fast", **kwargs: Any) -> "Engine":
    if name == "fast":
        from alignment_probe.engine.fast import FastEngine

        return FastEngine(**kwargs)
    if name == "reference":
        from alignment_probe.engine.reference import ReferenceEngine

        return ReferenceEngine()
    raise ValueError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "HOOKS", "Engine", "FastEngine", "PatchSpec", "ReferenceEngine", "hook_name", "make_engine"]

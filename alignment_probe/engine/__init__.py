"""How patched runs are executed. Experiments build :class:`PatchSpec`s; an engine runs them.

* :class:`ReferenceEngine` — one pair, one condition, one ``run_with_hooks`` at a time (the paper's way).
* :class:`FastEngine` — cached clean runs, ``start_at_layer``, batched conditions; identical numbers.
"""

from alignment_probe.engine.fast import FastEngine
from alignment_probe.engine.reference import ReferenceEngine
from alignment_probe.engine.spec import HOOKS, Engine, PatchSpec, hook_name

ENGINES = ("fast", "reference")


def make_engine(name: str = "fast", **kwargs) -> Engine:
    if name == "fast":
        return FastEngine(**kwargs)
    if name == "reference":
        return ReferenceEngine()
    raise ValueError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "HOOKS", "Engine", "FastEngine", "PatchSpec", "ReferenceEngine", "hook_name", "make_engine"]

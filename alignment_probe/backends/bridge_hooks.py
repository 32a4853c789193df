"""The Bridge backend's hooks: every hook point of a ``TransformerBridge`` by name (HookedTransformer's names and
the Bridge's own), hooks added and removed at their own context level, activations captured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from alignment_probe.backends.base import Capture, Hooks, capture_filter


def _on_its_device(fn: Any) -> Any:
    """A hook function whose replacement lands on the device of the activation it replaces: with a device map the
    value written may come from a block (or the other model) on another device."""

    def hook(act: Tensor, hook: Any) -> Any:
        out = fn(act, hook=hook)
        return out.to(act.device) if isinstance(out, Tensor) and out.device != act.device else out

    return hook


def _ht_name_first(name: str) -> tuple[bool, int]:
    return name.endswith((".hook_in", ".hook_out")), name.count(".")


class BridgeHooks:
    """The hook points of the Bridge ``model``, resolved on first use (:meth:`forget` after a part is swapped)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._points: dict[str, Any] | None = None  # hook name → hook point, built on first use
        self._names_of_point: list[list[str]] = []
        self._paths: dict[str, str] | None = None  # hook name → its module path in the Bridge

    def forget(self) -> None:
        """The next use resolves the points again: those at a swapped part are the swapped-in component's now."""
        self._points = None

    def points(self) -> dict[str, Any]:
        """Hook name → hook point, every name the Bridge knows (HookedTransformer's and its own).

        Resolved through each point's module path, not the Bridge's registry: after a part is swapped the path
        leads into the swapped-in component (the registry would still hold the old one's points)."""
        if self._points is None:
            if self._paths is None:
                where = {id(m): path for path, m in self.model.named_modules()}
                self._paths = {name: where[id(p)] for name, p in self.model.hook_dict.items() if id(p) in where}
            self._points = {name: self.model.get_submodule(path) for name, path in self._paths.items()}
            by_point: dict[int, list[str]] = {}
            for name, point in self._points.items():
                by_point.setdefault(id(point), []).append(name)
            # one name list per point, HookedTransformer's name first: the Bridge's own names for the same point
            # are its wrappers' ``….hook_in``/``….hook_out`` (``blocks.0.attn.o.hook_in`` is ``attn.hook_z``)
            self._names_of_point = [sorted(names, key=_ht_name_first) for names in by_point.values()]
        return self._points

    @contextmanager
    def hooked(self, hooks: Hooks) -> Iterator[None]:
        """Adds ``hooks`` to their points at a new context level (the hook sees the name it was asked by), removes
        exactly those on exit."""
        if not hooks:
            yield
            return
        model, points = self.model, self.points()
        model.context_level += 1
        level = model.context_level
        added = []
        try:
            for target, fn in hooks:
                names = [target] if isinstance(target, str) else self.matching(target)
                for name in names:
                    if name not in points:
                        raise KeyError(f"{name}: no such hook point on this TransformerBridge")
                    point = points[name]
                    point.add_hook(_on_its_device(fn), dir="fwd", level=level, alias_names=[name])
                    added.append(point)
            yield
        finally:
            for point in added:
                point.remove_hooks("fwd", level=level)
            model.context_level -= 1

    def matching(self, keep: Any) -> list[str]:
        """Per hook point, the first of its names (HookedTransformer's first) that ``keep`` accepts: a filter that
        accepts two names of one point still hooks it once."""
        self.points()
        return [next(n for n in names if keep(n)) for names in self._names_of_point if any(keep(n) for n in names)]

    def capturing(self, capture: Capture, store: dict[str, Tensor], device: torch.device) -> list[tuple[str, Any]]:
        """Hooks that save the activations ``capture`` asks for into ``store``, on ``device``."""
        keep = capture_filter(capture)
        if keep is None:
            return []

        def save(act: Tensor, hook: Any) -> None:
            store[hook.name] = act.to(device)  # with a device map, the block's device may be another

        return [(name, save) for name in self.matching(keep)]

"""Swapping a TransformerLens component's ``forward`` for the duration of a ``with`` block.

The engines run some components through leaner forwards that compute the same values (engine/attention.py,
engine/mlp.py, engine/unembed.py). :func:`swapped_forwards` is the one place that installs them, marks
each module with what the lean forward needs to know, and restores the module's own forward afterwards.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch


def block_parts(part: str) -> Callable[[Any], Iterable[Any]]:
    """A model's ``block.<part>`` modules (``"attn"``, ``"mlp"``), for :func:`swapped_forwards`."""
    return lambda model: (getattr(block, part, None) for block in getattr(model, "blocks", ()))


@contextlib.contextmanager
def swapped_forwards(models: tuple[Any, ...], modules: Callable[[Any], Iterable[Any]], forward: Callable[..., Any],
                     supported: Callable[[Any], bool], mark: str,
                     marks: Callable[[Any], Mapping[str, Any]]) -> Iterator[None]:
    """Inside the ``with`` block, each of ``modules(model)`` of ``models`` that is ``supported`` runs ``forward``
    (bound to the module, still called through the module, so its hooks run), with ``marks(module)`` (which
    include ``mark``) set in its ``__dict__``, computed without gradients; their own forwards are back afterwards,
    also on an error. Re-entrant: a module that carries ``mark`` already is left to the outer block that swapped
    it."""
    swapped: list[tuple[Any, tuple[str, ...]]] = []
    try:
        for model in models:
            for module in modules(model):
                if module is None or mark in module.__dict__ or not supported(module):
                    continue
                with torch.no_grad():
                    values = dict(marks(module))
                assert mark in values
                module.forward = types.MethodType(forward, module)
                module.__dict__.update(values)
                swapped.append((module, tuple(values)))
        yield
    finally:
        for module, names in swapped:
            del module.forward
            for name in names:
                del module.__dict__[name]

"""Swapping a TransformerLens component's ``forward`` for the duration of a ``with`` block.

The engines run some components through leaner forwards that compute the same values (engine/attention.py,
engine/mlp.py). :func:`swapped_forwards` is the one place that installs them on the blocks' modules, marks
each module with what the lean forward needs to know, and restores the module's own forward afterwards.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch


@contextlib.contextmanager
def swapped_forwards(models: tuple[Any, ...], part: str, forward: Callable[..., Any],
                     supported: Callable[[Any], bool], mark: str,
                     marks: Callable[[Any], Mapping[str, Any]]) -> Iterator[None]:
    """Inside the ``with`` block, ``block.<part>`` of every block of ``models`` that is ``supported`` runs ``forward``
    (bound to the module), with ``marks(module)`` (which include ``mark``) set in its ``__dict__``, computed without
    gradients; their own forwards are back afterwards, also on an error. Re-entrant: a module that carries ``mark``
    already is left to the outer block that swapped it."""
    swapped: list[tuple[Any, tuple[str, ...]]] = []
    try:
        for model in models:
            for block in getattr(model, "blocks", ()):
                module = getattr(block, part, None)
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

"""Hybrid models for weight transplants (E8): the target model with a window of blocks taken from the source.

A window transplant W(a, w) runs blocks a … a+w−1 of one model inside the other
(../shared/docs/localization.md, E8). The embedding goes with block 0's owner and the final norm and
unembedding with block L−1's, so a transplant of every block *is* the source model. Rather than
re-implementing TransformerLens's forward, :func:`transplanted` swaps the source's modules into the
target (the backend's ``part``/``swap_part``) for the duration of a forward and puts the target's back
afterwards (also on an error): every
forward the engines already run — ``start_at_layer``, key/value-cache continuations, completion-only
unembedding — then runs the hybrid unchanged.

Two identities hold by construction and the engines use them (:func:`hybrid_equals`): a hybrid whose
swapped parts have the same weights as the target's is the target (the effect is exactly 0: a
transplant of base into base, or a window that misses every block a twin changed), and a hybrid that
takes every part in which the models differ from the source is the source (the effect is exactly the
gain).

Hook points inside a swapped module belong to the source model, so hooks registered on the target by
name do not see them: patched runs of a transplant use no hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from alignment_probe.backends import backend_of
from alignment_probe.backends.base import EMBED_PARTS, HEAD_PARTS, Backend

__all__ = ["EMBED_PARTS", "HEAD_PARTS", "PartComparison", "transplanted", "window_parts"]


def window_parts(n_layers: int, window: range) -> list[str]:
    """The module names a transplant of ``window`` takes from the source: ``blocks.i`` for each block, the
    embedding with block 0 and the final norm and unembedding with block L−1."""
    if not window or window.start < 0 or window.stop > n_layers:
        raise ValueError(
            f"window of blocks {window.start}…{window.stop - 1} is outside the model's blocks 0…{n_layers - 1}"
        )
    parts = [f"blocks.{i}" for i in window]
    if window.start == 0:
        parts = [*EMBED_PARTS, *parts]
    if window.stop == n_layers:
        parts += list(HEAD_PARTS)
    return parts


@contextlib.contextmanager
def transplanted(target: Any, source: Any, window: range) -> Iterator[Any]:
    """``target`` with the modules of ``window`` (see :func:`window_parts`) taken from ``source`` inside the
    ``with`` block; the target's own modules are restored on exit. ``target``/``source``: backends or native
    models; yields ``target`` as given."""
    mine_b, theirs_b = backend_of(target), backend_of(source)
    saved: list[tuple[str, torch.nn.Module]] = []
    try:
        for name in window_parts(mine_b.n_layers, window):
            mine, theirs = mine_b.part(name), theirs_b.part(name)
            if mine is None or theirs is None:
                continue
            saved.append((name, mine_b.swap_part(name, theirs)))
        yield target
    finally:
        for name, module in reversed(saved):
            mine_b.swap_part(name, module)


def _same(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
    if a is None or b is None:
        return a is b
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


class PartComparison:
    """Which of two models' parts (embedding, each block, the head) have bit-identical weights; computed
    once per part and kept (the weights of loaded twins do not change)."""

    def __init__(self, target: Backend | Any, source: Backend | Any):
        self.target, self.source = backend_of(target), backend_of(source)
        self._equal: dict[str, bool] = {}
        n = self.target.n_layers
        self.all_parts = window_parts(n, range(n))

    def equal(self, name: str) -> bool:
        if name not in self._equal:
            self._equal[name] = _same(self.target.part(name), self.source.part(name))
        return self._equal[name]

    def hybrid_equals(self, window: range) -> str | None:
        """``"target"`` if the hybrid's weights are the target's, ``"source"`` if they are the source's, else None."""
        inside = set(window_parts(self.target.n_layers, window))
        if all(self.equal(p) for p in inside):
            return "target"
        if all(self.equal(p) for p in self.all_parts if p not in inside):
            return "source"
        return None

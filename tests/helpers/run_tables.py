"""Comparing two runs' ``summary.json``: its leaves by path, and the entries that differ beyond a tolerance."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any


def leaves(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{path}[{i}]")
    else:
        yield path, tree


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_NUMBER = re.compile(r"[+-]?\d+(?:\.(\d+))?(?:[eE][+-]?\d+)?")


def _same_text(a: str, b: str, tol: float) -> bool:
    """Rendered texts ("0.0564 [0.0207, 0.0917]") equal but for their numbers, each within ``tol`` plus one unit
    of its last printed digit (two numbers within ``tol`` can round either side of a printed boundary)."""
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        return False
    for x, y in zip(_NUMBER.finditer(a), _NUMBER.finditer(b)):
        places = max(len(x.group(1) or ""), len(y.group(1) or ""))
        if abs(float(x.group()) - float(y.group())) > tol + 10.0**-places * (1 + 1e-9):
            return False
    return True


def summary_differences(
    this: dict[str, Any], other: dict[str, Any], tol: float, rel: dict[str, float] | None = None
) -> list[str]:
    """Entries of two flattened summaries that differ: floats beyond ``tol`` (or, for paths ending in a key of
    ``rel``, beyond that relative tolerance), texts beyond :func:`_same_text`, anything else at all. The weight
    fingerprints are left out (they hash the weights as each backend holds them: names and layout differ)."""
    skip = {p for p in this if p.endswith("_fingerprint")} | {p for p in other if p.endswith("_fingerprint")}
    if set(this) - skip != set(other) - skip:
        return [f"entries in one summary only: {sorted((set(this) ^ set(other)) - skip)}"]
    differ = []
    for path in sorted(set(this) - skip):
        a, b = this[path], other[path]
        if _number(a) and _number(b) and (isinstance(a, float) or isinstance(b, float)):
            bound = next((r * max(abs(a), abs(b)) for k, r in (rel or {}).items() if path.endswith(k)), tol)
            same = (math.isnan(a) and math.isnan(b)) if math.isnan(a) or math.isnan(b) else abs(a - b) <= bound
        elif isinstance(a, str) and isinstance(b, str):
            same = _same_text(a, b, tol)
        else:
            same = a == b
        if not same:
            differ.append(f"{path}: {a!r} here, {b!r} on the other line")
    return differ

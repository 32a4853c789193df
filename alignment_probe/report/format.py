"""Formatting numbers and confidence intervals: :mod:`alignment_probe.formatting` (a lower layer, which the
experiments use too); every name is kept importable from here."""

from alignment_probe.formatting import (  # noqa: F401
    _bound_up,
    _nats,
    _num,
    _triple,
    ci_cell,
    esc,
    excludes_zero,
    fmt,
    fmt_ci,
    fmt_effect,
    fmt_layers,
    fmt_ratio,
    fmt_value,
    layer_ci_cell,
    num,
)

__all__ = [
    "_bound_up",
    "_nats",
    "_num",
    "_triple",
    "ci_cell",
    "esc",
    "excludes_zero",
    "fmt",
    "fmt_ci",
    "fmt_effect",
    "fmt_layers",
    "fmt_ratio",
    "fmt_value",
    "layer_ci_cell",
    "num",
]

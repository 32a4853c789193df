"""E4 — α-interpolation, the dose-response of a patch (appendix A3).

h = h_base + α (h_tuned − h_base) at layer ℓ: α = 0 is the base model, α = 1 is full tuned→base
patching, α > 1 extrapolates past the tuned state. A layer that really carries the tuning should
give a smooth, monotone curve; the suite reports Spearman ρ between α and the mean effect.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.interventions import Interpolate

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5)


def alpha_specs(layers: Iterable[int], *, alphas: Sequence[float] = DEFAULT_ALPHAS, hook: str = "resid_post",
                scope: str = "all") -> list[PatchSpec]:
    layers = list(layers)
    return [spec for a in alphas for spec in layer_sweep("alpha", target="base", source="tuned", layers=layers,
                                                         hooks=(hook,), scopes=(scope,), intervention=Interpolate(a),
                                                         param=float(a))]

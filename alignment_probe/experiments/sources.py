"""E5 — source variants (appendix A4, Fig. 3). Two families:

* **Per-sequence decomposition.** Patch the tuned activations into the base's *chosen* run only
  (``source_chosen_only``) or its *rejected* run only (``source_rejected_only``). Since Δlogp is
  logp(chosen) − logp(rejected) and each run is independent, chosen-only + rejected-only = both,
  exactly: the split says whether tuning works by raising y+ or by lowering y-.
* **Vector variants.** v+ = the tuned model's mean activation over the completion tokens of the
  chosen run, v- the same for the rejected run, v± = v+ − v-. Add one of them (times ``scale``)
  to the base residual at layer ℓ over the completion positions of both runs.
"""

from __future__ import annotations

from typing import Sequence

from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.interventions import AddVector, Replace

PER_SEQUENCE = {"source_chosen_only": "chosen", "source_rejected_only": "rejected"}
VECTORS = {"vector_chosen": "chosen", "vector_rejected": "rejected", "vector_contrast": "contrast"}


def source_specs(n_layers: int, *, experiments: Sequence[str], hook: str = "resid_post", scope: str = "all",
                 vector_scale: float = 1.0) -> list[PatchSpec]:
    specs: list[PatchSpec] = []
    for name in experiments:
        if name in PER_SEQUENCE:
            specs += layer_sweep(name, target="base", source="tuned", layers=range(n_layers), hooks=(hook,),
                                 scopes=(scope,), sides=PER_SEQUENCE[name], intervention=Replace())
        elif name in VECTORS:
            specs += layer_sweep(name, target="base", source="tuned", layers=range(n_layers), hooks=(hook,),
                                 scopes=("completion",), intervention=AddVector(VECTORS[name], vector_scale),
                                 param=vector_scale)
    return specs

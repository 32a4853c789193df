"""E3 — controls (appendix A1, A2).

* **reverse** (``patch_base_to_tuned``): base activations into the tuned model; the effect is
  relative to the tuned model's own Δlogp (see patching.py, which builds both directions).
* **identity**: base→base. Replacing an activation by itself must change nothing: the effect is
  *exactly* zero, a correctness check of the whole patching path.
* **random_noise** (a): Gaussian noise with the source activation's per-position mean and norm.
* **random_direction** (b): base activation plus a random direction as long as the tuned shift;
  compared with tuned→base it tells whether the *direction* of the shift matters or just its size.
"""

from __future__ import annotations

from typing import Sequence

from alignment_probe.engine.spec import PatchSpec
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.interventions import GaussianNoise, RandomDirection, Replace


def control_specs(n_layers: int, *, experiments: Sequence[str], seed: int = 0, hook: str = "resid_post",
                  scope: str = "all") -> list[PatchSpec]:
    made = {
        "identity": lambda: layer_sweep("identity", target="base", source="base", layers=range(n_layers),
                                        hooks=(hook,), scopes=(scope,), intervention=Replace()),
        "random_noise": lambda: layer_sweep("random_noise", target="base", source="tuned", layers=range(n_layers),
                                            hooks=(hook,), scopes=(scope,), intervention=GaussianNoise(seed)),
        "random_direction": lambda: layer_sweep("random_direction", target="base", source="tuned",
                                                layers=range(n_layers), hooks=(hook,), scopes=(scope,),
                                                intervention=RandomDirection(seed)),
    }
    return [spec for name in experiments if name in made for spec in made[name]()]

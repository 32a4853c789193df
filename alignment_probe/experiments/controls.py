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
from alignment_probe.experiments.registry import Experiment, Figure, Name, Plan, register
from alignment_probe.experiments.rows import summarize_per_layer, swept_only
from alignment_probe.interventions import GaussianNoise, RandomDirection, Replace


def control_specs(
    n_layers: int, *, experiments: Sequence[str], seed: int = 0, hook: str = "resid_post", scope: str = "all"
) -> list[PatchSpec]:
    made = {
        "identity": lambda: layer_sweep(
            "identity",
            target="base",
            source="base",
            layers=range(n_layers),
            hooks=(hook,),
            scopes=(scope,),
            intervention=Replace(),
        ),
        "random_noise": lambda: layer_sweep(
            "random_noise",
            target="base",
            source="tuned",
            layers=range(n_layers),
            hooks=(hook,),
            scopes=(scope,),
            intervention=GaussianNoise(seed),
        ),
        "random_direction": lambda: layer_sweep(
            "random_direction",
            target="base",
            source="tuned",
            layers=range(n_layers),
            hooks=(hook,),
            scopes=(scope,),
            intervention=RandomDirection(seed),
        ),
    }
    return [spec for name in experiments if name in made for spec in made[name]()]


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg = plan.cfg
    return swept_only(
        plan,
        control_specs(plan.n_layers, experiments=sorted(plan.selected), seed=cfg.seed, hook=cfg.hook, scope=cfg.scope),
    )


register(
    Experiment(
        key="controls",
        method="E3",
        order=20,
        names=(
            Name(
                "identity",
                "identity (base → base)",
                "#7f7f7f",
                "Base activations into the base itself: must be exactly 0 (a check of the patching path).",
            ),
            Name(
                "random_noise",
                "random: Gaussian noise",
                "#ff7f0e",
                "Replace the activation by Gaussian noise of the source's per-position mean and norm.",
            ),
            Name(
                "random_direction",
                "random: direction",
                "#9467bd",
                "Add a random direction as long as the tuned shift: does the direction matter, or its size?",
            ),
        ),
        specs=_specs,
        summarize=summarize_per_layer,
        figures=(
            Figure(
                "controls",
                "alignment_probe.experiments.figures:controls",
                "Identity and random controls (paper A2, Fig. 6)",
                "Paper Fig. 6 (A2). Identity (base → base) must be exactly 0; the random controls replace the "
                "activation by norm-matched Gaussian noise, or add a random direction of the tuned shift's norm.",
                needs=("identity", "random_noise", "random_direction"),
                order=30,
            ),
        ),
    )
)

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
from alignment_probe.experiments.registry import Experiment, Figure, Name, Option, Plan, register
from alignment_probe.experiments.rows import summarize_per_layer, swept_only
from alignment_probe.interventions import AddVector, Replace

PER_SEQUENCE = {"source_chosen_only": "chosen", "source_rejected_only": "rejected"}
VECTORS = {"vector_chosen": "chosen", "vector_rejected": "rejected", "vector_contrast": "contrast"}


def source_specs(
    n_layers: int,
    *,
    experiments: Sequence[str],
    hook: str = "resid_post",
    scope: str = "all",
    vector_scale: float = 1.0,
) -> list[PatchSpec]:
    specs: list[PatchSpec] = []
    for name in experiments:
        if name in PER_SEQUENCE:
            specs += layer_sweep(
                name,
                target="base",
                source="tuned",
                layers=range(n_layers),
                hooks=(hook,),
                scopes=(scope,),
                sides=PER_SEQUENCE[name],
                intervention=Replace(),
            )
        elif name in VECTORS:
            specs += layer_sweep(
                name,
                target="base",
                source="tuned",
                layers=range(n_layers),
                hooks=(hook,),
                scopes=("completion",),
                intervention=AddVector(VECTORS[name], vector_scale),
                param=vector_scale,
            )
    return specs


def _specs(plan: Plan) -> list[PatchSpec]:
    cfg, names = plan.cfg, [e for e in (*PER_SEQUENCE, *VECTORS) if e in plan.selected]
    return swept_only(
        plan,
        source_specs(plan.n_layers, experiments=names, hook=cfg.hook, scope=cfg.scope, vector_scale=cfg.vector_scale),
    )


register(
    Experiment(
        key="sources",
        options=(Option("vector_scale", "float", 1.0, "vector_* (E5): the scale of the added source vectors"),),
        method="E5",
        order=40,
        batch_order=30,
        names=(
            Name(
                "source_chosen_only",
                "chosen-only",
                "#2ca02c",
                "Tuned activations into the base's chosen run only (does tuning raise y+?).",
            ),
            Name(
                "source_rejected_only",
                "rejected-only",
                "#d62728",
                "Tuned activations into the base's rejected run only (does tuning lower y−?).",
            ),
            Name(
                "vector_chosen",
                "v+ (chosen)",
                "#2ca02c",
                "Add the tuned model's mean chosen-completion activation to the base's completions.",
            ),
            Name(
                "vector_rejected",
                "v− (rejected)",
                "#d62728",
                "Add the tuned model's mean rejected-completion activation to the base's completions.",
            ),
            Name("vector_contrast", "v± (contrast)", "#17becf", "Add v+ − v− to the base's completions."),
        ),
        specs=_specs,
        summarize=summarize_per_layer,
        figures=(
            Figure(
                "source_variants",
                "alignment_probe.experiments.figures:source_variants",
                "Source variants (paper Fig. 3)",
                "Paper Fig. 3. Left: the per-sequence decomposition (both = chosen-only + rejected-only "
                "exactly). Right: mean tuned completion vectors v+, v−, v± added to the base residual.",
                needs=(
                    "source_chosen_only",
                    "source_rejected_only",
                    "vector_chosen",
                    "vector_rejected",
                    "vector_contrast",
                ),
                order=50,
            ),
        ),
    )
)

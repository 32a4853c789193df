"""alignment-probe: find where preference tuning lives inside a language model.

The data path, one module per step::

    data.py          pairs        HH-RLHF / prompt-chosen-rejected JSONL / hub dataset, split, validated
    tokens.py        tokens       BOS + prompt + completion, left truncation, seeded sampling, batches
    pair.py          models       base + tuned as HookedTransformers, checked compatible, fingerprinted
    scoring.py       Δlogp        log p(completion | prompt), Δlogp, gain
    interventions.py patches      what a patch does to one activation (pure tensor functions)
    engine/          forwards     how patched runs execute: reference loop, fast engine
    experiments/     E1–E6        one module per paper experiment, and the suite that runs them
    effects.py       the table    one tidy effects table that statistics, figures and reports read
    stats.py         CIs          bootstrap CIs, peak and onset layers, held-out splits
    report/          figures      plotly figures and the self-contained HTML report
    run.py, cli.py   the edges    the run directory (resumable) and the command line
    organisms/       the default  the bundled model organisms and how they are built
"""

__version__ = "0.1.0"

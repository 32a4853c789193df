"""alignment-probe: find where preference tuning lives inside a language model.

The data path, one module per step::

    data.py          pairs        HH-RLHF / prompt-chosen-rejected JSONL / hub dataset, split, validated
    tokens.py        tokens       BOS + prompt + completion, left truncation, seeded sampling, batches
    prepare.py       inputs       the one input pipeline: options → checked, sampled, tokenised pairs
    pair.py          models       base + tuned, checked compatible, fingerprinted
    backends/        the seam     the primitives every forward goes through: HookedTransformer (TransformerLens
                                  3.9) or TransformerBridge (4.x), chosen from what is installed (--backend)
    scoring.py       Δlogp        log p(completion | prompt), Δlogp, gain
    interventions.py patches      what a patch does to one activation (pure tensor functions)
    engine/          forwards     how patched runs execute: reference loop, fast engine
    experiments/     E1–E11       one module per experiment, each registering itself (registry.py),
                                  and the suite: a dependency graph over the registry
    effects.py       the table    one tidy effects table that statistics, figures and reports read
    stats/           CIs          bootstrap CIs, peak and onset layers, held-out splits
    report/          figures      plotly figures and the self-contained HTML report
    run.py, cli/     the edges    one run into its directory (resumable) and the command line
    rundir.py        the folder   a run directory written, resumed and read back (runfiles.py reads its files)
    launch.py        processes    the one launcher: a run as N processes (world.py, distributed.py: their parts)
    organisms/       the default  the bundled model organisms and how they are built

For notebooks, the package top level is the API (``import alignment_probe as ap``; see api.py)::

    twins = ap.load_twins(base, tuned)        pairs = ap.load_pairs(data, n=16, tokenizer=twins.tokenizer)
    ap.score(twins, pairs)                    eff = ap.sweep(twins, pairs, experiments=[...], hooks=[...])
    ap.curves(eff)   ap.plot(eff)             ap.list_experiments()     ap.load_run("runs/default")
    ap.generate(twins, pairs, conditions=["base", "tuned", "patch:mlp_out@2"])   # E12: text under intervention

Its names are imported on first use, so ``import alignment_probe`` (and the CLI) stays fast.
"""

from typing import Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it); tag releases vX.Y.Z

_API = (
    "load_twins",
    "load_pairs",
    "score",
    "sweep",
    "curves",
    "plot",
    "list_experiments",
    "load_run",
    "run_suite",
    "completion_logprob",
    "sequence_tokens",
    "TokenizedPairs",
    "generate",
    "export_activations",
)
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from alignment_probe import api

        return getattr(api, name)
    raise AttributeError(f"module 'alignment_probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

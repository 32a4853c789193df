"""The per-pair gain histogram: a figure of the scores table (no experiment of its own), registered beside the
experiments' figures."""

from alignment_probe.experiments.registry import Figure, register_figure

register_figure(
    Figure(
        "gain_histogram",
        "alignment_probe.plotting:gain_histogram",
        "Per-pair gain",
        "Distribution over pairs of gain = Δlogp_tuned − Δlogp_base (needs the per-pair scores).",
        order=80,
    )
)

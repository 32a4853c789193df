"""Statistics over pairs: bootstrap confidence intervals, peak and onset layers, held-out checks.

Every number this toolkit reports is a mean over a *sample* of preference pairs. A different sample
of pairs would give a different number, so each one comes with a 95% bootstrap confidence interval
over pairs (docs/method.md, "Statistics everywhere"), and every choice made from the data (the peak
layer) is also evaluated on pairs that were not used to make it.

**The bootstrap in one paragraph.** We cannot draw fresh pairs from the data distribution, but we
can draw from the next best thing: the pairs we have. A bootstrap resample draws ``n`` pairs *with
replacement* from the ``n`` observed pairs (some appear twice, some not at all) and recomputes the
statistic. Repeating that ``n_boot`` times shows how much the statistic wobbles when the sample of
pairs changes; the central 95% of those recomputed values is the *percentile* bootstrap interval.
The interval narrows like ``1/sqrt(n)``: four times as many pairs, half the width.

**Pairs are the unit, jointly across layers.** A pair that is "easy" (large gain) tends to have
large effects at every layer. When a per-layer curve is bootstrapped, one resample picks one set of
pair ids and uses it for *every* layer, exactly as a new experiment on new pairs would. That keeps the
between-layer correlation, so statements that compare layers (which layer peaks, where the curve
rises) get honest intervals. Implementation: the effects become a pairs × layers matrix and each
resample is a vector of counts (how often each pair was drawn); the resampled means of all layers
are then one matrix product ``counts @ matrix / n``.

Everything is seeded (``numpy.random.default_rng(seed)``): same inputs and seed, same output.
All public functions return plain Python types, ready for ``json.dumps``.

The package: :mod:`~alignment_probe.stats.bootstrap` (resampling, mean CIs, the pairs × layers matrix),
:mod:`~alignment_probe.stats.peaks` (peak and onset layers, peak sets, the held-out peak, one call per experiment),
:mod:`~alignment_probe.stats.selection` (explore/confirm halves and selection records) and
:mod:`~alignment_probe.stats.intervals` (ratios, simultaneous bands, bounds, coverage, rank correlation); every
public name is importable from here.
"""

from alignment_probe.stats.bootstrap import bootstrap_mean_ci, bootstrap_means, effect_matrix, per_layer_summary
from alignment_probe.stats.intervals import (
    coverage_rate,
    effect_or_bound,
    ratio_ci,
    simultaneous_band,
    spearman_monotonicity,
)
from alignment_probe.stats.peaks import (
    TIE_ATOL,
    TIE_RTOL,
    heldout_peak,
    onset_layer,
    peak_layer,
    peak_onset_with_ci,
    peak_set,
    summarize_experiment,
)
from alignment_probe.stats.selection import explore_confirm, selection_record, split_halves

__all__ = [
    "TIE_ATOL",
    "TIE_RTOL",
    "bootstrap_mean_ci",
    "bootstrap_means",
    "coverage_rate",
    "effect_matrix",
    "effect_or_bound",
    "explore_confirm",
    "heldout_peak",
    "onset_layer",
    "peak_layer",
    "peak_onset_with_ci",
    "peak_set",
    "per_layer_summary",
    "ratio_ci",
    "selection_record",
    "simultaneous_band",
    "spearman_monotonicity",
    "split_halves",
    "summarize_experiment",
]

"""statistics.md's coverage check of the CI method: on a planted twin whose population effect is known (the
mean over all bundled pairs), the 95 % bootstrap CIs of many seeded 40-pair subsamples must cover it at a rate
near 95 %. The planted twin's gain is an effect with a known answer: the planted block's MLP output patched
from the twin carries exactly the gain (tests/acceptance/test_localization.py), and so does a transplant of
every block, so the per-pair gain over all pairs is the population of per-pair effects."""

from __future__ import annotations

import pytest

from alignment_probe import stats
from alignment_probe.data import load_pairs
from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path, planted_layers, planted_twin_path
from alignment_probe.pair import load_twins
from alignment_probe.scoring import score_pairs
from alignment_probe.tokens import sample_and_tokenize

pytestmark = pytest.mark.acceptance


def planted_population() -> tuple[list[float], list[float]]:
    """Per-pair gain (sum over completion tokens) and per-token gain of the first planted twin, all pairs."""
    pairs, _ = load_pairs(bundled_pairs_path())
    base, _ = bundled_pair_paths()
    twins = load_twins(base, planted_twin_path(planted_layers()[0]))
    tokenized = sample_and_tokenize(pairs, twins.tokenizer, n_pairs=len(pairs), seed=0, max_length=256)
    scores = score_pairs(twins, tokenized)
    per_token = [c for c in scores.columns if c.startswith("gain") and "token" in c]
    return scores.gain.tolist(), scores[per_token[0]].tolist() if per_token else []


def test_bootstrap_ci_covers_the_planted_population_effect():
    gain, per_token = planted_population()
    assert len(gain) >= 200  # the bundled data: all 256 held-out pairs, less any skipped for length
    for population in (gain, per_token):
        if not population:
            continue
        out = stats.coverage_rate(population, sample_size=40, n_draws=400, seed=0, n_boot=1000)
        print(
            f"coverage of 95% CIs over {out['n_draws']} subsamples of {out['sample_size']} pairs "
            f"(population {len(population)} pairs, mean {out['population_mean']:+.4f}): {out['rate']:.3f}"
        )
        # loose: 400 draws give a binomial sd of about 0.011 at 0.95; percentile CIs run a little narrow at n=40
        assert 0.85 <= out["rate"] <= 0.995

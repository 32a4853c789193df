"""E10 attribution patching on the bundled organisms: known answers on the planted twins, and agreement
with exact patching on the DPO-tuned twin's mlp_out sweep (measured values in docs/method.md, E10)."""

from __future__ import annotations

import pytest

from alignment_probe.data import load_pairs
from alignment_probe.engine import FastEngine
from alignment_probe.engine.attribution import AttributionEngine
from alignment_probe.experiments.atp import validation
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.organisms import (
    PLANTED_LAYERS,
    bundled_pair_paths,
    bundled_pairs_path,
    planted_twin_path,
)
from alignment_probe.pair import load_twins
from alignment_probe.tokens import sample_and_tokenize

N_PAIRS = 16
HOOKS4 = ("resid_pre", "resid_post", "attn_out", "mlp_out")


@pytest.fixture(scope="module")
def heldout():
    pairs, _ = load_pairs(bundled_pairs_path())
    return pairs


@pytest.mark.parametrize("planted", PLANTED_LAYERS)
def test_atp_finds_the_planted_mlp(planted, heldout):
    base, _ = bundled_pair_paths()
    pair = load_twins(base, planted_twin_path(planted))
    tokenized = sample_and_tokenize(heldout, pair.tokenizer, n_pairs=N_PAIRS, seed=0, max_length=256)
    est = AttributionEngine().run(
        pair, tokenized, layer_sweep("atp", target="base", source="tuned", layers=range(pair.n_layers), hooks=HOOKS4)
    )
    # Below the planted MLP the twins' activations are identical, so a′ − a = 0 and the estimate is exactly 0.
    below = est[(est.layer < planted) | ((est.layer == planted) & est.hook.isin(["resid_pre", "attn_out"]))]
    assert len(below) and (below.effect == 0.0).all()
    mlp = est[est.hook == "mlp_out"].groupby("layer").effect.mean()
    assert mlp.abs().idxmax() == planted and mlp[planted] > 0


def test_atp_agrees_with_exact_on_the_tuned_twin(heldout):
    pair = load_twins(*bundled_pair_paths())
    tokenized = sample_and_tokenize(heldout, pair.tokenizer, n_pairs=N_PAIRS, seed=0, max_length=256)
    specs = layer_sweep(
        "patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers), hooks=("mlp_out",)
    )
    est = AttributionEngine().run(pair, tokenized, specs).groupby("layer").effect.mean()
    exact = FastEngine().run(pair, tokenized, specs).groupby("layer").effect.mean()
    v = validation(exact.to_numpy(), est.to_numpy())
    print("mlp_out AtP vs exact:", v)
    assert v["spearman"] >= 0.8
    assert v["topk_recall"]["3"] >= 2 / 3
    # Honest about magnitude (measured, 16 pairs): ρ = 0.98 and top-3 recall 1, but the top-1 differs. The
    # exact sweep peaks at layer 0's MLP (1.10 nats) and AtP puts it second (0.38, a third of the exact
    # effect: patching the MLP next to the embedding is far from linear); AtP's top is layer 7 (0.54 vs
    # exact 0.53). So k = 10 % (k = 1) recall is 0 here, and max |error| is 0.72 nats at layer 0.
    assert v["max_abs_error"] < 1.0

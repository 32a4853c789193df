"""E9's distribution shift against an independent Hugging Face computation and against identical twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BUNDLED_PAIRS
from transformers import AutoModelForCausalLM

import alignment_probe as ap
from alignment_probe.experiments import shift
from alignment_probe.experiments.registry import Tables
from alignment_probe.experiments.suite import SuiteConfig


@pytest.fixture(scope="module")
def pairs(tiny_pair):
    return ap.load_pairs(BUNDLED_PAIRS, n=5, seed=1, tokenizer=tiny_pair.tokenizer, max_length=80)


def test_kl_and_rank_equal_a_direct_hf_computation(tiny, tiny_pair, pairs):
    record = shift.sequence_shift(tiny_pair, list(pairs), batch_size=2)
    hf = {
        role: AutoModelForCausalLM.from_pretrained(path).eval()
        for role, path in (("base", tiny.base), ("tuned", tiny.tuned))
    }
    t = pairs[2]
    got = next(r for r in record if r["pair_id"] == t.pair_id)["rejected"]
    seq = t.sequence("rejected")
    ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
    with torch.no_grad():
        lb, lt = (
            hf[r](ids).logits[0].log_softmax(-1)[seq.completion_start - 1 : seq.length - 1] for r in ("base", "tuned")
        )
    kl = (lt.exp() * (lt - lb)).sum(-1)
    np.testing.assert_allclose(got["kl"], kl.numpy(), atol=1e-4)
    rank = [int((lb[i] > lb[i, lt[i].argmax()]).sum()) + 1 for i in range(len(lt))]
    assert got["rank"] == rank and len(rank) == len(t.rejected_ids)


def test_identical_twins_do_not_shift(tiny, pairs):
    same = ap.load_twins(tiny.base, tiny.base)
    record = {
        "max_position": shift.MAX_POSITION,
        "top_rank": shift.TOP_RANK,
        "pairs": shift.sequence_shift(same, list(pairs)),
    }
    for pair in record["pairs"]:
        for side in ("chosen", "rejected"):
            assert max(pair[side]["kl"]) <= 1e-6 and set(pair[side]["rank"]) == {1}
    cfg = SuiteConfig(experiments=("shift",), n_boot=100)
    out = shift.summarize_shift(
        Tables(None, None, {"shift": record}, cfg, same.n_layers, same.d_model, selected=("shift",))
    )["shift"]
    assert out["rank_gt3_mean"] == 0.0 and out["kl_mean"] <= 1e-6
    assert [r["position"] for r in out["kl"]] == list(range(len(out["kl"])))
    assert [b["first"] for b in out["kl_by_bin"]][:4] == [1, 2, 4, 8]
    assert {"position", "mean", "ci_low", "ci_high", "n"} <= set(out["rank_gt3"][0])

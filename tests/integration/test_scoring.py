"""Scoring: completion log-probs equal a plain Hugging Face computation; batching changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment_probe.scoring import score_pairs
from alignment_probe.tokens import sample_and_tokenize


def hf_completion_logprob(hf, prompt_ids, completion_ids) -> float:
    """The definition, written independently: sum of log p(token | prefix) over completion tokens."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logp = hf(ids).logits[0].double().log_softmax(-1)
    start = len(prompt_ids)
    return sum(logp[p - 1, ids[0, p]].item() for p in range(start, ids.shape[1]))


@pytest.fixture(scope="module")
def tokenized(hh_pairs, tiny_pair):
    pairs, _ = hh_pairs
    return sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=6, seed=3, max_length=160)


def test_logprobs_equal_hugging_face(tiny, tiny_pair, tokenized):
    from transformers import AutoModelForCausalLM

    table = score_pairs(tiny_pair, tokenized, batch_size=4).set_index("pair_id")
    for name, path in (("base", tiny.base), ("tuned", tiny.tuned)):
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for t in tokenized:
            for side in ("chosen", "rejected"):
                ref = hf_completion_logprob(hf, t.prompt_ids, t.completion_ids(side))
                assert abs(table.loc[t.pair_id, f"{name}_logp_{side}"] - ref) <= 1e-4


def test_batched_equals_one_at_a_time(tiny_pair, tokenized):
    one = score_pairs(tiny_pair, tokenized, batch_size=1)
    many = score_pairs(tiny_pair, tokenized, batch_size=5)
    cols = [c for c in one.columns if "logp" in c or c == "gain"]
    np.testing.assert_allclose(one[cols].to_numpy(), many[cols].to_numpy(), atol=1e-5, rtol=0)


def test_table_columns_are_consistent(tiny_pair, tokenized):
    t = score_pairs(tiny_pair, tokenized)
    np.testing.assert_allclose(t.base_delta_logp, t.base_logp_chosen - t.base_logp_rejected)
    np.testing.assert_allclose(t.gain, t.tuned_delta_logp - t.base_delta_logp)
    np.testing.assert_allclose(t.gain_per_token, t.tuned_delta_logp_per_token - t.base_delta_logp_per_token)
    assert (t[["n_chosen_tokens", "n_rejected_tokens"]] > 0).all().all()
    assert t.pair_id.tolist() == [x.pair_id for x in tokenized]
    # The two models differ, so the gain is not identically zero.
    assert t.gain.abs().max() > 1e-3

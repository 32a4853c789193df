"""The refusal when too few pairs fit in --max-length suggests only fixes the CLI accepts (issue 24's matrix:
with none fitting it suggested "--n-pairs 0 or fewer", which --n-pairs refuses)."""

from __future__ import annotations

import pytest

from alignment_probe.data import PreferencePair
from alignment_probe.errors import DataError
from alignment_probe.tokens import sample_and_tokenize
from tests.helpers.checkpoints import train_tokenizer

TEXTS = ["\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour and water.", "Use an oven. No."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 20, vocab_size=300)


def _pairs(completions: list[str]) -> list[PreferencePair]:
    return [PreferencePair(i, "\n\nHuman: bread?\n\nAssistant:", c, " No.") for i, c in enumerate(completions)]


def test_none_fitting_suggests_raising_max_length_only(tokenizer):
    with pytest.raises(DataError, match=r"Only 0 of the requested 2 pairs fit in 8 tokens") as err:
        sample_and_tokenize(_pairs([" Mix flour and water and bake it." * 3] * 2), tokenizer, n_pairs=2, max_length=8)
    assert str(err.value).endswith("Raise --max-length (if the model's context allows).")
    assert "--n-pairs 0" not in str(err.value)


def test_some_fitting_suggests_that_many_pairs(tokenizer):
    pairs = _pairs([" Mix flour and water and bake it." * 3, " Yes."])
    with pytest.raises(DataError, match=r"Only 1 of the requested 2 .* or pass --n-pairs 1 or fewer\.$"):
        sample_and_tokenize(pairs, tokenizer, n_pairs=2, max_length=16)
    assert len(sample_and_tokenize(pairs, tokenizer, n_pairs=1, max_length=16)) == 1  # the fix it names works

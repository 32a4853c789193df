"""The suite's parts: groups of pairs of similar prompt length, dealt to ranks as a snake (suite.pair_groups)."""

from __future__ import annotations

import random

import pytest

from alignment_probe.errors import ConfigError
from alignment_probe.experiments.suite import pair_groups
from alignment_probe.tokens import TokenizedPair


def pairs(n: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)
    return [
        TokenizedPair(
            pair_id=3 * i + 1,
            prompt_ids=(0,) * rng.randint(2, 60),
            chosen_ids=(1,) * rng.randint(1, 9),
            rejected_ids=(2,) * rng.randint(1, 9),
        )
        for i in range(n)
    ]


def test_groups_hold_every_pair_once_in_pair_id_order_and_of_similar_prompt_length():
    tok = pairs(37)
    groups = pair_groups(list(reversed(tok)), 8)
    assert sorted(t.pair_id for g in groups for t in g) == sorted(t.pair_id for t in tok)
    assert sorted(map(len, groups)) == [5, 8, 8, 8, 8]
    for g in groups:
        assert [t.pair_id for t in g] == sorted(t.pair_id for t in g)
    # one rank: short prompts to long, and no group's prompt lengths overlap another's beyond ties
    spans = [(min(len(t.prompt_ids) for t in g), max(len(t.prompt_ids) for t in g)) for g in groups]
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    # consecutive pair ids would mix the shortest and longest prompts in one group; these pad far less
    padding = sum(len(g) * max(len(t.prompt_ids) for t in g) - sum(len(t.prompt_ids) for t in g) for g in groups)
    by_id = sorted(tok, key=lambda t: t.pair_id)
    consecutive = [by_id[i : i + 8] for i in range(0, len(by_id), 8)]
    padding_by_id = sum(
        len(g) * max(len(t.prompt_ids) for t in g) - sum(len(t.prompt_ids) for t in g) for g in consecutive
    )
    assert padding < padding_by_id / 3


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_ranks_change_the_order_of_the_groups_not_their_contents(ranks):
    tok = pairs(80, seed=ranks)
    one = pair_groups(tok, 8)
    dealt = pair_groups(tok, 8, ranks=ranks)
    assert sorted(map(tuple, one), key=str) == sorted(map(tuple, dealt), key=str)
    # a snake: each round of `ranks` groups alternates direction, so rank k mod ranks gets one of the shorter and
    # one of the longer groups of every two rounds
    position = {tuple(g): i for i, g in enumerate(one)}
    order = [position[tuple(g)] for g in dealt]
    rounds = [order[i : i + ranks] for i in range(0, len(order), ranks)]
    for n, r in enumerate(rounds):
        assert r == sorted(r, reverse=n % 2 == 1)
    # over every two complete rounds each rank's groups have the same summed position in length order
    whole = order[: len(order) // (2 * ranks) * 2 * ranks]
    assert whole
    share = {sum(o for i, o in enumerate(whole) if i % ranks == k) for k in range(ranks)}
    assert len(share) == 1


def test_one_group_without_a_size_and_a_clear_error_for_size_zero():
    tok = pairs(5)
    assert [[t.pair_id for t in g] for g in pair_groups(tok, None)] == [[t.pair_id for t in tok]]
    with pytest.raises(ConfigError, match="--pairs-per-part must be at least 1"):
        pair_groups(tok, 0)

"""Preference data: the HH split on real data, explicit-format files, errors, sampling, tokenisation."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import HH_HARMLESS, HH_HELPFUL, require_hh

from alignment_probe.data import ASSISTANT_TURN, load_pairs, split_hh_dialogue
from alignment_probe.errors import DataError
from alignment_probe.tokens import sample_and_tokenize, tokenize_pair


def test_hh_split_on_real_harmless_data(hh_pairs):
    pairs, report = hh_pairs
    assert report.n_read == 2312  # every line parses
    assert len(pairs) + report.n_skipped == 2312
    raw = [json.loads(line) for line in gzip.open(HH_HARMLESS, "rt")]
    for p in pairs:
        assert p.prompt.endswith(ASSISTANT_TURN)
        assert p.prompt.startswith("\n\nHuman:")
        # The split loses nothing: prompt + completion is the original dialogue, on both sides.
        assert p.prompt + p.chosen == raw[p.pair_id]["chosen"]
        assert p.prompt + p.rejected == raw[p.pair_id]["rejected"]
        # The completion is the final Assistant turn: no later turn marker inside it.
        assert ASSISTANT_TURN not in p.chosen and ASSISTANT_TURN not in p.rejected
    # Every skipped line is accounted for, and for a reason that is true of that line.
    for pid in report.skipped.get("chosen and rejected do not share a prompt", []):
        r = raw[pid]
        assert split_hh_dialogue(r["chosen"])[0] != split_hh_dialogue(r["rejected"])[0]


def test_identical_pairs_in_helpful_base_are_reported():
    pairs, report = load_pairs(require_hh(HH_HELPFUL))
    assert report.n_read == 2354
    assert len(report.skipped["chosen == rejected"]) == 2
    raw = [json.loads(line) for line in gzip.open(HH_HELPFUL, "rt")]
    for pid in report.skipped["chosen == rejected"]:
        assert raw[pid]["chosen"] == raw[pid]["rejected"]


def test_explicit_format_and_skips(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello!", "rejected": " Go away."},
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Same", "rejected": " Same"},
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "  ", "rejected": " No."},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "no turns here", "rejected": "none here either"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs, report = load_pairs(path)
    assert [p.pair_id for p in pairs] == [0, 3]
    assert pairs[1].prompt == "\n\nHuman: a\n\nAssistant:" and pairs[1].chosen == " b"
    assert report.skipped == {"chosen == rejected": [1], "empty completion": [2], "no Assistant turn": [4]}


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"chosen": "x"', "malformed JSON"),
        ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejectd": "y"}', "missing key(s) 'rejected'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "y"}', "field 'chosen' must be a string"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")


def test_sampling_is_seeded_and_exact(any_pairs, tiny_pair):
    pairs, _ = any_pairs
    a = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=20, seed=7, max_length=256)
    b = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=20, seed=7, max_length=256)
    c = sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=20, seed=8, max_length=256)
    assert a == b and len(a) == 20
    assert [t.pair_id for t in a] != [t.pair_id for t in c]
    assert [t.pair_id for t in a] == sorted(t.pair_id for t in a)
    with pytest.raises(DataError, match="larger than"):
        sample_and_tokenize(pairs, tiny_pair.tokenizer, n_pairs=len(pairs) + 1)


def test_truncation_drops_prompt_from_the_left_never_the_completion(any_pairs, tiny_pair):
    tok = tiny_pair.tokenizer
    pairs, _ = any_pairs
    pair = max(pairs[:200], key=lambda p: len(p.prompt))
    full = tokenize_pair(pair, tok)
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    limit = longest + 1 + 10  # BOS + 10 prompt tokens
    cut = tokenize_pair(pair, tok, max_length=limit)
    assert cut.chosen_ids == full.chosen_ids and cut.rejected_ids == full.rejected_ids
    assert cut.prompt_ids[0] == tok.bos_token_id
    assert cut.prompt_ids[1:] == full.prompt_ids[-10:]  # the *end* of the prompt is kept
    assert cut.n_prompt_tokens_cut == len(full.prompt_ids) - 11
    assert len(cut.prompt_ids) + longest == limit
    with pytest.raises(ValueError, match="completion longer than max_length"):
        tokenize_pair(pair, tok, max_length=longest)

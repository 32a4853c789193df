"""Property-based tests of the data loader on generated (mostly malformed) input.

Whatever the file holds, :func:`load_pairs` either returns pairs that obey the loader's promises
or raises a :class:`DataError` that names the file and a line that really is bad — never another
exception (which the CLI would report as an internal error) and never a good line blamed.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alignment_probe.data import ASSISTANT_TURN, load_pairs
from alignment_probe.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=30)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
safe_extra = st.dictionaries(st.sampled_from(["id", "source", "meta"]), json_values, max_size=2)


@st.composite
def explicit_record(draw):
    record = {"prompt": draw(text), "chosen": draw(text), "rejected": draw(text)}
    if draw(st.booleans()):
        record["rejected"] = record["chosen"]  # identical pairs must be skipped
    return ("explicit", dict(draw(safe_extra), **record))


@st.composite
def hh_record(draw):
    turns = "".join(f"\n\nHuman: {draw(text)}\n\nAssistant: {draw(text)}" for _ in range(draw(st.integers(0, 2))))
    human = f"\n\nHuman: {draw(text)}"
    marker = draw(st.sampled_from([ASSISTANT_TURN, ASSISTANT_TURN, "\n\nAssistant", ""]))  # sometimes no turn
    chosen = turns + human + marker + draw(text)
    rejected = (turns + human + marker if draw(st.booleans()) else draw(text)) + draw(text)
    return ("hh", dict(draw(safe_extra), chosen=chosen, rejected=rejected))


@st.composite
def bad_line(draw):
    kind = draw(st.sampled_from(["truncated", "not_object", "missing", "not_string", "surrogate", "garbage"]))
    good = {"prompt": draw(text), "chosen": draw(text), "rejected": draw(text)}
    if kind == "truncated":
        line = json.dumps(good)
        return ("bad", line[: draw(st.integers(1, len(line) - 1))])
    if kind == "not_object":
        return ("bad", json.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict)))))
    if kind == "missing":
        record = draw(st.dictionaries(text, json_values, max_size=4))
        record.pop("chosen", None)
        return ("bad", json.dumps(record))
    if kind == "not_string":
        key = draw(st.sampled_from(["prompt", "chosen", "rejected"]))
        good[key] = draw(json_values.filter(lambda v: not isinstance(v, str)))
        return ("bad", json.dumps(good))
    if kind == "surrogate":
        good[draw(st.sampled_from(["prompt", "chosen", "rejected"]))] += "\ud800"
        return ("bad", json.dumps(good))
    # Free text that is not valid JSON at all.
    return (
        "bad",
        draw(
            st.text(min_size=1, max_size=20).filter(
                lambda s: "\n" not in s and s.strip() and not s.startswith("\ufeff") and not _is_json(s)
            )
        ),
    )


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


blank = st.sampled_from(["", " ", "\t", "  \t "]).map(lambda s: ("blank", s))
line = st.one_of(explicit_record(), hh_record(), bad_line(), blank)


def _to_text(item) -> str:
    kind, value = item
    return value if isinstance(value, str) and kind in ("bad", "blank") else json.dumps(value)


def _expected_skip(record: dict) -> str | None:
    """Why a well-formed explicit record is skipped (same order as data.make_pair), or None."""
    if record["chosen"] == record["rejected"]:
        return "chosen == rejected"
    if not record["chosen"].strip() or not record["rejected"].strip():
        return "empty completion"
    if not record["prompt"].strip():
        return "empty prompt"
    return None


@SETTINGS
@given(items=st.lists(line, max_size=25), compress=st.booleans())
def test_loader_returns_valid_pairs_or_blames_a_bad_line(items, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("pairs.jsonl.gz" if compress else "pairs.jsonl")
        raw = "\n".join(_to_text(i) for i in items).encode("utf-8", "surrogatepass")
        path.write_bytes(gzip.compress(raw) if compress else raw)
        bad_lines = [n + 1 for n, (kind, _) in enumerate(items) if kind == "bad"]
        n_nonblank = sum(1 for i in items if _to_text(i).strip())
        try:
            pairs, report = load_pairs(path)
        except DataError as exc:
            msg = str(exc)
            event("refused: bad lines" if bad_lines else "refused: nothing usable")
            assert str(path) in msg
            cited = [int(m) for m in re.findall(re.escape(str(path)) + r":(\d+):", msg)]
            if bad_lines:
                assert cited, msg
                assert cited[0] == bad_lines[0]  # the first bad line is always shown
                assert set(cited) <= set(bad_lines)  # and no good line is ever blamed
                assert len(cited) == min(len(bad_lines), 10)
            else:
                assert not cited  # no bad line: the only error is "no usable pairs"/"empty"
                assert "no usable preference pairs" in msg or "holds no preference pairs" in msg
            return
        assert not bad_lines, "a malformed line was accepted"
        event("loaded, some skipped" if report.n_skipped else "loaded, none skipped")
        ids = [p.pair_id for p in pairs]
        assert ids == sorted(set(ids)) and ids
        assert report.n_read == n_nonblank == len(pairs) + report.n_skipped
        skipped = {pid: reason for reason, pids in report.skipped.items() for pid in pids}
        assert not set(skipped) & set(ids)
        by_id = {p.pair_id: p for p in pairs}
        for n, (kind, value) in enumerate(items):
            if kind == "blank":
                assert n not in by_id and n not in skipped
                continue
            assert (n in by_id) != (n in skipped)
            if kind == "explicit":
                reason = _expected_skip(value)
                if reason is None:
                    p = by_id[n]
                    assert (p.prompt, p.chosen, p.rejected) == (value["prompt"], value["chosen"], value["rejected"])
                else:
                    assert skipped[n] == reason
            elif kind == "hh" and n in by_id:
                p = by_id[n]
                assert p.prompt.endswith(ASSISTANT_TURN)
                assert p.prompt + p.chosen == value["chosen"] and p.prompt + p.rejected == value["rejected"]
        for p in pairs:
            assert p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip() and p.prompt.strip()


@SETTINGS
@given(raw=st.binary(max_size=200), compress=st.booleans())
def test_arbitrary_bytes_never_crash_the_loader(raw, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_bytes(gzip.compress(raw) if compress else raw)
        try:
            pairs, report = load_pairs(path)
        except DataError as exc:
            assert str(path) in str(exc)
        else:
            assert len(pairs) + report.n_skipped == report.n_read

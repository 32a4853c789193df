"""Preference pairs: read them from any of the supported sources and split them into
(prompt, chosen completion, rejected completion).

Supported sources, one loader (:func:`load_pairs`):

* **HH-RLHF JSON lines** (plain or ``.gz``): objects with ``chosen`` and ``rejected``, each a whole
  dialogue ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The two dialogues share every turn but the last
  Assistant turn; we cut each at the start of its *final* ``"\\n\\nAssistant:"`` turn, so the prompt
  ends with ``"\\n\\nAssistant:"`` and the completion is the rest (usually starting with a space).
  Cutting at the longest common character prefix instead could end mid-word.
* **explicit JSON lines** with ``prompt``, ``chosen`` and ``rejected`` (the completions).
* **a dataset-hub name** such as ``Anthropic/hh-rlhf`` (with ``data_dir="harmless-base"``), read with
  the ``datasets`` library (needs the hub).

Every pair keeps ``pair_id``, its 0-based line (row) number in the source, so results can always be
traced back to the input.

What is refused and what is skipped:

* **refused** (:class:`DataError`, before any model loads): a file that cannot be read as UTF-8
  JSON lines (missing, a folder, a broken ``.gz``, UTF-16, Parquet, invalid UTF-8), and lines that
  are not preference pairs at all — malformed JSON, not an object, missing or misspelled keys, a
  non-string value. Such a line means the file is not what the user thinks it is, so silently
  dropping it would bias the sample; one error lists up to :data:`MAX_REPORTED_LINES` of them.
* **skipped and reported** (:class:`SkipReport`): well-formed pairs that cannot be scored — chosen
  identical to rejected, an empty prompt or completion, an HH dialogue without an Assistant turn,
  chosen and rejected that do not share a prompt. Real data has a few of these (HH helpful-base
  holds identical pairs); a file where *every* pair is skipped is refused.

Reading the source's records (files, the hub) is :mod:`alignment_probe.data_files`; this module makes them pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from alignment_probe.data_files import _LineError, iter_hub_records, iter_jsonl_records
from alignment_probe.data_files import is_hub_dataset as is_hub_dataset  # the CLI asks it before loading
from alignment_probe.errors import ConfigError, DataError

ASSISTANT_TURN = "\n\nAssistant:"
HH_KEYS = ("chosen", "rejected")
EXPLICIT_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair: a shared prompt x, the chosen completion y+ and the rejected one y-."""

    pair_id: int
    prompt: str
    chosen: str
    rejected: str


@dataclass
class SkipReport:
    """Which pairs were skipped and why (reason → pair ids), plus truncation counts."""

    skipped: dict[str, list[int]] = field(default_factory=dict)
    n_read: int = 0

    def add(self, reason: str, pair_id: int) -> None:
        self.skipped.setdefault(reason, []).append(pair_id)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"read {self.n_read} pairs, skipped none"
        parts = ", ".join(f"{len(ids)} {reason}" for reason, ids in sorted(self.skipped.items()))
        return f"read {self.n_read} pairs, skipped {self.n_skipped} ({parts})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_read": self.n_read,
            "n_skipped": self.n_skipped,
            "skipped": {k: sorted(v) for k, v in sorted(self.skipped.items())},
        }


class SkipPair(Exception):
    """Raised by the splitters for a pair that is well-formed but cannot be scored."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def split_hh_dialogue(dialogue: str) -> tuple[str, str]:
    """Split one HH dialogue at the start of its final Assistant turn → (prompt, completion)."""
    cut = dialogue.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise SkipPair("no Assistant turn")
    end = cut + len(ASSISTANT_TURN)
    return dialogue[:end], dialogue[end:]


def split_hh_pair(chosen: str, rejected: str, pair_id: int) -> PreferencePair:
    """Turn two whole HH dialogues into a :class:`PreferencePair` sharing one prompt."""
    if chosen == rejected:
        raise SkipPair("chosen == rejected")
    prompt_c, completion_c = split_hh_dialogue(chosen)
    prompt_r, completion_r = split_hh_dialogue(rejected)
    if prompt_c != prompt_r:
        raise SkipPair("chosen and rejected do not share a prompt")
    return make_pair(pair_id, prompt_c, completion_c, completion_r)


def make_pair(pair_id: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    """Build a pair from explicit fields, skipping the ones that cannot be scored."""
    if chosen == rejected:
        raise SkipPair("chosen == rejected")
    if not chosen.strip() or not rejected.strip():
        raise SkipPair("empty completion")
    if not prompt.strip():
        raise SkipPair("empty prompt")
    return PreferencePair(pair_id=pair_id, prompt=prompt, chosen=chosen, rejected=rejected)


# The JSON type names users see in their files (not Python's).
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "true/false",
    int: "a number",
    float: "a number",
    type(None): "null",
}

FORMAT_HELP = (
    "Each line must be one JSON object with 'chosen' and 'rejected' (whole HH dialogues), or with "
    "'prompt', 'chosen' and 'rejected' (a prompt and two completions), all strings."
)

# How many bad lines one error lists (the total is always given).
MAX_REPORTED_LINES = 10


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _close_key(key: str, candidates: Iterable[Any], *, loose: bool = True) -> str | None:
    """The candidate that is most likely a misspelling of ``key``, if any.

    Strict (``loose=False``): same letters in another case, or a typo (a similar word at most two
    characters longer or shorter). Loose also accepts near words and affixed names
    (``chosen_response``) — only used for hints in a message about a key that is missing anyway.
    """
    import difflib

    cands = [c for c in candidates if isinstance(c, str)]
    for c in cands:
        if c.strip().lower() == key:
            return c
    for c in cands:
        ratio = difflib.SequenceMatcher(None, key, c.lower()).ratio()
        if ratio >= 0.8 and abs(len(c) - len(key)) <= 2:
            return c
    if not loose:
        return None
    close = difflib.get_close_matches(key, cands, n=1, cutoff=0.7)
    if close:
        return close[0]
    for c in cands:  # e.g. "chosen_response", "rejected_text"
        if key in c.lower():
            return c
    return None


def _misspelling_hint(record: dict[str, Any], expected: Sequence[str]) -> list[str]:
    """ "'rejectd' looks like 'rejected'" for keys of ``record`` that nearly match a missing expected key."""
    unknown = [k for k in record if k not in (*EXPLICIT_KEYS,)]
    hints = []
    for key in expected:
        if key in record:
            continue
        near = _close_key(key, unknown)
        if near is not None:
            hints.append(f"{near!r} looks like a misspelling of {key!r}")
            unknown.remove(near)
    return hints


def record_to_pair(record: Any, pair_id: int, where: str) -> PreferencePair:
    """Interpret one JSON object (either format). ``where`` names file and line for errors.

    Raises :class:`DataError` for a record that is malformed (wrong type, missing or misspelled
    keys, non-string values) and :class:`SkipPair` for one that is well-formed but unusable.
    """
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object with keys 'chosen' and 'rejected' "
            f"(and optionally 'prompt'), got {_json_type(record)}."
        )
    # A misspelled 'prompt' would silently turn an explicit-format line into an HH one.
    typo_prompt = "prompt" not in record and _close_key("prompt", [k for k in record if k not in HH_KEYS], loose=False)
    keys = EXPLICIT_KEYS if "prompt" in record or typo_prompt else HH_KEYS
    missing = [k for k in keys if k not in record]
    if missing:
        found = ", ".join(repr(k) for k in record) or "none"
        hints = _misspelling_hint(record, keys)
        hint = f"; {'; '.join(hints)}" if hints else ""
        raise DataError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)} (found {found}{hint}).")
    for k in keys:
        value = record[k]
        if not isinstance(value, str):
            raise DataError(f"{where}: field {k!r} must be a string, got {_json_type(value)}.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{where}: field {k!r} holds an invalid \\u escape (a lone UTF-16 surrogate such as "
                "\\ud800) that no tokenizer can read; re-export the text as valid UTF-8."
            ) from None
    if "prompt" in record:
        return make_pair(pair_id, record["prompt"], record["chosen"], record["rejected"])
    return split_hh_pair(record["chosen"], record["rejected"], pair_id)


def load_pairs(
    source: str | Path, *, data_dir: str | None = None, split: str = "test"
) -> tuple[list[PreferencePair], SkipReport]:
    """Read every pair of ``source`` (a JSONL(.gz) path or a hub dataset name).

    Returns the usable pairs in file order and a report of the skipped ones. Raises
    :class:`DataError` (naming file, line and field) for input that is malformed rather than
    merely unusable.
    """
    if is_hub_dataset(source):
        records: Iterable[tuple[int, Any, str]] = iter_hub_records(str(source), data_dir, split)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"Data file {path} does not exist. Pass a JSONL(.gz) file of preference pairs "
                "or a dataset-hub name such as Anthropic/hh-rlhf."
            )
        records = iter_jsonl_records(path)
    pairs: list[PreferencePair] = []
    report = SkipReport()
    bad: list[str] = []
    n_bad = 0
    for pair_id, record, where in records:
        report.n_read += 1
        try:
            if isinstance(record, _LineError):
                raise DataError(str(record))
            pairs.append(record_to_pair(record, pair_id, where))
        except SkipPair as skip:
            report.add(skip.reason, pair_id)
        except DataError as exc:
            n_bad += 1
            if len(bad) < MAX_REPORTED_LINES:
                bad.append(str(exc))
    if n_bad == 1:
        raise DataError(f"{bad[0]} {FORMAT_HELP} Fix or remove that line.")
    if n_bad:
        shown = f"the first {len(bad)}" if n_bad > len(bad) else "all of them"
        raise DataError(
            f"{source}: {n_bad} of {report.n_read} lines are not valid preference pairs ({shown} "
            "below). " + FORMAT_HELP + " Fix or remove these lines.\n  " + "\n  ".join(bad)
        )
    if not pairs:
        if report.n_read == 0:
            raise DataError(f"{source} holds no preference pairs (the file is empty). " + FORMAT_HELP)
        raise DataError(
            f"{source}: no usable preference pairs ({report.summary()}). Every pair was skipped; "
            "see the README's 'When something goes wrong' for what each reason means."
        )
    return pairs, report


def check_sampling_options(
    n_pairs: int | None, max_length: int | None, n_usable: int, source: str, report: SkipReport | None = None
) -> None:
    """Option checks that need only the data (no tokenizer, no torch), run before any model loads."""
    if n_pairs is not None and n_pairs < 1:
        raise ConfigError(f"--n-pairs must be at least 1, got {n_pairs}.")
    if max_length is not None and max_length < 4:
        raise ConfigError(f"--max-length must be at least 4 tokens, got {max_length}.")
    if n_pairs is not None and n_pairs > n_usable:
        skipped = f" ({report.summary()})" if report is not None else ""
        raise DataError(
            f"--n-pairs {n_pairs} is larger than the {n_usable} usable pairs in {source}{skipped}; "
            f"pass --n-pairs {n_usable} or fewer, or more data."
        )


def read_pair_ids(path: str | Path) -> list[int]:
    """Pair ids from a file: a JSON list of integers, or integers separated by spaces or newlines.

    Used to restrict a run to a subset, e.g. the held-out half a tuned twin was not trained on
    (``alignment_probe.realmodels.dpo_lora.heldout_pairs``). Ids are the ``pair_id`` that
    :func:`load_pairs` gives: the 0-based record (line) number in the data file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"Pair-id file {path} does not exist (--pair-ids). Pass a file with a JSON list of pair ids "
            "or one id per line."
        )
    text = path.read_text()
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.split()
        ids = [int(v) for v in values]
        if any(isinstance(v, float) and not float(v).is_integer() for v in values):
            raise ValueError
    except (ValueError, TypeError):
        raise DataError(
            f"{path} (--pair-ids) must hold a JSON list of integer pair ids or integers separated by "
            "spaces or newlines; it could not be read as either."
        ) from None
    if not ids:
        raise DataError(f"{path} (--pair-ids) holds no pair ids.")
    return sorted(set(ids))


def restrict_pairs(
    pairs: Sequence[PreferencePair], ids: Sequence[int], *, source: str, ids_source: str
) -> list[PreferencePair]:
    """The usable pairs whose ``pair_id`` is in ``ids``; an id that names no usable pair is an error."""
    wanted = set(ids)
    kept = [p for p in pairs if p.pair_id in wanted]
    missing = sorted(wanted - {p.pair_id for p in kept})
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise DataError(
            f"{len(missing)} of the {len(wanted)} pair ids in {ids_source} name no usable pair of {source} "
            f"(ids {shown}). Ids are 0-based record numbers of the data file; check that the id file was "
            "made for this file, or drop those ids."
        )
    return kept

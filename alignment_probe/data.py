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
traced back to the input. Pairs that cannot be scored are *skipped and reported*, never silently
dropped: see :class:`SkipReport`.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from alignment_probe.errors import DataError

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
        return {"n_read": self.n_read, "n_skipped": self.n_skipped,
                "skipped": {k: sorted(v) for k, v in sorted(self.skipped.items())}}


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


def record_to_pair(record: Any, pair_id: int, where: str) -> PreferencePair:
    """Interpret one JSON object (either format). ``where`` names file and line for errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with keys 'chosen' and 'rejected' "
                        f"(and optionally 'prompt'), got {type(record).__name__}.")
    keys = EXPLICIT_KEYS if "prompt" in record else HH_KEYS
    missing = [k for k in keys if k not in record]
    if missing:
        found = ", ".join(repr(k) for k in record) or "none"
        raise DataError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)} (found {found}). "
                        "Each line needs 'chosen' and 'rejected' (whole HH dialogues), or 'prompt', "
                        "'chosen' and 'rejected' (prompt plus completions).")
    for k in keys:
        if not isinstance(record[k], str):
            raise DataError(f"{where}: field {k!r} must be a string, got {type(record[k]).__name__}.")
    if "prompt" in record:
        return make_pair(pair_id, record["prompt"], record["chosen"], record["rejected"])
    return split_hh_pair(record["chosen"], record["rejected"], pair_id)


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return io.StringIO(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}). Re-save the file as UTF-8, "
                        "e.g. iconv -f latin1 -t utf-8.") from None


def iter_jsonl_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """Yield (0-based line number, parsed object, "file:line") for each non-blank line."""
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle):
            if not line.strip():
                continue
            where = f"{path}:{lineno + 1}"
            try:
                yield lineno, json.loads(line), where
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}). "
                                "Each line must be one JSON object.") from None


def iter_hub_records(name: str, data_dir: str | None, split: str) -> Iterator[tuple[int, Any, str]]:
    """Yield rows of a dataset-hub dataset (needs the hub)."""
    import datasets

    ds = datasets.load_dataset(name, data_dir=data_dir, split=split)
    for i, row in enumerate(ds):
        yield i, dict(row), f"{name}[{data_dir or ''}:{split}] row {i}"


def is_hub_dataset(source: str | Path) -> bool:
    s = str(source)
    return not Path(s).exists() and s.count("/") == 1 and not s.startswith((".", "/", "~")) and not s.endswith((".jsonl", ".gz", ".json"))


def load_pairs(source: str | Path, *, data_dir: str | None = None, split: str = "test") -> tuple[list[PreferencePair], SkipReport]:
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
            raise DataError(f"Data file {path} does not exist. Pass a JSONL(.gz) file of preference pairs "
                            "or a dataset-hub name such as Anthropic/hh-rlhf.")
        records = iter_jsonl_records(path)
    pairs: list[PreferencePair] = []
    report = SkipReport()
    for pair_id, record, where in records:
        report.n_read += 1
        try:
            pairs.append(record_to_pair(record, pair_id, where))
        except SkipPair as skip:
            report.add(skip.reason, pair_id)
    if not pairs:
        raise DataError(f"{source}: no usable preference pairs ({report.summary()}).")
    return pairs, report


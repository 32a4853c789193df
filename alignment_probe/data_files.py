"""Reading a data source's records: a JSON-lines file (plain or ``.gz``) or a dataset-hub dataset, one record at a
time with its 0-based line (row) number and where it came from; a file that is not UTF-8 JSON lines is refused
here with the fix (:mod:`alignment_probe.data` turns the records into preference pairs)."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from alignment_probe.errors import DataError


def _open_text(path: Path) -> io.TextIOBase:
    if path.is_dir():
        raise DataError(
            f"Data path {path} is a folder, not a file: pass the JSONL(.gz) file of preference pairs inside it."
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Data file {path} cannot be read ({exc.strerror or exc}); check its permissions.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: not a valid gzip file ({exc}); it may be truncated (an interrupted "
                "download?). Download it again, or pass the uncompressed JSONL file."
            ) from None
    if raw[:4] == b"PAR1":
        raise DataError(
            f"{path} is a Parquet file; alignment-probe reads JSON lines. Convert it, e.g. "
            "pandas.read_parquet(path).to_json(out, orient='records', lines=True)."
        )
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(
            f"{path} is encoded as UTF-16; re-save it as UTF-8, e.g. iconv -f utf-16 -t utf-8 "
            f"{path.name} > fixed.jsonl."
        )
    try:
        return io.StringIO(raw.decode("utf-8-sig"))  # a leading UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {exc.start}). Re-save the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl."
        ) from None


class _LineError(Exception):
    """A line that is not a preference pair at all (collected, then reported together)."""


def iter_jsonl_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """Yield (0-based line number, parsed object or :class:`_LineError`, "file:line") per non-blank line."""
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle):
            if not line.strip():
                continue
            where = f"{path}:{lineno + 1}"
            try:
                yield lineno, json.loads(line), where
            except json.JSONDecodeError as exc:
                hint = ""
                if lineno == 0 and line.lstrip().startswith("["):
                    hint = (
                        " The file looks like one JSON array rather than JSON lines: write one object per "
                        "line, e.g. jq -c '.[]' in.json > out.jsonl."
                    )
                yield lineno, _LineError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}).{hint}"), where
            except RecursionError:
                yield lineno, _LineError(f"{where}: malformed JSON (nested too deeply)."), where


def iter_hub_records(name: str, data_dir: str | None, split: str) -> Iterator[tuple[int, Any, str]]:
    """Yield rows of a dataset-hub dataset (needs the hub)."""
    try:
        import datasets

        ds = datasets.load_dataset(name, data_dir=data_dir, split=split)
    except ImportError:
        raise DataError(
            f"--data {name} names a dataset-hub dataset, which needs the 'datasets' package "
            "(pip install datasets); or pass a local JSONL file."
        ) from None
    except Exception as exc:  # network, unknown name, unknown split: all are about the input
        reason = str(exc) if len(str(exc)) <= 300 else str(exc)[:300] + " ..."
        raise DataError(
            f"--data {name} (data_dir={data_dir!r}, split={split!r}) could not be loaded from the "
            f"dataset hub: {type(exc).__name__}: {reason}. Check the name, --data-dir and --split, the "
            "network, or pass a local JSONL(.gz) file; a local file that does not exist is read as a "
            "hub name."
        ) from None
    for i, row in enumerate(ds):
        yield i, dict(row), f"{name}[{data_dir or ''}:{split}] row {i}"


def is_hub_dataset(source: str | Path) -> bool:
    s = str(source)
    return (
        not Path(s).exists()
        and s.count("/") == 1
        and not s.startswith((".", "/", "~"))
        and not s.endswith((".jsonl", ".gz", ".json"))
    )

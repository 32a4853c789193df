"""The files of a run directory, read back as plain data (JSON objects and tables; no torch, nothing recomputed).

The one reader of a run directory: ``ap.load_run`` (:mod:`alignment_probe.rundir`, which adds what is derived from
these), the report written from a directory (:func:`alignment_probe.report.html.write_report`) and the findings
driver read through it. Each file is read when first asked for; a file the directory lacks reads as None, and
each caller says what it needs and how to get it.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from alignment_probe.tables import read_table

MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
FITS_FILE = "fits.json"
# A table's file names, the run's own (Parquet) first; a CSV of the same table is read where no Parquet file is.
SCORES_FILES = ("scores.parquet", "scores.csv")
EFFECTS_FILES = ("effects.parquet", "effects.csv")
TOKENS_FILES = ("token_effects.parquet",)


class RunFiles:
    """A run directory's files (:mod:`alignment_probe.run` writes them): ``manifest``, ``summary`` and ``fits``
    (dicts), ``scores``, ``effects`` and ``tokens`` (tables), each None where the file is absent."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _first(self, names: tuple[str, ...]) -> Path | None:
        return next((self.path / n for n in names if (self.path / n).is_file()), None)

    def _json(self, name: str) -> dict[str, Any] | None:
        file = self.path / name
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    def _table(self, names: tuple[str, ...]) -> pd.DataFrame | None:
        file = self._first(names)
        return read_table(file) if file is not None else None

    def has(self, name: str) -> bool:
        """Whether the file ``name`` (e.g. ``summary.json``) is there, without reading it."""
        return (self.path / name).is_file()

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        return self._json(MANIFEST_FILE)

    @cached_property
    def summary(self) -> dict[str, Any] | None:
        return self._json(SUMMARY_FILE)

    @cached_property
    def fits(self) -> dict[str, Any] | None:
        return self._json(FITS_FILE)

    @cached_property
    def scores(self) -> pd.DataFrame | None:
        return self._table(SCORES_FILES)

    @cached_property
    def effects(self) -> pd.DataFrame | None:
        return self._table(EFFECTS_FILES)

    @cached_property
    def tokens(self) -> pd.DataFrame | None:
        return self._table(TOKENS_FILES)

    def missing(self, *names: str) -> list[str]:
        """Which of the tables or files ``names`` (``manifest``, ``summary``, ``fits``, ``scores``, ``effects``,
        ``tokens``) the directory lacks, by file name, without reading any."""
        files = {
            "manifest": (MANIFEST_FILE,),
            "summary": (SUMMARY_FILE,),
            "fits": (FITS_FILE,),
            "scores": SCORES_FILES,
            "effects": EFFECTS_FILES,
            "tokens": TOKENS_FILES,
        }
        return [files[n][0] for n in names if self._first(files[n]) is None]

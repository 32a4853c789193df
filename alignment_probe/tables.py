"""Write tidy tables to .csv or .parquet, atomically (a temporary file, then a rename)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from alignment_probe.errors import ConfigError

TABLE_SUFFIXES = (".csv", ".parquet")


def check_table_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"--out {path}: the file name must end in .csv or .parquet.")
    if not path.parent.exists():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist; create it first.")
    return path


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = check_table_path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".csv":
        table.to_csv(tmp, index=False, float_format="%.9g")
    else:
        table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)

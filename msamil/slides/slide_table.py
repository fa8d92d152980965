"""Reading a slide table (the user's TSV/CSV, or the workflow's raw/table.tsv) so that nothing changes silently.

Two rows with the same slide id used to mean "the last row wins": a label could change without a word. Here a
duplicated id is an error that lists every duplicated id with its rows and labels, so the user decides. Slide ids
also become file names (`cache/{slide}.h5`, `qc/{slide}.png`), so an id that is empty, `.` or `..`, starts with a
dot (hidden, and the shape of msamil's temporary files) or holds a path separator is never used as one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from msamil.errors import ConfigError


def slide_id_problem(slide: str) -> str | None:
    """Why `slide` cannot be a slide id (it names files and Snakemake wildcards), else None."""
    if not slide.strip():
        return "is empty"
    if slide in (".", ".."):
        return "is a directory reference"
    if slide.startswith("."):
        return "starts with a dot (hidden file names are reserved for temporary files)"
    bad = sorted({c for c in slide if c in "/\\\0" or not c.isprintable()})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)} (path separators and control characters are not allowed)"
    return None


def duplicated_ids(table: pd.DataFrame, column: str = "slide") -> dict[str, list[int]]:
    """{id: [row numbers as in the file, header = line 1]} for every id that occurs more than once."""
    rows = table.reset_index(drop=True)
    dup = rows[column].duplicated(keep=False)
    out: dict[str, list[int]] = {}
    for i, value in zip(rows.index[dup], rows.loc[dup, column], strict=True):
        out.setdefault(str(value), []).append(int(i) + 2)
    return out


def check_unique_ids(table: pd.DataFrame, source: str | os.PathLike[str], column: str = "slide") -> None:
    """ConfigError listing every duplicated id with its lines (and labels, when the table has them)."""
    dups = duplicated_ids(table, column)
    if not dups:
        return
    parts = []
    for slide, lines in sorted(dups.items()):
        labels = ""
        if "label" in table.columns:
            values = [str(table.reset_index(drop=True).loc[n - 2, "label"]) for n in lines]
            labels = f", labels {values}" if len(set(values)) > 1 else ""
        parts.append(f"{slide!r} (lines {lines}{labels})")
    raise ConfigError(f"{source}: {len(dups)} slide id(s) occur more than once: {'; '.join(parts)}. Each slide "
                      f"needs exactly one row: delete or rename the extra rows (no row silently wins)")


def read_slide_table(path: str | os.PathLike[str], required: Sequence[str] = ("slide",)) -> pd.DataFrame:
    """A slide table as strings (empty cells ''), comma-separated for `.csv`, else tab-separated.

    Raises ConfigError naming the file for a missing column or a duplicated slide id.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"slide table {path} does not exist")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing} (has {list(table.columns)})")
    if "slide" in table.columns:
        table["slide"] = table["slide"].str.strip()
        check_unique_ids(table, path)
    return table

"""The slide table: the one format in which every dataset lists its slides (DESIGN.md section 9b).

A user's cohort is a TSV or CSV with `slide, patient, label, path` and optional `mpp`, `annotation` (QuPath GeoJSON
of lesions) and `exclude` (a reason to leave the row out). The synthetic generator and the registry scanners write
the same table (`results/{dataset}/raw/table.tsv`), so one reader serves them all. Relative paths are resolved
against the table's own folder, so a table and its slides can be moved together.

Only problems of the table itself are errors here (missing columns, a duplicated id: msamil.slides.slide_table
lists them with their lines). Problems of one row (an id that cannot name a file, a missing file, an unknown label,
no MPP) exclude that row with a reason and the others go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from msamil.errors import ConfigError
from msamil.slides.slide_table import check_unique_ids

log = logging.getLogger(__name__)

REQUIRED = ("slide", "patient", "label", "path")
OPTIONAL = ("annotation", "mpp", "mpp_source", "exclude")  # mpp_source: who gave `mpp` (registry tables)
COLUMNS = [*REQUIRED, *OPTIONAL]


def _separator(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in {".tsv", ".tab", ".txt"}:
        return "\t"
    return None  # sniffed


def resolve(value: str, folder: str) -> str:
    """A path from the table: absolute as given, relative ones joined to the table's folder (normalised)."""
    value = os.path.expanduser(value.strip())
    if not value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(folder, value))


def read_slide_table(path: str | os.PathLike[str], *, require_label: bool = True) -> pd.DataFrame:
    """The table at `path` as strings (empty cells ''), paths resolved, columns in COLUMNS order, indexed by slide.

    `require_label=False` for tables of unlabelled slides (prediction): label and patient columns may then be
    missing (label empty, patient = the slide id).
    Columns the workflow does not know are left out (with a warning naming them).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"slide table {path} does not exist (dataset_config.<name>.slide_table)")
    sep = _separator(path)
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="python" if sep is None else "c")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"slide table {path} cannot be read as TSV/CSV: {exc}") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    required = [c for c in REQUIRED if require_label or c not in ("label", "patient")]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ConfigError(f"slide table {path}: missing column(s) {missing}; it needs {list(required)} "
                          f"(optional: {list(OPTIONAL)}) - see README 'Your own slides'")
    ignored = [c for c in table.columns if c not in COLUMNS]
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = ""
    table = table[COLUMNS].map(lambda v: str(v).strip())
    if not require_label:
        table["patient"] = table["patient"].where(table["patient"] != "", table["slide"])
    check_unique_ids(table, path)
    folder = str(path.parent) if str(path.parent) != "." else ""
    table["path"] = [resolve(p, folder) for p in table["path"]]
    table["annotation"] = [resolve(a, folder) for a in table["annotation"]]
    table = table.set_index("slide", drop=False)
    table.index.name = None
    if ignored:
        log.warning("slide table %s: column(s) %s are not used by the workflow", path, ignored)
    return table


def write_slide_table(path: str | os.PathLike[str], table: pd.DataFrame) -> None:
    """Write rows in the slide-table format; paths under the table's folder are stored relative to it."""
    from msamil.util.atomic import write_tsv

    folder = Path(path).parent
    out = table.reindex(columns=COLUMNS).fillna("").astype(str)

    def rel(value: str) -> str:
        if not value or os.path.isabs(value):
            return value
        return os.path.relpath(value, folder)

    out["path"] = [rel(p) for p in out["path"]]
    out["annotation"] = [rel(a) for a in out["annotation"]]
    write_tsv(path, out)


def row_dicts(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """{slide: row as a plain dict in COLUMNS order}: what a per-slide inspect job gets as its params (and a
    lookup that costs nothing per job, unlike indexing a DataFrame thousands of times while planning)."""
    return {rec["slide"]: {c: str(rec[c]) for c in COLUMNS} for rec in table[COLUMNS].to_dict("records")}

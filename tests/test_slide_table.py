"""The slide table every dataset shares: TSV or CSV, paths relative to its folder, table-level errors named."""

from __future__ import annotations

import pandas as pd
import pytest

from msamil.errors import ConfigError
from msamil.slides.table import COLUMNS, read_slide_table, row_dicts, write_slide_table


def _write(path, rows, sep="\t"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)
    return path


def test_csv_and_tsv_give_the_same_rows_with_paths_resolved_against_the_table(tmp_path, caplog):
    rows = [{"slide": "a1", "patient": "P1", "label": "tumour", "path": "scans/a1.svs", "Notes": "x"},
            {"slide": "b2", "patient": "", "label": "normal", "path": "/data/b2.ndpi", "Notes": ""}]
    tsv = read_slide_table(_write(tmp_path / "cohort" / "t.tsv", rows))
    csv = read_slide_table(_write(tmp_path / "cohort" / "t.csv", rows, sep=","))
    assert list(tsv.columns) == COLUMNS and tsv.equals(csv)
    assert tsv.loc["a1", "path"] == str(tmp_path / "cohort" / "scans" / "a1.svs")
    assert tsv.loc["b2", "path"] == "/data/b2.ndpi"  # absolute paths stay
    assert tsv.loc["b2", "mpp"] == "" and tsv.loc["b2", "annotation"] == ""  # optional columns filled in
    assert "column(s) ['notes'] are not used" in caplog.text  # names are case-insensitive; unknown ones reported
    assert row_dicts(tsv)["a1"] == {"slide": "a1", "patient": "P1", "label": "tumour",
                                   "path": str(tmp_path / "cohort" / "scans" / "a1.svs"), "annotation": "",
                                   "mpp": "", "mpp_source": "", "exclude": ""}


def test_a_relative_table_keeps_workdir_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "results" / "ds" / "raw" / "table.tsv",
           [{"slide": "s", "patient": "p", "label": "l", "path": "slides/s.svs", "annotation": "../ann/s.geojson"}])
    table = read_slide_table("results/ds/raw/table.tsv")
    # exactly the paths the workflow's rules produce, so the DAG links them
    assert table.loc["s", "path"] == "results/ds/raw/slides/s.svs"
    assert table.loc["s", "annotation"] == "results/ds/ann/s.geojson"


def test_write_then_read_round_trips_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame([{"slide": "s", "patient": "p", "label": "l", "path": "results/d/raw/slides/s.tiff",
                           "annotation": "", "mpp": 0.5, "exclude": ""}])
    write_slide_table("results/d/raw/table.tsv", frame)
    assert "\tslides/s.tiff\t" in (tmp_path / "results/d/raw/table.tsv").read_text()
    assert read_slide_table("results/d/raw/table.tsv").loc["s", "path"] == "results/d/raw/slides/s.tiff"


@pytest.mark.parametrize(("rows", "message"), [
    ([{"slide": "a", "patient": "p", "path": "x"}], r"missing column\(s\) \['label'\]"),
    ([{"slide": s, "patient": "p", "label": "l", "path": "x"} for s in "abab"],
     r"2 slide id\(s\) occur more than once: 'a' \(lines \[2, 4\]\); 'b' \(lines \[3, 5\]\)"),
])
def test_table_level_problems_are_config_errors(tmp_path, rows, message):
    with pytest.raises(ConfigError, match=message):
        read_slide_table(_write(tmp_path / "t.tsv", rows))


def test_ids_that_cannot_name_files_are_read_for_the_row_to_be_excluded(tmp_path):
    table = read_slide_table(_write(tmp_path / "t.tsv", [{"slide": s, "patient": "p", "label": "l", "path": "x"}
                                                         for s in ("ok", "..", "up/x")]))
    assert list(table.index) == ["ok", "..", "up/x"]  # the workflow excludes them with the reason, without a job


def test_missing_table_and_unlabelled_tables(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_slide_table(tmp_path / "nope.tsv")
    table = read_slide_table(_write(tmp_path / "new.tsv", [{"slide": "n1", "patient": "", "path": "n1.svs"}]),
                             require_label=False)
    assert table.loc["n1", "label"] == ""
    assert table.loc["n1", "patient"] == "n1"  # an unlabelled table needs no patients: each slide its own
    only = read_slide_table(_write(tmp_path / "bare.tsv", [{"slide": "n2", "path": "n2.svs"}]), require_label=False)
    assert only.loc["n2", ["patient", "label"]].tolist() == ["n2", ""]
    with pytest.raises(ConfigError, match="missing column"):
        read_slide_table(tmp_path / "bare.tsv")

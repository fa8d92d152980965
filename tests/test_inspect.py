"""The inspect checkpoint's function: a mixed folder of good and bad slides; each bad one excluded precisely."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import slide_fixtures as sf

from msamil.errors import ConfigError, MsamilError
from msamil.slides.inspection import EXCLUDED_COLUMNS, SLIDES_COLUMNS, inspect_dataset

TISSUE = {"seg_mpp": 4.0, "smooth_um": 8.0, "close_um": 32.0, "min_fragment_area_um2": 1000.0,
          "min_tissue_area_um2": 1000.0, "min_hole_area_um2": 500.0}
DS = {"source": "local", "classes": ["benign", "malignant"], "default_mpp": None}


def _img(seed: int):
    return sf.tissue_image(320.0, 240.0, 0.5, seed=seed)  # 640x480 px


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A slide folder with two good slides, one repaired by an override, and one of each kind of bad input."""
    d = tmp_path_factory.mktemp("mixed")
    sd = d / "slides"
    sf.write_aperio(sd / "good1.svs", _img(1), 0.5)
    sf.write_generic(sd / "good2.tif", _img(2), 0.25)
    sf.write_no_mpp(sd / "fixed.tif", _img(3))
    sf.write_truncated(sd / "cut.svs", _img(4))
    sf.write_not_a_slide(sd / "text.svs")
    sf.write_no_mpp(sd / "nompp.tif", _img(5))
    sf.write_background(sd / "empty.svs", 640, 480)
    sf.write_aperio(sd / "badlabel.svs", _img(6), 0.5)
    sf.write_aperio(sd / "noann.svs", _img(7), 0.5)
    (d / "ann").mkdir()
    (d / "ann" / "good2.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    rows = [
        {"slide": "good1", "patient": "p1", "label": "benign", "path": str(sd / "good1.svs")},
        {"slide": "good2", "patient": "p2", "label": "malignant", "path": "slides/good2.tif",
         "annotation": "ann/good2.geojson"},  # relative to the table's folder
        {"slide": "fixed", "patient": "p2", "label": "malignant", "path": str(sd / "fixed.tif"), "mpp": "0.5"},
        {"slide": "cut", "patient": "p3", "label": "benign", "path": str(sd / "cut.svs")},
        {"slide": "text", "patient": "p4", "label": "benign", "path": str(sd / "text.svs")},
        {"slide": "nompp", "patient": "p5", "label": "benign", "path": str(sd / "nompp.tif")},
        {"slide": "empty", "patient": "p6", "label": "benign", "path": str(sd / "empty.svs")},
        {"slide": "badlabel", "patient": "p7", "label": "tumour", "path": str(sd / "badlabel.svs")},
        {"slide": "missing", "patient": "p8", "label": "benign", "path": str(sd / "missing.svs")},
        {"slide": "..", "patient": "p1", "label": "benign", "path": str(sd / "good1.svs")},  # would escape qc/
        {"slide": "nolabel", "patient": "p9", "label": "", "path": str(sd / "good1.svs")},
        {"slide": "noann", "patient": "p10", "label": "benign", "path": "slides/noann.svs",
         "annotation": "ann/noann.geojson"},
        {"slide": "skipped", "patient": "p11", "label": "benign", "path": str(sd / "good1.svs"),
         "exclude": "re-scan pending"},
    ]
    table = sf.write_table(d / "table.tsv", rows)
    out = {"slides": d / "out" / "slides.tsv", "excluded": d / "out" / "excluded.tsv", "qc": d / "out" / "qc"}
    return d, table, out


@pytest.fixture(scope="module")
def result(mixed):
    d, table, out = mixed
    slides, excluded = inspect_dataset(table, DS, out["slides"], out["excluded"], out["qc"], dataset="mix",
                                       tissue_cfg=TISSUE)
    return slides, excluded, out


def test_usable_slides(mixed, result):
    d = mixed[0]
    slides, _, out = result
    table = pd.read_csv(out["slides"], sep="\t", keep_default_na=False)
    assert list(table.columns) == SLIDES_COLUMNS
    assert table["slide"].tolist() == ["good1", "good2", "fixed"]
    by = table.set_index("slide")
    assert by.loc["good1", "vendor"] == "aperio" and by.loc["good1", "mpp"] == 0.5
    assert by.loc["good1", "mpp_source"] == "openslide" and by.loc["good1", "magnification"] == 20
    assert by.loc["good2", "mpp"] == 0.25 and by.loc["good2", "magnification"] == 40
    assert by.loc["good2", "annotation"] == str(d / "ann" / "good2.geojson")  # relative to the table's folder
    assert by.loc["good2", "path"] == str(d / "slides" / "good2.tif")
    assert by.loc["fixed", "mpp_source"] == "override"
    assert by["label_idx"].tolist() == [0, 1, 1]
    assert (by["width"] == 640).all() and (by["levels"] >= 2).all()
    assert all(0 < f < 1 for f in by["tissue_fraction"])


def test_excluded_with_precise_reasons(result):
    _, _, out = result
    table = pd.read_csv(out["excluded"], sep="\t", keep_default_na=False)
    assert list(table.columns) == EXCLUDED_COLUMNS
    reasons = dict(zip(table["slide"] + "#" + table.index.astype(str), table["reason"], strict=True))
    by = {k.split("#")[0]: v for k, v in reasons.items()}
    assert set(by) == {"cut", "text", "nompp", "empty", "badlabel", "missing", "..", "nolabel", "noann", "skipped"}
    assert by["cut"].startswith("unreadable: truncated or corrupt")
    assert by["text"].startswith("not a slide OpenSlide can read")
    assert by["nompp"].startswith("no MPP")
    assert by["empty"].startswith("no tissue detected")
    assert by["badlabel"].startswith("label 'tumour' is not one of")
    assert by["missing"].startswith("file not found")
    assert by[".."] == "slide id '..' is a directory reference"
    assert by["nolabel"] == "no label"
    assert by["noann"].startswith("annotation file not found")
    assert by["skipped"] == "excluded by the slide table: re-scan pending"
    assert (table["fix"] != "").all() and (table["stage"] == "inspect").all()


def test_duplicated_ids_are_an_error_naming_them(tmp_path):
    table = sf.write_table(tmp_path / "t.tsv", [
        {"slide": s, "patient": "p", "label": "benign", "path": "x.svs"} for s in ("a", "b", "a", "c", "b")])
    with pytest.raises(ConfigError, match=r"2 slide id\(s\) occur more than once: 'a' \(lines \[2, 4\]\); 'b'"):
        inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc", tissue_cfg=TISSUE)


def test_qc_thumbnails(result):
    _, _, out = result
    names = {p.name for p in out["qc"].iterdir()}
    assert {"good1.png", "good2.png", "fixed.png", "empty.png"} <= names
    assert "text.png" not in names
    assert not (out["qc"].parent / "..png").exists() and not (out["qc"] / "..png").exists()


def test_duplicated_ids_are_an_error_listing_them(mixed, tmp_path):
    """Two rows for one slide with different labels: no row silently wins, the error names both lines."""
    d, _, _ = mixed
    good = str(d / "slides" / "good1.svs")
    table = sf.write_table(tmp_path / "t.tsv", [
        {"slide": "a", "patient": "p", "label": "benign", "path": good},
        {"slide": "b", "patient": "p", "label": "benign", "path": good},
        {"slide": "a", "patient": "p", "label": "malignant", "path": good},
    ])
    with pytest.raises(MsamilError, match=r"'a' \(lines \[2, 4\], labels \['benign', 'malignant'\]\)"):
        inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc", tissue_cfg=TISSUE)
    assert not (tmp_path / "s.tsv").exists()


def test_dataset_default_mpp_applies(mixed, tmp_path):
    d, _, _ = mixed
    table = sf.write_table(tmp_path / "t.tsv", [
        {"slide": "nompp", "patient": "p", "label": "benign", "path": str(d / "slides" / "nompp.tif")},
    ])
    slides, excluded = inspect_dataset(table, {**DS, "default_mpp": 0.5}, tmp_path / "s.tsv", tmp_path / "e.tsv",
                                       tmp_path / "qc", tissue_cfg=TISSUE)
    assert excluded.empty and slides.loc[0, "mpp_source"] == "dataset-default"


def test_summary_is_a_warning_when_slides_are_excluded(mixed, tmp_path, caplog):
    d, table, _ = mixed
    with caplog.at_level(logging.INFO, logger="msamil"):
        inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc", dataset="mix",
                        tissue_cfg=TISSUE)
    summary = [r for r in caplog.records if "slides usable" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    per_slide = [r for r in caplog.records if r.getMessage().startswith(("good1:", "cut:"))]
    assert len(per_slide) >= 2


def test_no_usable_slide_fails_naming_excluded(mixed, tmp_path):
    d, _, _ = mixed
    table = sf.write_table(tmp_path / "t.tsv", [
        {"slide": "cut", "patient": "p", "label": "benign", "path": str(d / "slides" / "cut.svs")},
        {"slide": "text", "patient": "p", "label": "benign", "path": str(d / "slides" / "text.svs")},
    ])
    with pytest.raises(MsamilError, match="no usable slide") as err:
        inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc", tissue_cfg=TISSUE)
    assert "e.tsv" in str(err.value) and "truncated" in str(err.value)
    assert len(pd.read_csv(tmp_path / "e.tsv", sep="\t")) == 2


def test_mpp_source_names_who_gave_the_mpp(mixed, tmp_path):
    """slides.tsv says where an MPP came from: a registry's table names the config key, also when conversion wrote
    that value into the TIFF's tags; a file's own different MPP still wins; a bare user column stays "override"."""
    d, _, _ = mixed
    sd = d / "slides"
    table = sf.write_table(tmp_path / "t.tsv", [
        {"slide": "given", "patient": "p1", "label": "benign", "path": str(sd / "nompp.tif"), "mpp": "0.5",
         "mpp_source": "dataset_config.ubc_ocean.options.wsi_mpp"},
        {"slide": "converted", "patient": "p2", "label": "benign", "path": str(sd / "good2.tif"), "mpp": "0.25",
         "mpp_source": "dataset_config.bcnb.default_mpp"},
        {"slide": "own", "patient": "p3", "label": "benign", "path": str(sd / "good2.tif"), "mpp": "0.5",
         "mpp_source": "dataset_config.bcnb.default_mpp"},
        {"slide": "user", "patient": "p4", "label": "benign", "path": str(sd / "fixed.tif"), "mpp": "0.5"},
    ])
    slides, excluded = inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc",
                                       tissue_cfg=TISSUE)
    assert excluded.empty
    src = dict(zip(slides["slide"], slides["mpp_source"], strict=True))
    assert src["given"] == "dataset_config.ubc_ocean.options.wsi_mpp"
    assert src["converted"] == "dataset_config.bcnb.default_mpp (in the converted TIFF)"
    assert src["own"] == "openslide" and slides.set_index("slide").loc["own", "mpp"] == 0.25
    assert src["user"] == "override"

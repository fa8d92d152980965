"""Per-slide outcomes: inspect decisions, failures after inspection recorded instead of raised, and the gathers
that turn them into slides.tsv (the cache manifest) and excluded.tsv."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import h5py
import pandas as pd
import pytest
from fault_fixtures import corrupt_tissue_tile

from msamil.cache.writer import build_cache_from_decision
from msamil.errors import MsamilError, SlideError
from msamil.slides.inspection import inspect_row
from msamil.slides.outcomes import (
    EXCLUDED_COLUMNS,
    failure_record,
    gather_inspection,
    gather_slides,
    read_decision,
    slide_caches,
    summary_line,
)
from msamil.slides.synthetic import write_synthetic_slide
from msamil.tissue.detect import run_tissue_from_decision

TISSUE = {"seg_mpp": 4.0, "smooth_um": 8.0, "close_um": 32.0, "min_fragment_area_um2": 1000.0,
          "min_tissue_area_um2": 1000.0, "min_hole_area_um2": 500.0}  # small test slides (as in test_inspect)
CACHE_KW = {"mpp_20x": 0.5, "patch_px": 32, "tissue_min": {"20x": 0.5, "10x": 0.25, "5x": 0.1},
            "encoding": "raw", "jpeg_quality": 90}
SIZES = {"width": 1024, "height": 768, "tile_size": 128, "jpeg_quality": 85, "mpp": 0.5}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """Three slides inspected for real (plus a missing file): one stays good, one gets a corrupt tissue tile and
    one disappears after inspection."""
    d = tmp_path_factory.mktemp("outcomes")
    rows = {}
    for i, name in enumerate(("good", "badtile", "gone")):
        write_synthetic_slide(d / f"{name}.svs", d / f"{name}.geojson", name, i % 2, seed=i, **SIZES)
        rows[name] = {"slide": name, "patient": name, "label": "ab"[i % 2], "path": str(d / f"{name}.svs"),
                      "annotation": "", "mpp": "", "exclude": ""}
    rows["missing"] = {**rows["good"], "slide": "missing", "path": str(d / "missing.svs")}
    for name, row in rows.items():
        inspect_row(row, d / "inspect" / f"{name}.json", d / "qc" / f"{name}.png", dataset="ds",
                    classes=["a", "b"], tissue_cfg=TISSUE)
    # Damage the earlier stages did not see (small slides' QC thumbnails read level 0, so here it happens after
    # them): a file lost before the tissue job, and a corrupt tile inside tissue first read by the cache job.
    (d / "gone.svs").unlink()
    for name in ("good", "badtile", "gone"):
        w = d / "work"
        run_tissue_from_decision(d / "inspect" / f"{name}.json", w / f"{name}.png", w / f"{name}.geojson",
                                 w / f"{name}_qc.png", TISSUE)
    corrupt_tissue_tile(d / "badtile.svs")
    return d


def test_decisions_and_qc_for_every_row(cohort):
    assert read_decision(cohort / "inspect" / "good.json")["row"]["width"] == 1024
    assert read_decision(cohort / "inspect" / "badtile.json")["status"] == "usable"
    missing = read_decision(cohort / "inspect" / "missing.json")
    assert missing["row"] is None and missing["excluded"]["reason"].startswith("file not found")
    assert missing["source_row"]["path"].endswith("missing.svs")
    for name in ("good", "badtile", "gone", "missing"):  # a placeholder image when the slide cannot be drawn
        assert cv2.imread(str(cohort / "qc" / f"{name}.png")) is not None, name


def _run_cache(cohort: Path, name: str) -> Path:
    d = cohort / "work"
    decision = cohort / "inspect" / f"{name}.json"
    build_cache_from_decision(decision, d / f"{name}.png", d / f"{name}.geojson", d / f"{name}.h5", **CACHE_KW)
    return d / f"{name}.h5"


def test_failures_after_inspection_become_exclusions_and_the_rest_is_gathered(cohort, tmp_path):
    caches = {name: _run_cache(cohort, name) for name in ("good", "badtile", "gone")}
    with h5py.File(caches["badtile"]) as h5:
        assert h5.attrs["failed_stage"] == "cache" and not h5.attrs["complete"]
        assert h5.attrs["failed_reason"].startswith("unreadable: truncated or corrupt")
    with h5py.File(caches["gone"]) as h5:  # the tissue job failed; the cache job passed its reason on
        assert h5.attrs["failed_stage"] == "tissue" and "file not found" in h5.attrs["failed_reason"]
    with h5py.File(caches["good"]) as h5:
        checksum = h5.attrs["content_sha256"]
        assert h5.attrs["complete"] and len(checksum) == 64

    decisions = sorted((cohort / "inspect").glob("*.json"))
    ins_slides, ins_excl = tmp_path / "inspect" / "slides.tsv", tmp_path / "inspect" / "excluded.tsv"
    passed, _ = gather_inspection(decisions, ins_slides, ins_excl, "ds")
    assert sorted(passed["slide"]) == ["badtile", "gone", "good"]
    usable, excluded = gather_slides(ins_slides, ins_excl, [str(p) for p in caches.values()],
                                     tmp_path / "slides.tsv", tmp_path / "excluded.tsv", "ds")
    assert usable["slide"].tolist() == ["good"] and usable["cache_sha256"].tolist() == [checksum]
    assert slide_caches(tmp_path / "slides.tsv") == {"good": str(caches["good"])}
    table = pd.read_csv(tmp_path / "excluded.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == EXCLUDED_COLUMNS
    assert dict(zip(table["slide"], table["stage"], strict=True)) == {
        "missing": "inspect", "badtile": "cache", "gone": "tissue"}
    assert (table["fix"] != "").all()
    assert summary_line(tmp_path.parent, tmp_path.name) == (
        f"{tmp_path.name}: 1 slides used, 3 excluded ({tmp_path / 'excluded.tsv'})")


def test_excluded_slide_has_no_tissue_job_and_system_errors_still_fail(cohort):
    with pytest.raises(SlideError, match="excluded at inspection, so it has no tissue mask: file not found"):
        run_tissue_from_decision(cohort / "inspect" / "missing.json", cohort / "m.png", cohort / "m.geojson",
                                 cohort / "m_qc.png", TISSUE)
    assert failure_record("s", "cache", OSError(errno.ENOSPC, "No space left on device")) is None
    assert failure_record("s", "cache", MemoryError()) is None
    assert failure_record("s", "cache", KeyboardInterrupt()) is None
    record = failure_record("s", "cache", ValueError("odd tile"))
    assert record is not None and record["reason"] == "cache failed: ValueError: odd tile"


def test_gather_refuses_an_incomplete_cache(cohort, tmp_path):
    ins = tmp_path / "s.tsv"
    pd.DataFrame({"slide": ["x"], "path": ["x.svs"]}).to_csv(ins, sep="\t", index=False)
    pd.DataFrame(columns=EXCLUDED_COLUMNS).to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5.attrs["slide"] = "x"
    with pytest.raises(MsamilError, match="incomplete.*delete it and rerun"):
        gather_slides(ins, tmp_path / "e.tsv", [tmp_path / "x.h5"], tmp_path / "o.tsv", tmp_path / "oe.tsv", "ds")
    assert json.loads((cohort / "inspect" / "good.json").read_text())["slide"] == "good"

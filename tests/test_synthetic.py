"""The synthetic dataset: Aperio files OpenSlide understands, faithful pixels, sane lesions, determinism, table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
import yaml

from msamil.errors import ConfigError
from msamil.slides.svs import default_downsamples, pyramid, write_svs
from msamil.slides.synthetic import (
    make_slide,
    plan_slide,
    slide_rng,
    slide_scene,
    synthetic_table,
    write_synthetic_slide,
    write_table,
)

SIZES = {"width": 1024, "height": 768, "tile_size": 256, "jpeg_quality": 90, "lesion_fraction": [0.05, 0.25]}
SLIDES = {"syn_000": "malignant", "syn_001": "benign", "syn_002": "malignant", "syn_003": "benign"}
SEED = 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("synthetic")
    files = {}
    for slide, label in SLIDES.items():
        svs, geo = out / f"{slide}.svs", out / f"{slide}.geojson"
        write_synthetic_slide(svs, geo, slide, label, SEED, **SIZES)
        files[slide] = (svs, geo)
    return files


def _polygons(geojson: Path) -> list[np.ndarray]:
    data = json.loads(geojson.read_text())
    return [np.asarray(f["geometry"]["coordinates"][0]) for f in data["features"]]


def test_slides_open_as_aperio_20x(generated):
    for svs, _ in generated.values():
        with openslide.OpenSlide(str(svs)) as osr:
            props = osr.properties
            assert props["openslide.vendor"] == "aperio"
            assert float(props["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(props["openslide.mpp-y"]) == pytest.approx(0.5)
            assert float(props["openslide.objective-power"]) == pytest.approx(20)
            assert osr.dimensions == (SIZES["width"], SIZES["height"])
            assert osr.level_count >= 3
            assert osr.level_downsamples[:3] == pytest.approx((1, 4, 16), rel=0.01)
            assert "thumbnail" in osr.associated_images


def test_pixels_read_back_match_source(generated):
    slide = "syn_002"
    source = make_slide(slide, SLIDES[slide], SEED, **SIZES).rgb
    with openslide.OpenSlide(str(generated[slide][0])) as osr:
        region = np.asarray(osr.read_region((0, 0), 0, osr.dimensions))
        assert region[..., 3].min() == 255
        diff = np.abs(region[..., :3].astype(np.int16) - source)
        assert diff.mean() < 3.0
        assert np.percentile(diff, 99) < 25  # JPEG tolerance
        expected = pyramid(source, [1, 4, 16])
        for level in (1, 2):  # small, detailed levels lose a little more to JPEG
            w, h = osr.level_dimensions[level]
            low = np.asarray(osr.read_region((0, 0), level, (w, h)))[..., :3].astype(np.int16)
            assert np.abs(low - expected[level]).mean() < 5.0


def test_lesions_inside_tissue_and_sized(generated):
    for slide, (svs, geo) in generated.items():
        syn = make_slide(slide, SLIDES[slide], SEED, **SIZES)
        polygons = _polygons(geo)
        assert polygons, f"{slide} has no lesion"
        for ring in polygons:
            assert (ring[0] == ring[-1]).all()  # closed ring, as GeoJSON requires
            x, y = ring[:, 0], ring[:, 1]
            assert ((x >= 0) & (x < SIZES["width"]) & (y >= 0) & (y < SIZES["height"])).all()
            assert syn.tissue[y, x].all(), f"{slide}: lesion vertex outside tissue"
        mask = np.zeros(syn.tissue.shape, np.uint8)
        cv2.fillPoly(mask, [p[:-1].astype(np.int32) for p in polygons], 1)
        share = (mask.astype(bool) & syn.tissue).sum() / syn.tissue.sum()
        assert 0.05 <= share <= 0.25
        assert (mask.astype(bool) & ~syn.tissue).sum() == 0
        # the image itself agrees: vertices are stained, the slide corners are bright background
        with openslide.OpenSlide(str(svs)) as osr:
            rgb = np.asarray(osr.read_region((0, 0), 0, osr.dimensions))[..., :3]
        sat = cv2.cvtColor(cv2.blur(rgb, (9, 9)), cv2.COLOR_RGB2HSV)[..., 1]
        verts = np.concatenate(polygons)
        assert (sat[verts[:, 1], verts[:, 0]] > 40).all()
        assert rgb[:16, :16].mean() > 225 and sat[:16, :16].max() < 20


def test_geojson_is_qupath_style(generated):
    data = json.loads(generated["syn_000"][1].read_text())
    assert data["type"] == "FeatureCollection"
    for feature in data["features"]:
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["classification"]["name"] == "Tumor"
        assert feature["properties"]["objectType"] == "annotation"
    assert data["msamil"]["label"] == "malignant"


def test_lesion_is_visible_at_8um(generated):
    """The lesion U-Net works at 8 µm/px: there the lesion must still differ clearly from stroma."""
    for slide, label in SLIDES.items():
        syn = make_slide(slide, label, SEED, **SIZES)
        size = (SIZES["width"] // 16, SIZES["height"] // 16)
        small = cv2.resize(syn.rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        lesion = cv2.resize(syn.lesion.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        stroma = cv2.resize((syn.tissue & ~syn.lesion).astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        lesion = cv2.erode(lesion.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        stroma = cv2.erode(stroma.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        # red channel: haematoxylin absorbs red, eosin hardly does
        assert small[lesion, 0].mean() < small[stroma, 0].mean() - 25


def test_label_needs_both_cues():
    for i in range(40):
        rng = slide_rng(0, f"syn_{i:03d}")
        malignant = bool(i % 2)
        plan = plan_slide(rng, malignant, (0.05, 0.25))
        assert plan.malignant == malignant
        if not malignant:
            assert plan.atypical != plan.glandular  # a benign slide carries exactly one decoy cue
        assert 0.05 < plan.lesion_fraction < 0.25
    benign = [plan_slide(slide_rng(0, f"syn_{i:03d}"), False, (0.05, 0.25)) for i in range(40)]
    assert {p.atypical for p in benign} == {True, False}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, generated):
    svs, geo = tmp_path / "a.svs", tmp_path / "a.geojson"
    write_synthetic_slide(svs, geo, "syn_001", "benign", SEED, **SIZES)
    assert svs.read_bytes() == generated["syn_001"][0].read_bytes()
    assert geo.read_bytes() == generated["syn_001"][1].read_bytes()
    write_synthetic_slide(svs, geo, "syn_001", "benign", SEED + 1, **SIZES)
    assert svs.read_bytes() != generated["syn_001"][0].read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_table_counts_and_patients():
    cfg = {"n_slides": 30, "n_patients": 26, "positive_fraction": 0.5}
    table = synthetic_table(cfg, 0)
    assert list(table.columns) == ["slide", "patient", "label"]
    assert table["slide"].tolist() == [f"syn_{i:03d}" for i in range(30)]
    assert (table["label"] == "malignant").sum() == 15
    assert table["patient"].nunique() == 26
    sizes = table.groupby("patient").size()
    assert sizes.max() == 2 and (sizes == 2).sum() == 4
    assert (table.groupby("patient")["label"].nunique() == 1).all()
    assert table.equals(synthetic_table(cfg, 0))
    assert not table.equals(synthetic_table(cfg, 1))
    for frac, n_pos in [(0.0, 0), (1.0, 30), (0.3, 9)]:
        assert (synthetic_table({**cfg, "positive_fraction": frac}, 5)["label"] == "malignant").sum() == n_pos


def test_table_rejects_impossible_patients():
    with pytest.raises(ConfigError, match="n_patients"):
        synthetic_table({"n_slides": 10, "n_patients": 4, "positive_fraction": 0.5}, 0)
    with pytest.raises(ConfigError, match="positive_fraction"):  # 5 pairs: an odd positive count cannot fit
        synthetic_table({"n_slides": 10, "n_patients": 5, "positive_fraction": 0.3}, 0)


def test_write_table(tmp_path):
    out = tmp_path / "raw" / "table.tsv"
    write_table(out, {"n_slides": 4, "n_patients": 3, "positive_fraction": 0.5}, 0,
                "results/ds/raw/slides/{slide}.svs", "results/ds/raw/annotations/{slide}.geojson")
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(table.columns) == ["slide", "patient", "label", "path", "annotation", "mpp"]
    assert table.loc[0, "path"] == "results/ds/raw/slides/syn_000.svs"
    assert table.loc[3, "annotation"] == "results/ds/raw/annotations/syn_003.geojson"
    assert (table["mpp"] == "").all()


def test_write_svs_variants(tmp_path):
    """The writer's options that the slide-reader tests rely on."""
    rgb = make_slide("syn_000", "benign", 0, width=640, height=512).rgb
    cases = {
        "x40.svs": ({"mpp": 0.25}, "aperio", "0.25", "40", 3),
        "nompp.svs": ({"mpp": None}, "aperio", None, None, 3),
        "single.svs": ({"levels": [1]}, "aperio", "0.5", "20", 1),
        "generic.tif": ({"vendor": "generic", "mpp": 0.5}, "generic-tiff", "0.5", None, 3),
    }
    for name, (kwargs, vendor, mpp, mag, n_levels) in cases.items():
        write_svs(tmp_path / name, rgb, tile_size=128, **kwargs)
        with openslide.OpenSlide(str(tmp_path / name)) as osr:
            props = osr.properties
            assert props["openslide.vendor"] == vendor, name
            assert (props.get("openslide.mpp-x") is None) == (mpp is None), name
            if mpp is not None:
                assert float(props["openslide.mpp-x"]) == pytest.approx(float(mpp))
            assert (props.get("openslide.objective-power") is None) == (mag is None), name
            if mag is not None:
                assert float(props["openslide.objective-power"]) == float(mag)
            assert osr.level_count == n_levels, name
    assert default_downsamples(3072, 2048, 256) == [1, 4, 16]
    assert default_downsamples(20000, 10000, 256) == [1, 4, 16, 64, 256]
    with pytest.raises(ValueError, match="levels"):
        write_svs(tmp_path / "bad.svs", rgb, levels=[2, 4])


def test_sizes_are_checked():
    with pytest.raises(ConfigError, match="unknown synthetic"):
        make_slide("syn_000", "benign", 0, widht=512)


@pytest.mark.slow
def test_rules_generate_table_and_slide(tmp_path, repo_root):
    cfg = yaml.safe_load((repo_root / "config.yaml").read_text())
    cfg["synthetic"].update({"n_slides": 3, "n_patients": 2, "width": 640, "height": 512})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    targets = ["results/synthetic/raw/table.tsv", "results/synthetic/raw/slides/syn_002.svs"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile"), "-d", str(tmp_path / "run"),
           "--configfile", str(config), "--cores", "1", *targets]
    subprocess.run(cmd, check=True, capture_output=True)
    table = pd.read_csv(tmp_path / "run" / targets[0], sep="\t")
    assert len(table) == 3 and table["patient"].nunique() == 2
    with openslide.OpenSlide(str(tmp_path / "run" / targets[1])) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
    assert (tmp_path / "run" / "results/synthetic/raw/annotations/syn_002.geojson").exists()


def test_tissue_field_lookup_takes_more_points_than_opencv_maps_allow():
    """A scan-sized slide has hundreds of thousands of stroma nuclei; cv2.remap maps must stay under 32767 px a
    side, so the lookup must give the same values for many points as for few."""
    from msamil.slides.synthetic_layout import Layout
    from msamil.slides.synthetic_scene import _Compartments

    field = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    layout = Layout.__new__(Layout)
    object.__setattr__(layout, "tissue_field", field)
    object.__setattr__(layout, "width", 50_000)
    object.__setattr__(layout, "height", 40_000)
    comp = _Compartments.__new__(_Compartments)
    comp.layout = layout
    pts = np.random.default_rng(1).uniform(0, 40_000, (70_000, 2))
    many = comp._field_at(pts)
    few = np.concatenate([comp._field_at(pts[i:i + 1000]) for i in range(0, len(pts), 1000)])
    assert many.shape == (70_000,) and np.array_equal(many, few)


def test_lesion_outline_that_touches_itself_still_builds():
    """Seed 1, syn_126 with lesions of 15-35 % of the tissue: a traced outline touches itself and GEOS refused the
    union of the outlines ("side location conflict"); the scene must still build, with both cues."""
    _, plan = slide_scene("syn_126", "malignant", 1, width=3072, height=2048, tile_size=256, jpeg_quality=85,
                          lesion_fraction=[0.15, 0.35], mpp=0.5)
    assert plan.malignant

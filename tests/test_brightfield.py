"""Brightfield only: fluorescence and other non-brightfield slides are excluded at inspection as such, with a fix,
never passed as "tissue 100 %" (issue 15 item 3). Real pyramidal SVS files written by msamil.slides.svs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import slide_fixtures as sf

from msamil.slides.brightfield import (
    NOT_BRIGHTFIELD_FIX,
    brightfield_problem,
    metadata_problem,
    pixel_problem,
)
from msamil.slides.inspection import inspect_dataset
from msamil.slides.slide import Slide
from msamil.slides.svs import write_svs
from msamil.tissue.detect import tissue_mask

DS = {"source": "local", "classes": ["benign", "malignant"], "default_mpp": None}
TISSUE = {"seg_mpp": 4.0}


def dapi_like(width: int = 1536, height: int = 1024, seed: int = 0) -> np.ndarray:
    """A DAPI-like scan: blue nuclei (some bright, some dim) packed in a tissue region, on a black background
    with camera noise, the way a fluorescence NDPI reads through OpenSlide."""
    rng = np.random.default_rng(seed)
    img = rng.normal(4.0, 2.0, size=(height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = ((xx - 0.55 * width) / (0.4 * width)) ** 2 + ((yy - 0.5 * height) / (0.42 * height)) ** 2 < 1
    img[tissue, 2] += 25.0  # faint blue autofluorescence of the section
    for cx, cy in rng.uniform([0, 0], [width, height], size=(1500, 2)):
        if not tissue[int(cy), int(cx)]:
            continue
        r = rng.uniform(3, 6)
        disc = (xx[int(cy) - 7:int(cy) + 8, int(cx) - 7:int(cx) + 8] - cx) ** 2 + \
               (yy[int(cy) - 7:int(cy) + 8, int(cx) - 7:int(cx) + 8] - cy) ** 2 < r * r
        patch = img[int(cy) - 7:int(cy) + 8, int(cx) - 7:int(cx) + 8]
        patch[disc[: patch.shape[0], : patch.shape[1]]] += np.array([10.0, 30.0, rng.uniform(120, 230)])
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf")
    write_svs(d / "dapi.svs", dapi_like(), mpp=0.5, tile_size=256, jpeg_quality=90)
    grey = np.repeat(sf.tissue_image(640.0, 480.0, 0.5, seed=4).mean(axis=2, keepdims=True), 3, axis=2)
    write_svs(d / "grey.svs", grey.astype(np.uint8), mpp=0.5, tile_size=256, jpeg_quality=90)
    sf.write_aperio(d / "he.svs", sf.tissue_image(640.0, 480.0, 0.5, seed=5), 0.5)
    rows = [{"slide": s, "patient": s, "label": "benign", "path": str(d / f"{s}.svs")} for s in ("dapi", "grey", "he")]
    return d, sf.write_table(d / "table.tsv", rows)


def test_fluorescence_slide_is_excluded_as_not_brightfield(slides, tmp_path):
    d, table = slides
    kept, excluded = inspect_dataset(table, DS, tmp_path / "s.tsv", tmp_path / "e.tsv", tmp_path / "qc",
                                     tissue_cfg=TISSUE)
    reasons = dict(zip(excluded["slide"], excluded["reason"], strict=True))
    assert kept["slide"].tolist() == ["he"]
    assert reasons["dapi"].startswith("not a brightfield slide: dark background")
    assert "tissue" not in reasons["dapi"]
    assert reasons["grey"].startswith("not a brightfield slide: a single-channel (greyscale) image")
    assert set(excluded["fix"]) == {NOT_BRIGHTFIELD_FIX}
    assert (tmp_path / "qc" / "dapi.png").exists()  # the QC thumbnail shows the user what was refused
    written = pd.read_csv(tmp_path / "e.tsv", sep="\t")
    assert set(written["slide"]) == {"dapi", "grey"}


def test_the_dark_slide_would_otherwise_pass_as_tissue(slides):
    """Why the check must come first: the old saturation rule called this frame all tissue; any rule that reads
    colour as stain sees stain in it."""
    d, _ = slides
    with Slide.open(d / "dapi.svs", "dapi") as slide:
        assert brightfield_problem(slide).startswith("dark background")
        img = slide.image_at_mpp(4.0)
    assert tissue_mask(img, 4.0).mean() > 0.2


def test_false_colour_composite_without_white_light():
    """A multiplex fluorescence export on an olive background (no channel ever near-black, little white)."""
    rng = np.random.default_rng(1)
    img = np.empty((300, 400, 3), np.float64)
    img[:] = (90.0, 130.0, 8.0)
    img[60:240, 80:300] = (150.0, 230.0, 40.0)
    img += rng.normal(0, 4, size=img.shape)
    problem = pixel_problem(np.clip(img, 0, 255).astype(np.uint8))
    assert problem.startswith("no white light")


def test_brightfield_with_black_corners_and_few_glass_pixels_passes():
    """A crop that is mostly tissue, with a black scanner corner, is still brightfield."""
    img = sf.tissue_image(800.0, 600.0, 4.0, blobs=[(400.0, 300.0, 420.0)], seed=2)
    img[:40, :60] = 0
    assert pixel_problem(img) is None


@pytest.mark.parametrize("props, expect", [
    ({"leica.illumination-source": "fluorescence"}, "illumination-source"),
    ({"tiff.ImageDescription": "<PerkinElmer-QPI-ImageDescription><Mode>im_Fluorescence</Mode>"}, "im_Fluorescence"),
    ({"tiff.ImageDescription": '<OME><Channel IlluminationType="Epifluorescence" Name="DAPI"/></OME>'},
     "IlluminationType"),
    ({"hamamatsu.;NDP Shading Data;Version 0004;ID=4;Name=DAPI 2 (387) ;ExcitationName=387/11-25": ""},
     "ExcitationName=387"),
    ({"zeiss.Information|Image|Channel|IlluminationType": "Epifluorescence"}, "IlluminationType"),
])
def test_metadata_saying_fluorescence(props, expect):
    assert expect in metadata_problem(props)


def test_brightfield_metadata_is_not_flagged():
    props = {"openslide.vendor": "aperio", "aperio.AppMag": "20", "leica.illumination-source": "brightfield",
             "tiff.ImageDescription": "Aperio Image Library v12.0.15|AppMag = 20|MPP = 0.5|Filtered = 5",
             "hamamatsu.AHEX[0].fluorescence": "000F0107"}  # calibration data of a fluorescence-capable scanner
    assert metadata_problem(props) is None

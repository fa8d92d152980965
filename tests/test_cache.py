"""The aligned multi-scale cache: geometry, bit-exact patches, CLAM/TRIDENT compatibility, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pytest
from cache_fixtures import make_pair, write_aperio_tiff, write_mask_png

from msamil.cache import writer as cache_mod
from msamil.cache.grid import box_fractions, plan_layout
from msamil.cache.writer import build_cache, build_cache_from_decision
from msamil.config import SCALES
from msamil.errors import SlideError
from msamil.slides.outcomes import write_decision
from msamil.slides.slide import Slide, rgba_to_rgb_white

P = 64
TMIN = {"20x": 0.5, "10x": 0.25, "5x": 0.1}
KW = {"mpp_20x": 0.5, "patch_px": P, "tissue_min": TMIN}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cache")
    slides = make_pair(tmp / "slides")
    out = {}
    for name, v in slides.items():
        h5 = tmp / f"{name}.h5"
        build_cache(v["path"], name, v["mask"], h5, mpp=v["mpp"], **KW)
        out[name] = {**v, "h5": h5}
    jpg = tmp / "s20_jpeg.h5"
    build_cache(slides["s20"]["path"], "s20", slides["s20"]["mask"], jpg, mpp=0.5, encoding="jpeg",
                jpeg_quality=90, **KW)
    out["s20_jpeg"] = {**slides["s20"], "h5": jpg}
    return out


# -- geometry -------------------------------------------------------------------------------------------------------

def _random_mask(seed: int, shape=(40, 57)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0] // 4 + 1, shape[1] // 4 + 1))
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0.6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layout_nesting_and_keep_rule(seed: int) -> None:
    mask = _random_mask(seed)
    width, height, f20 = 1000, 700, 16  # 5x cells of 64 px, partial at the right and bottom
    layout = plan_layout(width, height, f20, mask, TMIN)
    assert (layout.ncols, layout.nrows) == (16, 11)
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    kept_parent: dict[str, set] = {}
    for fine, coarse in (("20x", "10x"), ("10x", "5x")):
        fp, cp = layout.scales[fine], layout.scales[coarse]
        parents = cp.coords[fp.parent]
        cf = layout.footprint(coarse)
        # every child lies inside its parent's footprint
        assert np.all((fp.coords >= parents) & (fp.coords + layout.footprint(fine) <= parents + cf))
        kept_parent[coarse] = set(fp.parent.tolist())
    assert np.all(layout.scales["5x"].parent == -1)
    for s in SCALES:
        sp = layout.scales[s]
        f = layout.footprint(s)
        assert np.all(sp.coords % f == 0)
        assert len(np.unique(sp.coords, axis=0)) == len(sp)
        # counts follow the rule: threshold, plus force-kept parents of kept children
        k = 4 // (f // f20)
        rows, cols = np.mgrid[0:layout.nrows * k, 0:layout.ncols * k]
        frac = box_fractions(mask, sx, sy, cols * f, rows * f, f)
        by_rule = set(zip((cols[frac >= TMIN[s]] * f).tolist(), (rows[frac >= TMIN[s]] * f).tolist(),
                          strict=True))
        forced = {tuple(sp.coords[i]) for i in kept_parent.get(s, set())}
        assert {tuple(c) for c in sp.coords.tolist()} == by_rule | forced
        np.testing.assert_allclose(sp.tissue_frac, frac[sp.coords[:, 1] // f, sp.coords[:, 0] // f], atol=1e-6)


def test_box_fractions_exact_and_border() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    # level-0 px = 2 mask px; box [0, 8) covers the whole mask, half tissue
    assert box_fractions(mask, 0.5, 0.5, np.array([0.0]), np.array([0.0]), 8.0)[0] == pytest.approx(0.5)
    # a box sticking out of the slide: the outside counts as background
    assert box_fractions(mask, 0.5, 0.5, np.array([0.0]), np.array([0.0]), 16.0)[0] == pytest.approx(0.125)
    # fractional coverage of a mask pixel: [1, 3) level-0 -> [0.5, 1.5) mask, all tissue
    assert box_fractions(mask, 0.5, 0.5, np.array([1.0]), np.array([1.0]), 2.0)[0] == pytest.approx(1.0)
    assert box_fractions(mask, 0.5, 0.5, np.array([3.0]), np.array([0.0]), 2.0)[0] == pytest.approx(0.5)


# -- the written file -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s20", "s40"])
def test_patches_equal_direct_reads(pair: dict, name: str) -> None:
    v = pair[name]
    rng = np.random.default_rng(0)
    with h5py.File(v["h5"], "r") as f, Slide.open(v["path"], name) as slide:
        for s in SCALES:
            g = f[s]
            n = len(g["coords"])
            # a few random patches plus the last (a border cell sits at the end of the 5x order)
            for i in [*rng.choice(n, size=min(n, 6), replace=False).tolist(), n - 1]:
                x, y = g["coords"][i]
                direct = slide.read_patch(int(x), int(y), int(g.attrs["patch_size_level0"]), P)
                np.testing.assert_array_equal(g["imgs"][i], direct, err_msg=f"{name} {s} patch {i}")


def test_jpeg_encoding_close_to_raw(pair: dict) -> None:
    with h5py.File(pair["s20"]["h5"], "r") as raw, h5py.File(pair["s20_jpeg"]["h5"], "r") as jpg:
        assert jpg.attrs["encoding"] == "jpeg" and jpg["20x"].attrs["encoding"] == "jpeg"
        for s in SCALES:
            np.testing.assert_array_equal(raw[s]["coords"][()], jpg[s]["coords"][()])
            for i in (0, len(raw[s]["coords"]) // 2):
                buf = jpg[s]["imgs"][i]
                img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                diff = np.abs(img.astype(int) - raw[s]["imgs"][i].astype(int))
                assert diff.mean() < 4.0, (s, i, diff.mean())


def test_physical_footprints_match_across_scans(pair: dict) -> None:
    with h5py.File(pair["s20"]["h5"], "r") as a, h5py.File(pair["s40"]["h5"], "r") as b:
        for s in SCALES:
            assert a[s].attrs["patch_size_level0"] * 0.5 == b[s].attrs["patch_size_level0"] * 0.25
            np.testing.assert_array_equal(a[s]["coords"][()] * 0.5, b[s]["coords"][()] * 0.25)
            np.testing.assert_array_equal(a[s]["parent"][()], b[s]["parent"][()])
            np.testing.assert_allclose(a[s]["tissue_frac"][()], b[s]["tissue_frac"][()], atol=1e-5)


def test_layout_and_attrs(pair: dict) -> None:
    v = pair["s20"]
    with h5py.File(v["h5"], "r") as f:
        assert bool(f.attrs["complete"]) is True
        assert f.attrs["sha256"] == hashlib.sha256(Path(v["path"]).read_bytes()).hexdigest()
        assert (f.attrs["width"], f.attrs["height"], f.attrs["patch_px"]) == (3000, 2000, P)
        assert f.attrs["mpp"] == 0.5 and f.attrs["slide"] == "s20" and f.attrs["encoding"] == "raw"
        for s in SCALES:
            g = f[s]
            n = len(g["coords"])
            assert g["coords"].dtype == np.int64 and g["coords"].shape == (n, 2)
            assert g["imgs"].shape == (n, P, P, 3) and g["imgs"].chunks == (1, P, P, 3)
            assert g["parent"].dtype == np.int64 and g["tissue_frac"].dtype == np.float32
        parents = f["10x"]["parent"][()]
        assert parents.min() >= 0 and parents.max() < len(f["5x"]["coords"])
        # tissue touching the border: kept cells reach the right and bottom edges (partial cells) and the left edge
        c5 = f["5x"]["coords"][()]
        assert c5[:, 0].min() == 0 and (c5[:, 0] + 256).max() > 3000 and (c5[:, 1] + 256).max() > 2000
        root = f["coords"]
        np.testing.assert_array_equal(root[()], f["20x"]["coords"][()])
        assert (root.attrs["patch_level"], root.attrs["patch_size"]) == (0, P)
        assert root.attrs["patch_size_level0"] == P and root.attrs["overlap"] == 0
        assert root.attrs["target_magnification"] == 20 and root.attrs["level0_magnification"] == 20
    with h5py.File(pair["s40"]["h5"], "r") as f:
        root = f["coords"]
        # no 20x level in a (1, 4, 16) pyramid: CLAM reads the level-0 footprint, TRIDENT sees 40x -> 20x
        assert (root.attrs["patch_level"], root.attrs["patch_size"]) == (0, 2 * P)
        assert root.attrs["patch_size_level0"] == 2 * P and root.attrs["level0_magnification"] == 40


@pytest.mark.parametrize("name", ["s20", "s40"])
def test_clam_style_reader(pair: dict, name: str) -> None:
    """A CLAM-style consumer: only root coords and its patch_level/patch_size attrs, then read_region."""
    v = pair[name]
    with h5py.File(v["h5"], "r") as f:
        coords = f["coords"][()]
        level, size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
        target = int(f["coords"].attrs.get("target_patch_size", size))
        stored = f["20x"]["imgs"]
        osr = openslide.OpenSlide(str(v["path"]))
        try:
            for i in np.linspace(0, len(coords) - 1, 8).astype(int):
                rgb = rgba_to_rgb_white(np.asarray(osr.read_region(tuple(int(c) for c in coords[i]), level,
                                                                   (size, size))))
                if size != target:  # CLAM's --target_patch_size resize
                    rgb = cv2.resize(rgb, (target, target), interpolation=cv2.INTER_AREA)
                np.testing.assert_array_equal(rgb, stored[i])
        finally:
            osr.close()


# -- bad input ------------------------------------------------------------------------------------------------------

def test_failure_midway_leaves_nothing(pair: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = pair["s20"]
    calls = {"n": 0}
    original = openslide.OpenSlide.read_region

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", flaky)
    out = tmp_path / "out" / "s20.h5"
    with pytest.raises(OSError, match="disk went away"):
        build_cache(v["path"], "s20", v["mask"], out, mpp=0.5, **KW)
    assert calls["n"] == 6
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp file either


def test_no_tissue_raises(pair: dict, tmp_path: Path) -> None:
    v = pair["s20"]
    empty = write_mask_png(tmp_path / "empty.png", np.zeros((125, 188), bool))
    out = tmp_path / "s20.h5"
    with pytest.raises(SlideError, match="no tissue patches"):
        build_cache(v["path"], "s20", empty, out, mpp=0.5, **KW)
    assert not out.exists()


def test_mask_of_wrong_shape_raises(pair: dict, tmp_path: Path) -> None:
    v = pair["s20"]
    wrong = write_mask_png(tmp_path / "wrong.png", np.ones((188, 125), bool))  # transposed
    with pytest.raises(SlideError, match="does not fit"):
        build_cache(v["path"], "s20", wrong, tmp_path / "x.h5", mpp=0.5, **KW)


def test_slide_smaller_than_one_cell(tmp_path: Path) -> None:
    """100 x 80 px at 0.5 um/px is less than one 5x cell (256 px): one partial cell, padded white."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(60, 200, size=(80, 100, 3), dtype=np.uint8)
    path = write_aperio_tiff(tmp_path / "tiny.svs", rgb, 0.5, downsamples=(1,))
    mask = write_mask_png(tmp_path / "tiny.png", np.ones((5, 7), bool))  # ceil(100*0.5/8) x ceil(80*0.5/8)
    out = tmp_path / "tiny.h5"
    counts = build_cache(path, "tiny", mask, out, mpp=0.5, **KW)
    assert counts == {"20x": 2, "10x": 1, "5x": 1}  # 20x cells (0,0),(64,0) hold >= 50% slide; parents force-kept
    with h5py.File(out, "r") as f, Slide.open(path, "tiny") as slide:
        img5 = f["5x"]["imgs"][0]
        assert f["5x"]["tissue_frac"][0] == pytest.approx((100 / 256) * (80 / 256), rel=0.1)
        assert f["5x"]["tissue_frac"][0] < TMIN["20x"]
        np.testing.assert_array_equal(img5, slide.read_patch(0, 0, 256, P))
        assert (img5[25:, :, :] == 255).all() and (img5[:, 30:, :] == 255).all()  # outside the slide: white
        for i, (x, y) in enumerate(f["20x"]["coords"][()]):
            np.testing.assert_array_equal(f["20x"]["imgs"][i], slide.read_patch(int(x), int(y), 64, P))


def _decision(tmp_path: Path, v: dict, excluded: bool = False) -> Path:
    row = {"slide": "s20", "path": str(v["path"]), "mpp": 0.5, "width": 0, "height": 0}
    source = {"slide": "s20", "path": str(v["path"])}
    path = tmp_path / "inspect" / "s20.json"
    if excluded:
        write_decision(path, source, row=None, excluded={"slide": "s20", "path": "", "stage": "inspect",
                                                         "reason": "no MPP", "fix": "add one"})
    else:
        write_decision(path, source, row=row, excluded=None)
    return path


def _geojson(tmp_path: Path, failure: dict | None = None) -> Path:
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [],
                                **({"msamil_failure": failure} if failure else {})}))
    return path


def test_bad_encoding_and_excluded_slide(pair: dict, tmp_path: Path) -> None:
    v = pair["s20"]
    with pytest.raises(ValueError, match="encoding"):
        build_cache(v["path"], "s20", v["mask"], tmp_path / "x.h5", mpp=0.5, encoding="png", **KW)
    with pytest.raises(SlideError, match="excluded at inspection, so it has no cache: no MPP"):
        build_cache_from_decision(_decision(tmp_path, v, excluded=True), v["mask"], _geojson(tmp_path),
                                  tmp_path / "x.h5", **KW)


def test_build_from_decision(pair: dict, tmp_path: Path) -> None:
    v = pair["s20"]
    out = tmp_path / "c" / "s20.h5"
    counts = build_cache_from_decision(_decision(tmp_path, v), v["mask"], _geojson(tmp_path), out,
                                       encoding="raw", jpeg_quality=90, **KW)
    with h5py.File(out, "r") as f, h5py.File(v["h5"], "r") as ref:
        assert counts == {s: len(ref[s]["coords"]) for s in SCALES}
        np.testing.assert_array_equal(f["20x"]["imgs"][:5], ref["20x"]["imgs"][:5])
        assert f.attrs["content_sha256"] == ref.attrs["content_sha256"]  # same content, same checksum


def test_a_tissue_failure_is_passed_on_as_the_cache_record(pair: dict, tmp_path: Path) -> None:
    v = pair["s20"]
    failure = {"slide": "s20", "path": "", "stage": "tissue", "reason": "unreadable: corrupt", "fix": "re-export"}
    out = tmp_path / "s20.h5"
    assert build_cache_from_decision(_decision(tmp_path, v), v["mask"], _geojson(tmp_path, failure), out,
                                     encoding="raw", jpeg_quality=90, **KW) is None
    with h5py.File(out, "r") as f:
        assert (f.attrs["failed_stage"], f.attrs["failed_reason"], f.attrs["failed_fix"]) == (
            "tissue", "unreadable: corrupt", "re-export")
        assert not f.attrs["complete"] and len(f) == 0  # no patches: nothing can mistake it for a cache


def test_jpeg_writer_equal_length_buffers(tmp_path: Path) -> None:
    """Identical patches encode to equal-length JPEGs, which h5py must not take for a 2-D array."""
    with h5py.File(tmp_path / "w.h5", "w") as f:
        d = f.create_dataset("imgs", shape=(5,), dtype=h5py.vlen_dtype(np.uint8))
        w = cache_mod._ScaleWriter(d, "jpeg", 90)
        w.add(np.full((2, 16, 16, 3), 255, np.uint8))
        w.flush()
        w.add(np.full((1, 16, 16, 3), 255, np.uint8))
        w.add(np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8))
        w.close()
        assert [len(b) > 0 for b in d[()]] == [True] * 5


def test_fallback_path_matches_direct_reads(pair: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the crop path does not apply (inexact downsample), patches come from read_patch directly."""
    v = pair["s40"]
    original = cache_mod.CellReader.__init__

    def no_exact(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.plan = {s: (level, None) for s, (level, _) in self.plan.items()}

    monkeypatch.setattr(cache_mod.CellReader, "__init__", no_exact)
    out = tmp_path / "s40.h5"
    build_cache(v["path"], "s40", v["mask"], out, mpp=0.25, **KW)
    with h5py.File(out, "r") as f, h5py.File(v["h5"], "r") as ref:
        for s in SCALES:
            np.testing.assert_array_equal(f[s]["imgs"][()], ref[s]["imgs"][()])


def test_same_inputs_give_a_byte_identical_cache(pair: dict, tmp_path: Path) -> None:
    """Reproducibility: rebuilding a cache from the same slide and mask gives the same file, byte for byte."""
    v = pair["s20"]
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (first, second):
        build_cache(v["path"], "s20", v["mask"], out, mpp=0.5, encoding="raw", jpeg_quality=90, **KW)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()

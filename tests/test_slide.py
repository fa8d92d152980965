"""msamil.slides.slide: MPP resolution order, level choice with real scanners' quirks, white borders, patch reads."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import slide_fixtures as sf

from msamil.errors import SlideError
from msamil.slides.slide import (
    Slide,
    best_level,
    footprints,
    nominal_downsamples,
    nominal_magnification,
    resize_to,
    resolve_mpp,
    rgba_to_rgb_white,
    scaled_size,
)

# ---------------------------------------------------------------------------------------------------------------
# MPP resolution (pure): each source in order, implausible values, nothing at all
# ---------------------------------------------------------------------------------------------------------------

OS = {"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2527"}
TIFF_CM = {"tiff.XResolution": "20000", "tiff.YResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
TIFF_INCH = {"tiff.XResolution": "50800", "tiff.YResolution": "50800", "tiff.ResolutionUnit": "inch"}


def test_mpp_openslide_first():
    assert resolve_mpp({**OS, **TIFF_CM}, "s", 0.3, 0.4) == (0.2527, "openslide")


def test_mpp_tiff_tags_second():
    mpp, source = resolve_mpp(TIFF_CM, "s", 0.3, 0.4)
    assert mpp == pytest.approx(0.5) and source.startswith("tiff-resolution")
    mpp, _ = resolve_mpp(TIFF_INCH, "s")
    assert mpp == pytest.approx(0.5)


def test_mpp_tiff_tags_without_unit_are_ignored():
    props = {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "none"}
    assert resolve_mpp(props, "s", 0.3) == (0.3, "override")


def test_mpp_override_then_default():
    assert resolve_mpp({}, "s", 0.3, 0.4) == (0.3, "override")
    assert resolve_mpp({}, "s", None, 0.4) == (0.4, "dataset-default")
    assert resolve_mpp({}, "s", "", 0.4) == (0.4, "dataset-default")


def test_no_mpp_anywhere_is_a_slide_error():
    with pytest.raises(SlideError) as err:
        resolve_mpp({}, "s1")
    assert "no MPP" in err.value.reason
    assert "mpp column" in err.value.fix and "default_mpp" in err.value.fix


@pytest.mark.parametrize("value", ["1000", "0", "-1", "inf"])
def test_implausible_file_mpp_rejected(value):
    with pytest.raises(SlideError) as err:
        resolve_mpp({"openslide.mpp-x": value, "openslide.mpp-y": value}, "s1")
    assert "implausible MPP" in err.value.reason


def test_implausible_72dpi_tag_falls_through_to_override():
    """A default 72 dpi tag (352.8 µm/px) must not be used; the override repairs it."""
    props = {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}
    assert resolve_mpp(props, "s", 0.25) == (0.25, "override")


@pytest.mark.parametrize("value", [1000.0, 0.0])
def test_implausible_override_rejected(value):
    with pytest.raises(SlideError) as err:
        resolve_mpp({}, "s1", value)
    assert "implausible MPP" in err.value.reason and "override" in err.value.reason


def test_nominal_magnification():
    assert nominal_magnification(0.25) == 40
    assert nominal_magnification(0.2527) == 40
    assert nominal_magnification(0.5) == 20
    assert nominal_magnification(1.0) == 10
    assert nominal_magnification(2.0) == 5


# ---------------------------------------------------------------------------------------------------------------
# Level choice and sizes (pure)
# ---------------------------------------------------------------------------------------------------------------


def test_best_level_inexact_downsamples():
    ds = [1.0, 4.0002, 16.0008, 64.003]
    assert best_level(ds, 4.0) == 1
    assert best_level(ds, 16.0) == 2
    assert best_level(ds, 8.0) == 1
    assert best_level(ds, 3.99) == 0
    assert best_level(ds, 1000.0) == 3
    assert best_level(ds, 0.5) == 0


def test_best_level_single_level_and_unsorted():
    assert best_level([1.0], 4.0) == 0
    assert best_level([1.0, 16.0, 4.0], 8.0) == 2


def test_nominal_downsamples_of_odd_pyramid():
    """1203x1000 -> 300x250 -> 75x62: OpenSlide says 4.005 and 16.08; the sizes say 4 and 16."""
    assert nominal_downsamples([(1203, 1000), (300, 250), (75, 62)]) == (1.0, 4.0, 16.0)
    assert nominal_downsamples([(1000, 1000), (400, 400)])[1] == 2.5  # not an integer pyramid: keep the ratio


def test_footprints_nest():
    assert footprints(64, 0.5, 0.5) == {"20x": 64, "10x": 128, "5x": 256}
    assert footprints(64, 0.5, 0.25) == {"20x": 128, "10x": 256, "5x": 512}
    assert footprints(512, 0.5, 0.2527)["20x"] == round(512 * 0.5 / 0.2527)


def test_scaled_size_ceil_without_float_noise():
    assert scaled_size(3072, 2048, 0.5, 8.0) == (192, 128)
    assert scaled_size(3073, 2048, 0.5, 8.0) == (193, 128)
    assert scaled_size(10, 10, 0.5, 1000.0) == (1, 1)


def test_rgba_transparent_becomes_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = rgba_to_rgb_white(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[1, 1].tolist() == [255, 255, 255]


# ---------------------------------------------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_image():
    """1203x1000 px: level 0 not divisible by 4, so OpenSlide reports downsamples 4.005 and 16.08."""
    return sf.tissue_image(601.5, 500.0, 0.5, seed=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, odd_image):
    d = tmp_path_factory.mktemp("slides")
    return {
        "aperio": sf.write_aperio(d / "aperio.svs", odd_image, 0.5),
        "aperio_tags": sf.write_aperio(d / "aperio_tags.svs", odd_image, None, resolution_mpp=0.25),
        "generic": sf.write_generic(d / "generic.tif", odd_image, 0.25),
        "nompp": sf.write_no_mpp(d / "nompp.tif", odd_image),
        "single": sf.write_single_level(d / "single.tif", odd_image, 0.5),
    }


def test_aperio_file(files):
    with Slide.open(files["aperio"], "a") as s:
        info = s.info
        assert (info.vendor, info.mpp, info.mpp_source) == ("aperio", 0.5, "openslide")
        assert (info.objective_power, info.magnification) == (20.0, 20.0)
        assert (info.width, info.height, info.levels) == (1203, 1000, 3)
        assert info.downsamples[1] == pytest.approx(4.005)
        s.verify()


def test_tiff_tags_file_when_openslide_has_no_mpp(files):
    with Slide.open(files["aperio_tags"], "a") as s:
        assert s.info.mpp == pytest.approx(0.25)
        assert s.info.mpp_source.startswith("tiff-resolution")
        assert s.info.magnification == 40


def test_generic_tiff_file(files):
    with Slide.open(files["generic"], "g") as s:
        assert s.info.vendor == "generic-tiff"
        assert s.info.mpp == pytest.approx(0.25)


def test_no_mpp_file_needs_override_or_default(files):
    with pytest.raises(SlideError, match="no MPP"):
        Slide.open(files["nompp"], "n")
    with Slide.open(files["nompp"], "n", override_mpp=0.5, default_mpp=1.0) as s:
        assert (s.info.mpp, s.info.mpp_source) == (0.5, "override")
    with Slide.open(files["nompp"], "n", default_mpp=1.0) as s:
        assert (s.info.mpp, s.info.mpp_source) == (1.0, "dataset-default")


def test_odd_pyramid_uses_level_1_for_4x(files):
    """OpenSlide says 4.005: a 4x read must still come from level 1, not silently from level 0."""
    with Slide.open(files["aperio"], "a") as s:
        assert s.patch_plan(256, 64) == (1, 64)
        assert s.patch_plan(1024, 64) == (2, 64)
        assert s.patch_plan(128, 64) == (0, 128)
        assert s.read_patch(400, 400, 256, 64).shape == (64, 64, 3)


def test_single_level_slide(files, odd_image):
    with Slide.open(files["single"], "s") as s:
        assert s.info.levels == 1
        assert s.patch_plan(256, 64) == (0, 256)
        patch = s.read_patch(100, 200, 256, 64)
    expected = cv2.resize(odd_image[200:456, 100:356], (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(patch, expected)


def test_read_patch_equals_manual_inter_area(files):
    with Slide.open(files["aperio"], "a") as s:
        for x, y, size, out in [(0, 0, 128, 64), (300, 260, 512, 64), (64, 64, 64, 64), (8, 16, 32, 64)]:
            level, n = s.patch_plan(size, out)
            region = s.read_region_rgb(x, y, level, n, n)
            interp = cv2.INTER_AREA if n >= out else cv2.INTER_LINEAR
            manual = region if n == out else cv2.resize(region, (out, out), interpolation=interp)
            np.testing.assert_array_equal(s.read_patch(x, y, size, out), manual)


def test_level0_child_derived_from_parent_is_bit_identical(files):
    """The cache's trick (docstring of read_patch): crop a level-0 parent read, resize, same as a direct read."""
    with Slide.open(files["aperio"], "a") as s:
        parent = s.read_region_rgb(128, 128, 0, 256, 256)
        for ox, oy, size in [(0, 0, 64), (64, 128, 64), (128, 0, 128)]:
            level, n = s.patch_plan(size, 64)
            assert level == 0
            derived = resize_to(parent[oy:oy + n, ox:ox + n], 64, 64)
            np.testing.assert_array_equal(derived, s.read_patch(128 + ox, 128 + oy, size, 64))


def test_read_patch_is_antialiased(tmp_path):
    """One-pixel stripes read at 1/4 size must average to grey, not alias into stripes or a solid colour."""
    img = np.zeros((512, 512, 3), dtype=np.uint8)
    img[:, ::2] = 255
    path = sf.write_single_level(tmp_path / "stripes.tif", img)
    with Slide.open(path, "st") as s:
        patch = s.read_patch(0, 0, 256, 64).astype(int)
    assert np.all(np.abs(patch - 127.5) <= 1)


def test_border_reads_are_white_not_black(files, odd_image):
    with Slide.open(files["aperio"], "a") as s:
        w, h = s.info.width, s.info.height
        region = s.read_region_rgb(w - 10, h - 10, 0, 40, 40)
        assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()
        np.testing.assert_array_equal(region[:10, :10], odd_image[h - 10:, w - 10:])
        neg = s.read_region_rgb(-32, -32, 0, 64, 64)
        assert (neg[:32] == 255).all() and (neg[:, :32] == 255).all()
        patch = s.read_patch(w - 64, h - 64, 256, 64)  # three quarters outside, read at level 1
        assert (patch[20:, 20:] >= 250).all()


def test_image_at_mpp_size_and_content(files, odd_image):
    with Slide.open(files["aperio"], "a") as s:
        img = s.image_at_mpp(8.0)
        assert img.shape == (63, 76, 3)  # ceil(1000/16), ceil(1203/16)
        thumb = s.image_at_mpp(2.0)
    assert thumb.shape == (250, 301, 3)
    expected = cv2.resize(odd_image[:1000, :1200], (300, 250), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb[:, :300].astype(int) - expected).mean() < 2.0


def test_missing_empty_and_not_a_slide(tmp_path):
    with pytest.raises(SlideError, match="file not found"):
        Slide.open(tmp_path / "nope.svs", "x")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match="empty file"):
        Slide.open(tmp_path / "empty.svs", "x")
    path = sf.write_not_a_slide(tmp_path / "text.svs")
    with pytest.raises(SlideError) as err:
        Slide.open(path, "x")
    assert err.value.reason.startswith("not a slide OpenSlide can read")


def test_truncated_pyramid_detected(tmp_path, odd_image):
    path = sf.write_truncated(tmp_path / "cut.svs", odd_image, keep=0.6)
    with pytest.raises(SlideError) as err:
        Slide.open(path, "cut").verify()
    assert err.value.reason.startswith("unreadable: truncated or corrupt")
    assert "past the end" in err.value.reason


def test_truncated_tile_data_detected(tmp_path, odd_image):
    """Directories intact, tile data cut: OpenSlide opens it, verify() must still refuse it."""
    path = sf.write_single_level(tmp_path / "cut.tif", odd_image)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * 0.7))
    with pytest.raises(SlideError) as err, Slide.open(path, "cut") as s:
        s.verify()
    assert err.value.reason.startswith("unreadable: truncated or corrupt")


def test_image_at_mpp_in_bands_matches_single_read(files, monkeypatch):
    """Huge single-level slides are read in bands; with an integer ratio the result is identical."""
    import msamil.slides.slide as slide_mod

    with Slide.open(files["single"], "s") as s:
        whole = s.image_at_mpp(2.0)
        monkeypatch.setattr(slide_mod, "MAX_READ_PX", 1203 * 40)
        banded = s.image_at_mpp(2.0)
    np.testing.assert_array_equal(whole, banded)


def test_verify_large_coarsest_level_reads_regions(files, monkeypatch):
    import msamil.slides.slide as slide_mod

    monkeypatch.setattr(slide_mod, "VERIFY_READ_PX", 100)
    with Slide.open(files["single"], "s") as s:
        s.verify()

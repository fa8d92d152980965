"""JPEG/PNG -> pyramidal TIFF: OpenSlide reads it with the right MPP, and memory stays bounded on big images."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from msamil.datasets.convert import convert_to_tiff, tiff_mpp
from msamil.errors import SlideError

BIG = 12_000
#: Peak RSS bound for converting a 12k x 12k RGB PNG (432 MB decoded). Measured ~80 MB (Python + libvips
#: baseline ~15 MB); the bound is well under the decoded size, so any whole-image load fails the test.
RSS_BOUND_MB = 250

_MAKE_PNG = textwrap.dedent("""
    import sys, pyvips
    n = int(sys.argv[2])
    xy = pyvips.Image.xyz(n, n)
    x, y = xy[0], xy[1]
    img = ((x ^ y) & 255).cast("uchar").bandjoin([((x + y) & 255).cast("uchar"), ((x * 3) & 255).cast("uchar")])
    img.pngsave(sys.argv[1], compression=1)
""")

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (pytest, possibly
# hundreds of MB by then), while VmHWM is the peak of this process's own address space.
_CONVERT = textwrap.dedent("""
    import json, re, sys
    from msamil.datasets.convert import convert_to_tiff
    convert_to_tiff(sys.argv[1], sys.argv[2], 0.25, threads=2)
    status = open("/proc/self/status").read()
    print(json.dumps({"peak_mb": int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024}))
""")


def _mpp(slide: openslide.OpenSlide) -> float:
    """What the inspect stage resolves: openslide.mpp-x, else the TIFF resolution tags."""
    props = slide.properties
    if "openslide.mpp-x" in props:
        return float(props["openslide.mpp-x"])
    unit = {"centimeter": 1e4, "inch": 25400.0}[props["tiff.ResolutionUnit"]]
    return unit / float(props["tiff.XResolution"])


def test_jpeg_to_openslide_pyramid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1500, 2100, 3), dtype=np.uint8)
    img[:, :700] = (30, 60, 200)  # a flat region to check colours survive (BGR)
    cv2.imwrite(str(tmp_path / "a.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = tmp_path / "slides" / "a.tiff"
    info = convert_to_tiff(tmp_path / "a.jpg", out, 0.475)
    assert info["width"] == 2100 and info["height"] == 1500
    with openslide.OpenSlide(out) as slide:
        assert slide.dimensions == (2100, 1500)
        assert slide.level_count >= 3
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        assert _mpp(slide) == pytest.approx(0.475, rel=1e-4)
        rgb = np.asarray(slide.read_region((100, 100), 0, (32, 32)).convert("RGB"))
    assert np.abs(rgb.astype(int) - (200, 60, 30)).max() < 12
    assert tiff_mpp(out) == pytest.approx(0.475, rel=1e-4)
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_grey_alpha_png_and_no_mpp(tmp_path: Path) -> None:
    rgba = np.zeros((300, 400, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[:150, :, 3] = 255  # lower half transparent -> white
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    out = tmp_path / "a.tiff"
    convert_to_tiff(tmp_path / "a.png", out, None)
    with openslide.OpenSlide(out) as slide:
        px = np.asarray(slide.read_region((0, 0), 0, (400, 300)).convert("RGB"))
    assert abs(int(px[10, 10, 0]) - 128) < 6 and px[250, 10].min() > 245
    assert tiff_mpp(out) is None
    cv2.imwrite(str(tmp_path / "g.png"), np.full((64, 64), 200, np.uint8))
    convert_to_tiff(tmp_path / "g.png", tmp_path / "g.tiff", 0.5)
    with openslide.OpenSlide(tmp_path / "g.tiff") as slide:
        assert np.asarray(slide.read_region((0, 0), 0, (8, 8)).convert("RGB"))[4, 4].tolist() == [200] * 3


def test_truncated_image_is_a_slide_error(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[:40])
    with pytest.raises(SlideError, match="bad"):
        convert_to_tiff(tmp_path / "bad.png", tmp_path / "bad.tiff", 0.5, slide="bad")
    assert not (tmp_path / "bad.tiff").exists()


def test_big_png_streams_with_bounded_memory(tmp_path: Path) -> None:
    png, out = tmp_path / "big.png", tmp_path / "big.tiff"
    subprocess.run([sys.executable, "-c", _MAKE_PNG, str(png), str(BIG)], check=True, timeout=300)
    done = subprocess.run([sys.executable, "-c", _CONVERT, str(png), str(out)], check=True, timeout=300,
                          capture_output=True, text=True)
    peak = float(done.stdout.strip().splitlines()[-1].split(":")[1].strip(" }"))
    print(f"peak RSS converting {BIG} x {BIG}: {peak:.0f} MB")
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB >= {RSS_BOUND_MB} MB"
    with openslide.OpenSlide(out) as slide:
        assert slide.dimensions == (BIG, BIG)
        assert slide.level_count >= 6
        assert _mpp(slide) == pytest.approx(0.25, rel=1e-4)
        px = np.asarray(slide.read_region((5000, 7000), 0, (1, 1)).convert("RGB"))[0, 0].astype(int)
    expected = np.array([(5000 ^ 7000) & 255, (12000) & 255, (15000) & 255])
    assert np.abs(px - expected).max() < 24  # JPEG tiles

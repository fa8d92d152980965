"""Small slide files for the slide, inspect and tissue tests, each with one known property or one known defect.

Written with tifffile so the tests do not depend on the synthetic dataset: an Aperio-style pyramid (OpenSlide vendor
`aperio`, MPP from the description), a generic tiled TIFF with resolution tags only, a TIFF with no MPP at all, a
single-level TIFF, a truncated file, a non-slide file, an all-background slide. Lossless (zlib) tiles by default so
pixel-exact comparisons are possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

BACKGROUND = 242  # grey-white glass, low saturation
TISSUE_RGB = (205, 110, 170)  # eosin-pink, high saturation


def blob_mask(width_um: float, height_um: float, mpp: float, blobs: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Boolean map of discs (cx_um, cy_um, r_um) rendered at `mpp`, so one geometry can be drawn at any scale."""
    w, h = math.ceil(width_um / mpp - 1e-6), math.ceil(height_um / mpp - 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = (xx + 0.5) * mpp, (yy + 0.5) * mpp
    mask = np.zeros((h, w), dtype=bool)
    for cx, cy, r in blobs:
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    return mask


def paint(mask: np.ndarray, seed: int = 0, noise: float = 12.0) -> np.ndarray:
    """RGB uint8: textured pink tissue where `mask`, near-white glass elsewhere (both with mild noise)."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = BACKGROUND
    img[mask] = TISSUE_RGB
    img += rng.normal(0.0, noise, size=(h, w, 1)) + rng.normal(0.0, noise / 3, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def tissue_image(width_um: float, height_um: float, mpp: float, blobs=None, seed: int = 0) -> np.ndarray:
    """A slide-like image: two discs of tissue (one touching the left border) on glass."""
    if blobs is None:
        blobs = default_blobs(width_um, height_um)
    return paint(blob_mask(width_um, height_um, mpp, blobs), seed)


def default_blobs(width_um: float, height_um: float) -> list[tuple[float, float, float]]:
    m = min(width_um, height_um)
    return [(0.05 * width_um, 0.5 * height_um, 0.3 * m), (0.7 * width_um, 0.45 * height_um, 0.25 * m)]


def write_tiff(
    path: Path,
    rgb: np.ndarray,
    *,
    downsamples: Sequence[int] = (1, 4, 16),
    description: str | None = None,
    resolution_mpp: float | None = None,
    tile: int = 128,
    compression: str | None = "zlib",
) -> Path:
    """A tiled pyramidal TIFF; levels are floor(W/d) x floor(H/d), so odd sizes give inexact downsamples."""
    h, w = rgb.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            lw, lh = w // ds, h // ds
            if i and min(lw, lh) < 16:
                break
            level = rgb if i == 0 else cv2.resize(rgb, (lw, lh), interpolation=cv2.INTER_AREA)
            kwargs = {}
            if resolution_mpp is not None:
                res = 1e4 / (resolution_mpp * ds)
                kwargs = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tw.write(
                level, tile=(tile, tile), photometric="rgb", compression=compression, metadata=None,
                description=description if i == 0 else None, subfiletype=1 if i else 0, **kwargs,
            )
    return path


def aperio_description(w: int, h: int, mpp: float | None = 0.5, app_mag: float | None = 20) -> str:
    """An ImageDescription OpenSlide recognises as Aperio; MPP and AppMag only when given."""
    desc = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (128x128) RAW"
    if app_mag is not None:
        desc += f"|AppMag = {app_mag:g}"
    if mpp is not None:
        desc += f"|MPP = {mpp:g}"
    return desc


def write_aperio(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, **kwargs) -> Path:
    h, w = rgb.shape[:2]
    app_mag = None if mpp is None else 10.0 / mpp
    return write_tiff(path, rgb, description=aperio_description(w, h, mpp, app_mag), **kwargs)


def write_generic(path: Path, rgb: np.ndarray, mpp: float, **kwargs) -> Path:
    """Generic tiled TIFF: MPP only in XResolution/YResolution (centimeter), no vendor description."""
    return write_tiff(path, rgb, resolution_mpp=mpp, **kwargs)


def write_no_mpp(path: Path, rgb: np.ndarray, **kwargs) -> Path:
    return write_tiff(path, rgb, **kwargs)


def write_single_level(path: Path, rgb: np.ndarray, mpp: float = 0.5) -> Path:
    return write_tiff(path, rgb, downsamples=(1,), resolution_mpp=mpp)


def write_truncated(path: Path, rgb: np.ndarray, keep: float = 0.6) -> Path:
    """An Aperio slide cut to `keep` of its bytes, like an interrupted download."""
    write_aperio(path, rgb)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))
    return path


def write_not_a_slide(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file renamed to .svs\n" * 20)
    return path


def write_background(path: Path, width: int = 512, height: int = 384, mpp: float = 0.5, seed: int = 3) -> Path:
    """An empty slide: glass only, with scanner-like noise (Otsu alone would split the noise into 'tissue')."""
    rgb = paint(np.zeros((height, width), dtype=bool), seed)
    return write_aperio(path, rgb, mpp)


def write_table(path: Path, rows: Sequence[dict]) -> Path:
    """A slide table (msamil.slides.table columns; mpp_source only when a row gives one); missing cells empty."""
    cols = ["slide", "patient", "label", "path", "annotation", "mpp", "exclude"]
    if any(row.get("mpp_source") for row in rows):
        cols.insert(6, "mpp_source")
    frame = pd.DataFrame([{c: row.get(c, "") for c in cols} for row in rows], columns=cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path

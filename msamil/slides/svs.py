"""A small writer for Aperio-style SVS files (and plain tiled pyramidal TIFFs).

Why our own writer: the synthetic dataset and the tests of the slide reader need slides with exactly known
content, pyramid and metadata (including the broken variants real scanners produce: one level, no MPP, a
different base magnification). tifffile writes the TIFF structure; this module only decides what goes where, the
way Aperio's scanners lay it out, so that OpenSlide recognises the file as vendor ``aperio``:

* IFD 0: level 0, tiled JPEG, ImageDescription ``Aperio Image Library ...|AppMag = 20|MPP = 0.5``;
* IFD 1: a stripped (untiled) JPEG thumbnail, which OpenSlide exposes as the ``thumbnail`` associated image;
* IFD 2..: the lower pyramid levels, tiled JPEG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import tifffile

from msamil.util.atomic import atomic_path

APERIO_HEADER = "Aperio Image Library v12.0.15 \r\n"
THUMBNAIL_MAX_PX = 768
# tifffile writes YCbCr JPEG with 2x2 chroma subsampling (as Aperio scanners do): tiles and strips must be
# multiples of 16 pixels.
_JPEG_BLOCK = 16


def app_mag_for(mpp: float) -> int:
    """Nominal objective power for a base resolution: 0.5 µm/px is 20x, 0.25 µm/px is 40x (Aperio's convention)."""
    return max(1, round(10.0 / mpp))


def default_downsamples(width: int, height: int, tile_size: int) -> list[int]:
    """Downsamples 1, 4, 16 and further factors of 4 while a level is still larger than one tile.

    Aperio pyramids step by 4; downstream code needs at least the 1/4/16 levels to read 20x/10x/5x patches from
    a level that is not finer than needed.
    """
    downsamples = [1, 4, 16]
    while max(width, height) / downsamples[-1] > tile_size:
        downsamples.append(downsamples[-1] * 4)
    return downsamples


def pyramid(rgb_level0: np.ndarray, downsamples: Sequence[int]) -> list[np.ndarray]:
    """Downsampled copies of level 0 (area-averaged, each from the previous level to stay cheap)."""
    height, width = rgb_level0.shape[:2]
    levels: list[np.ndarray] = []
    previous = rgb_level0
    for ds in downsamples:
        size = (max(1, round(width / ds)), max(1, round(height / ds)))
        if size == (previous.shape[1], previous.shape[0]):
            image = previous
        else:
            image = cv2.resize(previous, size, interpolation=cv2.INTER_AREA)
        levels.append(np.ascontiguousarray(image))
        previous = image
    return levels


def _aperio_description(
    width: int, height: int, tile_size: int, quality: int, mpp: float | None, app_mag: int | None,
    level_size: tuple[int, int] | None = None, thumbnail: bool = False,
) -> str:
    """An ImageDescription in Aperio's format; OpenSlide parses the `|key = value` pairs of IFD 0 only."""
    text = APERIO_HEADER + f"{width}x{height}"
    if thumbnail and level_size is not None:
        text += f" -> {level_size[0]}x{level_size[1]} - "
    else:
        text += f" [0,0 {width}x{height}] ({tile_size}x{tile_size})"
        if level_size is not None:
            text += f" -> {level_size[0]}x{level_size[1]}"
        text += f" JPEG/RGB Q={quality}"
    if app_mag is not None:
        text += f"|AppMag = {app_mag}"
    if mpp is not None:
        text += f"|MPP = {mpp:g}"
    return text


def _check_inputs(rgb: np.ndarray, tile_size: int, jpeg_quality: int, mpp: float | None) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"write_svs needs an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if tile_size % _JPEG_BLOCK:
        raise ValueError(f"tile_size must be a multiple of {_JPEG_BLOCK} for subsampled JPEG, got {tile_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive or None, got {mpp}")


def write_svs(
    path: str | os.PathLike[str],
    rgb_level0: np.ndarray,
    mpp: float | None = 0.5,
    tile_size: int = 256,
    jpeg_quality: int = 85,
    *,
    levels: Sequence[int] | None = None,
    thumbnail: bool = True,
    vendor: Literal["aperio", "generic"] = "aperio",
    app_mag: int | None = None,
) -> list[tuple[int, int]]:
    """Write `rgb_level0` as a tiled JPEG pyramid; return the (width, height) of every level written.

    `mpp=None` leaves the resolution out entirely (a slide the inspector must exclude or override);
    `levels` lists the downsamples (``[1]`` gives a single-level slide; default 1, 4, 16, ...);
    `vendor="generic"` writes no Aperio description and no thumbnail but standard TIFF resolution tags
    (pixels per centimetre), which OpenSlide opens as ``generic-tiff``; `app_mag` overrides the objective power
    derived from `mpp`. The file appears atomically (temp file + rename); same input gives the same bytes.
    """
    _check_inputs(rgb_level0, tile_size, jpeg_quality, mpp)
    height, width = rgb_level0.shape[:2]
    downsamples = list(levels) if levels is not None else default_downsamples(width, height, tile_size)
    if not downsamples or downsamples[0] != 1 or any(b <= a for a, b in zip(downsamples, downsamples[1:], strict=False)):
        raise ValueError(f"levels must start at 1 and increase, got {downsamples}")
    if app_mag is None and mpp is not None:
        app_mag = app_mag_for(mpp)
    images = pyramid(rgb_level0, downsamples)
    jpeg = {"compression": "jpeg", "compressionargs": {"level": int(jpeg_quality)}}
    common = {"photometric": "rgb", "metadata": None, "maxworkers": 1, **jpeg}
    generic_res: dict[str, object] = {}
    if vendor == "generic" and mpp is not None:
        generic_res = {"resolutionunit": "CENTIMETER"}
    bigtiff = rgb_level0.nbytes > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for index, (ds, image) in enumerate(zip(downsamples, images, strict=True)):
            size = (image.shape[1], image.shape[0])
            if vendor == "aperio":
                desc = _aperio_description(width, height, tile_size, jpeg_quality, mpp, app_mag,
                                           None if index == 0 else size)
                extra: dict[str, object] = {"description": desc}
            else:
                # generic-tiff readers take tiled reduced-resolution pages (NewSubfileType 1) as pyramid levels
                extra = {**generic_res, "subfiletype": 0 if index == 0 else 1}
                if generic_res:
                    per_cm = 1e4 / (mpp * ds)  # type: ignore[operator]
                    extra["resolution"] = (per_cm, per_cm)
            tif.write(image, tile=(tile_size, tile_size), **common, **extra)
            if index == 0 and thumbnail and vendor == "aperio":
                _write_thumbnail(tif, rgb_level0, tile_size, jpeg_quality, mpp, app_mag, common)
    return [(im.shape[1], im.shape[0]) for im in images]


def _write_thumbnail(
    tif: tifffile.TiffWriter, rgb: np.ndarray, tile_size: int, quality: int, mpp: float | None,
    app_mag: int | None, common: dict[str, object],
) -> None:
    """Aperio puts a small stripped JPEG image right after level 0; OpenSlide calls it `thumbnail`."""
    height, width = rgb.shape[:2]
    scale = min(1.0, THUMBNAIL_MAX_PX / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    rows = _JPEG_BLOCK * math.ceil(size[1] / _JPEG_BLOCK)
    desc = _aperio_description(width, height, tile_size, quality, mpp, app_mag, size, thumbnail=True)
    tif.write(np.ascontiguousarray(thumb), rowsperstrip=rows, description=desc, **common)

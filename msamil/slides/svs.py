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
from collections.abc import Callable, Iterator, Sequence
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
    images = pyramid(rgb_level0, downsamples)
    writer = _PyramidWriter(path, width, height, tile_size, jpeg_quality, mpp, app_mag, vendor,
                            thumbnail and vendor == "aperio", bigtiff=rgb_level0.nbytes > 2**31)
    writer.write(images[0], images[1:], downsamples[1:])
    return [(im.shape[1], im.shape[0]) for im in images]


def write_svs_tiled(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    render: Callable[[int, int, int, int], np.ndarray],
    mpp: float = 0.5,
    tile_size: int = 256,
    jpeg_quality: int = 85,
    block_px: int = 2048,
) -> list[tuple[int, int]]:
    """Write an Aperio SVS whose level 0 is rendered on demand, `render(x, y, w, h) -> uint8 (h, w, 3)`.

    For slides too large to hold: level 0 is rendered (in blocks of at most `block_px` columns) and written one row
    of tiles at a time, and only level 1 (1/16 of the pixels) is kept, area-averaged from each row; the lower
    levels come from it. The file equals what
    `write_svs` writes for the same pixels. Sizes must be multiples of 4 (so rows average exactly).
    """
    if width % 4 or height % 4:
        raise ValueError(f"write_svs_tiled needs a width and height divisible by 4, got {width}x{height}")
    _check_inputs(np.zeros((1, 1, 3), np.uint8), tile_size, jpeg_quality, mpp)
    downsamples = default_downsamples(width, height, tile_size)
    level1 = np.empty((height // 4, width // 4, 3), np.uint8)

    def tiles() -> Iterator[np.ndarray]:
        for y in range(0, height, tile_size):
            h = min(tile_size, height - y)
            band = np.empty((h, width, 3), np.uint8)
            for x in range(0, width, block_px):  # a band of a scan-wide slide is rendered a block at a time
                w = min(block_px, width - x)
                block = render(x, y, w, h)
                if block.shape != (h, w, 3) or block.dtype != np.uint8:
                    raise ValueError(f"render returned {block.shape} {block.dtype}, expected ({h}, {w}, 3) uint8")
                band[:, x:x + w] = block
            level1[y // 4:(y + h) // 4] = cv2.resize(band, (width // 4, h // 4), interpolation=cv2.INTER_AREA)
            for x in range(0, width, tile_size):
                tile = np.zeros((tile_size, tile_size, 3), np.uint8)  # tifffile pads edge tiles with zeros too
                tile[:h, :min(tile_size, width - x)] = band[:, x:x + tile_size]
                yield tile

    def lower() -> list[np.ndarray]:
        return pyramid(level1, [1] + [d // 4 for d in downsamples[2:]])

    writer = _PyramidWriter(path, width, height, tile_size, jpeg_quality, mpp, None, "aperio", True,
                            bigtiff=width * height * 3 > 2**31)
    images = writer.write(tiles(), lower, downsamples[1:])
    return [(width, height)] + [(im.shape[1], im.shape[0]) for im in images]


class _PyramidWriter:
    """The TIFF layout of both writers: level 0, then (Aperio) the thumbnail, then the lower levels."""

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, tile_size: int, quality: int,
                 mpp: float | None, app_mag: int | None, vendor: str, thumbnail: bool, bigtiff: bool) -> None:
        self.path, self.width, self.height, self.tile_size = path, width, height, tile_size
        self.quality, self.mpp, self.vendor, self.thumbnail, self.bigtiff = quality, mpp, vendor, thumbnail, bigtiff
        self.app_mag = app_mag if app_mag is not None or mpp is None else app_mag_for(mpp)
        jpeg = {"compression": "jpeg", "compressionargs": {"level": int(quality)}}
        self.common = {"photometric": "rgb", "metadata": None, "maxworkers": 1, **jpeg}

    def _extra(self, index: int, ds: int, size: tuple[int, int]) -> dict[str, object]:
        if self.vendor == "aperio":
            return {"description": _aperio_description(self.width, self.height, self.tile_size, self.quality,
                                                       self.mpp, self.app_mag, None if index == 0 else size)}
        # generic-tiff readers take tiled reduced-resolution pages (NewSubfileType 1) as pyramid levels
        extra: dict[str, object] = {"subfiletype": 0 if index == 0 else 1}
        if self.mpp is not None:
            per_cm = 1e4 / (self.mpp * ds)
            extra.update(resolutionunit="CENTIMETER", resolution=(per_cm, per_cm))
        return extra

    def write(self, level0: np.ndarray | Iterator[np.ndarray],
              lower: list[np.ndarray] | Callable[[], list[np.ndarray]], lower_ds: Sequence[int]) -> list[np.ndarray]:
        """Write every level; `lower` may be a callable, evaluated once level 0 is written (streaming)."""
        tile = (self.tile_size, self.tile_size)
        size0 = (self.width, self.height)
        with atomic_path(self.path) as tmp, tifffile.TiffWriter(tmp, bigtiff=self.bigtiff) as tif:
            if isinstance(level0, np.ndarray):
                tif.write(level0, tile=tile, **self.common, **self._extra(0, 1, size0))
            else:
                tif.write(level0, shape=(self.height, self.width, 3), dtype=np.uint8, tile=tile, **self.common,
                          **self._extra(0, 1, size0))
            images = lower() if callable(lower) else lower
            if self.thumbnail:
                source = images[0] if images else level0
                _write_thumbnail(tif, np.asarray(source), size0, self.tile_size, self.quality, self.mpp,
                                 self.app_mag, self.common)
            for index, (ds, image) in enumerate(zip(lower_ds, images, strict=True), start=1):
                tif.write(image, tile=tile, **self.common, **self._extra(index, ds, (image.shape[1], image.shape[0])))
        return images


def _write_thumbnail(
    tif: tifffile.TiffWriter, source: np.ndarray, size0: tuple[int, int], tile_size: int, quality: int,
    mpp: float | None, app_mag: int | None, common: dict[str, object],
) -> None:
    """Aperio puts a small stripped JPEG image right after level 0; OpenSlide calls it `thumbnail`.

    Drawn from `source` (level 1 when there is one), scaled to fit THUMBNAIL_MAX_PX on level 0's aspect.
    """
    width, height = size0
    scale = min(1.0, THUMBNAIL_MAX_PX / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    rows = _JPEG_BLOCK * math.ceil(size[1] / _JPEG_BLOCK)
    desc = _aperio_description(width, height, tile_size, quality, mpp, app_mag, size, thumbnail=True)
    tif.write(np.ascontiguousarray(thumb), rowsperstrip=rows, description=desc, **common)

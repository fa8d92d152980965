"""Lesion masks from annotations, on the segmentation grid.

Annotations come as GeoJSON polygons in level-0 pixel coordinates (QuPath/ASAP/our synthetic generator) or as
binary mask images (UBC-OCEAN ships RGB masks, red = tumour). Both are brought onto the same grid as the tissue
mask: `ceil(W * mpp / seg_mpp) x ceil(H * mpp / seg_mpp)`, so a mask pixel and a cache patch footprint can be
compared without any other bookkeeping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely

from msamil.errors import SlideError

GEOJSON_SUFFIXES = {".geojson", ".json"}


def mask_shape(width: int, height: int, mpp: float, seg_mpp: float) -> tuple[int, int]:
    """(rows, cols) of the segmentation grid of a level-0 image `width x height` at `mpp`."""
    scale = mpp / seg_mpp
    return max(1, math.ceil(height * scale - 1e-9)), max(1, math.ceil(width * scale - 1e-9))


def has_annotation(value: Any) -> bool:
    """True when a slide-table `annotation` cell names a file (empty string / NaN / None mean none)."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(str(value).strip())


def lesion_mask(annotation: str | Path, width: int, height: int, mpp: float, seg_mpp: float,
                slide: str = "?") -> np.ndarray:
    """Boolean lesion mask of one slide at `seg_mpp`, from a GeoJSON file or a mask image."""
    path = Path(annotation)
    if not path.is_file():
        raise SlideError(slide, f"annotation file {path} does not exist",
                         "fix the annotation column of the slide table or remove the entry")
    shape = mask_shape(width, height, mpp, seg_mpp)
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SlideError(slide, f"annotation {path} is not valid GeoJSON ({exc})",
                             "re-export the annotation as GeoJSON") from exc
        return rasterize_polygons(iter_polygons(data), shape, mpp / seg_mpp)
    return mask_from_image(path, shape, slide)


def iter_polygons(data: Any) -> Iterator[list[np.ndarray]]:
    """Yield each polygon as [exterior, *holes] rings (float arrays (n, 2), level-0 x, y).

    Accepts a FeatureCollection, a Feature, a bare geometry, a GeometryCollection or a list of those (QuPath
    exports a plain list). Non-areal geometries (points, lines) carry no area and are skipped.
    """
    if isinstance(data, list):
        for item in data:
            yield from iter_polygons(item)
        return
    if not isinstance(data, dict):
        return
    kind = data.get("type")
    if kind == "FeatureCollection":
        yield from iter_polygons(data.get("features", []))
    elif kind == "Feature":
        yield from iter_polygons(data.get("geometry"))
    elif kind == "GeometryCollection":
        yield from iter_polygons(data.get("geometries", []))
    elif kind == "Polygon":
        yield [np.asarray(ring, dtype=np.float64)[:, :2] for ring in data["coordinates"] if len(ring) >= 3]
    elif kind == "MultiPolygon":
        for poly in data["coordinates"]:
            yield [np.asarray(ring, dtype=np.float64)[:, :2] for ring in poly if len(ring) >= 3]


def rasterize_polygons(polygons: Iterator[list[np.ndarray]], shape: tuple[int, int], scale: float
                       ) -> np.ndarray:
    """Fill polygons (level-0 coords times `scale` = mask coords) into a bool mask of `shape`.

    A mask pixel (r, c) covers [c, c+1) x [r, r+1) and is set when its centre lies inside the polygon (holes
    excluded); polygons are OR-ed. The centre rule is unbiased (cv2.fillPoly also paints boundary pixels, which
    inflates small lesions by half a pixel all round), so mask areas match polygon areas up to boundary noise.
    """
    mask = np.zeros(shape, dtype=bool)
    rows, cols = shape
    for rings in polygons:
        if not rings:
            continue
        poly = shapely.Polygon(rings[0] * scale, [r * scale for r in rings[1:]])
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        if poly.is_empty:
            continue
        bx0, by0, bx1, by1 = poly.bounds
        x0, y0 = max(int(math.floor(bx0)), 0), max(int(math.floor(by0)), 0)
        x1, y1 = min(int(math.ceil(bx1)), cols), min(int(math.ceil(by1)), rows)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(poly, xx.ravel() + 0.5, yy.ravel() + 0.5).reshape(yy.shape)
        mask[y0:y1, x0:x1] |= inside
    return mask


def mask_from_image(path: Path, shape: tuple[int, int], slide: str = "?") -> np.ndarray:
    """Read a binary (or RGB, red = lesion) mask image of any size and area-resample it onto `shape`."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SlideError(slide, f"cannot read mask image {path}", "convert the mask to PNG or TIFF")
    if img.ndim == 3:
        bgr = img[..., :3].astype(np.int32)
        lesion = (bgr[..., 2] > 127) & (bgr[..., 1] < 128) & (bgr[..., 0] < 128)
        if not lesion.any() and np.all(bgr[..., 0] == bgr[..., 2]):
            lesion = bgr[..., 0] > 0  # a grey mask saved as 3 channels
    else:
        lesion = img > 0
    frac = cv2.resize(lesion.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return frac >= 0.5

"""Each dataset's lesion annotations -> one GeoJSON FeatureCollection of polygons in level-0 pixel coordinates.

The lesion stage rasterises GeoJSON onto its own grid (`msamil.lesion.annotation_masks`), so converting every format here once
means it never has to know about DigestPath JPEG masks, BCNB JSON, UBC-OCEAN RGB masks or Camelyon16 ASAP XML.
Mask images can be as large as the slide (50k x 50k px), so they are thresholded and shrunk by libvips while
streaming, and only the small mask is traced into polygons.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, mapping

from msamil.errors import SlideError
from msamil.util.atomic import write_text

log = logging.getLogger(__name__)

#: ASAP groups holding tumour outlines and the "exclusion" group (normal tissue inside tumour outlines).
ASAP_TUMOUR = {"_0", "_1", "tumor", "tumour", "metastases"}
ASAP_EXCLUDE = {"_2", "exclusion", "none_tumor"}


def to_feature_collection(geom: Any, label: str = "lesion", source: str = "") -> dict[str, Any]:
    """One Feature per polygon, QuPath-style classification so QuPath opens the file too."""
    polys = [] if geom is None or geom.is_empty else list(getattr(geom, "geoms", [geom]))
    features = []
    for poly in polys:
        if isinstance(poly, Polygon) and not poly.is_empty:
            features.append({
                "type": "Feature", "geometry": mapping(poly),
                "properties": {"objectType": "annotation", "classification": {"name": label}, "source": source},
            })
    return {"type": "FeatureCollection", "features": features}


def _areal(geom: Any) -> Any:
    """Valid polygons only (self-intersecting hand-drawn outlines are common)."""
    geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    return shapely.union_all(parts) if parts else Polygon()


def _polygons(rings: Iterable[Iterable[Iterable[float]]]) -> list[Polygon]:
    out = []
    for ring in rings:
        pts = [(float(x), float(y)) for x, y, *_ in ring]
        if len(pts) >= 3:
            out.append(_areal(Polygon(pts)))
    return out


def _outline_minus(include: list[Polygon], exclude: list[Polygon]) -> Any:
    geom = shapely.union_all(include) if include else Polygon()
    if exclude and not geom.is_empty:
        geom = geom.difference(shapely.union_all(exclude))
    return _areal(geom)


# ------------------------------------------------------------------------------------------------ polygons
def parse_bcnb_json(path: str | os.PathLike[str]) -> Any:
    """BCNB: `{"positive": [{"name", "vertices": [[x, y], ...]}], "negative": [...]}`; negative areas are cut out."""
    data = json.loads(Path(path).read_text())

    def rings(key: str) -> list[list[list[float]]]:
        return [item["vertices"] for item in data.get(key) or [] if isinstance(item, dict) and "vertices" in item]

    return _outline_minus(_polygons(rings("positive")), _polygons(rings("negative")))


def parse_asap_xml(path: str | os.PathLike[str]) -> Any:
    """Camelyon16 ASAP XML: tumour groups `_0`/`_1` minus exclusion group `_2`, coordinates in level-0 px."""
    root = ET.parse(path).getroot()
    include, exclude = [], []
    for ann in root.iter("Annotation"):
        if ann.get("Type", "Polygon").lower() not in {"polygon", "spline", "rectangle"}:
            continue
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(float(c.get("Order", 0))))
        ring = [(float(c.get("X").replace(",", ".")), float(c.get("Y").replace(",", "."))) for c in coords]
        group = (ann.get("PartOfGroup") or "").strip().lower()
        target = exclude if group in ASAP_EXCLUDE else include if group in ASAP_TUMOUR or not group else None
        if target is None:
            log.info("%s: annotation group %r is neither tumour nor exclusion; ignored", path, group)
            continue
        target.extend(_polygons([ring]))
    return _outline_minus(include, exclude)


# ------------------------------------------------------------------------------------------------ masks
def _binary_mask(img: Any, kind: str) -> Any:
    """uchar 0/255 lesion band: any bright pixel for a grey mask, the red class for an RGB (UBC-OCEAN) mask."""
    if img.hasalpha():
        img = img.flatten(background=[0] * (img.bands - 1))
    if kind == "ubc_mask" and img.bands >= 3:
        return (img[0] > 127) & (img[1] < 128) & (img[2] < 128)
    return img[0] > 127


def parse_mask(path: str | os.PathLike[str], slide_size: tuple[int, int] | None = None, kind: str = "digestpath_mask",
               max_px: int = 8192, min_area_px: float = 16.0) -> Any:
    """Trace a lesion mask image into polygons scaled to the slide's level-0 size (the mask's own if not given).

    The mask is shrunk (box average, then >= 50 %) so its longer side is at most `max_px`: memory is bounded by
    that, not by the slide, and the outline loses at most one shrunken pixel.
    """
    import cv2
    import pyvips

    logging.getLogger("pyvips").setLevel(logging.WARNING)  # one INFO line per libvips thread pool

    img = pyvips.Image.new_from_file(os.fspath(path), access="sequential")
    band = _binary_mask(img, kind)
    factor = max(1, math.ceil(max(img.width, img.height) / max_px))
    if factor > 1:
        band = band.shrink(factor, factor) > 127
    mask = np.ndarray(buffer=band.cast("uchar").write_to_memory(), dtype=np.uint8, shape=(band.height, band.width))
    width, height = slide_size or (img.width, img.height)
    # 1-px zero border so that lesions touching the image edge still give closed contours
    padded = cv2.copyMakeBorder((mask > 0).astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return Polygon()
    polys = []
    for i, contour in enumerate(contours):
        if hierarchy[0][i][3] != -1 or cv2.contourArea(contour) < min_area_px:
            continue
        holes = []
        child = hierarchy[0][i][2]
        while child != -1:
            if len(contours[child]) >= 3 and cv2.contourArea(contours[child]) >= min_area_px:
                holes.append(_centres(contours[child]))
            child = hierarchy[0][child][0]
        # contours run through pixel centres; growing by half a pixel puts the outline on the pixel edges
        polys.append(_areal(Polygon(_centres(contour), holes)).buffer(0.5, join_style="mitre"))
    if not polys:
        return Polygon()
    geom = shapely.union_all(polys)
    return _areal(affinity.scale(geom, width / mask.shape[1], height / mask.shape[0], origin=(0, 0)))


def _centres(contour: np.ndarray) -> np.ndarray:
    """Contour vertices of the padded mask -> pixel-centre coordinates of the unpadded mask."""
    return contour.reshape(-1, 2).astype(np.float64) - 1.0 + 0.5


def _image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    import pyvips

    img = pyvips.Image.new_from_file(os.fspath(path), access="sequential")
    return img.width, img.height


def convert_annotation(kind: str, src: str | Sequence[str], out: str, *, slide: str = "",
                       image: str | None = None) -> int:
    """Rule entry point: parse `src` of the given kind, write GeoJSON to `out`, return the polygon count.

    Kind `empty` needs no `src` (an empty list is fine: the rule's optional input): it writes an empty
    FeatureCollection for a slide known to hold no lesion.
    """
    if not isinstance(src, str):
        src = str(src[0]) if len(src) else ""
    slide = slide or Path(src).stem or Path(out).stem
    try:
        if kind == "empty":  # a slide known to be lesion-free (e.g. DigestPath benign): a true negative
            geom = Polygon()
        elif kind in ("digestpath_mask", "ubc_mask"):
            geom = parse_mask(src, _image_size(image) if image else None, kind=kind)
        elif kind == "bcnb_json":
            geom = parse_bcnb_json(src)
        elif kind == "asap_xml":
            geom = parse_asap_xml(src)
        else:
            raise ValueError(f"unknown annotation kind {kind!r}")
    except Exception as exc:  # any parser/decoder failure is this slide's problem, reported as such
        raise SlideError(slide, f"cannot parse annotation {src} ({exc})",
                         "re-download it, or clear the slide's annotation via a slide_table") from exc
    collection = to_feature_collection(geom, source=Path(src).name)
    write_text(out, json.dumps(collection) + "\n")
    log.info("%s: %d lesion polygons from %s", slide, len(collection["features"]), src)
    return len(collection["features"])

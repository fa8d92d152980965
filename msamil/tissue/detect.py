"""Tissue detection (DESIGN.md section 5): stain optical density against the slide's own glass, hysteresis,
half-coverage edges, closing, and fragment/hole filtering.

Why this and not saturation + Otsu: faint IHC (light hematoxylin, a few small fragments) is barely saturated and
Otsu splits whatever is there, so sparse slides lost their tissue while dense H&E looked fine. Here the background
is measured per slide (msamil.tissue.stain), a pixel counts by how much *coloured* light it absorbs (grey dust,
bubbles and black borders absorb all colours alike and count for next to nothing), the threshold is never below the
slide's own glass noise, and fragments are kept by an area relative to the slide's largest piece.

Every size is given in µm or µm² and converted with the image's MPP, so one configuration behaves the same on a 40x
and a 20x scan. Settings come from `tissue:` in config, overridden per dataset by `dataset_config.<ds>.tissue`
(msamil.tissue.settings).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from msamil.slides.slide import Slide, scaled_size
from msamil.tissue.settings import TISSUE_DEFAULTS  # defined there so planning needs no cv2
from msamil.tissue.stain import NOISE_MARGIN, glass_colour, glass_noise, luma, smooth, stain_od
from msamil.util.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

QC_MAX_PX = 1024  # longest side of QC overlays

def _odd_kernel(um: float, mpp: float) -> int:
    """An odd pixel size for a length in µm (0 when it is below 3 px, i.e. the step is skipped)."""
    n = int(round(um / mpp))
    if n < 3:
        return 0
    return n if n % 2 else n + 1


def _fill_small_holes(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Fill background regions enclosed by tissue that are smaller than `min_px` (lumina stay, gaps close).

    Background touching the image border is never a hole: tissue running off the slide edge must not get its
    outside filled in.
    """
    if min_px <= 0 or mask.all():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    touches = (left == 0) | (top == 0) | (right == w) | (bottom == h)
    fill = (stats[:, cv2.CC_STAT_AREA] < min_px) & ~touches
    fill[0] = False  # label 0 is the tissue itself
    return mask | fill[labels]


def _hysteresis(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels above `low` that are 8-connected to a pixel above `high` (faint rims of stained fragments stay)."""
    weak = values > low
    if not weak.any():
        return weak
    n, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[labels[values > high]] = True
    keep[0] = False
    return keep[labels]


def _refine_edges(mask: np.ndarray, od: np.ndarray, raw: np.ndarray, mpp: float, frac: float, band_px: int,
                  reach_um: float = 48.0) -> np.ndarray:
    """Drop boundary pixels whose unsmoothed stain OD is below `frac` of the tissue's own OD nearby.

    A low threshold on a smoothed map finds faint tissue, but around a strongly stained section it also takes the
    glass the smoothing spread stain into: a halo all around. Comparing each pixel of the outer `band_px` with the
    mean OD of the tissue within `reach_um` puts the edge where a pixel is at least `frac` covered, for faint and
    dark tissue alike.
    """
    if frac <= 0 or not mask.any():
        return mask
    m = mask.astype(np.float32)
    sigma = max(1.0, 0.5 * reach_um / mpp)
    num = cv2.GaussianBlur(od * m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    den = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    ref = num / np.maximum(den, 1e-6)
    k = 2 * max(1, band_px) + 1
    inner = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    return mask & ~(~inner & (raw < frac * ref))


def fragment_min_area_um2(areas_um2: np.ndarray, floor: float, ratio: float, cap: float) -> float:
    """The smallest fragment kept: `ratio` of the largest fragment, clamped to [floor, cap] µm².

    A slide holding a whole section drops specks up to `cap` (debris next to a 1 cm² section is not tissue); a
    sparse biopsy slide whose largest piece is small keeps pieces down to `floor`.
    """
    if areas_um2.size == 0:
        return floor
    return float(min(cap, max(floor, ratio * float(areas_um2.max()))))


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    *,
    smooth_um: float = TISSUE_DEFAULTS["smooth_um"],
    threshold: float = TISSUE_DEFAULTS["threshold"],
    seed_threshold: float = TISSUE_DEFAULTS["seed_threshold"],
    close_um: float = TISSUE_DEFAULTS["close_um"],
    min_fragment_area_um2: float = TISSUE_DEFAULTS["min_fragment_area_um2"],
    fragment_area_ratio: float = TISSUE_DEFAULTS["fragment_area_ratio"],
    min_tissue_area_um2: float = TISSUE_DEFAULTS["min_tissue_area_um2"],
    min_hole_area_um2: float = TISSUE_DEFAULTS["min_hole_area_um2"],
    edge_fraction: float = TISSUE_DEFAULTS["edge_fraction"],
    seg_mpp: float | None = None,
) -> np.ndarray:
    """Boolean tissue mask of an RGB image whose pixels are `mpp` µm wide.

    Stain optical density against the slide's own glass (msamil.tissue.stain), smoothed over `smooth_um`, is
    thresholded with hysteresis: pixels above `threshold` (raised to the slide's glass noise when that is higher)
    belong to tissue when connected to a pixel above `seed_threshold` (at least the threshold). Boundary pixels
    under `edge_fraction` of the nearby tissue OD are then dropped, the mask closed, fragments below a
    slide-relative area (`fragment_min_area_um2`) dropped and holes below `min_hole_area_um2` filled. `seg_mpp` is accepted (and ignored) so the whole `tissue` config
    section can be passed as keywords; the caller has already rendered the image at that resolution.
    """
    del seg_mpp
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    if not float(threshold) > 0:
        raise ValueError(f"tissue.threshold must be a positive stain OD, got {threshold}")
    glass, _ = glass_colour(rgb)
    raw = stain_od(rgb, glass)
    low = max(float(threshold), NOISE_MARGIN * glass_noise(raw, luma(rgb), glass))
    od = smooth(raw, smooth_um, mpp)
    mask = _hysteresis(od, low, max(float(seed_threshold), low))
    band = int(np.ceil(smooth_um / mpp)) + 1  # how far smoothing can carry stain out of the tissue
    mask = _refine_edges(mask, od, raw, mpp, float(edge_fraction), band)
    d = _odd_kernel(close_um, mpp)  # odd: an even kernel's off-centre anchor would shift the mask
    if d and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    px_area = mpp * mpp
    if mask.any():
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA] * px_area
        min_um2 = fragment_min_area_um2(areas[1:], min_fragment_area_um2, fragment_area_ratio, min_tissue_area_um2)
        keep = areas >= min_um2
        keep[0] = False
        mask = keep[labels]
    return _fill_small_holes(mask, min_hole_area_um2 / px_area)


# ---------------------------------------------------------------------------------------------------------------
# Contours (GeoJSON) and QC overlay
# ---------------------------------------------------------------------------------------------------------------


def _ring(contour: np.ndarray, scale: float) -> list[list[float]]:
    """A closed GeoJSON ring in level-0 pixels from a cv2 contour of mask pixel centres.

    Mask pixel i covers level-0 [i*s, (i+1)*s), so its centre is (i + 0.5) * s. Degenerate contours (a single pixel
    or a line) become that pixel's square so every ring is a valid polygon.
    """
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) < 3:
        x, y, w, h = cv2.boundingRect(contour)
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64) * scale
    else:
        pts = (pts + 0.5) * scale
    ring = [[round(float(px), 2), round(float(py), 2)] for px, py in pts]
    ring.append(ring[0])
    return ring


def mask_to_geojson(mask: np.ndarray, level0_per_px: float) -> dict[str, Any]:
    """Tissue regions as a QuPath-compatible FeatureCollection of polygons (with holes) in level-0 pixels."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    features: list[dict[str, Any]] = []
    if hierarchy is None:
        return {"type": "FeatureCollection", "features": features}
    hier = hierarchy[0]
    for i, contour in enumerate(contours):
        if hier[i][3] != -1:
            continue  # a hole; added with its parent below
        rings = [_ring(contour, level0_per_px)]
        child = hier[i][2]
        while child != -1:
            rings.append(_ring(contours[child], level0_per_px))
            child = hier[child][0]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tissue", "color": [0, 160, 0]},
                "area_px_level0": float(cv2.contourArea(contour)) * level0_per_px**2,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def overlay(rgb: np.ndarray, mask: np.ndarray, caption: str = "") -> np.ndarray:
    """RGB QC image: background shaded blue, tissue outlined in green, optional caption; the mask is resized to the image."""
    h, w = rgb.shape[:2]
    m = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    out = rgb.copy()
    tint = np.array([90, 110, 190], dtype=np.float64)  # shade what is *not* tissue, so tissue keeps its colours
    out[~m] = (0.65 * out[~m] + 0.35 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 140, 0), max(1, round(max(h, w) / 400)))
    if caption:
        scale = max(0.45, max(h, w) / 1400)
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (min(w - 1, tw + 8), th + base + 8), (255, 255, 255), -1)
        cv2.putText(out, caption, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write a grey (H, W) or RGB (H, W, 3) uint8 image atomically as PNG."""
    data = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), data):
            raise OSError(f"could not write PNG {path}")


def qc_mpp(width: int, height: int, mpp: float, max_px: int = QC_MAX_PX) -> float:
    """The MPP at which the whole slide fits in `max_px` pixels (never finer than the slide itself)."""
    return max(mpp, max(width, height) * mpp / max_px)


# ---------------------------------------------------------------------------------------------------------------
# The rule's entry points
# ---------------------------------------------------------------------------------------------------------------


def run_tissue(
    slide_path: str | os.PathLike[str],
    slide_id: str,
    mpp: float,
    out_mask_png: str | os.PathLike[str],
    out_geojson: str | os.PathLike[str],
    out_qc_png: str | os.PathLike[str],
    tissue_cfg: dict[str, Any],
) -> np.ndarray:
    """Segment one slide at `tissue_cfg['seg_mpp']` and write mask PNG (uint8 0/255), GeoJSON and QC overlay.

    The mask is ceil(W * mpp / seg_mpp) x ceil(H * mpp / seg_mpp) (CONTRACT), mask pixel i covering level-0
    [i*s, (i+1)*s) with s = seg_mpp / mpp. An empty result is written (and logged) rather than raised: inspection
    already excludes slides without tissue, and downstream stages treat an empty mask as zero patches.
    """
    cfg = dict(tissue_cfg)
    seg_mpp = float(cfg.pop("seg_mpp", 8.0))
    with Slide.open(slide_path, slide_id, override_mpp=mpp) as slide:
        info = slide.info
        if abs(info.mpp - float(mpp)) > 1e-6 * float(mpp):
            log.warning("slide %s: file MPP %g differs from slides.tsv MPP %g; using the file's", slide_id,
                        info.mpp, mpp)
        img = slide.image_at_mpp(seg_mpp)
        mask = tissue_mask(img, seg_mpp, **cfg)
        qc = slide.image_at_mpp(qc_mpp(info.width, info.height, info.mpp))
    expected = scaled_size(info.width, info.height, info.mpp, seg_mpp)
    if mask.shape != (expected[1], expected[0]):
        raise RuntimeError(f"mask shape {mask.shape} does not match the contract size {expected}")
    frac = float(mask.mean())
    if frac == 0.0:
        log.warning("slide %s: no tissue detected; writing an empty mask", slide_id)
    log.info("slide %s: mask %dx%d at %g µm/px, tissue %.1f%%", slide_id, expected[0], expected[1], seg_mpp,
             100 * frac)
    write_png(out_mask_png, np.where(mask, 255, 0).astype(np.uint8))
    geo = mask_to_geojson(mask, seg_mpp / info.mpp)
    write_text(out_geojson, json.dumps(geo) + "\n")
    write_png(out_qc_png, overlay(qc, mask, f"{slide_id}  tissue {100 * frac:.1f}%"))
    return mask


def run_tissue_from_decision(
    decision_json: str | os.PathLike[str],
    out_mask_png: str | os.PathLike[str],
    out_geojson: str | os.PathLike[str],
    out_qc_png: str | os.PathLike[str],
    tissue_cfg: dict[str, Any],
) -> np.ndarray | None:
    """The tissue job: run_tissue for a slide that passed inspection (path and MPP from its decision file).

    A slide that fails here is excluded, not fatal: an empty mask, a GeoJSON carrying the failure
    (`msamil_failure`: stage, reason, fix, which the cache job passes on) and a QC image saying why are written,
    and None is returned. Failures that are not the slide's (disk full, out of memory) still fail the job.
    """
    from msamil.slides.outcomes import failure_record, usable_decision

    row = usable_decision(decision_json, "tissue mask")
    slide_id = str(row["slide"])
    try:
        return run_tissue(Path(row["path"]), slide_id, float(row["mpp"]), out_mask_png, out_geojson, out_qc_png,
                          tissue_cfg)
    except Exception as exc:
        record = failure_record(slide_id, "tissue", exc)
        if record is None:
            raise
        log.exception("slide %s: tissue failed; the slide will be excluded", slide_id)
    w, h = scaled_size(int(row["width"]), int(row["height"]), float(row["mpp"]), float(tissue_cfg.get("seg_mpp", 8.0)))
    write_png(out_mask_png, np.zeros((h, w), np.uint8))
    write_text(out_geojson, json.dumps({"type": "FeatureCollection", "features": [], "msamil_failure": record}) + "\n")
    caption = f"{slide_id}: tissue FAILED {record['reason']}"[:110]
    write_png(out_qc_png, overlay(np.full((120, 960, 3), 235, np.uint8), np.ones((120, 960), bool), caption))
    return None


def tissue_failure(geojson_path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The failure record the tissue job left in its GeoJSON, or None when it succeeded."""
    return json.loads(Path(geojson_path).read_text()).get("msamil_failure")


def tissue_fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


__all__ = [
    "TISSUE_DEFAULTS",
    "fragment_min_area_um2",
    "mask_to_geojson",
    "overlay",
    "qc_mpp",
    "run_tissue",
    "run_tissue_from_decision",
    "tissue_failure",
    "tissue_fraction",
    "tissue_mask",
    "write_png",
]

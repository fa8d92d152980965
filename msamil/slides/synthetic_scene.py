"""Build the `Scene` of one synthetic slide from its plan: layout, glands, nuclei, stain and noise streams.

Only lists and small rasters are made here (gland centres, nuclei in slide coordinates, masks at a few µm per
pixel), so a 50,000 x 40,000 px slide is planned in well under a gigabyte; `Scene.render` draws the pixels.

Nuclei, all in slide coordinates:
* gland epithelium: a ring of nuclei inside each gland's annulus;
* interstitial lesion cells: a jittered grid over the lesion outside the glands, so almost every 20x field of the
  lesion shows nuclei of the lesion's kind;
* stroma: spindle nuclei along the fibre direction;
* decoys: small clusters of atypical nuclei in normal stroma, in every slide, benign or not.
Lesion nuclei are atypical (striated chromatin) or regular per the plan; everything else about them is the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import shapely
from scipy.spatial import cKDTree

from msamil.slides.synthetic_draw import (
    BlockNoise,
    Nuclei,
    Scene,
    Stain,
    fibre_kernel,
    gland_radii,
    noise_key,
)
from msamil.slides.synthetic_layout import Layout, gland_centres, plan_layout

if TYPE_CHECKING:
    from msamil.slides.synthetic import SlidePlan

LESION_NUCLEUS_UM = (2.6, 3.6)  # semi-axis range of lesion (and decoy) nuclei
INTERSTITIAL_UM = 18.0  # grid spacing of interstitial lesion cells
SPINDLE_AREA_UM2 = 400.0  # tissue area per stromal spindle nucleus
DECOY_AREA_UM2 = 5e5  # tissue area per decoy cluster


def build_scene(rng: np.random.Generator, slide: str, seed: int, width: int, height: int, mpp: float,
                plan: SlidePlan, lesion_range: tuple[float, float], layout: Layout | None = None,
                stain: Stain | None = None) -> Scene:
    """Everything the slide shows, decided from `rng` in a fixed order (so the same seed gives the same slide).

    `layout` replaces the planned tissue and lesions and `stain` the slide's own stain (the cue probes use regions
    that are all lesion, and give both regions of a matched pair the same stain).
    """
    if layout is None:
        layout = plan_layout(rng, width, height, mpp, plan.lesion_fraction, 90.0, lesion_range)
    glands = gland_centres(rng, layout.polygons, mpp, plan.gland_step_um, plan.glandular)
    glands = glands[np.argsort(glands[:, 1], kind="stable")] if len(glands) else np.zeros((0, 2))
    radii = gland_radii(rng, len(glands))
    fibre_deg = float(rng.uniform(0, 180))
    compartments = _Compartments(layout, glands, radii)
    nuclei = Nuclei.concat([
        _gland_nuclei(rng, glands, radii, plan.atypical, mpp),
        _interstitial_nuclei(rng, compartments, plan.atypical, mpp),
        _spindle_nuclei(rng, compartments, fibre_deg, mpp),
        _decoy_nuclei(rng, compartments, mpp),
    ])
    drawn = Stain.draw(rng)
    stain = drawn if stain is None else stain
    noise = {name: BlockNoise(noise_key(seed, slide, name)) for name in ("grain", "fibres")}
    return Scene(layout, glands, radii, nuclei, fibre_deg, stain, noise, fibre_kernel(fibre_deg, 1.0 / mpp))


class _Compartments:
    """Which compartment a point (level-0 px) lies in: lesion polygons tested exactly, gland discs by distance to
    the nearest gland centres, tissue by the tissue field. Only points are tested, so memory does not grow with
    the slide's pixels."""

    def __init__(self, layout: Layout, glands: np.ndarray, radii: np.ndarray) -> None:
        self.layout = layout
        self.shapes = [shapely.Polygon(p.astype(np.float64)) for p in layout.polygons]
        self.glands = cKDTree(glands) if len(glands) else None
        self.gland_reach = (radii[:, 0] + 1.5) / layout.mpp if len(radii) else np.zeros(0)
        self.tissue_um2 = float((layout.tissue_field > 0).mean()) * layout.width * layout.height * layout.mpp**2

    def in_lesion(self, pts: np.ndarray) -> np.ndarray:
        inside = np.zeros(len(pts), bool)
        for shape in self.shapes:
            inside |= shapely.contains_xy(shape, pts[:, 0], pts[:, 1])
        return inside

    def in_interstitium(self, pts: np.ndarray) -> np.ndarray:
        """Inside a lesion and outside every gland (with 1.5 µm to spare)."""
        keep = self.in_lesion(pts)
        if self.glands is not None and keep.any():
            k = min(4, len(self.gland_reach))
            dist, idx = self.glands.query(pts[keep], k=k)
            dist, idx = dist.reshape(len(dist), -1), idx.reshape(len(idx), -1)
            keep[np.flatnonzero(keep)] = (dist > self.gland_reach[idx]).all(axis=1)
        return keep

    def in_stroma(self, pts: np.ndarray, margin_um: float = 0.0) -> np.ndarray:
        """Tissue, outside every lesion, and at least `margin_um` from any lesion outline."""
        if not len(pts):
            return np.zeros(0, bool)
        keep = (self._field_at(pts) > 0.02) & ~self.in_lesion(pts)
        if margin_um > 0 and self.shapes and keep.any():
            near = _union(self.shapes).buffer(margin_um / self.layout.mpp)
            keep &= ~shapely.contains_xy(near, pts[:, 0], pts[:, 1])
        return keep

    def _field_at(self, pts: np.ndarray) -> np.ndarray:
        """The tissue field (bilinear, as the renderer samples it) at many points."""
        lay = self.layout
        sy, sx = lay.tissue_field.shape[0] / lay.height, lay.tissue_field.shape[1] / lay.width
        n, row = len(pts), 4096  # cv2.remap maps must stay under 32767 px a side: points go in rows of 4096
        pad = -n % row
        mx = np.pad(((pts[:, 0] + 0.5) * sx - 0.5).astype(np.float32), (0, pad)).reshape(-1, row)
        my = np.pad(((pts[:, 1] + 0.5) * sy - 0.5).astype(np.float32), (0, pad)).reshape(-1, row)
        field = cv2.remap(lay.tissue_field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return field.reshape(-1)[:n]


def _lesion_kind(rng: np.random.Generator, pts: np.ndarray, atypical: bool, mpp: float) -> Nuclei:
    """Lesion (and decoy) nuclei: the same size, shape and stain; striated chromatin when atypical."""
    n = len(pts)
    a = rng.uniform(*LESION_NUCLEUS_UM, n) / mpp
    b = a * rng.uniform(0.75, 1.0, n)
    return Nuclei.make(rng, pts, a, b, rng.uniform(0, np.pi, n), rng.uniform(200, 240, n), (0.85, 1.15),
                       atypical)


def _gland_nuclei(rng: np.random.Generator, glands: np.ndarray, radii: np.ndarray, atypical: bool,
                  mpp: float) -> Nuclei:
    """Nuclei evenly spaced (about 5.5 µm apart) around the middle of each gland's epithelium."""
    pts = []
    for (x, y), (r_out, r_lumen) in zip(glands, radii, strict=True):
        r_mid = (r_out + r_lumen) / 2
        k = max(5, round(2 * math.pi * r_mid / 5.5))
        ang = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(k) / k + rng.normal(0, 0.08, k)
        rad = (r_mid + rng.normal(0, 0.4, k)) / mpp
        pts.append(np.column_stack([x + rad * np.cos(ang), y + rad * np.sin(ang)]))
    return _lesion_kind(rng, np.concatenate(pts) if pts else np.zeros((0, 2)), atypical, mpp)


def lesion_only_layout(width: int, height: int, mpp: float) -> Layout:
    """A layout whose whole area is lesion (tissue everywhere, one polygon around it): for probing the cues."""
    pad = 64
    rect = np.array([[-pad, -pad], [width + pad, -pad], [width + pad, height + pad], [-pad, height + pad]], np.int64)
    return Layout(width, height, mpp, np.ones((8, 8), np.float32), [rect], 1.0, 1.0)


def _bbox(layout: Layout) -> tuple[float, float, float, float]:
    pts = np.concatenate(layout.polygons)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _interstitial_nuclei(rng: np.random.Generator, comp: _Compartments, atypical: bool, mpp: float) -> Nuclei:
    if not comp.layout.polygons:
        return _lesion_kind(rng, np.zeros((0, 2)), atypical, mpp)
    x0, y0, x1, y1 = _bbox(comp.layout)
    spacing = INTERSTITIAL_UM / mpp
    gx, gy = np.meshgrid(np.arange(x0 + spacing / 2, x1, spacing), np.arange(y0 + spacing / 2, y1, spacing))
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    pts = pts + rng.uniform(-0.35, 0.35, pts.shape) * spacing
    return _lesion_kind(rng, pts[comp.in_interstitium(pts)], atypical, mpp)


def _spindle_nuclei(rng: np.random.Generator, comp: _Compartments, fibre_deg: float, mpp: float) -> Nuclei:
    lay = comp.layout
    n = int(lay.width * lay.height * mpp**2 / SPINDLE_AREA_UM2)
    pts = rng.uniform([0, 0], [lay.width, lay.height], (n, 2))
    pts = pts[comp.in_stroma(pts)]
    m = len(pts)
    angle = np.deg2rad(fibre_deg + rng.normal(0, 15, m))
    return Nuclei.make(rng, pts, rng.uniform(4.0, 6.0, m) / mpp, rng.uniform(1.2, 1.8, m) / mpp, angle,
                       rng.uniform(130, 160, m), (0.95, 1.05), False)


def _decoy_nuclei(rng: np.random.Generator, comp: _Compartments, mpp: float) -> Nuclei:
    """Clusters of 8-14 atypical nuclei within 22 µm, centred in stroma at least 30 µm from any lesion."""
    lay = comp.layout
    n_clusters = max(1, round(comp.tissue_um2 / DECOY_AREA_UM2))
    cand = rng.uniform([0, 0], [lay.width, lay.height], (max(64, 40 * n_clusters), 2))
    cand = cand[comp.in_stroma(cand, margin_um=30.0)][:n_clusters]
    pts = []
    for cx, cy in cand:
        count = int(rng.integers(8, 15))
        ang, rad = rng.uniform(0, 2 * np.pi, count), np.sqrt(rng.uniform(0, 1, count)) * 22 / mpp
        pts.append(np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)]))
    pts_all = np.concatenate(pts) if pts else np.zeros((0, 2))
    return _lesion_kind(rng, pts_all[comp.in_stroma(pts_all)] if len(pts_all) else pts_all, True, mpp)


def _union(shapes: list[shapely.Polygon]) -> shapely.Geometry:
    """The union of lesion outlines. A traced outline can touch itself (GEOS: "side location conflict"); such a
    set is repaired with make_valid and unioned again, while valid sets keep the plain union (same slides)."""
    try:
        return shapely.unary_union(shapes)
    except shapely.errors.GEOSException:
        return shapely.unary_union([shapely.make_valid(s) for s in shapes])

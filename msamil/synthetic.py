"""The embedded synthetic dataset (DESIGN.md section 9): H&E-like Aperio slides whose label needs two scales.

Every slide shows tissue on a bright background: pink stroma with sparse spindle nuclei and one or two lesion
regions (5-25 % of the tissue, exported as QuPath GeoJSON polygons). The lesion is purple and dense, so a U-Net
at 8 µm/px can segment it. Inside the lesion two independent cues decide the label:

* cellular (visible at 20x, 32 µm fields): *atypical* nuclei, large, pleomorphic, irregular and hyperchromatic,
  versus small round regular nuclei;
* architectural (visible at 5x, 128 µm fields): cells arranged in *gland-like rings* on a lattice of 85-100 µm
  period, versus a disordered labyrinth of cords. Both architectures have the same cell/gap area fraction and the
  same band width, so a 32 µm field looks alike in both; only a field that spans a whole ring tells them apart.

Malignant = atypical nuclei AND rings. Benign slides carry exactly one of the cues (a decoy): atypical nuclei in a
labyrinth, or regular nuclei in rings. Every slide also has a few small clusters of atypical nuclei in normal
stroma, so a model that looks at all tissue (no lesion selection) sees 20x decoys everywhere. A 20x-only model
therefore cannot separate malignant from nuclear decoys, while a model that sees 20x and 5x can.

Everything is drawn in physical units (µm) and converted with the slide's MPP, so a 40x variant (mpp 0.25)
shows the same structures at twice the pixel size. Output is deterministic: the random stream is seeded from
(seed, crc32(slide id)) and the JPEG/TIFF encoders are deterministic.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from msamil.atomic import write_json, write_tsv
from msamil.errors import ConfigError
from msamil.svs import write_svs

log = logging.getLogger("msamil.synthetic")

CLASSES = ("benign", "malignant")
# Keys of the config's `synthetic` section that concern the table, not the drawing of one slide.
TABLE_KEYS = ("n_slides", "n_patients", "positive_fraction")
SLIDE_KEYS = ("width", "height", "tile_size", "jpeg_quality", "lesion_fraction", "mpp")

# Optical densities per unit stain (R, G, B): haematoxylin is blue-purple, eosin pink. Colour = 255 * exp(-OD).
HEMATOXYLIN_OD = np.array([0.55, 0.77, 0.28], np.float32)
EOSIN_OD = np.array([0.10, 0.85, 0.40], np.float32)
NUCLEUS_H_MAX = 2.4  # H density of a nucleus drawn at 255

COARSE_UM = 8.0  # grid of the tissue/lesion fields: the resolution of the tissue mask and the lesion U-Net
LESION_MARGIN_UM = 48.0  # lesion polygons stay this far inside the tissue edge
RING_LUMEN = 0.20  # gland ring geometry, in units of the lattice period
RING_OUTER = 0.46
LABYRINTH_WAVELENGTH = 0.6  # in units of the lattice period
CELL_FRACTION = math.pi * (RING_OUTER**2 - RING_LUMEN**2) / (math.sqrt(3) / 2)  # cells / lattice cell area


def slide_ids(n_slides: int) -> list[str]:
    """Slide ids `syn_000`, `syn_001`, ... (rules/synthetic.smk builds the same names without importing this)."""
    return [f"syn_{i:03d}" for i in range(n_slides)]


def slide_rng(seed: int, slide: str) -> np.random.Generator:
    """An independent, reproducible random stream per slide (crc32, unlike hash(), is stable across runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(slide.encode())])


# --------------------------------------------------------------------------------------------- the slide table
def synthetic_table(cfg_synthetic: dict[str, Any], seed: int) -> pd.DataFrame:
    """Slides, patients and labels: exactly round(positive_fraction * n_slides) malignant slides.

    `n_patients` < `n_slides` gives some patients two slides; both slides of a patient share the label (they
    come from the same tumour), which is what makes patient-grouped splits matter.
    """
    n_slides, n_patients = int(cfg_synthetic["n_slides"]), int(cfg_synthetic["n_patients"])
    if not 0 < n_patients <= n_slides or n_slides > 2 * n_patients:
        raise ConfigError(
            f"synthetic.n_patients={n_patients} does not fit synthetic.n_slides={n_slides}: "
            "need n_slides/2 <= n_patients <= n_slides (each patient has one or two slides)"
        )
    n_pos = round(float(cfg_synthetic["positive_fraction"]) * n_slides)
    rng = np.random.default_rng([int(seed), 7919])
    n_pairs = n_slides - n_patients
    sizes = np.array([2] * n_pairs + [1] * (n_patients - n_pairs))
    rng.shuffle(sizes)
    positive = _choose_positive_patients(sizes, n_pos, rng)
    if positive is None:
        raise ConfigError(
            f"synthetic.positive_fraction gives {n_pos} malignant slides, which cannot be split over patients "
            f"with {n_pairs} two-slide patients; change synthetic.positive_fraction or synthetic.n_patients"
        )
    patients = np.repeat(np.arange(n_patients), sizes)
    labels = np.repeat(positive, sizes)
    order = rng.permutation(n_slides)  # slides of one patient need not be neighbours
    return pd.DataFrame({
        "slide": slide_ids(n_slides),
        "patient": [f"pat_{p:03d}" for p in patients[order]],
        "label": [CLASSES[int(v)] for v in labels[order]],
    })


def _choose_positive_patients(sizes: np.ndarray, n_pos: int, rng: np.random.Generator) -> np.ndarray | None:
    """Pick patients whose slide counts add up to exactly `n_pos` (random among the feasible splits)."""
    pairs, singles = np.flatnonzero(sizes == 2), np.flatnonzero(sizes == 1)
    feasible = [k for k in range(len(pairs) + 1) if 0 <= n_pos - 2 * k <= len(singles)]
    if not feasible:
        return None
    k = int(rng.choice(feasible))
    chosen = np.concatenate([rng.choice(pairs, k, replace=False), rng.choice(singles, n_pos - 2 * k, replace=False)])
    positive = np.zeros(len(sizes), bool)
    positive[chosen.astype(int)] = True
    return positive


def write_table(
    out_path: str | os.PathLike[str], cfg_synthetic: dict[str, Any], seed: int, slide_pattern: str,
    annotation_pattern: str,
) -> pd.DataFrame:
    """The dataset's raw table (slide, patient, label, path, annotation, mpp) for the inspect checkpoint.

    Paths are formatted from `slide_pattern`/`annotation_pattern` (`{slide}` placeholder) and stay relative to
    the workflow's working directory; mpp is empty because the slides carry their own.
    """
    table = synthetic_table(cfg_synthetic, seed)
    table["path"] = [slide_pattern.format(slide=s) for s in table["slide"]]
    table["annotation"] = [annotation_pattern.format(slide=s) for s in table["slide"]]
    table["mpp"] = ""
    write_tsv(out_path, table)
    log.info("wrote %d slides (%d malignant) to %s", len(table), (table["label"] == "malignant").sum(), out_path)
    return table


# ------------------------------------------------------------------------------------------------- one slide
@dataclass(frozen=True)
class SlidePlan:
    """What a slide shows, decided before drawing: the label is `atypical and glandular`."""

    atypical: bool
    glandular: bool
    lesion_fraction: float  # target share of the tissue
    period_um: float  # lattice period of the architecture

    @property
    def malignant(self) -> bool:
        return self.atypical and self.glandular


@dataclass
class SyntheticSlide:
    """A rendered slide: level-0 pixels, the masks it was drawn from and the lesion polygons (level-0 x, y)."""

    rgb: np.ndarray
    tissue: np.ndarray
    lesion: np.ndarray
    polygons: list[np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


def plan_slide(rng: np.random.Generator, malignant: bool, lesion_fraction: tuple[float, float]) -> SlidePlan:
    """Malignant slides get both cues; a benign one gets one of them at random (the decoy)."""
    lo, hi = sorted(float(v) for v in lesion_fraction)
    margin = 0.15 * (hi - lo)  # rasterising polygons moves the share a little; stay clear of the bounds
    target = float(rng.uniform(lo + margin, hi - margin))
    period = float(rng.uniform(85.0, 100.0))
    if malignant:
        return SlidePlan(True, True, target, period)
    nuclear_decoy = bool(rng.random() < 0.5)
    return SlidePlan(nuclear_decoy, not nuclear_decoy, target, period)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, rescaled to zero mean and unit variance."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _tissue_field(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Coarse field whose upper level set is the tissue: 1-3 soft blobs with noisy borders, off the slide edge."""
    ch, cw = shape
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    fld = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.3, 0.7) * cw, rng.uniform(0.3, 0.7) * ch
        rx, ry = rng.uniform(0.22, 0.36) * cw, rng.uniform(0.22, 0.36) * ch
        fld += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    fld += 0.18 * _smooth_noise(rng, shape, max(1.5, min(shape) / 20))
    edge = np.minimum.reduce([xx, yy, cw - 1 - xx, ch - 1 - yy]) / (0.08 * min(shape))
    fld *= np.clip(edge, 0, 1)  # nothing touches the border, so every tissue edge is visible
    coverage = rng.uniform(0.35, 0.55)
    return fld, float(np.quantile(fld, 1 - coverage))


def _lesion_field(
    rng: np.random.Generator, inside: np.ndarray, period_cells: float
) -> np.ndarray:
    """Coarse field whose lower level sets are 1-2 compact lesions, seeded deep inside the tissue."""
    ch, cw = inside.shape
    dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    candidates = np.flatnonzero(dist >= 0.6 * dist.max())
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    fld = np.full(inside.shape, np.inf, np.float32)
    for _ in range(1 if rng.random() < 0.6 else 2):
        cy, cx = np.unravel_index(int(rng.choice(candidates)), inside.shape)
        angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.55, 1.0)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / aspect
        fld = np.minimum(fld, np.hypot(u, v))
    fld *= 1 + 0.25 * _smooth_noise(rng, inside.shape, max(1.0, period_cells))
    return fld


def _lesion_polygons(
    fld: np.ndarray, inside: np.ndarray, threshold: float, size: tuple[int, int], min_area_px: float
) -> list[np.ndarray]:
    """Smooth outer contours (no holes) of `fld <= threshold` within `inside`, in level-0 integer pixels."""
    width, height = size
    mid = (max(8, width // 4), max(8, height // 4))
    big = np.float32(threshold * 4 + 1)
    masked = np.where(inside, fld, big).astype(np.float32)
    fine = cv2.resize(masked, mid, interpolation=cv2.INTER_LINEAR)
    inside_fine = cv2.resize(inside.astype(np.uint8), mid, interpolation=cv2.INTER_NEAREST).astype(bool)
    mask = ((fine <= threshold) & inside_fine).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    sx, sy = width / mid[0], height / mid[1]
    polygons = []
    for contour in contours:
        simple = cv2.approxPolyDP(contour, 0.75, True)[:, 0, :].astype(np.float64)
        if len(simple) < 3:
            continue
        poly = np.rint(np.column_stack([(simple[:, 0] + 0.5) * sx, (simple[:, 1] + 0.5) * sy])).astype(np.int64)
        if cv2.contourArea(poly.astype(np.float32)) >= min_area_px:
            polygons.append(poly)
    polygons.sort(key=lambda p: (int(p[:, 1].min()), int(p[:, 0].min())))
    return polygons


def _rasterise(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.uint8)
    if polygons:
        cv2.fillPoly(mask, [p.astype(np.int32) for p in polygons], 1)
    return mask.astype(bool)


def _layout(
    rng: np.random.Generator, size: tuple[int, int], mpp: float, plan: SlidePlan,
    lesion_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Soft tissue mask, lesion mask and polygons at level 0 with the lesion share inside the target range."""
    width, height = size
    # small test slides get a finer grid, a thinner margin and smaller lesions, so the lesion always fits
    extent_um = min(width, height) * mpp
    coarse_um = min(COARSE_UM, extent_um / 96)
    margin_um = min(LESION_MARGIN_UM, extent_um / 24)
    step = coarse_um / mpp
    coarse = (max(8, math.ceil(height / step)), max(8, math.ceil(width / step)))
    tfield, tthr = _tissue_field(rng, coarse)
    up = cv2.resize(tfield - tthr, size, interpolation=cv2.INTER_LINEAR)
    soft = np.clip(up / 0.04 + 0.5, 0, 1)
    tissue = up > 0
    inside_coarse = cv2.erode(
        (tfield > tthr).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * math.ceil(margin_um / coarse_um) + 1,) * 2),
    ).astype(bool)
    if inside_coarse.sum() < 16:
        raise RuntimeError(f"no room for a lesion in a {width}x{height} slide; use a larger synthetic.width/height")
    lfield = _lesion_field(rng, inside_coarse, plan.period_um / coarse_um)
    values = np.sort(lfield[inside_coarse])
    n_tissue = int((tfield > tthr).sum())
    min_area = (min(60.0, extent_um / 10) / mpp) ** 2
    lo, hi = sorted(float(v) for v in lesion_range)
    target, best, best_err = plan.lesion_fraction, None, np.inf
    for _ in range(8):  # the coarse grid quantises the share: correct the target a few times
        k = int(np.clip(round(target * n_tissue), 1, len(values) - 1))
        polygons = _lesion_polygons(lfield, inside_coarse, float(values[k]), size, min_area)
        lesion = _rasterise(polygons, size) & tissue
        share = lesion.sum() / max(1, tissue.sum())
        err = abs(share - plan.lesion_fraction)
        if polygons and lo <= share <= hi and err < best_err:
            best, best_err = (soft, lesion, polygons, tissue), err
        if best is not None and err < 0.1 * plan.lesion_fraction:
            break
        target *= plan.lesion_fraction / max(share, 1e-3)
    if best is None:
        raise RuntimeError(
            f"could not place a lesion of {lo:.2f}-{hi:.2f} of the tissue in a {width}x{height} slide "
            f"(last try {share:.3f}); use a larger synthetic.width/height"
        )
    return best


def _architecture(
    rng: np.random.Generator, shape: tuple[int, int], period_px: float, glandular: bool
) -> np.ndarray:
    """Cell mask (uint8 0/1) of a lesion box: gland rings on a jittered hexagonal lattice, or a labyrinth.

    The labyrinth is band-pass noise at the same period, thresholded to the rings' cell fraction, so bands and
    gaps have the same widths and shares; only their arrangement (closed rings vs random cords) differs.
    """
    h, w = shape
    if glandular:
        mask = np.zeros(shape, np.uint8)
        theta, off = rng.uniform(0, np.pi / 3), rng.uniform(0, period_px, 2)
        reach = int(math.ceil(math.hypot(h, w) / period_px)) + 2
        i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1))
        lx = (i + 0.5 * (j % 2)) * period_px
        ly = j * period_px * math.sqrt(3) / 2
        cx = w / 2 + off[0] + lx * math.cos(theta) - ly * math.sin(theta)
        cy = h / 2 + off[1] + lx * math.sin(theta) + ly * math.cos(theta)
        keep = (cx > -period_px) & (cx < w + period_px) & (cy > -period_px) & (cy < h + period_px)
        cx, cy = cx[keep].ravel(), cy[keep].ravel()
        jitter = rng.normal(0, 0.04 * period_px, (2, cx.size))
        scale = rng.uniform(0.93, 1.03, cx.size)
        mid, band = (RING_LUMEN + RING_OUTER) / 2 * period_px, (RING_OUTER - RING_LUMEN) * period_px
        for x, y, s in zip(cx + jitter[0], cy + jitter[1], scale, strict=True):
            cv2.circle(mask, (int(round(x * 4)), int(round(y * 4))), int(round(mid * s * 4)), 1,
                       max(1, int(round(band * s))), cv2.LINE_8, 2)
        return mask
    # A ring lattice has three gaps per lattice cell (a lumen and two interstitial triangles), so the labyrinth's
    # wavelength is shorter than the lattice period to give gaps of the same size and spacing.
    step = LABYRINTH_WAVELENGTH * period_px / 8  # 8 samples per wavelength suffice for a band-limited field
    gh, gw = max(16, math.ceil(h / step) + 1), max(16, math.ceil(w / step) + 1)
    spectrum = np.fft.rfft2(rng.standard_normal((gh, gw)))
    ky = np.fft.fftfreq(gh)[:, None]
    kx = np.fft.rfftfreq(gw)[None, :]
    k0 = 1 / 8
    radial = np.hypot(ky, kx)
    noise = np.fft.irfft2(spectrum * np.exp(-(((radial - k0) / (0.3 * k0)) ** 2)), s=(gh, gw)).astype(np.float32)
    fine = cv2.resize(noise, (int(round(gw * step)), int(round(gh * step))), interpolation=cv2.INTER_CUBIC)[:h, :w]
    threshold = np.quantile(fine[:: max(1, h // 256), :: max(1, w // 256)], 1 - CELL_FRACTION)
    return (fine > threshold).astype(np.uint8)


@dataclass
class _Nuclei:
    """Nuclei to draw: centres, semi-axes and orientation in level-0 pixels, stain value 0..255, shape."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    value: np.ndarray
    irregular: bool


def _grid_points(rng: np.random.Generator, box: tuple[int, int, int, int], spacing: float) -> np.ndarray:
    """A jittered square grid (cells in epithelium sit at roughly even spacing) inside box=(x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0 + spacing / 2, x1, spacing)
    ys = np.arange(y0 + spacing / 2, y1, spacing)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    return pts + rng.uniform(-0.3, 0.3, pts.shape) * spacing


def _select(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ix = np.clip(np.rint(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
    iy = np.clip(np.rint(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return points[mask[iy, ix]]


def _lesion_nuclei(rng: np.random.Generator, pts: np.ndarray, atypical: bool, um: float) -> _Nuclei:
    """Regular: small, round, mid-purple. Atypical: large, pleomorphic, irregular and dark."""
    n = len(pts)
    if atypical:
        r = rng.uniform(3.6, 6.0, n) * um
        aspect = rng.uniform(0.65, 1.0, n)
        value = rng.uniform(215, 250, n)
    else:
        r = rng.uniform(2.5, 3.0, n) * um
        aspect = rng.uniform(0.85, 1.0, n)
        value = rng.uniform(140, 165, n)
    return _Nuclei(pts[:, 0], pts[:, 1], r, r * aspect, rng.uniform(0, 180, n), value, atypical)


def _spindle_nuclei(rng: np.random.Generator, pts: np.ndarray, fibre_deg: float, um: float) -> _Nuclei:
    n = len(pts)
    return _Nuclei(
        pts[:, 0], pts[:, 1], rng.uniform(4.0, 6.0, n) * um, rng.uniform(1.2, 1.8, n) * um,
        fibre_deg + rng.normal(0, 15, n), rng.uniform(130, 160, n), False,
    )


def _draw_nuclei(canvas: np.ndarray, nuclei: _Nuclei, rng: np.random.Generator) -> None:
    """Draw filled nuclei into a uint8 haematoxylin canvas (sub-pixel precise, anti-aliased)."""
    shift, f = 2, 4.0
    if not nuclei.irregular:
        for x, y, a, b, ang, v in zip(nuclei.x, nuclei.y, nuclei.a, nuclei.b, nuclei.angle, nuclei.value,
                                      strict=True):
            cv2.ellipse(canvas, (int(x * f), int(y * f)), (max(1, int(a * f)), max(1, int(b * f))), float(ang),
                        0, 360, int(v), -1, cv2.LINE_AA, shift)
        return
    k = 11
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    wobble = rng.uniform(0.72, 1.25, (len(nuclei.x), k))
    wobble = (wobble + np.roll(wobble, 1, axis=1)) / 2  # irregular but not spiky
    for idx in range(len(nuclei.x)):
        ang = np.deg2rad(nuclei.angle[idx])
        px = nuclei.a[idx] * wobble[idx] * np.cos(t)
        py = nuclei.b[idx] * wobble[idx] * np.sin(t)
        xs = nuclei.x[idx] + px * np.cos(ang) - py * np.sin(ang)
        ys = nuclei.y[idx] + px * np.sin(ang) + py * np.cos(ang)
        pts = np.rint(np.column_stack([xs, ys]) * f).astype(np.int32)
        cv2.fillPoly(canvas, [pts], int(nuclei.value[idx]), cv2.LINE_AA, shift)


def _decoy_clusters(
    rng: np.random.Generator, stroma: np.ndarray, tissue_um2: float, um: float
) -> np.ndarray:
    """Centres of small groups of atypical nuclei in normal stroma: 20x decoys present in every slide."""
    n_clusters = max(1, round(tissue_um2 / 5e5))
    dist = cv2.distanceTransform(stroma.astype(np.uint8), cv2.DIST_L2, 3)
    candidates = np.flatnonzero(dist > 30 * um)
    if not len(candidates):
        return np.zeros((0, 2))
    pts = []
    for idx in rng.choice(candidates, n_clusters):
        cy, cx = np.unravel_index(int(idx), stroma.shape)
        count = int(rng.integers(8, 15))
        ang, rad = rng.uniform(0, 2 * np.pi, count), np.sqrt(rng.uniform(0, 1, count)) * 22 * um
        pts.append(np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)]))
    return np.concatenate(pts)


def render_slide(
    rng: np.random.Generator, width: int, height: int, mpp: float, plan: SlidePlan,
    lesion_range: tuple[float, float] = (0.05, 0.25),
) -> SyntheticSlide:
    """Draw one slide at level 0 as stain densities, then convert to RGB with Beer-Lambert absorption."""
    size = (int(width), int(height))
    um = 1.0 / mpp  # pixels per micrometre
    soft, lesion, polygons, tissue = _layout(rng, size, mpp, plan, lesion_range)

    # lesion architecture: cells vs gaps, drawn in the lesion's bounding box only
    cells = np.zeros((height, width), bool)
    if polygons:
        allpts = np.concatenate(polygons)
        x0, y0 = np.maximum(allpts.min(0) - 2, 0)
        x1, y1 = np.minimum(allpts.max(0) + 3, [width, height])
        arch = _architecture(rng, (int(y1 - y0), int(x1 - x0)), plan.period_um * um, plan.glandular)
        cells[y0:y1, x0:x1] = arch.astype(bool)
        cells &= lesion
    gaps = lesion & ~cells
    stroma = tissue & ~lesion

    # nuclei
    fibre_deg = float(rng.uniform(0, 180))
    nuc = np.zeros((height, width), np.uint8)
    spindle_pts = rng.uniform([0, 0], [width, height], (int(tissue.sum() / (20 * um) ** 2), 2))
    spindle_pts = _select(spindle_pts, (stroma | gaps) & (soft > 0.5))
    _draw_nuclei(nuc, _spindle_nuclei(rng, spindle_pts, fibre_deg, um), rng)
    tissue_um2 = float(tissue.sum()) / um**2
    decoys = _select(_decoy_clusters(rng, stroma, tissue_um2, um), stroma)
    _draw_nuclei(nuc, _lesion_nuclei(rng, decoys, True, um), rng)
    if polygons:
        # regular cells pack denser, so both kinds put about the same haematoxylin into a low-resolution pixel:
        # the cellular cue is the nuclei's size, shape and texture, which needs 20x to see
        spacing = (13.0 if plan.atypical else 7.5) * um
        cell_erode = cv2.erode(cells.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(1.5 * um)))
        pts = _select(_grid_points(rng, (int(x0), int(y0), int(x1), int(y1)), spacing), cell_erode.astype(bool))
        _draw_nuclei(nuc, _lesion_nuclei(rng, pts, plan.atypical, um), rng)

    # stain densities
    fibres = _fibre_texture(rng, size, fibre_deg, um)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    nucf = cv2.GaussianBlur(nuc, (0, 0), 0.6 * um).astype(np.float32) * (NUCLEUS_H_MAX / 255.0)
    nucf *= 1 + 0.22 * grain  # chromatin texture
    # python floats, not numpy float64 scalars: those would promote every float32 layer to float64 (NEP 50)
    e_scale, h_scale = float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1))
    # lesion: blend cytoplasm and gap stain with an anti-aliased cell mask; stroma keeps its fibres
    cellf = np.zeros((height, width), np.float32)
    if polygons:
        box = cells[y0:y1, x0:x1].astype(np.float32)
        cellf[y0:y1, x0:x1] = cv2.GaussianBlur(box, (0, 0), 0.7 * um) * lesion[y0:y1, x0:x1]
    eos = np.where(lesion, 0.18 + 0.12 * cellf, 0.45 * (1 + 0.22 * fibres)).astype(np.float32)
    hem = np.where(lesion, 0.05 + 0.37 * cellf, 0.05).astype(np.float32)
    eos = e_scale * soft * eos * (1 - 0.5 * np.clip(nucf, 0, 1))
    hem = h_scale * (soft * hem + nucf)
    background_od = float(rng.uniform(0.045, 0.065))
    h_vec = HEMATOXYLIN_OD * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    e_vec = EOSIN_OD * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        od = eos * float(e_vec[c]) + hem * float(h_vec[c]) + 0.012 * grain + background_od
        rgb[..., c] = np.clip(np.exp(-od) * 255.0, 0, 255).astype(np.uint8)

    share = float(lesion.sum() / max(1, tissue.sum()))
    info = {
        "label": CLASSES[int(plan.malignant)],
        "atypical_nuclei": plan.atypical,
        "architecture": "glandular" if plan.glandular else "labyrinth",
        "period_um": round(plan.period_um, 3),
        "lesion_fraction": round(share, 5),
        "tissue_fraction": round(float(tissue.mean()), 5),
        "mpp": mpp,
        "width": width,
        "height": height,
    }
    return SyntheticSlide(rgb, tissue, lesion, polygons, info)


def _fibre_texture(rng: np.random.Generator, size: tuple[int, int], angle_deg: float, um: float) -> np.ndarray:
    """Streaky stroma texture: noise smeared along one direction (collagen fibres), made at half resolution."""
    width, height = size
    half = (max(4, width // 2), max(4, height // 2))
    noise = rng.standard_normal((half[1], half[0]), dtype=np.float32)
    length = max(3, int(6 * um) | 1)
    kernel = np.zeros((length, length), np.float32)
    c = length // 2
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    cv2.line(kernel, (int(round(c - dx * c)), int(round(c - dy * c))), (int(round(c + dx * c)), int(round(c + dy * c))),
             1.0, 1)
    smeared = cv2.filter2D(noise, -1, kernel / kernel.sum())
    smeared /= smeared.std() + 1e-6
    return cv2.resize(smeared, size, interpolation=cv2.INTER_LINEAR)


def _slide_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    """The drawing parameters out of a `synthetic` config section (table-level keys are ignored)."""
    unknown = set(sizes) - set(SLIDE_KEYS) - set(TABLE_KEYS)
    if unknown:
        raise ConfigError(f"unknown synthetic setting(s) {sorted(unknown)}; known: {sorted(SLIDE_KEYS + TABLE_KEYS)}")
    out = {"width": 3072, "height": 2048, "tile_size": 256, "jpeg_quality": 85, "lesion_fraction": (0.05, 0.25),
           "mpp": 0.5}
    out.update({k: v for k, v in sizes.items() if k in SLIDE_KEYS})
    return out


def make_slide(slide: str, label: str | int | bool, seed: int, **sizes: Any) -> SyntheticSlide:
    """Render one slide in memory (no files): what write_synthetic_slide writes, for tests and benchmarks."""
    params = _slide_sizes(sizes)
    malignant = label == "malignant" if isinstance(label, str) else bool(label)
    if isinstance(label, str) and label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    rng = slide_rng(seed, slide)
    plan = plan_slide(rng, malignant, params["lesion_fraction"])
    return render_slide(rng, int(params["width"]), int(params["height"]), float(params["mpp"]), plan,
                        tuple(params["lesion_fraction"]))


def lesion_geojson(slide: str, seed: int, polygons: list[np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    """A QuPath-style FeatureCollection: one `Tumor` annotation per polygon, level-0 pixel coordinates.

    Feature ids are UUIDs derived from (seed, slide, index), so they are stable across runs.
    """
    features = []
    for idx, poly in enumerate(polygons):
        ring = [[int(x), int(y)] for x, y in poly] + [[int(poly[0, 0]), int(poly[0, 1])]]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"msamil-synthetic/{seed}/{slide}/{idx}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": f"lesion {idx + 1}",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "isLocked": False,
            },
        })
    return {"type": "FeatureCollection", "features": features, "msamil": {"slide": slide, "seed": seed, **info}}


def write_synthetic_slide(
    svs_path: str | os.PathLike[str], geojson_path: str | os.PathLike[str], slide: str,
    label: str | int | bool, seed: int, **sizes: Any,
) -> dict[str, Any]:
    """Render a slide and write it as an Aperio SVS plus its lesion GeoJSON; return the slide's description.

    `sizes` are the `synthetic` config keys (width, height, tile_size, jpeg_quality, lesion_fraction) plus `mpp`.
    """
    params = _slide_sizes(sizes)
    syn = make_slide(slide, label, seed, **params)
    write_svs(svs_path, syn.rgb, mpp=float(params["mpp"]), tile_size=int(params["tile_size"]),
              jpeg_quality=int(params["jpeg_quality"]))
    write_json(geojson_path, lesion_geojson(slide, seed, syn.polygons, syn.info))
    log.info("%s: %s", slide, syn.info)
    return syn.info


def generate_synthetic(
    table_path: str | os.PathLike[str], slide: str, svs_path: str | os.PathLike[str],
    geojson_path: str | os.PathLike[str], seed: int, cfg_synthetic: dict[str, Any], mpp: float,
) -> dict[str, Any]:
    """Rule entry point: look the slide's label up in the raw table, then write the slide and its lesions."""
    table = pd.read_csv(table_path, sep="\t", dtype={"slide": str})
    rows = table.loc[table["slide"] == slide, "label"]
    if rows.empty:
        raise ConfigError(f"slide {slide!r} is not in {table_path}; check synthetic.n_slides")
    return write_synthetic_slide(svs_path, geojson_path, slide, str(rows.iloc[0]), seed, mpp=mpp,
                                 **{k: v for k, v in cfg_synthetic.items() if k in SLIDE_KEYS})


def render_preview(path: str | os.PathLike[str], syn: SyntheticSlide) -> None:
    """Save the level-0 image with lesion outlines (for eyeballing the generator; not used by the workflow)."""
    img = cv2.cvtColor(syn.rgb, cv2.COLOR_RGB2BGR)
    cv2.polylines(img, [p.astype(np.int32) for p in syn.polygons], True, (0, 200, 0), 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)

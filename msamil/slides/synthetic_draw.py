"""Drawing primitives of the synthetic slides: tissue and lesion fields, gland rings or labyrinth, nuclei, fibres.

`msamil.slides.synthetic` decides what a slide shows and composes these into stain densities; everything here
works in level-0 pixels (sizes given in µm are converted by the caller's `um` = pixels per micrometre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

RING_LUMEN = 0.20  # gland ring geometry, in units of the lattice period
RING_OUTER = 0.46
LABYRINTH_WAVELENGTH = 0.6  # in units of the lattice period
CELL_FRACTION = math.pi * (RING_OUTER**2 - RING_LUMEN**2) / (math.sqrt(3) / 2)  # cells / lattice cell area


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, rescaled to zero mean and unit variance."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def tissue_field(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
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


def lesion_field(
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


def lesion_polygons(
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


def rasterise(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.uint8)
    if polygons:
        cv2.fillPoly(mask, [p.astype(np.int32) for p in polygons], 1)
    return mask.astype(bool)


def architecture(
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
class Nuclei:
    """Nuclei to draw: centres, semi-axes and orientation in level-0 pixels, stain value 0..255, shape."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    value: np.ndarray
    irregular: bool


def grid_points(rng: np.random.Generator, box: tuple[int, int, int, int], spacing: float) -> np.ndarray:
    """A jittered square grid (cells in epithelium sit at roughly even spacing) inside box=(x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0 + spacing / 2, x1, spacing)
    ys = np.arange(y0 + spacing / 2, y1, spacing)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    return pts + rng.uniform(-0.3, 0.3, pts.shape) * spacing


def select(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ix = np.clip(np.rint(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
    iy = np.clip(np.rint(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return points[mask[iy, ix]]


def lesion_nuclei(rng: np.random.Generator, pts: np.ndarray, atypical: bool, um: float) -> Nuclei:
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
    return Nuclei(pts[:, 0], pts[:, 1], r, r * aspect, rng.uniform(0, 180, n), value, atypical)


def spindle_nuclei(rng: np.random.Generator, pts: np.ndarray, fibre_deg: float, um: float) -> Nuclei:
    n = len(pts)
    return Nuclei(
        pts[:, 0], pts[:, 1], rng.uniform(4.0, 6.0, n) * um, rng.uniform(1.2, 1.8, n) * um,
        fibre_deg + rng.normal(0, 15, n), rng.uniform(130, 160, n), False,
    )


def draw_nuclei(canvas: np.ndarray, nuclei: Nuclei, rng: np.random.Generator) -> None:
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


def decoy_clusters(
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


def fibre_texture(rng: np.random.Generator, size: tuple[int, int], angle_deg: float, um: float) -> np.ndarray:
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

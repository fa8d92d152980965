"""Where a synthetic slide puts things, decided once per slide in bounded memory: tissue, lesions and glands.

Everything here is small whatever the slide size (coarse fields on an 8 µm grid, lesion polygons, gland centres),
so `msamil.slides.synthetic_draw` can render the pixels tile by tile from it. Positions are level-0 pixels.

The architectural cue lives in the gland centres (see `gland_centres`): glands sit on chains with a constant
step and a constant turning angle. In the *rosette* arrangement every turn has the same sign, so each chain closes
into a ring of `GLANDS_PER_UNIT` glands; in the *meander* arrangement the signs are random, so chains wander.
Any three consecutive glands are congruent in both (same step, same turn magnitude), and a 20x field (32 µm)
never holds more than three glands of a chain; only four or more consecutive glands, ~90 µm apart, show whether
the turns add up to a ring. That is a 5x (128 µm) view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

COARSE_UM = 8.0  # grid of the tissue/lesion fields: the resolution of the tissue mask and the lesion U-Net
LESION_MARGIN_UM = 48.0  # lesion polygons stay this far inside the tissue edge
MEASURE_PX = 2048  # longest side of the raster on which the lesion's share of the tissue is measured
POLYGON_PX = 4096  # longest side of the raster lesion outlines are traced on (finer for small slides)

GLANDS_PER_UNIT = 8  # glands per rosette (and per meander), so a rosette turns 45° per step
GLAND_OUTER_UM = (10.0, 12.0)  # gland radius range
GLAND_LUMEN_UM = (3.5, 4.5)  # lumen radius range
UNIT_GAP_UM = 46.0  # minimum distance between glands of different units (rosettes or meanders)
MAX_SAME_TURNS = 3  # meanders never turn the same way more than this many times in a row (no closed rings)


@dataclass
class Layout:
    """A slide's plan at low resolution. `tissue_field` is positive inside tissue (bilinear-upsampled on demand)."""

    width: int
    height: int
    mpp: float
    tissue_field: np.ndarray  # float32 coarse grid, field minus its threshold
    polygons: list[np.ndarray]  # lesion outlines, int64 (n, 2) level-0 x, y
    lesion_share: float  # lesion area / tissue area, measured on a raster of at most MEASURE_PX
    tissue_fraction: float  # tissue area / slide area

    def tissue_window(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The tissue field at the level-0 pixels of a window, exactly as one resize of the whole slide gives it."""
        return sample_coarse(self.tissue_field, self.width, self.height, x0, y0, w, h)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, rescaled to zero mean and unit variance."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def sample_coarse(field: np.ndarray, width: int, height: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Bilinear samples of a coarse grid at level-0 pixels [x0, x0+w) x [y0, y0+h), with cv2.resize's pixel-centre
    convention (src = (dst + 0.5) * src_size / dst_size - 0.5, edges replicated), so tiles agree with one resize."""
    sy, sx = field.shape[0] / height, field.shape[1] / width
    xs = ((np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * sx - 0.5).astype(np.float32)
    ys = ((np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * sy - 0.5).astype(np.float32)
    map_x = np.broadcast_to(xs[None, :], (h, w))
    map_y = np.broadcast_to(ys[:, None], (h, w))
    return cv2.remap(field, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def tissue_field(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Coarse field whose upper level set is the tissue: 1-3 soft blobs with noisy borders, off the slide edge."""
    ch, cw = shape
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    fld = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.3, 0.7) * cw, rng.uniform(0.3, 0.7) * ch
        rx, ry = rng.uniform(0.22, 0.36) * cw, rng.uniform(0.22, 0.36) * ch
        fld += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    fld += 0.18 * smooth_noise(rng, shape, max(1.5, min(shape) / 20))
    edge = np.minimum.reduce([xx, yy, cw - 1 - xx, ch - 1 - yy]) / (0.08 * min(shape))
    fld *= np.clip(edge, 0, 1)  # nothing touches the border, so every tissue edge is visible
    coverage = rng.uniform(0.35, 0.55)
    return fld, float(np.quantile(fld, 1 - coverage))


def lesion_field(rng: np.random.Generator, inside: np.ndarray, wobble_cells: float) -> np.ndarray:
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
    fld *= 1 + 0.25 * smooth_noise(rng, inside.shape, max(1.0, wobble_cells))
    return fld


def lesion_polygons(
    fld: np.ndarray, inside: np.ndarray, threshold: float, size: tuple[int, int], min_area_px: float
) -> list[np.ndarray]:
    """Smooth outer contours (no holes) of `fld <= threshold` within `inside`, in level-0 integer pixels."""
    width, height = size
    f = min(0.25, POLYGON_PX / max(width, height))
    mid = (max(8, round(width * f)), max(8, round(height * f)))
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


def rasterise(polygons: list[np.ndarray], size: tuple[int, int], offset: tuple[int, int] = (0, 0),
              scale: float = 1.0) -> np.ndarray:
    """Boolean mask (h, w): pixels whose centre lies inside a polygon, over the level-0 window at `offset` (or the
    whole slide at `scale`).

    Scanline even-odd fill computed from the vertices directly: a pixel's value depends only on its position, so
    tiles agree with each other and with the whole-slide mask (cv2.fillPoly clips to its canvas and does not).
    """
    w, h = size
    mask = np.zeros((h, w), bool)
    yc = np.arange(h, dtype=np.float64) + 0.5
    for poly in polygons:
        p = np.asarray(poly, np.float64) * scale - np.asarray(offset, np.float64) * scale
        a, b = p, np.roll(p, -1, axis=0)
        rows = (yc >= min(p[:, 1].min(), h)) & (yc < p[:, 1].max())
        if not rows.any():
            continue
        ys = yc[rows][:, None]
        up = (a[None, :, 1] <= ys) & (b[None, :, 1] > ys)
        down = (b[None, :, 1] <= ys) & (a[None, :, 1] > ys)
        crossing = up | down
        dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
        xs = a[None, :, 0] + (ys - a[None, :, 1]) / dy[None, :] * (b[None, :, 0] - a[None, :, 0])
        for r, (row_x, row_c) in zip(np.flatnonzero(rows), zip(xs, crossing, strict=True), strict=True):
            cuts = np.sort(row_x[row_c])
            # pixel centres x + 0.5 in [x_in, x_out): columns ceil(x_in - 0.5) .. ceil(x_out - 0.5) - 1
            cols = np.clip(np.ceil(cuts - 0.5).astype(np.int64), 0, w)
            for c0, c1 in zip(cols[0::2], cols[1::2], strict=False):
                mask[r, c0:c1] ^= True
    return mask


def plan_layout(rng: np.random.Generator, width: int, height: int, mpp: float, target_share: float,
                wobble_um: float, lesion_range: tuple[float, float]) -> Layout:
    """Tissue field and lesion polygons whose share of the tissue lies in `lesion_range`, near `target_share`."""
    extent_um = min(width, height) * mpp
    # small test slides get a finer grid, a thinner margin and smaller lesions, so the lesion always fits
    coarse_um = min(COARSE_UM, extent_um / 96)
    margin_um = min(LESION_MARGIN_UM, extent_um / 24)
    step = coarse_um / mpp
    coarse = (max(8, math.ceil(height / step)), max(8, math.ceil(width / step)))
    tfield, tthr = tissue_field(rng, coarse)
    field = (tfield - tthr).astype(np.float32)
    scale = min(1.0, MEASURE_PX / max(width, height))
    measure = (max(1, round(width * scale)), max(1, round(height * scale)))
    tissue = cv2.resize(field, measure, interpolation=cv2.INTER_LINEAR) > 0
    inside = cv2.erode(
        (field > 0).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * math.ceil(margin_um / coarse_um) + 1,) * 2),
    ).astype(bool)
    if inside.sum() < 16:
        raise RuntimeError(f"no room for a lesion in a {width}x{height} slide; use a larger synthetic.width/height")
    lfield = lesion_field(rng, inside, wobble_um / coarse_um)
    values = np.sort(lfield[inside])
    n_tissue = int((field > 0).sum())
    min_area = (min(60.0, extent_um / 10) / mpp) ** 2
    lo, hi = sorted(float(v) for v in lesion_range)
    target, best, best_err, share = target_share, None, np.inf, 0.0
    for _ in range(8):  # the coarse grid quantises the share: correct the target a few times
        k = int(np.clip(round(target * n_tissue), 1, len(values) - 1))
        polygons = lesion_polygons(lfield, inside, float(values[k]), (width, height), min_area)
        lesion = rasterise(polygons, measure, scale=scale) & tissue
        share = float(lesion.sum() / max(1, tissue.sum()))
        err = abs(share - target_share)
        if polygons and lo <= share <= hi and err < best_err:
            best, best_err = (polygons, share), err
        if best is not None and err < 0.1 * target_share:
            break
        target *= target_share / max(share, 1e-3)
    if best is None:
        raise RuntimeError(
            f"could not place a lesion of {lo:.2f}-{hi:.2f} of the tissue in a {width}x{height} slide "
            f"(last try {share:.3f}); use a larger synthetic.width/height"
        )
    return Layout(width, height, mpp, field, best[0], best[1], float(tissue.mean()))


# -------------------------------------------------------------------------------------------------- glands
def unit_offsets(rng: np.random.Generator, step: float, closed: bool) -> np.ndarray:
    """Gland positions of one unit relative to its centroid: a closed rosette, or a meander of the same length.

    Both are chains of GLANDS_PER_UNIT glands with a fixed `step` and turns of exactly 360°/GLANDS_PER_UNIT;
    the rosette always turns the same way, the meander picks each turn's sign at random (never more than
    MAX_SAME_TURNS the same way in a row, so no meander closes into a rosette).
    """
    n = GLANDS_PER_UNIT
    alpha = 2 * math.pi / n
    if closed:
        signs = np.ones(n - 1)
    else:
        while True:
            signs = rng.choice([-1.0, 1.0], n - 1)
            run, longest = 1, 1
            for a, b in zip(signs[:-1], signs[1:], strict=True):
                run = run + 1 if a == b else 1
                longest = max(longest, run)
            if longest <= MAX_SAME_TURNS:
                break
    heading = float(rng.uniform(0, 2 * math.pi))
    turns = np.concatenate([[0.0], np.cumsum(signs * alpha)])
    steps = step * np.column_stack([np.cos(heading + turns[:-1]), np.sin(heading + turns[:-1])])
    pts = np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])
    return pts - pts.mean(axis=0)


def gland_centres(rng: np.random.Generator, polygons: list[np.ndarray], mpp: float, step_um: float,
                  rosettes: bool, tries: int = 30) -> np.ndarray:
    """Gland centres (n, 2), level-0 px, filling the lesions: one unit (rosette or meander) per cell of a hexagonal
    lattice. Units are placed cell by cell; a meander is redrawn (up to `tries` times) until its glands keep
    UNIT_GAP_UM from the glands already placed, the distance rosettes keep by construction."""
    if not polygons:
        return np.zeros((0, 2))
    n = GLANDS_PER_UNIT
    radius = step_um / (2 * math.sin(math.pi / n))  # rosette radius
    period = 2 * radius + UNIT_GAP_UM
    allpts = np.concatenate(polygons).astype(np.float64) * mpp  # µm
    (x0, y0), (x1, y1) = allpts.min(axis=0) - period, allpts.max(axis=0) + period
    row_h = period * math.sqrt(3) / 2
    off = rng.uniform(0, period, 2)
    placed: dict[tuple[int, int], list[np.ndarray]] = {}
    out = []
    for i in range(int((y1 - y0) / row_h) + 1):
        for j in range(int((x1 - x0) / period) + 1):
            centre = np.array([x0 + off[0] + j * period + (period / 2 if i % 2 else 0.0), y0 + off[1] + i * row_h])
            best, best_gap = None, -1.0
            for _ in range(1 if rosettes else tries):
                pts = centre + unit_offsets(rng, step_um, rosettes)
                gap = _nearest(placed, pts, period)
                if gap > best_gap:
                    best, best_gap = pts, gap
                if gap >= UNIT_GAP_UM:
                    break
            for p in best:
                placed.setdefault((int(p[0] // period), int(p[1] // period)), []).append(p)
            out.append(best)
    centres = np.concatenate(out) / mpp  # level-0 px
    centres += rng.normal(0, 0.03 * step_um / mpp, centres.shape)
    margin = GLAND_OUTER_UM[1] / mpp
    keep = np.zeros(len(centres), bool)
    for poly in polygons:
        contour = poly.astype(np.float32).reshape(-1, 1, 2)
        for k, (x, y) in enumerate(centres):
            if not keep[k] and cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= margin:
                keep[k] = True
    return centres[keep]


def _nearest(placed: dict[tuple[int, int], list[np.ndarray]], pts: np.ndarray, cell: float) -> float:
    """Smallest distance from any of `pts` to an already placed gland (inf when none is near)."""
    keys = {(int(x // cell) + dx, int(y // cell) + dy) for x, y in pts for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    near = [q for key in keys for q in placed.get(key, ())]
    if not near:
        return math.inf
    q = np.asarray(near)
    return float(np.sqrt(((pts[:, None, :] - q[None, :, :]) ** 2).sum(axis=-1)).min())

"""Geometry of the aligned multi-scale patch grid (DESIGN.md section 4).

One grid, anchored at the slide origin, of 5x cells of `f5 = 4 * f20` level-0 pixels. Each 5x cell has exactly 2x2
10x children and 4x4 20x children, so a patch's parent is found by integer division and never by a nearest-match
search. Partial cells at the right and bottom border are part of the grid: their pixels outside the slide count as
background for the tissue fraction and are read as white (OpenSlide returns transparent pixels there).

Keep rule: a patch is kept if its tissue fraction reaches `tissue_min[scale]`; in addition every parent of a kept
patch is force-kept, even below its own threshold. We force-keep parents rather than drop orphaned children because
the 20x patches are the most informative ones and a parent that contains a kept child does hold tissue: dropping
children would silently lose tissue whenever the coarse thresholds are stricter than the fine ones.

Order inside a scale: 5x kept cells row-major; 10x by (parent, position in the 2x2 block); 20x by (parent, position
in the 2x2 block of its 10x parent). Children of one parent are therefore contiguous, which the cache builder uses
to write whole runs at once and the bag reader to read slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from msamil.config import SCALE_FACTOR, SCALES


@dataclass(frozen=True)
class ScalePatches:
    """The kept patches of one scale: level-0 top-left coords, parent index (-1 at 5x), tissue fraction, and the
    index of the 5x cell each patch lies in (for the builder)."""

    coords: np.ndarray  # int64 (N, 2) x, y
    parent: np.ndarray  # int64 (N,)
    tissue_frac: np.ndarray  # float32 (N,)
    cell: np.ndarray  # int64 (N,) index into the kept 5x set

    def __len__(self) -> int:
        return len(self.coords)


@dataclass(frozen=True)
class Layout:
    """All kept patches of a slide, per scale, plus the grid that produced them."""

    width: int
    height: int
    f20: int
    ncols: int  # 5x cells across
    nrows: int  # 5x cells down
    scales: dict[str, ScalePatches]

    def footprint(self, scale: str) -> int:
        return SCALE_FACTOR[scale] * self.f20

    def counts(self) -> dict[str, int]:
        return {s: len(p) for s, p in self.scales.items()}


def box_fractions(mask: np.ndarray, scale_x: float, scale_y: float, x0: np.ndarray, y0: np.ndarray,
                  size: float) -> np.ndarray:
    """Mean of `mask` (tissue = nonzero) over level-0 boxes [x0, x0+size) x [y0, y0+size), mapped to the mask by
    `scale_x`/`scale_y` (mask px per level-0 px), with partial mask pixels weighted by their covered area.

    Mask pixels beyond the mask count as background, which is what a border cell sticking out of the slide needs.
    Exact area weighting (rather than a nearest-pixel lookup) keeps the fraction stable when the mask is coarse
    relative to the patch, as it is for 20x patches on an 8 um/px mask.
    """
    tissue = (np.asarray(mask) > 0).astype(np.float64)
    h, w = tissue.shape
    # Summed-area table with a zero row/column in front: sat[j, i] = sum of tissue[:j, :i]. The continuous integral
    # of a piecewise-constant image is bilinear inside each pixel, so bilinear lookup in `sat` is exact.
    sat = np.zeros((h + 1, w + 1))
    sat[1:, 1:] = tissue.cumsum(0).cumsum(1)

    def integral(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        px = np.clip(px, 0.0, w)
        py = np.clip(py, 0.0, h)
        ix = np.minimum(np.floor(px).astype(np.int64), w - 1)
        iy = np.minimum(np.floor(py).astype(np.int64), h - 1)
        fx = px - ix
        fy = py - iy
        return ((1 - fx) * (1 - fy) * sat[iy, ix] + fx * (1 - fy) * sat[iy, ix + 1]
                + (1 - fx) * fy * sat[iy + 1, ix] + fx * fy * sat[iy + 1, ix + 1])

    ax, bx = x0 * scale_x, (x0 + size) * scale_x
    ay, by = y0 * scale_y, (y0 + size) * scale_y
    total = integral(bx, by) - integral(ax, by) - integral(bx, ay) + integral(ax, ay)
    area = (bx - ax) * (by - ay)
    return np.clip(total / area, 0.0, 1.0).astype(np.float32)


def plan_layout(width: int, height: int, f20: int, mask: np.ndarray, tissue_min: dict[str, float]) -> Layout:
    """Build the grid over a `width` x `height` level-0 slide and keep patches per the tissue rule (module doc).

    `mask` covers the slide at its own resolution; its scale relative to level 0 is taken from its shape
    (mask_w / width, mask_h / height), so a mask of ceil(W * mpp / seg_mpp) pixels maps the slide exactly.
    """
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    f5 = 4 * f20
    ncols, nrows = math.ceil(width / f5), math.ceil(height / f5)
    mh, mw = np.asarray(mask).shape[:2]
    sx, sy = mw / width, mh / height

    # Tissue fraction and threshold test on the full grid of every scale (shape rows x cols at that scale).
    frac: dict[str, np.ndarray] = {}
    keep: dict[str, np.ndarray] = {}
    for scale in SCALES:
        k = 4 // SCALE_FACTOR[scale]  # cells per 5x cell along one axis
        size = SCALE_FACTOR[scale] * f20
        rows, cols = np.mgrid[0:nrows * k, 0:ncols * k]
        frac[scale] = box_fractions(mask, sx, sy, cols * size, rows * size, size)
        keep[scale] = frac[scale] >= float(tissue_min[scale])

    # Kept child implies kept parent: propagate upwards (20x -> 10x -> 5x).
    for fine, coarse in (("20x", "10x"), ("10x", "5x")):
        r, c = keep[fine].shape
        any_child = keep[fine].reshape(r // 2, 2, c // 2, 2).any(axis=(1, 3))
        keep[coarse] = keep[coarse] | any_child

    scales: dict[str, ScalePatches] = {}
    # 5x: row-major over kept cells.
    rows5, cols5 = np.nonzero(keep["5x"])
    index_map = np.full(keep["5x"].shape, -1, dtype=np.int64)
    index_map[rows5, cols5] = np.arange(len(rows5))
    cell_map = index_map
    scales["5x"] = ScalePatches(
        coords=np.stack([cols5 * f5, rows5 * f5], axis=1).astype(np.int64),
        parent=np.full(len(rows5), -1, dtype=np.int64),
        tissue_frac=frac["5x"][rows5, cols5],
        cell=np.arange(len(rows5), dtype=np.int64),
    )
    for fine in ("10x", "20x"):
        size = SCALE_FACTOR[fine] * f20
        rows, cols = np.nonzero(keep[fine])
        parent = index_map[rows // 2, cols // 2]
        order = np.lexsort(((cols % 2) + 2 * (rows % 2), parent))  # by parent, then 2x2 position
        rows, cols, parent = rows[order], cols[order], parent[order]
        # Cell of a fine patch: its 5x ancestor.
        k = 4 // SCALE_FACTOR[fine]
        cell = cell_map[rows // k, cols // k]
        scales[fine] = ScalePatches(
            coords=np.stack([cols * size, rows * size], axis=1).astype(np.int64),
            parent=parent.astype(np.int64),
            tissue_frac=frac[fine][rows, cols],
            cell=cell.astype(np.int64),
        )
        index_map = np.full(keep[fine].shape, -1, dtype=np.int64)
        index_map[rows, cols] = np.arange(len(rows))
    return Layout(width=width, height=height, f20=f20, ncols=ncols, nrows=nrows,
                  scales={s: scales[s] for s in SCALES})

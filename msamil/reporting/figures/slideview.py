"""A slide as the figures see it: thumbnail, tissue mask and cached patch grid, all in level-0 coordinates.

Every image is drawn with `extent=(0, width, height, 0)`, so thumbnails, masks and probability maps of different
resolutions line up with patch rectangles given in level-0 pixels without any per-image scale bookkeeping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from msamil.cache.access import open_cache
from msamil.config import SCALES

log = logging.getLogger("msamil.reporting.figures")


@dataclass
class SlideView:
    dataset: str
    slide: str
    width: int
    height: int
    thumbnail: np.ndarray  # (h, w, 3) uint8, any resolution
    mask: np.ndarray | None  # (h, w) bool tissue mask, any resolution
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # scale -> (N, 2) level-0 top-left
    footprint: dict[str, int] = field(default_factory=dict)  # scale -> patch side in level-0 pixels

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (0.0, float(self.width), float(self.height), 0.0)

    @property
    def cell(self) -> int:
        """Side of the finest patch in level-0 pixels: the raster unit of heatmaps (coarser patches span cells)."""
        return min(self.footprint.values()) if self.footprint else max(self.width, self.height) // 64 or 1


def load_slide_view(results: str | Path, dataset: str, slide: str) -> SlideView:
    """Read the QC thumbnail, tissue mask and cache geometry of one slide (images optional, cache required)."""
    ds = Path(results) / dataset
    coords, foot = {}, {}
    with open_cache(ds / "cache" / f"{slide}.h5", slide=slide) as cache:
        width, height = int(cache.attrs["width"]), int(cache.attrs["height"])
        for scale in SCALES:
            if scale in cache:
                coords[scale] = cache[scale]["coords"][:].astype(np.int64)
                foot[scale] = int(cache[scale].attrs["patch_size_level0"])
    mask_path = ds / "tissue" / f"{slide}.png"
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127 if mask_path.exists() else None
    thumb_path = ds / "qc" / f"{slide}.png"
    if thumb_path.exists():
        thumb = np.asarray(Image.open(thumb_path).convert("RGB"))
    else:
        log.warning("no QC thumbnail for %s/%s; drawing the tissue mask instead", dataset, slide)
        base = mask if mask is not None else np.zeros((64, 64), bool)
        thumb = np.where(base[..., None], 200, 250).astype(np.uint8).repeat(3, axis=2)
    return SlideView(dataset, slide, width, height, thumb, mask, coords, foot)


def paint(view: SlideView, coords: np.ndarray, footprint: int, values: np.ndarray) -> np.ndarray:
    """Raster of `values` per patch on a grid of `view.cell` level-0 pixels; NaN where no patch lies.

    Coarse patches cover (footprint / cell)^2 cells, so all scales share one raster and nest exactly.
    """
    cell = view.cell
    h, w = -(-view.height // cell), -(-view.width // cell)
    canvas = np.full((h, w), np.nan, dtype=float)
    if len(coords) == 0:
        return canvas
    ix, iy = coords[:, 0] // cell, coords[:, 1] // cell
    span = max(footprint // cell, 1)
    for dy in range(span):
        for dx in range(span):
            ok = (iy + dy < h) & (ix + dx < w)
            canvas[iy[ok] + dy, ix[ok] + dx] = values[ok]
    return canvas


def canvas_extent(view: SlideView) -> tuple[float, float, float, float]:
    cell = view.cell
    return (0.0, float(-(-view.width // cell) * cell), float(-(-view.height // cell) * cell), 0.0)


def show_thumbnail(ax, view: SlideView, grey: bool = False, alpha: float = 1.0) -> None:
    """The thumbnail stretched onto level-0 coordinates; `grey` fades it so overlays stand out."""
    img = view.thumbnail
    if grey:
        lum = img.astype(float) @ np.array([0.299, 0.587, 0.114])
        img = (255 - 0.45 * (255 - lum)).astype(np.uint8)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, extent=view.extent, alpha=alpha)
    else:
        ax.imshow(img, extent=view.extent, alpha=alpha)
    image_axes(ax, view)


def image_axes(ax, view: SlideView) -> None:
    ax.set_xlim(0, view.width)
    ax.set_ylim(view.height, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_boxes(ax, coords: np.ndarray, footprint: int, color: str, linewidth: float = 0.6) -> None:
    """Kept patches as unfilled rectangles (one collection, so thousands of patches stay cheap to draw)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    boxes = [Rectangle((float(x), float(y)), footprint, footprint) for x, y in coords]
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=color, linewidth=linewidth))


def draw_mask_outline(ax, view: SlideView, color: str = "#0072B2") -> None:
    """The tissue mask's outline (a contour at 0.5) in level-0 coordinates."""
    if view.mask is None or not view.mask.any():
        return
    h, w = view.mask.shape
    xs = (np.arange(w) + 0.5) * view.width / w
    ys = (np.arange(h) + 0.5) * view.height / h
    ax.contour(xs, ys, view.mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)

"""Test inputs for the cache and bag reader: small Aperio-style pyramidal TIFFs and matching tissue masks.

The same synthetic tissue is rendered at 0.25 um/px (40x) and, by 2x area averaging, at 0.5 um/px (20x), so tests
can check that both scans give the same physical patch footprints. The mask is drawn from the analytic tissue shape
at `seg_mpp`, independent of the slide, so both scans get the identical mask.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image


def tissue_shape(width_um: float, height_um: float, um_per_px: float) -> np.ndarray:
    """Boolean tissue map at `um_per_px`: an ellipse cut by the left border plus a disc cut by the right and bottom
    borders (so partial border cells hold tissue)."""
    w = math.ceil(width_um / um_per_px)
    h = math.ceil(height_um / um_per_px)
    xx = ((np.arange(w, dtype=np.float32) + 0.5) * um_per_px)[None, :]
    yy = ((np.arange(h, dtype=np.float32) + 0.5) * um_per_px)[:, None]
    ellipse = ((xx - 0.15 * width_um) / (0.3 * width_um)) ** 2 + ((yy - 0.45 * height_um) / (0.3 * height_um)) ** 2 < 1
    r = 0.2 * min(width_um, height_um)
    blob = (xx - 0.92 * width_um) ** 2 + (yy - 0.9 * height_um) ** 2 < r * r
    return ellipse | blob


def render_tissue(width_um: float, height_um: float, um_per_px: float, seed: int = 0) -> np.ndarray:
    """RGB uint8 image: white background, textured pink/purple tissue inside `tissue_shape`."""
    mask = tissue_shape(width_um, height_um, um_per_px)
    h, w = mask.shape
    rng = np.random.default_rng(seed)
    # Texture defined on a physical lattice (8 um) so the 20x and 40x renders show the same structures.
    coarse = rng.integers(0, 256, size=(math.ceil(height_um / 8) + 2, math.ceil(width_um / 8) + 2, 3), dtype=np.uint8)
    tex = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    v = np.arange(256, dtype=np.float64)[:, None]
    lut = np.clip(np.array([200, 120, 180]) + (v / 255 - 0.5) * 120, 0, 255).astype(np.uint8)[None]  # (1, 256, 3)
    img = cv2.LUT(tex, lut)
    img[~mask] = 245
    return img


def write_aperio_tiff(path: Path, rgb: np.ndarray, mpp: float, *, tile: int = 256, downsamples=(1, 4, 16),
                      compression: str | None = "jpeg", quality: int = 90) -> Path:
    """Write `rgb` as a tiled pyramidal TIFF that OpenSlide reads as an Aperio slide at `mpp` um/px."""
    h, w = rgb.shape[:2]
    app_mag = 20 * 0.5 / mpp
    desc = (f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"
            f"|AppMag = {app_mag:g}|MPP = {mpp:g}")
    kwargs = {"compression": compression, "compressionargs": {"level": quality}} if compression else {}
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            if i == 0:
                level = rgb
            else:
                lw, lh = max(1, w // ds), max(1, h // ds)
                if min(lw, lh) < 16:
                    break
                level = cv2.resize(rgb, (lw, lh), interpolation=cv2.INTER_AREA)
            tw.write(level, tile=(tile, tile), photometric="rgb", description=desc if i == 0 else None,
                     metadata=None, **kwargs)
    return path


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
    return path


def make_pair(tmp: Path, width_um: float = 1500.0, height_um: float = 1000.0, seg_mpp: float = 8.0,
              compression: str | None = "jpeg", seed: int = 0) -> dict[str, dict[str, Path | float]]:
    """The same tissue at 0.5 um/px ("s20") and 0.25 um/px ("s40"), with one shared tissue mask PNG."""
    tmp.mkdir(parents=True, exist_ok=True)
    hi = render_tissue(width_um, height_um, 0.25, seed)
    lo = cv2.resize(hi, (hi.shape[1] // 2, hi.shape[0] // 2), interpolation=cv2.INTER_AREA)
    mask_path = write_mask_png(tmp / "mask.png", tissue_shape(width_um, height_um, seg_mpp))
    out: dict[str, dict[str, Path | float]] = {}
    for name, img, mpp in (("s20", lo, 0.5), ("s40", hi, 0.25)):
        p = write_aperio_tiff(tmp / f"{name}.svs", img, mpp, compression=compression)
        out[name] = {"path": p, "mpp": mpp, "mask": mask_path}
    return out

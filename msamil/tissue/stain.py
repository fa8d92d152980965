"""How much stain a pixel holds: optical density against the slide's own glass (DESIGN.md section 5).

Thresholding HSV saturation finds H&E but misses what matters on sparse IHC slides: light hematoxylin is barely
saturated, and a fixed white reference turns a dim or tinted scan's glass into "tissue". Two ideas fix both:

- **The background is measured, not assumed.** Glass is the brightest common colour on a brightfield slide, so its
  colour is the mode of the bright, near-neutral pixels (pure white fill from unscanned areas is ignored). When no
  glass-like mode exists (tissue fills the frame) white is used.
- **Stain is coloured optical density.** OD = log10(glass / pixel) per channel. Every stain (hematoxylin, eosin,
  DAB, special stains) absorbs some colours more than others, while dust, bubbles, scanner shading and black
  borders absorb all channels alike. The stain OD of a pixel is its mean OD, capped by its chromatic part
  (max - min channel OD) divided by NEUTRAL_RATIO: faint blue hematoxylin keeps its full density, grey dirt and
  black borders get next to none.
"""

from __future__ import annotations

import cv2
import numpy as np

#: pixels at least this bright (mean of R, G, B) may be glass
GLASS_MIN_LUMA = 160
#: a glass candidate's colour: OD spread between channels at most this (tinted but not stained)
GLASS_MAX_CHROMA_OD = 0.04
#: the glass mode must hold at least this share of the non-white pixels
GLASS_MIN_SHARE = 0.01
#: stain OD = min(mean OD, chroma OD / NEUTRAL_RATIO); hematoxylin's chroma/mean is ~0.75, DAB's ~0.9, grey's 0
NEUTRAL_RATIO = 0.3
#: a tissue threshold is never below this multiple of the 99th percentile of the glass's own stain OD
NOISE_MARGIN = 1.25
WHITE = np.array([255.0, 255.0, 255.0])


def _channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(luma = mean of R, G, B as uint8, min channel, max channel) with OpenCV: numpy's axis reductions over the
    3-wide channel axis are 10x slower, and this runs on every slide."""
    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    luma = ((r.astype(np.uint16) + g + b) // 3).astype(np.uint8)
    return luma, cv2.min(cv2.min(r, g), b), cv2.max(cv2.max(r, g), b)


def luma(rgb: np.ndarray) -> np.ndarray:
    """The mean of R, G and B as uint8 (what "grey level" means here)."""
    return _channels(rgb)[0]


def glass_colour(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """(RGB of the slide's glass, found): the brightest common near-neutral colour, else white (found False).

    The mode of the luminance histogram above GLASS_MIN_LUMA (pure white excluded) is taken, and the median colour
    of the pixels within 4 grey levels of it. A mode that is tinted like stain or too rare is not glass.
    """
    luma, lo, _ = _channels(rgb)
    data = lo < 255
    cand = data & (luma >= GLASS_MIN_LUMA)
    n_data = int(np.count_nonzero(data))
    if np.count_nonzero(cand) < max(16, GLASS_MIN_SHARE * luma.size):
        return WHITE.copy(), False
    hist = np.bincount(luma[cand], minlength=256).astype(np.float64)
    hist = np.convolve(hist, np.ones(5) / 5, mode="same")
    mode = int(np.argmax(hist))
    near = cand & (np.abs(luma.astype(np.int16) - mode) <= 4)
    if np.count_nonzero(near) < GLASS_MIN_SHARE * n_data:
        return WHITE.copy(), False
    glass = np.array([np.median(rgb[..., c][near]) for c in range(3)], dtype=np.float64)
    od = np.log10(256.0 / (glass + 1.0))
    if od.max() - od.min() > GLASS_MAX_CHROMA_OD:
        return WHITE.copy(), False
    return glass, True


def stain_od(rgb: np.ndarray, glass: np.ndarray, neutral_ratio: float = NEUTRAL_RATIO) -> np.ndarray:
    """Per-pixel stain optical density (float32 H x W) against `glass`; 0 for glass, grey dirt and black."""
    logv = np.log10(np.arange(1, 257, dtype=np.float32))  # log10(v + 1), v = 0..255
    ref = np.log10(np.asarray(glass, dtype=np.float32) + 1.0)
    lut = np.maximum(ref[None, :] - logv[:, None], 0.0).astype(np.float32).reshape(256, 1, 3)
    od = cv2.split(cv2.LUT(np.ascontiguousarray(rgb), lut))  # per channel OD, float32 (a LUT keeps this cheap)
    mean = (od[0] + od[1] + od[2]) / np.float32(3.0)
    chroma = np.maximum(np.maximum(od[0], od[1]), od[2]) - np.minimum(np.minimum(od[0], od[1]), od[2])
    return np.minimum(mean, chroma / np.float32(neutral_ratio))


def glass_noise(od: np.ndarray, grey: np.ndarray, glass: np.ndarray) -> float:
    """How much "stain" glass alone shows on this slide (JPEG noise, dust, uneven light): the 99th percentile of
    `od` over the glass regions, i.e. pixels whose 5 x 5 neighbourhood has the glass's grey level (`grey` is the
    luma; within 4 levels), away from tissue rims. Selecting by the neighbourhood, not the pixel, keeps the noisy
    pixels of glass in the sample."""
    local = cv2.blur(grey, (5, 5), borderType=cv2.BORDER_REPLICATE).astype(np.float32)
    near = (np.abs(local - np.float32(glass.mean())) <= 4).astype(np.uint8)
    inner = cv2.erode(near, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    sample = od[inner] if inner.any() else od[near > 0]
    return float(np.percentile(sample, 99)) if sample.size else 0.0


def smooth(values: np.ndarray, um: float, mpp: float) -> np.ndarray:
    """Gaussian smoothing with a full width of `um` (σ = um / 2 in pixels of `mpp`); no-op below half a pixel."""
    sigma = 0.5 * um / mpp
    if sigma < 0.25:
        return values
    return cv2.GaussianBlur(values, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


__all__ = ["NOISE_MARGIN", "glass_colour", "glass_noise", "luma", "smooth", "stain_od"]

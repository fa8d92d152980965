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
#: a mode this bright may be fill or overexposure; a neutral mode below it with this share of pixels is the glass
NEAR_WHITE, FILL_YIELD_SHARE = 250, 0.05
#: stain OD = min(mean OD, chroma OD / NEUTRAL_RATIO); hematoxylin's chroma/mean is ~0.75, DAB's ~0.9, grey's 0
NEUTRAL_RATIO = 0.3
#: intensities below this are floored before the log: near-black pixels carry no reliable colour
DARK_FLOOR = 32
#: a tissue threshold is never below this multiple of the 99th percentile of the glass's own stain OD
NOISE_MARGIN = 1.25
WHITE = np.array([255.0, 255.0, 255.0])


def _channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(luma = mean of R, G, B as uint8, min channel, max channel) with OpenCV: numpy's axis reductions over the
    3-wide channel axis are 10x slower, and this runs on every slide."""
    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    luma = ((r.astype(np.uint16) + g + b) // 3).astype(np.uint8)
    return luma, cv2.min(cv2.min(r, g), b), cv2.max(cv2.max(r, g), b)


def _hist(img: np.ndarray, mask: np.ndarray, bins: int = 256, top: float = 256.0) -> np.ndarray:
    """Histogram of `img` (uint8 or float32) over `mask` with OpenCV (no boolean indexing of large arrays)."""
    return cv2.calcHist([img], [0], mask.astype(np.uint8), [bins], [0, top]).ravel()


def _median_u8(chan: np.ndarray, mask: np.ndarray) -> float:
    """Median of a uint8 channel over `mask`, from its histogram."""
    cum = np.cumsum(_hist(chan, mask))
    return float(np.searchsorted(cum, (cum[-1] + 1) // 2))


def luma(rgb: np.ndarray) -> np.ndarray:
    """The mean of R, G and B as uint8 (what "grey level" means here)."""
    return _channels(rgb)[0]


def _band_colour(rgb: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Median RGB of the pixels in `near`."""
    return np.array([_median_u8(chan, near) for chan in cv2.split(np.ascontiguousarray(rgb))], dtype=np.float64)


def _chroma_od(colour: np.ndarray) -> float:
    od = np.log10(256.0 / (colour + 1.0))
    return float(od.max() - od.min())


def glass_colour(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """(RGB of the slide's glass, found): the brightest common near-neutral colour, else white (found False).

    The mode of the luminance histogram above GLASS_MIN_LUMA (pure white excluded) is taken, and the median colour
    of the pixels within 4 grey levels of it. A mode that is tinted like stain or too rare is not glass. A near-white
    mode (NEAR_WHITE and up: JPEG-compressed fill outside the scanned area, overexposure) gives way to a clearly
    darker neutral mode holding FILL_YIELD_SHARE of the pixels: that one is the glass the tissue lies on, and
    measuring against the fill would turn tinted glass into faint "stain".
    """
    grey, lo, _ = _channels(rgb)
    data = lo < 255
    cand = data & (grey >= GLASS_MIN_LUMA)
    n_data = int(np.count_nonzero(data))
    if np.count_nonzero(cand) < max(16, GLASS_MIN_SHARE * grey.size):
        return WHITE.copy(), False
    raw_hist = _hist(grey, cand).astype(np.float64)
    hist = np.convolve(raw_hist, np.ones(5) / 5, mode="same")
    mode = int(np.argmax(hist))
    if mode >= NEAR_WHITE:
        below = int(np.argmax(hist[: NEAR_WHITE - 4]))
        share = raw_hist[max(0, below - 4): below + 5].sum() / max(1, n_data)
        if share >= FILL_YIELD_SHARE:
            near_below = cand & (cv2.absdiff(grey, np.full_like(grey, below)) <= 4)
            if _chroma_od(_band_colour(rgb, near_below)) <= GLASS_MAX_CHROMA_OD / 2:
                mode = below
    near = cand & (cv2.absdiff(grey, np.full_like(grey, mode)) <= 4)
    if np.count_nonzero(near) < GLASS_MIN_SHARE * n_data:
        return WHITE.copy(), False
    glass = _band_colour(rgb, near)
    if _chroma_od(glass) > GLASS_MAX_CHROMA_OD:
        return WHITE.copy(), False
    return glass, True


def _od_luts(glass: np.ndarray) -> list[np.ndarray]:
    """Per channel, the 256-entry float32 table v -> max(0, log10(glass + 1) - log10(max(v, DARK_FLOOR) + 1))."""
    logv = np.log10(np.maximum(np.arange(256, dtype=np.float32), DARK_FLOOR) + 1.0)
    ref = np.log10(np.asarray(glass, dtype=np.float32) + 1.0)
    return [np.maximum(ref[c] - logv, 0.0).astype(np.float32) for c in range(3)]


def stain_od(rgb: np.ndarray, glass: np.ndarray, neutral_ratio: float = NEUTRAL_RATIO) -> np.ndarray:
    """Per-pixel stain optical density (float32 H x W) against `glass`; ~0 for glass, grey dirt and black.

    The chromatic part is measured on the image smoothed over a pixel's neighbourhood (Gaussian σ = 1 px) and
    intensities below DARK_FLOOR are floored: colour is a property of a stain, not of one pixel's noise, and a
    log amplifies the noise of near-black pixels into false colour. Channels go through lookup tables one at a
    time (no 3-channel float image), which keeps this cheap on large slides.
    """
    rgb = np.ascontiguousarray(rgb)
    luts = _od_luts(glass)
    raw = cv2.split(rgb)
    mean = cv2.LUT(raw[0], luts[0])
    for c in (1, 2):
        cv2.add(mean, cv2.LUT(raw[c], luts[c]), dst=mean)
    mean *= np.float32(1.0 / 3.0)
    soft = cv2.split(cv2.GaussianBlur(rgb, (0, 0), sigmaX=1.0, borderType=cv2.BORDER_REPLICATE))
    od = [cv2.LUT(soft[c], luts[c]) for c in range(3)]
    chroma = cv2.subtract(cv2.max(cv2.max(od[0], od[1]), od[2]), cv2.min(cv2.min(od[0], od[1]), od[2]))
    chroma *= np.float32(1.0 / neutral_ratio)
    return cv2.min(mean, chroma)


def glass_noise(od: np.ndarray, grey: np.ndarray, glass: np.ndarray) -> float:
    """How much "stain" glass alone shows on this slide (JPEG noise, dust, uneven light): the 99th percentile of
    `od` over the glass regions, i.e. pixels whose 5 x 5 neighbourhood has the glass's grey level (`grey` is the
    luma; within 4 levels), away from tissue rims. Selecting by the neighbourhood, not the pixel, keeps the noisy
    pixels of glass in the sample. Resolution 0.0005 OD (a histogram, not a sort)."""
    local = cv2.blur(grey, (5, 5), borderType=cv2.BORDER_REPLICATE)
    near = (cv2.absdiff(local, np.full_like(local, int(round(float(glass.mean()))))) <= 4).astype(np.uint8)
    inner = cv2.erode(near, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    sample = inner if inner.any() else near
    if not sample.any():
        return 0.0
    top = 0.5
    hist = _hist(np.minimum(od, np.float32(top - 1e-6)), sample, bins=1000, top=top)
    cum = np.cumsum(hist)
    return float(np.searchsorted(cum, 0.99 * cum[-1]) + 1) * top / 1000


def smooth(values: np.ndarray, um: float, mpp: float) -> np.ndarray:
    """Gaussian smoothing with a full width of `um` (σ = um / 2 in pixels of `mpp`); no-op below half a pixel."""
    sigma = 0.5 * um / mpp
    if sigma < 0.25:
        return values
    return cv2.GaussianBlur(values, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


__all__ = ["NOISE_MARGIN", "glass_colour", "glass_noise", "luma", "smooth", "stain_od"]

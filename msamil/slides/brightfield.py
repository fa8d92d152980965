"""Brightfield or not: recognise fluorescence, darkfield and other non-brightfield scans (DESIGN.md section 9b).

Everything msamil does assumes transmitted light: stained tissue on bright glass. A fluorescence scan read as RGB
is a dark frame with coloured signal, and every stage downstream would misread it (its black background counts as
"tissue 100 %"). Such a slide must be excluded at inspection with that reason. Three independent signs, any one
enough:

- **metadata** saying so: OpenSlide/TIFF properties of fluorescence scanners (Leica `illumination-source`, Akoya/
  PerkinElmer `<Mode>im_Fluorescence`, OME `IlluminationType`/`ContrastMethod`, Hamamatsu excitation filters);
- **a dark background**: brightfield glass is the brightest thing on a slide; a slide with next to no bright glass
  whose pixels are mostly dark (or whose median is dark), or whose typical pixel lacks a colour channel entirely
  (a fluorescence composite on an olive or coloured background), transmitted no white light;
- **a single channel**: a greyscale image (R = G = B everywhere there is content) carries no stain colour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from msamil.slides.slide import Slide

#: the whole-slide thumbnail the check looks at is at most this many pixels on its longest side
CHECK_MAX_PX = 1024
#: min(R, G, B) of glass under transmitted light, and max(R, G, B) of a fluorescence background
GLASS_MIN, DARK_MAX = 170, 60
#: a brightfield slide shows at least this share of bright glass, unless its tissue covers the frame
MIN_GLASS_SHARE = 0.05
#: without glass: a slide this dark (share of dark pixels, or median brightness), or whose typical pixel has a
#: colour channel this close to empty, transmits no white light: not brightfield
DARK_SHARE, DARK_MEDIAN, EMPTY_CHANNEL = 0.25, 80, 40

NOT_BRIGHTFIELD_FIX = (
    "msamil handles brightfield slides (H&E, IHC) only; remove this slide from the slide table (fluorescence, "
    "darkfield and multiplexed immunofluorescence scans are not supported)"
)

_KEY_VALUE = re.compile(r"illumin|contrast|imaging.?mode|acquisition.?mode|modality|^.*\.mode$", re.IGNORECASE)
_TEXT = (
    re.compile(r"<Mode>\s*im_Fluorescence", re.IGNORECASE),  # Akoya/PerkinElmer qptiff
    re.compile(r"(IlluminationType|ContrastMethod)\s*=\s*\"(Epi)?fluorescen", re.IGNORECASE),  # OME-XML
    re.compile(r"ExcitationName\s*=\s*\d{3}", re.IGNORECASE),  # Hamamatsu NDPI fluorescence filter cube
)


def metadata_problem(props: Mapping[str, str]) -> str | None:
    """The metadata evidence of a non-brightfield scan, or None. Values and keys are checked, not pixels."""
    for key, value in props.items():
        text = f"{key}={value}"
        if _KEY_VALUE.search(key) and re.search(r"fluoresc|darkfield", str(value), re.IGNORECASE):
            return f"its metadata says {key} = {str(value)[:60]!r}"
        for pattern in _TEXT:
            match = pattern.search(text)
            if match:
                name = re.sub(r"\s+", " ", key)[:48]
                return f"its metadata says {match.group(0)[:60]!r} (property {name!r})"
    return None


def pixel_problem(rgb: np.ndarray) -> str | None:
    """The pixel evidence of a non-brightfield scan (dark background, or a single channel), or None.

    `rgb` is a whole-slide thumbnail (uint8 H x W x 3) with transparent regions composited onto white; pure white
    pixels are ignored, so unscanned areas and padding count neither as glass nor as dark.
    """
    px = rgb.reshape(-1, 3)
    lo, hi = px.min(axis=1), px.max(axis=1)
    data = lo < 255  # pure white is "no data" (outside the scan, empty tiles), neither glass nor dark
    if data.sum() < 100:
        return None
    px, lo, hi = px[data], lo[data], hi[data]
    glass = float(np.mean(lo >= GLASS_MIN))
    dark = float(np.mean(hi < DARK_MAX))
    median, median_lo = float(np.median(hi)), float(np.median(lo))
    if glass < MIN_GLASS_SHARE and (dark >= DARK_SHARE or median < DARK_MEDIAN):
        return (f"dark background: {100 * dark:.0f}% of the slide is dark and {100 * glass:.1f}% bright glass "
                f"(median brightness {median:.0f}/255); a fluorescence or darkfield scan")
    if glass < MIN_GLASS_SHARE and median_lo < EMPTY_CHANNEL:
        return (f"no white light: {100 * glass:.1f}% bright glass and the typical pixel has a colour channel at "
                f"{median_lo:.0f}/255; a fluorescence composite or a false-colour image")
    content = lo < 235  # not glass or white fill
    if content.sum() >= max(100, 0.005 * len(px)):
        chroma = (hi - lo)[content]
        if float(np.mean(chroma <= 2)) > 0.99:
            return "a single-channel (greyscale) image: no stain colours"
    return None


def brightfield_problem_from(props: Mapping[str, str], rgb: np.ndarray) -> str | None:
    """Why a slide with these properties and this thumbnail is not brightfield, or None when it is."""
    return metadata_problem(props) or pixel_problem(rgb)


def check_thumbnail(slide: Slide) -> np.ndarray:
    """The whole slide at most CHECK_MAX_PX on its longest side (never finer than the slide itself)."""
    info = slide.info
    mpp = max(info.mpp, max(info.width, info.height) * info.mpp / CHECK_MAX_PX)
    return slide.image_at_mpp(mpp)


def brightfield_problem(slide: Slide, rgb: np.ndarray | None = None) -> str | None:
    """Why `slide` is not a brightfield slide (metadata, dark background, single channel), or None.

    `rgb` may pass a whole-slide thumbnail the caller already has; otherwise one of at most CHECK_MAX_PX is read.
    """
    problem = metadata_problem(dict(slide.osr.properties))
    if problem:
        return problem
    return pixel_problem(check_thumbnail(slide) if rgb is None else rgb)


def downsample_for_check(rgb: np.ndarray, max_px: int = CHECK_MAX_PX) -> np.ndarray:
    """`rgb` shrunk (area filter) to at most max_px on its longest side, for images not read through OpenSlide."""
    h, w = rgb.shape[:2]
    s = min(1.0, max_px / max(h, w))
    if s >= 1.0:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


__all__ = [
    "NOT_BRIGHTFIELD_FIX",
    "brightfield_problem",
    "brightfield_problem_from",
    "check_thumbnail",
    "downsample_for_check",
    "metadata_problem",
    "pixel_problem",
]

"""Plain JPEG/PNG images -> tiled pyramidal TIFF with resolution tags, so every later stage reads one kind of file.

DigestPath, BCNB and UBC-OCEAN ship single-resolution images up to ~100k px wide. Loading one whole would need
tens of GB, so libvips streams it (`access="sequential"`: decoded a strip at a time) straight into a tiled,
JPEG-compressed pyramid; memory stays near a few strips per pyramid level whatever the image size. The MPP goes
into the TIFF resolution tags (pixels per centimetre), which OpenSlide reports as `tiff.XResolution` (and, on
recent versions, `openslide.mpp-x`) and which the inspect stage resolves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from msamil.errors import SlideError
from msamil.util.atomic import atomic_path

log = logging.getLogger(__name__)


def _to_rgb8(img: Any) -> Any:
    """RGB uchar whatever the input: alpha flattened onto white (slide background), grey and 16-bit expanded."""
    if img.hasalpha():
        img = img.flatten(background=[65535 if img.format == "ushort" else 255] * (img.bands - 1))
    if img.bands < 3:
        img = img.colourspace("srgb")
    elif img.bands > 3:
        img = img.extract_band(0, n=3)
    if img.format == "ushort":
        img = img >> 8
    if img.format != "uchar":
        img = img.cast("uchar")
    return img.copy(interpretation="srgb")


def convert_to_tiff(src: str | os.PathLike[str], dst: str | os.PathLike[str], mpp: float | None, *,
                    slide: str = "", tile: int = 256, quality: int = 90, threads: int = 1) -> dict[str, Any]:
    """Stream `src` into a pyramidal BigTIFF at `dst` (atomically); returns its size and MPP for the log."""
    import pyvips

    logging.getLogger("pyvips").setLevel(logging.WARNING)  # one INFO line per libvips thread pool

    if hasattr(pyvips, "concurrency_set"):
        pyvips.concurrency_set(max(1, threads))
    slide = slide or Path(src).stem
    try:
        img = pyvips.Image.new_from_file(os.fspath(src), access="sequential")
    except pyvips.Error as exc:
        raise SlideError(slide, f"cannot decode {src}: {str(exc).strip()[:200]}",
                         "re-download the file (it may be truncated)") from exc
    img = _to_rgb8(img)
    options: dict[str, Any] = dict(tile=True, tile_width=tile, tile_height=tile, pyramid=True, bigtiff=True,
                                   compression="jpeg", Q=quality)
    if mpp:
        px_per_mm = 1000.0 / float(mpp)
        options.update(xres=px_per_mm, yres=px_per_mm, resunit="cm")
    else:
        log.warning("%s: no MPP known; the TIFF gets no resolution tags (set default_mpp or a slide_table mpp)",
                    slide)
    log.info("%s: %d x %d px -> %s (mpp %s)", slide, img.width, img.height, dst, mpp)
    with atomic_path(dst) as tmp:
        img.tiffsave(os.fspath(tmp), **options)
        if not mpp:
            _clear_resolution_unit(tmp)
    return {"slide": slide, "width": img.width, "height": img.height, "mpp": mpp}


def _clear_resolution_unit(path: str | os.PathLike[str]) -> None:
    """libvips always writes resolution tags (72 dpi when it knows nothing, i.e. 353 µm/px); mark them unitless
    so that no reader mistakes that default for the slide's MPP and the inspect stage reports it as missing."""
    import tifffile

    with tifffile.TiffFile(path, mode="r+b") as tf:
        for page in tf.pages:
            if "ResolutionUnit" in page.tags:
                page.tags["ResolutionUnit"].overwrite(1)


def tiff_mpp(path: str | os.PathLike[str]) -> float | None:
    """µm/px from a TIFF's first-page resolution tags (None when absent or unitless)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        if "XResolution" not in tags or "ResolutionUnit" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
    per_um = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if not per_um or not num:
        return None
    return per_um * den / num

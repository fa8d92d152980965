"""Whole-slide access through OpenSlide with exact physical scales (DESIGN.md section 3).

Everything downstream (tissue, cache, lesion) reads pixels through this module, so the three rules that make scales
trustworthy live here once:

- **MPP resolution.** The physical pixel size comes from the file (`openslide.mpp-x/y`, then the TIFF resolution
  tags), then from a per-slide override, then from a dataset default. Values outside a plausible range (a 72 dpi
  default tag reads as 352.8 µm/px) are never used silently; with nothing plausible left the slide is unusable.
- **Level choice.** A read at downsample `want` uses the coarsest pyramid level that is not coarser than `want`,
  tolerating scanners' inexact downsamples (4.0002 counts as 4), then resizes with an antialiasing filter.
- **Background.** OpenSlide returns transparent pixels outside the slide and in empty tiles; they are composited
  onto white so they read as background, never as black pseudo-tissue.

Why a file that will not open is broken (truncated, corrupt, not a slide) is told by `msamil.slides.tiff_checks`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide

from msamil.errors import SlideError
from msamil.slides.tiff_checks import CORRUPT_FIX, open_failure, tiff_structure_problem
from msamil.slides.tile_check import level0_tiles

log = logging.getLogger(__name__)

MPP_RANGE = (0.05, 20.0)  # µm/px a real slide (or a converted image) can plausibly have
LEVEL_TOL = 1e-3  # relative tolerance when comparing pyramid downsamples (real scanners write 4.0002)
STANDARD_OBJECTIVES = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)
MAX_READ_PX = 1 << 25  # pixels per single OpenSlide read (RGBA, ~128 MB); larger images are read in bands
VERIFY_READ_PX = 4096 * 4096  # the coarsest level is decoded entirely when it is at most this large

NO_MPP_FIX = "add an mpp column to the slide table or set dataset_config.<ds>.default_mpp"


@dataclass(frozen=True)
class SlideInfo:
    """What inspection records about a slide; `row()` gives its slides.tsv columns."""

    slide: str
    path: str
    width: int
    height: int
    levels: int
    downsamples: tuple[float, ...]
    level_dims: tuple[tuple[int, int], ...]
    mpp: float
    mpp_source: str
    objective_power: float | None
    magnification: float
    vendor: str

    def row(self) -> dict[str, Any]:
        return {
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "magnification": self.magnification,
            "width": self.width,
            "height": self.height,
            "levels": self.levels,
            "vendor": self.vendor,
        }


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (no file access): MPP, magnification, levels, sizes, pixel conversions
# ---------------------------------------------------------------------------------------------------------------


def plausible_mpp(mpp: float) -> bool:
    return math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _as_float(value: Any) -> float | None:
    """Parse a metadata value or table cell; empty, missing and unparsable values are None."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _mpp_from_file(props: Mapping[str, str]) -> list[tuple[float, str]]:
    """Candidate MPPs stored in the file, best first: OpenSlide's own, then the TIFF resolution tags."""
    out: list[tuple[float, str]] = []
    mx, my = _as_float(props.get("openslide.mpp-x")), _as_float(props.get("openslide.mpp-y"))
    if mx is not None or my is not None:
        values = [v for v in (mx, my) if v is not None]
        if len(values) == 2 and abs(values[0] - values[1]) > 0.05 * max(values):
            log.warning("anisotropic pixels: mpp-x %s, mpp-y %s; using their mean", mx, my)
        out.append((float(np.mean(values)), "openslide"))
    xres, yres = _as_float(props.get("tiff.XResolution")), _as_float(props.get("tiff.YResolution"))
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    um_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    if um_per_unit and xres:
        values = [um_per_unit / r for r in (xres, yres) if r]
        out.append((float(np.mean(values)), f"tiff-resolution ({unit})"))
    return out


def resolve_mpp(
    props: Mapping[str, str],
    slide: str,
    override_mpp: float | None = None,
    default_mpp: float | None = None,
) -> tuple[float, str]:
    """(mpp, source) following DESIGN.md section 3: file metadata, TIFF tags, per-slide override, dataset default.

    Implausible file values are skipped (and logged) so that an override can repair a broken tag; an implausible
    value the user gave is an error, since it cannot be anything but a typo.
    """
    rejected: list[str] = []
    for mpp, source in _mpp_from_file(props):
        if plausible_mpp(mpp):
            return mpp, source
        rejected.append(f"{mpp:g} µm/px from {source}")
        log.warning("slide %s: ignoring implausible MPP %g µm/px from %s", slide, mpp, source)
    for value, source, key in (
        (override_mpp, "override", "the mpp column of the slide table"),
        (default_mpp, "dataset-default", "dataset_config.<ds>.default_mpp"),
    ):
        mpp = _as_float(value)
        if mpp is None:
            continue
        if not plausible_mpp(mpp):
            raise SlideError(
                slide,
                f"implausible MPP {mpp:g} µm/px from {source} (plausible: {MPP_RANGE[0]}..{MPP_RANGE[1]})",
                fix=f"correct {key} (µm per pixel, e.g. 0.25 for 40x, 0.5 for 20x)",
            )
        return mpp, source
    if rejected:
        raise SlideError(
            slide,
            f"implausible MPP {'; '.join(rejected)} (plausible: {MPP_RANGE[0]}..{MPP_RANGE[1]}) and no override",
            fix=NO_MPP_FIX,
        )
    raise SlideError(slide, "no MPP in the file metadata and no override or dataset default", fix=NO_MPP_FIX)


def nominal_magnification(mpp: float) -> float:
    """The standard objective closest (in log scale) to 10/mpp: 0.25 µm/px -> 40, 0.5 -> 20, 0.2527 -> 40."""
    mag = 10.0 / mpp
    return min(STANDARD_OBJECTIVES, key=lambda s: abs(math.log(mag / s)))


def best_level(downsamples: Sequence[float], want: float, tol: float = LEVEL_TOL) -> int:
    """The coarsest level whose downsample is at most `want` (within `tol`, so 4.0002 counts as 4).

    Levels need not be sorted. Level 0 is returned only when no coarser level qualifies (or `want` < 1), never as
    a silent fallback when the comparison merely misses by a rounding error.
    """
    best, best_ds = 0, -math.inf
    for level, ds in enumerate(downsamples):
        if ds <= want * (1.0 + tol) and ds > best_ds:
            best, best_ds = level, ds
    return best


def nominal_downsamples(level_dims: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """Per level, the integer downsample the level's size is consistent with, else the measured ratio.

    OpenSlide reports the mean of width and height ratios, which for small or odd-sized pyramids drifts
    (1203 px -> 300 px gives 4.005) beyond any sane tolerance; a level of floor or ceil(W / d) pixels is a
    downsample-d level however its ratio rounds.
    """
    w0, h0 = level_dims[0]
    out: list[float] = []
    for w, h in level_dims:
        measured = (w0 / w + h0 / h) / 2.0
        d = max(1, round(measured))
        fits = w in (w0 // d, -(-w0 // d)) and h in (h0 // d, -(-h0 // d))
        out.append(float(d) if fits else measured)
    return tuple(out)


def footprints(patch_px: int, mpp_20x: float, slide_mpp: float) -> dict[str, int]:
    """Level-0 side of a patch at each scale; 10x and 5x are exact multiples of 20x so the grids nest."""
    f20 = int(round(patch_px * mpp_20x / slide_mpp))
    if f20 < 1:
        raise ValueError(f"a {patch_px} px patch at {mpp_20x} µm/px is smaller than one pixel at {slide_mpp} µm/px")
    return {"20x": f20, "10x": 2 * f20, "5x": 4 * f20}


def scaled_size(width: int, height: int, mpp: float, target_mpp: float) -> tuple[int, int]:
    """Pixel size of the whole slide at `target_mpp`: ceil(W * mpp / target) x ceil(H * mpp / target).

    Output pixel i covers level-0 pixels [i*s, (i+1)*s) with s = target / mpp; the last row and column may reach
    past the slide (that part reads as white). A tiny epsilon keeps 3072 * 0.5 / 8 = 192 from becoming 193.
    """
    scale = mpp / target_mpp
    return max(1, math.ceil(width * scale - 1e-6)), max(1, math.ceil(height * scale - 1e-6))


def rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (non-premultiplied) RGBA onto white: transparent -> (255, 255, 255), opaque -> unchanged."""
    rgba = np.ascontiguousarray(rgba)
    if cv2.minMaxLoc(cv2.extractChannel(rgba, 3))[0] == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)  # the common, opaque case: ~20x faster than numpy
    rgb = rgba[..., :3]
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def resize_to(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize to (out_h, out_w): INTER_AREA when shrinking (antialiased box filter), INTER_LINEAR when enlarging.

    Same size returns the input unchanged, so a read that needs no resampling stays pixel-exact.
    """
    h, w = img.shape[:2]
    if (w, h) == (out_w, out_h):
        return img
    interp = cv2.INTER_AREA if out_w <= w and out_h <= h else cv2.INTER_LINEAR
    return cv2.resize(img, (out_w, out_h), interpolation=interp)


# ---------------------------------------------------------------------------------------------------------------
# The slide
# ---------------------------------------------------------------------------------------------------------------


class Slide:
    """An open slide with its resolved physical scale. Use as a context manager (`with Slide.open(...) as s`)."""

    def __init__(self, osr: openslide.OpenSlide, info: SlideInfo) -> None:
        self.osr = osr
        self.info = info
        self.nominal_downsamples = nominal_downsamples(info.level_dims)
        self._decoded: set[tuple[int, int]] = set()  # level-0 tiles verify_tiles has decoded

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        slide_id: str,
        override_mpp: float | None = None,
        default_mpp: float | None = None,
    ) -> Slide:
        """Open `path`, check its pyramid and resolve its MPP; any unusable file raises SlideError with the reason.

        Opening is cheap and does not decode pixels; `verify()` does (inspection calls it once per slide).
        """
        path = Path(path)
        if not path.is_file():
            raise SlideError(slide_id, f"file not found: {path}", fix="check the path column of the slide table")
        if path.stat().st_size == 0:
            raise SlideError(slide_id, "unreadable: empty file (0 bytes)", fix=CORRUPT_FIX)
        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except openslide.OpenSlideError as exc:
            raise open_failure(path, slide_id, exc) from exc
        if fmt is None:
            raise open_failure(path, slide_id, None)
        try:
            osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
            raise open_failure(path, slide_id, exc) from exc
        try:
            info = _slide_info(osr, path, slide_id, override_mpp, default_mpp)
        except BaseException:
            osr.close()
            raise
        return cls(osr, info)

    def close(self) -> None:
        self.osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------------------------------

    def read_region_rgb(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `level` at level-0 top-left (x, y); outside the slide and empty tiles are white.

        A decoding failure (a truncated tile, a corrupt JPEG) becomes SlideError so callers report the slide, not a
        library traceback.
        """
        try:
            region = self.osr.read_region((int(x), int(y)), int(level), (int(w), int(h)))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                self.info.slide, f"unreadable: truncated or corrupt (OpenSlide: {exc})", fix=CORRUPT_FIX
            ) from exc
        return rgba_to_rgb_white(np.asarray(region))

    def patch_plan(self, size_level0: int, out_px: int) -> tuple[int, int]:
        """(level, n): the level a patch read uses and the side, in that level's pixels, of the region read.

        level = best_level(nominal downsamples, size_level0 / out_px); n = max(1, round(size_level0 / ds_level)).
        """
        level = best_level(self.nominal_downsamples, size_level0 / out_px)
        n = max(1, int(round(size_level0 / self.nominal_downsamples[level])))
        return level, n

    def read_patch(self, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
        """The square level-0 region (x, y, size_level0) as an (out_px, out_px, 3) uint8 image.

        Exactly what a direct read does (so derived reads can be made bit-identical):
        1. `level, n = self.patch_plan(size_level0, out_px)`: the coarsest level whose nominal downsample is at most
           size_level0 / out_px, and the region side n = round(size_level0 / nominal_ds[level]) in level pixels.
        2. `region = self.read_region_rgb(x, y, level, n, n)`: OpenSlide read at level-0 origin (x, y), transparent
           pixels composited onto white.
        3. `resize_to(region, out_px, out_px)`: unchanged if n == out_px, cv2.INTER_AREA if n > out_px,
           cv2.INTER_LINEAR if n < out_px (a slide coarser than the requested scale).

        Deriving a child from one larger read: if a parent region R = read_region_rgb(px, py, L, N, N) was read at
        the child's plan level L, then `resize_to(R[oy:oy+n, ox:ox+n], out_px, out_px)` with
        ox = (x - px) / ds_L, oy = (y - py) / ds_L equals `read_patch(x, y, ...)` bit for bit, provided OpenSlide's
        own downsample of L is an exact integer dividing the offsets. That always holds at level 0. At a level whose
        true downsample is inexact (4.0002) OpenSlide interpolates fractional positions, so read such children
        directly.
        """
        level, n = self.patch_plan(size_level0, out_px)
        return resize_to(self.read_region_rgb(x, y, level, n, n), out_px, out_px)

    def image_at_mpp(self, mpp: float) -> np.ndarray:
        """The whole slide at `mpp` µm/px, size `scaled_size(W, H, slide_mpp, mpp)`, for masks and thumbnails.

        Reads the best level (as read_patch does) for the region covering out_size * (mpp / slide_mpp) level-0
        pixels, so output pixel i covers level-0 pixels [i*s, (i+1)*s); large images are read in bands.
        """
        info = self.info
        out_w, out_h = scaled_size(info.width, info.height, info.mpp, mpp)
        scale = mpp / info.mpp  # level-0 pixels per output pixel
        level = best_level(self.nominal_downsamples, scale)
        ds = self.nominal_downsamples[level]
        reg_w = max(1, math.ceil(out_w * scale / ds - 1e-6))
        reg_h = max(1, math.ceil(out_h * scale / ds - 1e-6))
        if reg_w * reg_h <= MAX_READ_PX:
            return resize_to(self.read_region_rgb(0, 0, level, reg_w, reg_h), out_w, out_h)
        return self._image_in_bands(level, ds, reg_w, reg_h, out_w, out_h)

    def _image_in_bands(self, level: int, ds: float, reg_w: int, reg_h: int, out_w: int, out_h: int) -> np.ndarray:
        """Band-wise version of image_at_mpp for levels too large to hold (e.g. a huge single-level slide)."""
        rows_per_out = reg_h / out_h
        band = max(1, int(MAX_READ_PX // max(1, reg_w) / max(rows_per_out, 1.0)))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for r0 in range(0, out_h, band):
            r1 = min(out_h, r0 + band)
            s0, s1 = int(math.floor(r0 * rows_per_out)), max(int(math.ceil(r1 * rows_per_out)), 1)
            strip = self.read_region_rgb(0, int(round(s0 * ds)), level, reg_w, max(1, s1 - s0))
            out[r0:r1] = resize_to(strip, out_w, r1 - r0)
        return out

    def verify(self) -> None:
        """Decode enough of the file to trust it: TIFF structure, the coarsest level (or a few regions of it), then
        a sample of level-0 tiles (`verify_tiles`; inspection samples inside the tissue again once it knows it).

        OpenSlide opens a file lazily; a truncated or corrupt file may open fine and fail only when tiles are read,
        which must surface at inspection, not halfway through building the cache.
        """
        problem = tiff_structure_problem(self.info.path)
        if problem:
            raise SlideError(self.info.slide, f"unreadable: truncated or corrupt ({problem})", fix=CORRUPT_FIX)
        last = self.info.levels - 1
        w, h = self.info.level_dims[last]
        if w * h <= VERIFY_READ_PX:
            self.read_region_rgb(0, 0, last, w, h)
        else:
            ds = self.info.downsamples[last]
            side = 1024
            for fx, fy in ((0.0, 0.0), (0.5, 0.5), (1.0, 1.0)):
                lx, ly = int(fx * max(0, w - side)), int(fy * max(0, h - side))
                self.read_region_rgb(int(lx * ds), int(ly * ds), last, min(side, w), min(side, h))
        self.verify_tiles()

    def verify_tiles(self, tissue: np.ndarray | None = None, tissue_mpp: float | None = None) -> None:
        """Decode a sample of level-0 tiles (msamil.slides.tile_check), inside `tissue` (a mask at `tissue_mpp`)
        when given; a tile that will not decode makes the slide unusable, naming where it is."""
        props = self.osr.properties
        tw = int(props.get("openslide.level[0].tile-width", 512))
        th = int(props.get("openslide.level[0].tile-height", 512))
        scale = None if tissue is None or tissue_mpp is None else tissue_mpp / self.info.mpp
        done = self._decoded  # a tile both samples draw is decoded once
        for x, y in level0_tiles(self.info.width, self.info.height, tw, th, tissue if scale else None, scale):
            if (x, y) in done:
                continue
            done.add((x, y))
            try:
                self.osr.read_region((int(x), int(y)), 0, (tw, th))
            except openslide.OpenSlideError as exc:
                raise SlideError(self.info.slide, f"unreadable: corrupt level-0 tile at x={x}, y={y} "
                                 f"(OpenSlide: {exc})", fix=CORRUPT_FIX) from exc


def _slide_info(
    osr: openslide.OpenSlide, path: Path, slide: str, override_mpp: float | None, default_mpp: float | None
) -> SlideInfo:
    """Check the pyramid and resolve MPP and magnification; SlideError names what is wrong."""
    dims = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
    downsamples = tuple(float(d) for d in osr.level_downsamples)
    if not dims or min(min(d) for d in dims) < 1:
        raise SlideError(slide, f"invalid pyramid: level sizes {dims}", fix=CORRUPT_FIX)
    if any(b < a * (1.0 - LEVEL_TOL) for a, b in zip(downsamples, downsamples[1:], strict=False)):
        raise SlideError(slide, f"invalid pyramid: downsamples {downsamples} are not increasing", fix=CORRUPT_FIX)
    props = dict(osr.properties)
    mpp, source = resolve_mpp(props, slide, override_mpp, default_mpp)
    return SlideInfo(
        slide=slide,
        path=str(path),
        width=dims[0][0],
        height=dims[0][1],
        levels=len(dims),
        downsamples=downsamples,
        level_dims=dims,
        mpp=mpp,
        mpp_source=source,
        objective_power=_as_float(props.get("openslide.objective-power")),
        magnification=nominal_magnification(mpp),
        vendor=str(props.get("openslide.vendor", "unknown")),
    )

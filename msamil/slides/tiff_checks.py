"""File checks for slides OpenSlide will not read (or reads only until a tile fails): what kind of broken a file is.

A truncated or corrupt TIFF must be told apart from a file that is not a slide at all, and both named with a fix,
at inspection rather than halfway through building the cache. Walking the TIFF structure does that cheaply.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from msamil.errors import SlideError

CORRUPT_FIX = "re-download or re-export the file (check its sha256 or file size against the source)"


def _tiff_header(path: Path) -> tuple[str, bool] | None:
    """(byte order, bigtiff) when the file starts like a TIFF, else None."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head in (b"II*\x00", b"MM\x00*"):
        return ("<" if head[:2] == b"II" else ">"), False
    if head in (b"II+\x00", b"MM\x00+"):
        return ("<" if head[:2] == b"II" else ">"), True
    return None


def tiff_structure_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a TIFF file is structurally broken (IFD chain or tile data past the end of the file), else None.

    OpenSlide refuses a TIFF whose directory chain is cut ("unsupported format") or decodes past-the-end tiles as
    errors only when they are read; walking the structure names the real problem (truncation) cheaply.
    """
    path = Path(path)
    header = _tiff_header(path)
    if header is None:
        return None
    order, big = header
    size = path.stat().st_size
    fmt_off, fmt_cnt, entry = (("Q", "Q", 20) if big else ("I", "H", 12))
    with open(path, "rb") as handle:
        handle.seek(8 if big else 4)
        raw = handle.read(struct.calcsize(fmt_off))
        if len(raw) < struct.calcsize(fmt_off):
            return f"file of {size} bytes ends inside the TIFF header"
        offset = struct.unpack(order + fmt_off, raw)[0]
        seen: set[int] = set()
        n_ifd = 0
        while offset:
            if offset in seen:
                return f"TIFF directory chain loops at byte {offset}"
            seen.add(offset)
            if offset + struct.calcsize(fmt_cnt) > size:
                return f"TIFF directory {n_ifd} at byte {offset} lies past the end of the {size}-byte file"
            handle.seek(offset)
            count = struct.unpack(order + fmt_cnt, handle.read(struct.calcsize(fmt_cnt)))[0]
            end = offset + struct.calcsize(fmt_cnt) + count * entry + struct.calcsize(fmt_off)
            if end > size:
                return f"TIFF directory {n_ifd} ends at byte {end}, past the end of the {size}-byte file"
            handle.seek(offset + struct.calcsize(fmt_cnt) + count * entry)
            offset = struct.unpack(order + fmt_off, handle.read(struct.calcsize(fmt_off)))[0]
            n_ifd += 1
    return _tiff_data_problem(path, size)


def _tiff_data_problem(path: Path, size: int) -> str | None:
    """Tile/strip data referenced beyond the end of the file (the directories themselves are intact)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size and int((offsets + counts).max()) > size:
                    return f"image data of TIFF directory {index} extends past the end of the {size}-byte file"
    except Exception as exc:  # any parser failure is a structural problem worth reporting
        return f"TIFF parser error: {exc}"
    return None


def open_failure(path: Path, slide: str, exc: Exception | None) -> SlideError:
    """Classify a file OpenSlide will not open: truncated/corrupt TIFF or not a slide at all."""
    detail = f"OpenSlide: {exc}" if exc else "format not recognised by OpenSlide"
    if _tiff_header(path) is not None:
        problem = tiff_structure_problem(path)
        if problem:
            return SlideError(slide, f"unreadable: truncated or corrupt ({problem})", fix=CORRUPT_FIX)
        return SlideError(
            slide,
            f"not a slide OpenSlide can read (a TIFF, but {detail}; untiled TIFFs need conversion)",
            fix="convert it to a tiled pyramidal TIFF with MPP tags (msamil converts plain images)",
        )
    return SlideError(
        slide,
        f"not a slide OpenSlide can read ({detail})",
        fix="check that the path points to a whole-slide image (svs, tif, ndpi, mrxs, ...)",
    )

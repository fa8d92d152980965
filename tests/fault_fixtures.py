"""Broken inputs for the fault tests (and for any test that needs a slide to fail at a given stage).

`corrupt_tissue_tile` damages one level-0 JPEG tile inside the tissue of a real (synthetic) Aperio SVS, the way a
bad copy does: the file keeps its size and structure, opens, thumbnails and tissue-detects fine, and OpenSlide fails
("Premature end of JPEG file") only when that tile is decoded. Inspection decodes level 0 (its QC thumbnail of a
small slide reads it whole, and `Slide.verify` samples its tiles), so such a slide is excluded there. To make a
slide fail at a later stage instead (as one whose bad tile inspection's sample missed), corrupt it after the
inspect job ran: the file keeps its modification time, so Snakemake does not rerun inspect.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from msamil.slides.slide import Slide
from msamil.slides.synthetic import write_synthetic_slide
from msamil.tissue.detect import tissue_mask

TISSUE = {"seg_mpp": 8.0}


def _tissue(path: Path, tissue_cfg: dict[str, Any]) -> tuple[np.ndarray, float, float]:
    """The tissue mask exactly as inspection computes it, its µm/px and the slide's µm/px."""
    cfg = dict(tissue_cfg)
    seg_mpp = float(cfg.pop("seg_mpp", 8.0))
    with Slide.open(path, "fixture") as slide:
        return tissue_mask(slide.image_at_mpp(seg_mpp), seg_mpp, **cfg), seg_mpp, slide.info.mpp


def tissue_tiles(path: str | os.PathLike[str], tissue_cfg: dict[str, Any] | None = None) -> list[tuple[int, int]]:
    """Level-0 (x, y) of tiles lying entirely inside tissue (so the cache reads them at every scale)."""
    path = Path(path)
    mask, seg_mpp, mpp = _tissue(path, tissue_cfg or TISSUE)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th, (h, w) = page.tilewidth, page.tilelength, page.shape[:2]
    per_px = seg_mpp / mpp
    out = []
    for ty in range(math.ceil(h / th)):
        for tx in range(math.ceil(w / tw)):
            x0, y0 = tx * tw, ty * th
            if x0 + tw > w or y0 + th > h:
                continue
            r0, r1 = int(y0 // per_px), math.ceil((y0 + th) / per_px)
            c0, c1 = int(x0 // per_px), math.ceil((x0 + tw) / per_px)
            if mask[r0:r1, c0:c1].all():
                out.append((x0, y0))
    return out


def corrupt_level0_tile(path: str | os.PathLike[str], x: int, y: int, keep_mtime: bool = True) -> None:
    """Zero the JPEG data of the level-0 tile at (x, y), after its start-of-image marker, in place.

    The file keeps its size, TIFF structure and (with `keep_mtime`) its modification time, so neither a
    structural check nor Snakemake's mtime trigger notices; only decoding that tile fails.
    """
    path = Path(path)
    stat = path.stat()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        per_row = math.ceil(page.shape[1] / page.tilewidth)
        index = (y // page.tilelength) * per_row + x // page.tilewidth
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    with open(path, "r+b") as handle:
        handle.seek(offset + 2)
        handle.write(bytes(count - 2))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def corrupt_tissue_tile(path: str | os.PathLike[str], tissue_cfg: dict[str, Any] | None = None) -> tuple[int, int]:
    """Corrupt one level-0 tile inside the tissue of an existing slide (mtime kept); returns its (x, y)."""
    tiles = tissue_tiles(path, tissue_cfg)
    if not tiles:
        raise ValueError(f"{path}: no tile lies entirely inside tissue; use a larger slide or smaller tiles")
    x, y = tiles[len(tiles) // 2]
    corrupt_level0_tile(path, x, y)
    return x, y


def write_corrupt_tile_slide(path: str | os.PathLike[str], slide: str = "bad", label: str = "malignant",
                             seed: int = 0, tissue_cfg: dict[str, Any] | None = None, **sizes: Any) -> tuple[int, int]:
    """A synthetic SVS (and its GeoJSON beside it) with one corrupt level-0 tile inside tissue; returns (x, y)."""
    path = Path(path)
    write_synthetic_slide(path, path.with_suffix(".geojson"), slide, label, seed, **sizes)
    return corrupt_tissue_tile(path, tissue_cfg)


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# A script run in a private mount namespace with a tiny tmpfs: writes through atomic_path until the disk is full.
DISK_FULL = """
import sys, json, numpy as np, pandas as pd, h5py, torch
sys.path.insert(0, {repo!r})
from msamil.util.atomic import DiskFullError, atomic_path, write_tsv, stale_temporaries
from msamil.training.checkpoint import save
root, out = {root!r}, {{}}
def attempt(name, write):
    try:
        write(root + "/" + name); out[name] = "written"
    except DiskFullError as exc:
        out[name] = str(exc) + (" LEFT TEMP" if stale_temporaries(__import__("pathlib").Path(root, name)) else "")
def h5(path):
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("imgs", data=np.random.default_rng(0).integers(0, 255, (64, 64, 64, 3), dtype=np.uint8))
attempt("cache.h5", h5)
attempt("last.pt", lambda p: save(p, {{"w": torch.randn(200_000)}}))
def torch_direct(path):  # torch's own writer hides the errno ("PytorchStreamWriter failed writing file")
    with atomic_path(path) as tmp:
        torch.save({{"w": torch.randn(200_000)}}, tmp)
attempt("unetpp.pt", torch_direct)
attempt("table.tsv", lambda p: write_tsv(p, pd.DataFrame({{"x": np.arange(200_000)}})))
print(json.dumps(out))
"""

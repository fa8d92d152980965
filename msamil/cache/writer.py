"""The aligned 20x/10x/5x patch cache of one slide (`cache/{slide}.h5`, DESIGN.md section 4).

Layout: groups `/20x`, `/10x`, `/5x`, each with `coords` (int64 N x 2, level-0 top-left x, y), `imgs` (uint8
N x P x P x 3, one patch per chunk, or variable-length JPEG bytes with group attr `encoding=jpeg`), `parent` (index
into the next coarser group, -1 at 5x) and `tissue_frac` (float32); group attrs `patch_size_level0`, `mpp`,
`encoding`. A root `coords` copy of `/20x/coords` carries CLAM's attrs (`patch_level`, `patch_size`: the pyramid
level and the square to read there, so `read_region(coord, patch_level, (patch_size, patch_size))` covers the 20x
footprint) and TRIDENT's (`patch_size` at 20x, `patch_size_level0`, `target_magnification`,
`level0_magnification`, `overlap`), so tools built on either read our coordinates unchanged. When the slide has no
level at exactly 20x, CLAM's `patch_size` is the level-0 footprint (what CLAM users pass with a resize), and
TRIDENT's target size is in `target_patch_size`.

Keep rule and patch order: msamil.cache.grid (a patch is kept at tissue_frac >= tissue_min[scale]; parents of kept
children are force-kept; children of one parent are contiguous).

Speed: every stored patch must equal `Slide.read_patch` of its region bit for bit, and OpenSlide's cost is per
delivered pixel (~14 ns/px measured, several times the JPEG decode), so per-patch reads pay for the level-0 pixels
once at 20x and again at 10x. The builder instead reads each kept 5x footprint once per pyramid level that some
scale needs and cuts the children out of it, applying read_patch's own resize (`msamil.slides.slide.resize_to`) to the
same pixels. This is exact when the level's downsample is an integer dividing the 20x footprint (then every child
starts on a whole pixel of the level); otherwise that scale falls back to one read_patch per patch.

Edge cases: cells at the right/bottom border stick out of the slide and are read as white (as read_patch does), and
a slide smaller than one 5x cell is one partial cell; a slide with no kept patch at some scale raises SlideError
("no tissue patches ..."). The file is written under a temporary name, `complete=True` is set last and the file is
renamed only after it is closed, so a failure midway leaves nothing that passes for a cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import openslide
from PIL import Image
from tqdm import tqdm

import msamil
from msamil.cache.grid import Layout, plan_layout
from msamil.config import SCALE_FACTOR, SCALES, scale_mpp
from msamil.errors import SlideError
from msamil.util.atomic import atomic_path
from msamil.util.checksum import sha256_file

log = logging.getLogger(__name__)

ENCODINGS = ("raw", "jpeg")
_FLUSH = 256  # JPEG patches buffered per scale before one slice write
_PIECE = 256  # side of the pieces a large region is read in (see region_rgb)


def read_mask(mask_path: str | os.PathLike[str], slide_id: str) -> np.ndarray:
    """The tissue mask PNG (0/255) as a boolean array."""
    try:
        with Image.open(mask_path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as exc:
        raise SlideError(slide_id, f"cannot read tissue mask {mask_path}: {exc}",
                         "rerun the tissue rule for this slide") from exc


class CellReader:
    """Reads every kept patch of one 5x cell with one footprint read per pyramid level (see module doc).

    `plan[scale]` = (level, integer downsample or None when the exact crop path does not apply).
    """

    def __init__(self, slide: Any, layout: Layout, patch_px: int) -> None:
        self.slide = slide
        self.layout = layout
        self.patch_px = patch_px
        true_ds = [float(d) for d in slide.osr.level_downsamples]
        self.plan: dict[str, tuple[int, int | None]] = {}
        for s in SCALES:
            level, n = slide.patch_plan(layout.footprint(s), patch_px)
            ds = int(round(true_ds[level]))
            # Exact crop path: OpenSlide's own downsample is an integer dividing the 20x footprint (hence every
            # offset and size in the cell) and read_patch reads exactly footprint / ds pixels there.
            exact = (abs(true_ds[level] - ds) < 1e-9 and layout.f20 % ds == 0
                     and abs(slide.nominal_downsamples[level] - ds) < 1e-9 and n * ds == layout.footprint(s))
            self.plan[s] = (level, ds if exact else None)

    def read(self, x: int, y: int, members: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Images (k, P, P, 3) of the patches at level-0 coords `members[scale]` (k, 2) of one 5x cell.

        Per pyramid level, one read covers the bounding box of the cell's kept patches of every scale read at that
        level (the whole cell when it is full of tissue, less at sparse or border cells).
        """
        from msamil.slides.slide import resize_to

        p = self.patch_px
        out: dict[str, np.ndarray] = {}
        by_level: dict[int, list[str]] = {}
        for s, coords in members.items():
            if not len(coords):
                continue
            level, ds = self.plan[s]
            if ds is None:
                f = self.layout.footprint(s)
                imgs = np.empty((len(coords), p, p, 3), dtype=np.uint8)
                for k, (cx, cy) in enumerate(coords.tolist()):
                    imgs[k] = self.slide.read_patch(cx, cy, f, p)
                out[s] = imgs
            else:
                by_level.setdefault(level, []).append(s)
        for level, scales in by_level.items():
            ds = self.plan[scales[0]][1]
            assert ds is not None
            x0 = min(int(members[s][:, 0].min()) for s in scales)
            y0 = min(int(members[s][:, 1].min()) for s in scales)
            x1 = max(int(members[s][:, 0].max()) + self.layout.footprint(s) for s in scales)
            y1 = max(int(members[s][:, 1].max()) + self.layout.footprint(s) for s in scales)
            region = region_rgb(self.slide, x0, y0, level, (x1 - x0) // ds, (y1 - y0) // ds)
            for s in scales:
                n = self.layout.footprint(s) // ds
                imgs = np.empty((len(members[s]), p, p, 3), dtype=np.uint8)
                for k, (cx, cy) in enumerate(members[s].tolist()):
                    ox, oy = (cx - x0) // ds, (cy - y0) // ds
                    imgs[k] = resize_to(region[oy:oy + n, ox:ox + n], p, p)
                out[s] = imgs
        return out


def region_rgb(slide: Any, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
    """The pixels of `Slide.read_region_rgb(x, y, level, w, h)`, read faster; x, y must be whole pixels of `level`.

    Two measured costs shape this. OpenSlide paints a region at ~14 ns/px up to ~384 px squares but 2-3x slower per
    pixel for larger ones, so the region is read in pieces on the level's tile grid (at whole-pixel positions a
    pixel's value does not depend on the read it came from). And for an opaque piece compositing onto white is the
    identity, so a contiguous cv2 channel drop replaces read_region_rgb's strided copy; pieces with transparency go
    through read_region_rgb's own compositing, so the result is identical either way.
    """
    from msamil.slides.slide import rgba_to_rgb_white

    ds = int(round(slide.osr.level_downsamples[level]))
    props = slide.osr.properties
    tw = int(props.get(f"openslide.level[{level}].tile-width", _PIECE) or _PIECE)
    th = int(props.get(f"openslide.level[{level}].tile-height", _PIECE) or _PIECE)
    step_x, step_y = max(tw, _PIECE // tw * tw), max(th, _PIECE // th * th)
    lx, ly = x // ds, y // ds  # level pixel of the region's top-left
    out = np.empty((h, w, 3), dtype=np.uint8)
    # piece edges on multiples of the tile size, in level pixels
    xs = [lx, *range((lx // step_x + 1) * step_x, lx + w, step_x), lx + w]
    ys = [ly, *range((ly // step_y + 1) * step_y, ly + h, step_y), ly + h]
    for y0, y1 in zip(ys, ys[1:], strict=False):
        for x0, x1 in zip(xs, xs[1:], strict=False):
            try:
                rgba = np.asarray(slide.osr.read_region((x0 * ds, y0 * ds), int(level), (x1 - x0, y1 - y0)))
            except openslide.OpenSlideError:
                # let read_region_rgb raise its SlideError for the corrupt tile
                rgba = None
                piece = slide.read_region_rgb(x0 * ds, y0 * ds, level, x1 - x0, y1 - y0)
            if rgba is not None:
                piece = rgba_to_rgb_white(rgba)
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = piece
    return out


def _clam_level(downsamples: list[float], f20: int, patch_px: int) -> tuple[int, int]:
    """CLAM's (patch_level, patch_size): a level where the 20x footprint is exactly patch_px, else level 0."""
    for level, ds in enumerate(downsamples):
        if abs(ds * patch_px - f20) < 1e-6 * f20:
            return level, patch_px
    return 0, f20


def _encode_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.reshape(-1)


class _ScaleWriter:
    """Appends patches of one scale in order: raw patches straight away as whole chunks, JPEG bytes batched into
    slice writes of _FLUSH."""

    def __init__(self, dset: h5py.Dataset, encoding: str, quality: int, digest: Any = None) -> None:
        self.dset = dset
        self.encoding = encoding
        self.quality = quality
        # sha256 of every patch's stored bytes, in order (the cache's content checksum)
        self.digest = digest if digest is not None else hashlib.sha256()
        self.pos = 0
        self.buf: list[np.ndarray] = []

    def add(self, imgs: np.ndarray) -> None:
        if self.encoding == "jpeg":
            encoded = [_encode_jpeg(img, self.quality) for img in imgs]
            for buf in encoded:
                self.digest.update(buf.tobytes())
            self.buf.extend(encoded)
            if len(self.buf) >= _FLUSH:
                self.flush()
            return
        # One chunk per patch and no filters: hand HDF5 the chunk bytes directly (measured ~5x less overhead per
        # patch than a hyperslab write through h5py's selection machinery).
        write_chunk = self.dset.id.write_direct_chunk
        for img in imgs:
            data = np.ascontiguousarray(img).tobytes()
            self.digest.update(data)
            write_chunk((self.pos, 0, 0, 0), data)
            self.pos += 1

    def flush(self) -> None:
        if not self.buf:
            return
        n = len(self.buf)
        if len({len(b) for b in self.buf}) == 1:
            # h5py would read equal-length buffers (always the case for one) as a 2-D array: write one by one
            for k, buf in enumerate(self.buf):
                self.dset[self.pos + k] = buf
        else:
            data = np.empty(n, dtype=object)
            for k, buf in enumerate(self.buf):
                data[k] = buf
            self.dset[self.pos:self.pos + n] = data
        self.pos += n
        self.buf = []

    def close(self) -> None:
        self.flush()
        if self.pos != len(self.dset):
            raise RuntimeError(f"wrote {self.pos} patches into {self.dset.name}, expected {len(self.dset)}")


def write_cache(slide: Any, layout: Layout, out_path: str | os.PathLike[str], *, attrs: dict[str, Any],
                patch_px: int, encoding: str, jpeg_quality: int) -> None:
    """Write the cache of `layout` read from the open `slide` to `out_path` (atomically, `complete` last)."""
    reader = CellReader(slide, layout, patch_px)
    downsamples = [float(d) for d in slide.osr.level_downsamples]
    clam_level, clam_size = _clam_level(downsamples, layout.f20, patch_px)
    mpp_20x = float(attrs["mpp_20x"])
    level0_mag = 20.0 * mpp_20x / float(attrs["mpp"])
    total = sum(layout.counts().values())
    # No chunk cache: every chunk is written once, in order, and caching only adds copies (measured 1.5x faster).
    # A content checksum computed while writing (no re-read): slides.tsv lists it, so a rebuilt cache changes the
    # one manifest that training jobs depend on.
    digest = hashlib.sha256()
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", rdcc_nbytes=0) as f:
        writers: dict[str, _ScaleWriter] = {}
        for s in SCALES:
            sp = layout.scales[s]
            g = f.create_group(s)
            for name, arr in (("coords", sp.coords.astype(np.int64)), ("parent", sp.parent.astype(np.int64)),
                              ("tissue_frac", sp.tissue_frac.astype(np.float32))):
                g.create_dataset(name, data=arr)
                digest.update(np.ascontiguousarray(arr).tobytes())
            n = len(sp)
            if encoding == "jpeg":
                imgs = g.create_dataset("imgs", shape=(n,), dtype=h5py.vlen_dtype(np.uint8),
                                        chunks=(min(n, 64),))
            else:
                imgs = g.create_dataset("imgs", shape=(n, patch_px, patch_px, 3), dtype=np.uint8,
                                        chunks=(1, patch_px, patch_px, 3))
            g.attrs.update({"patch_size_level0": layout.footprint(s), "patch_size": patch_px,
                            "mpp": scale_mpp(s, mpp_20x), "encoding": encoding,
                            "magnification": 20.0 / SCALE_FACTOR[s]})
            writers[s] = _ScaleWriter(imgs, encoding, jpeg_quality, digest)
        root = f.create_dataset("coords", data=layout.scales["20x"].coords.astype(np.int64))
        root.attrs.update({
            # CLAM (Whole_Slide_Bag_FP reads patch_level and patch_size)
            "patch_level": clam_level, "patch_size": clam_size, "downsample": [downsamples[clam_level]] * 2,
            "level_dim": [layout.width, layout.height], "name": str(attrs["slide"]),
            "downsampled_level_dim": list(slide.osr.level_dimensions[clam_level]),
            # TRIDENT
            "patch_size_level0": layout.f20, "target_magnification": 20, "level0_magnification": level0_mag,
            "overlap": 0, "level0_width": layout.width, "level0_height": layout.height,
            "target_patch_size": patch_px,
        })

        cells = layout.scales["5x"]
        # Patches of each scale are ordered by cell (grid.py), so per cell they are one contiguous run.
        bounds = {s: np.searchsorted(layout.scales[s].cell, np.arange(len(cells) + 1)) for s in SCALES}
        with tqdm(total=total, unit="patch", desc=str(attrs["slide"]), mininterval=2.0) as bar:
            for c, (x, y) in enumerate(cells.coords.tolist()):
                members = {s: layout.scales[s].coords[bounds[s][c]:bounds[s][c + 1]] for s in SCALES}
                for s, imgs in reader.read(x, y, members).items():
                    writers[s].add(imgs)
                bar.update(sum(len(m) for m in members.values()))
        for w in writers.values():
            w.close()
        f.attrs.update(attrs)
        f.attrs["encoding"] = encoding
        f.attrs["content_sha256"] = digest.hexdigest()
        f.attrs["complete"] = True


def build_cache(slide_path: str | os.PathLike[str], slide_id: str, mask_path: str | os.PathLike[str],
                out_path: str | os.PathLike[str], *, mpp: float, mpp_20x: float = 0.5, patch_px: int = 256,
                tissue_min: dict[str, float] | None = None, encoding: str = "raw",
                jpeg_quality: int = 90) -> dict[str, int]:
    """Build `out_path` for one slide from its tissue mask; return the patch count per scale.

    `mpp` is the slide's resolved level-0 µm/px (slides.tsv), which overrides whatever the file says.
    """
    from msamil.slides.slide import Slide, footprints

    if encoding not in ENCODINGS:
        raise ValueError(f"cache.encoding must be one of {ENCODINGS}, got {encoding!r}")
    tissue_min = dict(tissue_min or {"20x": 0.5, "10x": 0.25, "5x": 0.1})
    mask = read_mask(mask_path, slide_id)
    with Slide.open(slide_path, slide_id, override_mpp=mpp) as slide:
        width, height = (int(v) for v in slide.osr.dimensions)
        f20 = int(footprints(patch_px, mpp_20x, mpp)["20x"])
        _check_mask_shape(mask, width, height, slide_id, mask_path)
        layout = plan_layout(width, height, f20, mask, tissue_min)
        counts = layout.counts()
        empty = [s for s in SCALES if counts[s] == 0]
        if empty:
            raise SlideError(slide_id, f"no tissue patches at {', '.join(empty)} (counts {counts}, "
                             f"tissue_min {tissue_min})",
                             "check the tissue mask, or lower cache.tissue_min, or exclude the slide")
        log.info("%s: %dx%d px at %.4g um/px, 5x cell %d px, %d/%d cells kept, patches %s", slide_id, width, height,
                 mpp, 4 * f20, counts["5x"], layout.ncols * layout.nrows, counts)
        attrs = {
            "slide": slide_id, "mpp": float(mpp), "mpp_20x": float(mpp_20x), "patch_px": int(patch_px),
            "width": width, "height": height, "sha256": sha256_file(slide_path), "version": msamil.__version__,
            "source": os.fspath(slide_path), "tissue_min": [float(tissue_min[s]) for s in SCALES],
            "scales": list(SCALES),
        }
        write_cache(slide, layout, out_path, attrs=attrs, patch_px=patch_px, encoding=encoding,
                    jpeg_quality=jpeg_quality)
    log.info("%s: wrote %s (%.1f MB)", slide_id, out_path, Path(out_path).stat().st_size / 1e6)
    return counts


def _check_mask_shape(mask: np.ndarray, width: int, height: int, slide_id: str, mask_path: Any) -> None:
    """A mask of another slide would silently give wrong fractions: its aspect must match the slide's."""
    mh, mw = mask.shape[:2]
    sx, sy = mw / width, mh / height
    if abs(sx / sy - 1.0) > 0.02 + 2.0 / min(mw, mh):
        raise SlideError(slide_id, f"tissue mask {mask_path} is {mw}x{mh} px, which does not fit the {width}x{height} "
                         "slide", "rerun the tissue rule for this slide")


def write_failed_cache(out_path: str | os.PathLike[str], record: dict[str, str]) -> None:
    """A cache file that records why the slide has none: root attrs `failed_stage`, `failed_reason`, `failed_fix`,
    `complete=False`, no patches. slides.tsv leaves the slide out and excluded.tsv lists it with the reason."""
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"slide": record["slide"], "failed_stage": record["stage"], "failed_reason": record["reason"],
                        "failed_fix": record["fix"], "version": msamil.__version__, "complete": False})


def build_cache_from_decision(decision_json: str | os.PathLike[str], mask_path: str | os.PathLike[str],
                              tissue_geojson: str | os.PathLike[str], out_path: str | os.PathLike[str],
                              **kwargs: Any) -> dict[str, int] | None:
    """The cache job: `build_cache` for a slide that passed inspection (path and MPP from its decision file).

    A slide that fails here (a corrupt tile inside tissue, no tissue patches), or whose tissue job failed, gets a
    failure record instead of a cache (`write_failed_cache`) and None is returned, so one bad slide never blocks
    the others. Failures that are not the slide's (disk full, out of memory) still fail the job.
    """
    from msamil.slides.outcomes import failure_record, usable_decision
    from msamil.tissue.detect import tissue_failure

    row = usable_decision(decision_json, "cache")
    slide_id = str(row["slide"])
    record = tissue_failure(tissue_geojson)
    if record is None:
        try:
            return build_cache(row["path"], slide_id, mask_path, out_path, mpp=float(row["mpp"]), **kwargs)
        except Exception as exc:
            record = failure_record(slide_id, "cache", exc)
            if record is None:
                raise
            log.exception("slide %s: cache failed; the slide will be excluded", slide_id)
    log.warning("slide %s: EXCLUDED at %s: %s (fix: %s)", slide_id, record["stage"], record["reason"], record["fix"])
    write_failed_cache(out_path, record)
    return None

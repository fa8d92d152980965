"""Bags of patches from a slide's multi-scale cache (`cache/{slide}.h5`, DESIGN.md section 4), for training and
inference.

Speed matters here: a training epoch draws one bag per slide, and the GPU waits for it. h5py's fancy indexing is
slow, so drawn indices are sorted and each patch of a raw cache is fetched as its own chunk (one patch per chunk,
no filters: the chunk's bytes are the image); other layouts are read run by run with slice reads. The file is
opened once per reader and per process (reopened lazily after a fork or unpickling, so a reader can be handed to
DataLoader workers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from msamil.cache.access import open_cache
from msamil.config import SCALES


@dataclass
class Bag:
    """Patches of one slide, any mix of scales. `index` is the row within the patch's scale group of the cache,
    `scale_idx` its scale (0=20x, 1=10x, 2=5x), `coords` its level-0 top-left (x, y); `width`/`height` the
    slide's level-0 size (for normalising positions)."""

    imgs: np.ndarray  # uint8 (n, P, P, 3)
    coords: np.ndarray  # int64 (n, 2)
    scale_idx: np.ndarray  # int64 (n,)
    index: np.ndarray  # int64 (n,)
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.index)


class BagReader:
    """Random and sequential access to the patches of one cache file.

    `indices` restricts each scale to a subset (the SFFM selection: kept indices per scale); None means every
    tissue patch. `scales` restricts the scales used (default: those in `indices`, else all three). Everything
    except the images (coords, the selection) is loaded once at construction.
    """

    def __init__(self, cache_path: str | os.PathLike[str], indices: dict[str, np.ndarray] | None = None,
                 scales: list[str] | tuple[str, ...] | None = None) -> None:
        self.path = Path(cache_path)
        if scales is None:
            scales = [s for s in SCALES if indices is None or s in indices]
        unknown = [s for s in scales if s not in SCALES]
        if unknown:
            raise ValueError(f"unknown scales {unknown}; expected a subset of {list(SCALES)}")
        self.scales = [s for s in SCALES if s in scales]
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        # JPEG patches are decoded on this pool when set (cv2 releases the GIL, so threads decode in parallel)
        self.executor: Executor | None = None
        f = self._file()  # CacheError naming the file and the fix when it is truncated or unfinished
        attrs = f.attrs
        self.slide = str(attrs.get("slide", self.path.stem))
        self.width = int(attrs["width"])
        self.height = int(attrs["height"])
        self.patch_px = int(attrs["patch_px"])
        self.coords: dict[str, np.ndarray] = {}
        self.selected: dict[str, np.ndarray] = {}
        self.encoding: dict[str, str] = {}
        self._whole_chunks: dict[str, bool] = {}
        for s in self.scales:
            g = f[s]
            self.coords[s] = g["coords"][()].astype(np.int64)
            self.encoding[s] = str(g.attrs.get("encoding", attrs.get("encoding", "raw")))
            imgs = g["imgs"]
            self._whole_chunks[s] = (self.encoding[s] == "raw" and imgs.chunks == (1, *imgs.shape[1:])
                                     and imgs.id.get_create_plist().get_nfilters() == 0)
            n = len(self.coords[s])
            if indices is None or indices.get(s) is None:
                sel = np.arange(n, dtype=np.int64)
            else:
                sel = np.unique(np.asarray(indices[s], dtype=np.int64))
                if len(sel) and (sel[0] < 0 or sel[-1] >= n):
                    raise ValueError(f"{self.path}: indices for {s} out of range 0..{n - 1}")
            self.selected[s] = sel
        self._offsets = np.cumsum([0] + [len(self.selected[s]) for s in self.scales])

    # -- file handle, one per process ---------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # rdcc: a random patch is read once, so the chunk cache only costs copies.
            self._h5 = open_cache(self.path, rdcc_nbytes=0)
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state["executor"] = None
        return state

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sizes ----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def counts(self) -> dict[str, int]:
        return {s: len(self.selected[s]) for s in self.scales}

    # -- reading ----------------------------------------------------------------------------------------------------
    def read_encoded(self, scale: str, index: np.ndarray) -> list[np.ndarray]:
        """The JPEG bytes of `index` (sorted ascending, unique) of a JPEG-encoded scale, undecoded (so a GPU or a
        pool of threads can decode them)."""
        index = np.asarray(index, dtype=np.int64)
        dset = self._file()[scale]["imgs"]
        bufs: list[np.ndarray] = []
        if not len(index):
            return bufs
        breaks = np.nonzero(np.diff(index) != 1)[0] + 1
        for run in np.split(index, breaks):
            bufs.extend(dset[int(run[0]):int(run[-1]) + 1])
        return bufs

    def read(self, scale: str, index: np.ndarray) -> np.ndarray:
        """Images of `index` (sorted ascending, unique) of one scale, as uint8 (k, P, P, 3)."""
        index = np.asarray(index, dtype=np.int64)
        dset = self._file()[scale]["imgs"]
        p = self.patch_px
        out = np.empty((len(index), p, p, 3), dtype=np.uint8)
        if not len(index):
            return out
        # Split into runs of consecutive indices; each run is one hyperslab read.
        breaks = np.nonzero(np.diff(index) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(index)]])
        if self.encoding[scale] == "jpeg":
            bufs = self.read_encoded(scale, index)
            decode_into(out, bufs, self.executor)
            return out
        if self._whole_chunks[scale]:
            # One unfiltered chunk per patch: fetch its bytes directly, bypassing h5py's selection machinery
            # (measured ~9x faster than a one-patch read_direct).
            read_chunk = dset.id.read_direct_chunk
            flat = out.reshape(len(index), -1)
            for k, i in enumerate(index.tolist()):
                read_chunk((i, 0, 0, 0), out=flat[k])  # straight into the bag, no intermediate bytes
            return out
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            i0 = int(index[a])
            dset.read_direct(out, np.s_[i0:i0 + (b - a)], np.s_[a:b])
        return out

    def bag(self, flat: np.ndarray) -> Bag:
        """Bag of positions `flat` (sorted) in the concatenated selection of the reader's scales."""
        imgs, coords, sidx, index = [], [], [], []
        for k, s in enumerate(self.scales):
            lo, hi = self._offsets[k], self._offsets[k + 1]
            pos = flat[(flat >= lo) & (flat < hi)] - lo
            if not len(pos):
                continue
            idx = self.selected[s][pos]
            imgs.append(self.read(s, idx))
            coords.append(self.coords[s][idx])
            sidx.append(np.full(len(idx), SCALES.index(s), dtype=np.int64))
            index.append(idx)
        p = self.patch_px
        if not imgs:
            return Bag(np.empty((0, p, p, 3), np.uint8), np.empty((0, 2), np.int64), np.empty(0, np.int64),
                       np.empty(0, np.int64), self.width, self.height)
        return Bag(np.concatenate(imgs), np.concatenate(coords), np.concatenate(sidx), np.concatenate(index),
                   self.width, self.height)

    def sample(self, n: int, rng: np.random.Generator | int | None = None, balanced: bool = False) -> Bag:
        """`n` distinct patches of the selected patches of the reader's scales (all of them if fewer than `n`
        exist), ordered by scale then index. Same `rng` state, same bag.

        Uniform over the union by default. `balanced` gives each scale an equal share (a scale with too few
        patches gives all it has and the rest is shared out): 5x patches are 16x rarer than 20x ones, so a uniform
        bag would carry almost no 5x context.
        """
        return self.bag(self.sample_positions(n, rng, balanced))

    def sample_positions(self, n: int, rng: np.random.Generator | int | None = None,
                         balanced: bool = False) -> np.ndarray:
        """The draw of `sample` without reading anything: sorted positions for `bag`. Drawing in one process and
        reading elsewhere (msamil.training.loader) gives the same bags whatever does the reading."""
        rng = np.random.default_rng(rng)
        total = len(self)
        if n >= total:
            return np.arange(total)
        if not balanced:
            return np.sort(rng.choice(total, size=n, replace=False))
        sizes = np.diff(self._offsets)
        take = balanced_shares(sizes, n)
        parts = [self._offsets[k] + np.sort(rng.choice(int(sizes[k]), size=int(take[k]), replace=False))
                 for k in range(len(sizes)) if take[k]]
        return np.concatenate(parts)

    def chunks(self, size: int) -> Iterator[Bag]:
        """Every selected patch, scale by scale in index order, `size` at a time (for inference)."""
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        for a in range(0, len(self), size):
            yield self.bag(np.arange(a, min(a + size, len(self))))


def balanced_shares(sizes: np.ndarray, n: int) -> np.ndarray:
    """Split `n` draws over groups of `sizes` as evenly as possible without exceeding any group (water-filling)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros_like(sizes)
    remaining = min(int(n), int(sizes.sum()))
    while remaining > 0:
        room = np.flatnonzero(take < sizes)
        share = max(1, remaining // len(room))
        for k in room:
            add = min(share, int(sizes[k] - take[k]), remaining)
            take[k] += add
            remaining -= add
            if remaining == 0:
                break
    return take


def decode_into(out: np.ndarray, bufs: list[np.ndarray], executor: Executor | None = None) -> None:
    """Decode JPEG buffers into `out` (n, P, P, 3), split over `executor`'s threads when one is given."""
    n = len(bufs)
    if executor is None or n < 2:
        for k, buf in enumerate(bufs):
            out[k] = _decode_jpeg(buf)
        return
    workers = max(1, getattr(executor, "_max_workers", 4))
    bounds = np.linspace(0, n, min(n, workers) + 1).astype(int)

    def part(a: int, b: int) -> None:
        for k in range(a, b):
            out[k] = _decode_jpeg(bufs[k])

    for future in [executor.submit(part, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]:
        future.result()


def _decode_jpeg(buf: np.ndarray) -> np.ndarray:
    bgr = cv2.imdecode(np.asarray(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("corrupt JPEG patch in cache")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

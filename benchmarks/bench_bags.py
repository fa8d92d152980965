"""Random bag reads from the cache (msamil.cache.bags.BagReader) and bytes per patch, raw against JPEG.

Run: .venv/bin/python benchmarks/bench_bags.py [--patch-px 64 256 --bags 200 --bag-size 200]

Caches (raw and jpeg) are built from the synthetic slide of bench_cache.py; the files are read once before timing
(warm page cache), then `--bags` bags of `--bag-size` patches are drawn from one reader in one process (one
DataLoader worker's view). The baseline is h5py fancy indexing with the same sorted indices.
Rates are patches/s of process CPU time and of wall time (CPU time is the stable figure on a shared machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bench_cache import TMIN, make_slide

from msamil.cache.bags import BagReader
from msamil.cache.writer import build_cache
from msamil.config import SCALES


def timed(fn, bags: int) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    for _ in range(bags):
        fn()
    return time.process_time() - c, time.perf_counter() - w


def fancy_bag(f: h5py.File, rng: np.random.Generator, total: int, counts: dict[str, int], size: int) -> None:
    """The baseline: the same draw, read with h5py fancy indexing per scale."""
    flat = np.sort(rng.choice(total, size=size, replace=False))
    off = 0
    for s in SCALES:
        sel = flat[(flat >= off) & (flat < off + counts[s])] - off
        if len(sel):
            f[s]["imgs"][sel.tolist()]
        off += counts[s]


def bytes_per_patch(path: Path) -> tuple[float, float]:
    """(image bytes per patch in the imgs datasets, whole file bytes per patch)."""
    with h5py.File(path, "r") as f:
        n = sum(len(f[s]["coords"]) for s in SCALES)
        imgs = sum(f[s]["imgs"].id.get_storage_size() for s in SCALES)
        if f.attrs["encoding"] == "jpeg":  # vlen data lives in the global heap, not in the dataset's storage
            imgs = sum(sum(len(b) for b in f[s]["imgs"][()]) for s in SCALES)
    return imgs / n, path.stat().st_size / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch-px", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--bag-size", type=int, default=200)
    ap.add_argument("--width-um", type=float, default=4096.0)
    ap.add_argument("--height-um", type=float, default=3072.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        slide, mask = make_slide(tmp, args.width_um, args.height_um)
        for p in args.patch_px:
            for enc in ("raw", "jpeg"):
                h5 = tmp / f"{enc}{p}.h5"
                build_cache(slide, "bench", mask, h5, mpp=0.5, mpp_20x=0.5, patch_px=p, tissue_min=TMIN,
                            encoding=enc, jpeg_quality=90)
                h5.read_bytes()  # warm page cache
                reader = BagReader(h5)
                rng = np.random.default_rng(0)
                cpu, wall = timed(lambda r=reader, g=rng: r.sample(args.bag_size, g), args.bags)
                n = args.bags * min(args.bag_size, len(reader))
                fancy = "-"
                if enc == "raw":
                    f = h5py.File(h5, "r")
                    rng2 = np.random.default_rng(0)
                    total, counts = len(reader), reader.counts()
                    nb = max(1, args.bags // 20)  # fancy indexing is slow: fewer bags
                    fc, _ = timed(lambda f=f, g=rng2, t=total, c=counts: fancy_bag(f, g, t, c, args.bag_size), nb)
                    fancy = f"{nb * min(args.bag_size, total) / fc:,.0f}"
                    f.close()
                img_b, file_b = bytes_per_patch(h5)
                rows.append(f"| {p} | {enc} | {len(reader)} | {n / cpu:,.0f} | {n / wall:,.0f} | {fancy} "
                            f"| {img_b:,.0f} | {file_b:,.0f} |")
                print(rows[-1], file=sys.stderr)
                reader.close()
    print(f"| patch px | encoding | patches in cache | bags of {args.bag_size}: patches/s (CPU) | patches/s (wall) "
          "| h5py fancy indexing, patches/s (CPU) | image bytes/patch | file bytes/patch |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Cache build throughput: msamil.cache.writer against a naive read_patch loop and against the JPEG tile decode limit.

Run: .venv/bin/python benchmarks/bench_cache.py [--width-um 4096 --height-um 3072 --patch-px 64 256 --repeats 2]

One synthetic Aperio slide (tiled JPEG, levels 1/4/16) is written to a temp dir; every method then processes the
same kept patches of the same layout in the same run:
- naive: one `Slide.read_patch` per patch per scale (what a per-scale patcher does);
- cell reader: msamil's read of each kept 5x footprint once per pyramid level, children cut out (no writing);
- build: the whole `build_cache` (mask, layout, sha256, reads, HDF5 writes), and the same build with the naive
  per-patch reads (the builder's fallback path) as its baseline;
- decode limit: decoding, once, every JPEG tile the kept cells touch at the levels used (tifffile, one thread).
Rates are patches/s of process CPU time (per core; everything here is single-threaded, and CPU time keeps the
figures meaningful on a shared machine). Best of --repeats.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from msamil.cache import writer as cache
from msamil.cache.grid import Layout, plan_layout
from msamil.cache.writer import CellReader, build_cache, read_mask
from msamil.config import SCALES
from msamil.slides.slide import Slide, footprints
from msamil.slides.svs import write_svs

TMIN = {"20x": 0.5, "10x": 0.25, "5x": 0.1}


def make_slide(tmp: Path, width_um: float, height_um: float, mpp: float = 0.5, seed: int = 0,
               seg_mpp: float = 8.0) -> tuple[Path, Path]:
    """A textured two-blob tissue slide as SVS plus its tissue mask PNG (analytic, at seg_mpp)."""
    rng = np.random.default_rng(seed)
    w, h = int(width_um / mpp) // 16 * 16, int(height_um / mpp) // 16 * 16

    def shape(um_per_px: float, ww: int, hh: int) -> np.ndarray:
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        xx, yy = (xx + 0.5) * um_per_px / width_um, (yy + 0.5) * um_per_px / height_um
        return (((xx - 0.3) / 0.25) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1) | (((xx - 0.75) / 0.2) ** 2
                                                                        + ((yy - 0.45) / 0.3) ** 2 < 1)

    tissue = shape(mpp, w, h)
    coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    tex = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    fine = rng.integers(-20, 21, size=(h, w, 1), dtype=np.int16)
    img = np.clip(np.array([190, 110, 170], np.int16) + (tex.astype(np.int16) - 128) // 3 + fine, 0, 255)
    rgb = np.where(tissue[..., None], img.astype(np.uint8), np.uint8(242))
    slide = tmp / "bench.svs"
    write_svs(slide, rgb, mpp=mpp, tile_size=256, jpeg_quality=85)
    mw, mh = math.ceil(w * mpp / seg_mpp), math.ceil(h * mpp / seg_mpp)
    mask = tmp / "bench_mask.png"
    Image.fromarray(np.where(shape(seg_mpp, mw, mh), 255, 0).astype(np.uint8)).save(mask)
    return slide, mask


def naive(slide: Slide, layout: Layout, patch_px: int) -> float:
    t = time.process_time()
    for s in SCALES:
        f = layout.footprint(s)
        for x, y in layout.scales[s].coords.tolist():
            slide.read_patch(x, y, f, patch_px)
    return time.process_time() - t


def cell_reader(slide: Slide, layout: Layout, patch_px: int) -> float:
    t = time.process_time()
    reader = CellReader(slide, layout, patch_px)
    cells = layout.scales["5x"]
    bounds = {s: np.searchsorted(layout.scales[s].cell, np.arange(len(cells) + 1)) for s in SCALES}
    for c, (x, y) in enumerate(cells.coords.tolist()):
        reader.read(x, y, {s: layout.scales[s].coords[bounds[s][c]:bounds[s][c + 1]] for s in SCALES})
    return time.process_time() - t


def naive_build(slide_path: Path, mask_path: Path, out: Path, patch_px: int) -> float:
    """`build_cache` with every patch read by its own read_patch (the builder's fallback path), same writes."""
    original = cache.CellReader.__init__

    def per_patch(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.plan = {s: (level, None) for s, (level, _) in self.plan.items()}

    cache.CellReader.__init__ = per_patch
    try:
        t = time.process_time()
        build_cache(slide_path, "bench", mask_path, out, mpp=0.5, mpp_20x=0.5, patch_px=patch_px, tissue_min=TMIN)
        return time.process_time() - t
    finally:
        cache.CellReader.__init__ = original


def decode_limit(slide_path: Path, slide: Slide, layout: Layout, patch_px: int) -> tuple[float, int]:
    """Seconds to decode, once, every tile touched by a kept 5x cell at each pyramid level the scales use."""
    levels = {slide.patch_plan(layout.footprint(s), patch_px)[0] for s in SCALES}
    f5 = layout.footprint("5x")
    pages = [p for p in tifffile.TiffFile(slide_path).pages if p.is_tiled]
    total, ntiles = 0.0, 0
    with open(slide_path, "rb") as fh:
        for level in sorted(levels):
            page = pages[level]
            ds = slide.nominal_downsamples[level]
            tw, th = page.tilewidth, page.tilelength
            across = math.ceil(page.imagewidth / tw)
            down = math.ceil(page.imagelength / th)
            touched: set[int] = set()
            for x, y in layout.scales["5x"].coords.tolist():
                x0, y0 = int(x / ds) // tw, int(y / ds) // th
                x1 = min(across - 1, int((x + f5 - 1) / ds) // tw)
                y1 = min(down - 1, int((y + f5 - 1) / ds) // th)
                touched |= {r * across + c for r in range(y0, y1 + 1) for c in range(x0, x1 + 1)}
            blobs = []
            for idx in sorted(touched):
                fh.seek(page.dataoffsets[idx])
                blobs.append((idx, fh.read(page.databytecounts[idx])))
            t = time.process_time()
            for idx, data in blobs:
                page.decode(data, idx, jpegtables=page.jpegtables)
            total += time.process_time() - t
            ntiles += len(blobs)
    return total, ntiles


def run(width_um: float, height_um: float, patch_sizes: list[int], repeats: int) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.process_time()
        slide_path, mask_path = make_slide(tmp, width_um, height_um)
        print(f"slide written in {time.process_time() - t:.1f}s", file=sys.stderr)
        mask = read_mask(mask_path, "bench")
        for p in patch_sizes:
            with Slide.open(slide_path, "bench") as slide:
                w, h = slide.info.width, slide.info.height
                layout = plan_layout(w, h, footprints(p, 0.5, 0.5)["20x"], mask, TMIN)
                n = sum(layout.counts().values())
                best = {"naive": math.inf, "cells": math.inf, "build": math.inf, "naive_build": math.inf,
                        "decode": math.inf}
                tiles = 0
                for _ in range(repeats):
                    best["naive"] = min(best["naive"], naive(slide, layout, p))
                    best["cells"] = min(best["cells"], cell_reader(slide, layout, p))
                    t = time.process_time()
                    build_cache(slide_path, "bench", mask_path, tmp / f"c{p}.h5", mpp=0.5, mpp_20x=0.5,
                                patch_px=p, tissue_min=TMIN)
                    best["build"] = min(best["build"], time.process_time() - t)
                    best["naive_build"] = min(best["naive_build"], naive_build(slide_path, mask_path, tmp / "n.h5", p))
                    dt, tiles = decode_limit(slide_path, slide, layout, p)
                    best["decode"] = min(best["decode"], dt)
            rate = {k: n / v for k, v in best.items()}
            rows.append(
                f"| {w}x{h} @0.5 | {p} | {n} | {rate['naive']:,.0f} | {rate['cells']:,.0f} "
                f"| {rate['cells'] / rate['naive']:.1f}x | {rate['naive_build']:,.0f} | {rate['build']:,.0f} "
                f"| {rate['build'] / rate['naive_build']:.1f}x | {rate['decode']:,.0f} ({tiles} tiles) "
                f"| {rate['cells'] / rate['decode']:.0%} |")
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width-um", type=float, default=4096.0)
    ap.add_argument("--height-um", type=float, default=3072.0)
    ap.add_argument("--patch-px", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = run(args.width_um, args.height_um, args.patch_px, args.repeats)
    print("| slide (px) | patch px | patches (3 scales) | reads: naive /s | reads: cell reader /s | reads: speedup "
          "| build: naive /s | build: msamil /s | build: speedup | JPEG decode limit /s | cell reader / limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

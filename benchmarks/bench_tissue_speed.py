"""Cost of tissue_mask before and after the stain-OD rewrite (issue 15 item 4), as a ratio in one process.

Run: .venv/bin/python benchmarks/bench_tissue_speed.py [--before d497645] [--slides DIR] [--seconds 2]

"Before" is `msamil/tissue/detect.py` as it was at commit --before (read with `git show`, run with its own
defaults: HSV saturation, Otsu); "after" is the working tree's. Both run on the same images, call by call
alternating, for about --seconds of process CPU time each; the ratio after/before is what is reported (absolute times on a shared machine
mean little). Images: synthetic slides rendered at 8 µm/px in four sizes (a biopsy to a 50 x 25 mm resection), plus
every brightfield slide of benchmarks/real_slides.json found in --slides. For scale, the time to read a 10 x 7.5 mm
slide (1 µm/px tiled JPEG SVS, levels 1/4/16) at 8 µm/px, what run_tissue does before masking, is shown too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from msamil.slides.slide import Slide
from msamil.slides.svs import write_svs
from msamil.tissue.detect import TISSUE_DEFAULTS, tissue_mask

REPO = Path(__file__).resolve().parents[1]
BEFORE_CFG = {"median_blur_um": 56, "threshold": "otsu", "min_saturation": 20, "close_um": 64,
              "min_tissue_area_um2": 50000, "min_hole_area_um2": 20000}


def legacy_module(commit: str) -> types.ModuleType:
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:msamil/tissue/detect.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("detect_before")
    exec(compile(src, f"{commit}:msamil/tissue/detect.py", "exec"), mod.__dict__)  # noqa: S102 (our own file)
    return mod


def synthetic(width_mm: float, height_mm: float, mpp: float = 8.0, seed: int = 0) -> np.ndarray:
    """Pink textured tissue ellipses on near-white glass, rendered directly at `mpp`."""
    rng = np.random.default_rng(seed)
    w, h = int(width_mm * 1000 / mpp), int(height_mm * 1000 / mpp)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    tissue = ((xx - 0.35) / 0.3) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1
    tissue |= ((xx - 0.78) / 0.15) ** 2 + ((yy - 0.4) / 0.25) ** 2 < 1
    img = np.empty((h, w, 3), np.float32)
    img[:] = (242, 241, 244)
    img[tissue] = (200, 120, 175)
    img += rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def cpu_ms(fn, seconds: float) -> float:
    """Mean process CPU milliseconds per call of fn() over at least `seconds` (and 3 calls)."""
    fn()
    n, t0 = 0, time.process_time()
    while n < 3 or time.process_time() - t0 < seconds:
        fn()
        n += 1
    return 1000 * (time.process_time() - t0) / n


def paired_ms(fa, fb, seconds: float) -> tuple[float, float]:
    """CPU ms per call of fa and fb, calls alternating (a, b, a, b, ...) so both see the same machine load."""
    fa(), fb()
    ta = tb = 0.0
    n = 0
    while n < 3 or ta + tb < 2 * seconds:
        t0 = time.process_time()
        fa()
        t1 = time.process_time()
        fb()
        ta, tb, n = ta + t1 - t0, tb + time.process_time() - t1, n + 1
    return 1000 * ta / n, 1000 * tb / n


def images(slides_dir: str | None) -> list[tuple[str, np.ndarray, float]]:
    sizes = ((2, 1.5), (10, 7.5), (20, 15), (50, 25))
    out = [(f"synthetic {w:g} x {h:g} mm", synthetic(w, h), 8.0) for w, h in sizes]
    if slides_dir:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_tissue_real import load

        manifest = json.loads((REPO / "benchmarks" / "real_slides.json").read_text())
        for entry in manifest["slides"]:
            if entry["kind"] == "brightfield" and (Path(slides_dir) / entry["file"]).exists():
                img, work, _, _, _ = load(entry, Path(slides_dir), 8.0)
                out.append((entry["name"], img, work))
    return out


def read_time(seconds: float) -> float:
    """CPU ms to read a 10 x 7.5 mm, 1 µm/px tiled SVS at 8 µm/px (image_at_mpp)."""
    rgb = np.kron(synthetic(10, 7.5, mpp=4.0), np.ones((4, 4, 1), np.uint8))  # 10000 x 7500 px at 1 µm/px
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "read.svs"
        write_svs(path, rgb, mpp=1.0, tile_size=512, jpeg_quality=80, levels=[1, 4, 16])
        del rgb
        with Slide.open(path, "read") as slide:
            return cpu_ms(lambda: slide.image_at_mpp(8.0), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="d497645")
    ap.add_argument("--slides", default=None)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--no-read", action="store_true", help="skip the slide-read reference")
    args = ap.parse_args()
    before = legacy_module(args.before)
    cfg = {k: v for k, v in TISSUE_DEFAULTS.items() if k != "seg_mpp"}
    print("| image | mask px | before ms | after ms | after / before |")
    print("|---|---:|---:|---:|---:|")
    ratios = []
    for name, img, mpp in images(args.slides):
        t_before, t_after = paired_ms(lambda img=img, mpp=mpp: before.tissue_mask(img, mpp, **BEFORE_CFG),
                                      lambda img=img, mpp=mpp: tissue_mask(img, mpp, **cfg), args.seconds)
        ratios.append(t_after / t_before)
        print(f"| {name} | {img.shape[1]}x{img.shape[0]} | {t_before:.1f} | {t_after:.1f} | {t_after / t_before:.2f} |")
    print(f"\nmedian after/before: {np.median(ratios):.2f}")
    if not args.no_read:
        print(f"reading the 10 x 7.5 mm SVS at 8 µm/px: {read_time(args.seconds):.0f} ms CPU")


if __name__ == "__main__":
    main()

"""Benchmark: peak memory and time of the per-slide jobs (inspect, tissue, cache) against slide area.

rules/inputs.smk asks for `mem_mb` and `runtime` per slide from its width x height (issue 17, item 9, last
bullet). This script measures each stage in a fresh process (`/usr/bin/time`: peak RSS, wall and CPU seconds) on
pyramidal TIFF slides of growing area, so the linear model there can be checked against what jobs really use.

    .venv/bin/python benchmarks/bench_slide_resources.py                 # 3, 12 and 48 megapixels
    .venv/bin/python benchmarks/bench_slide_resources.py --sides 2048 4096

Results go to stdout and to the `bench_slide_resources` section of benchmarks/RESULTS.md (replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
TISSUE = {"seg_mpp": 8.0}  # msamil.tissue.detect.TISSUE_DEFAULTS otherwise
CACHE = {"mpp_20x": 0.5, "patch_px": 256, "tissue_min": {"20x": 0.5, "10x": 0.25, "5x": 0.1}, "encoding": "jpeg",
         "jpeg_quality": 90}

STAGES = {
    "inspect": "from msamil.slides.inspection import inspect_row\n"
               "inspect_row(ROW, D/'decision.json', D/'qc.png', dataset='b', classes=['a'], tissue_cfg=TISSUE)",
    "tissue": "from msamil.tissue.detect import run_tissue_from_decision\n"
              "run_tissue_from_decision(D/'decision.json', D/'mask.png', D/'t.geojson', D/'tqc.png', TISSUE)",
    "cache": "from msamil.cache.writer import build_cache_from_decision\n"
             "counts = build_cache_from_decision(D/'decision.json', D/'mask.png', D/'t.geojson', D/'c.h5', **CACHE)\n"
             "assert counts, 'the slide failed at cache or tissue'",
}


def make_slide(path: Path, side: int) -> None:
    """A 4:3 slide of `side` px width at 0.5 µm/px with blobs of tissue, as an Aperio-style pyramidal TIFF."""
    import slide_fixtures as sf

    height = side * 3 // 4
    rgb = sf.tissue_image(side * 0.5, height * 0.5, 0.5, seed=side)
    sf.write_aperio(path, rgb, 0.5, tile=256, compression="jpeg", downsamples=(1, 4, 16, 64))


def run_stage(stage: str, folder: Path) -> dict[str, float]:
    row = {"slide": "s", "patient": "p", "label": "a", "path": str(folder / "s.tif"), "annotation": "", "mpp": "",
           "exclude": ""}
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom pathlib import Path\nD = Path({str(folder)!r})\n"
            f"ROW = {row!r}\nTISSUE = {TISSUE!r}\nCACHE = {CACHE!r}\n{STAGES[stage]}\n")
    done = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{done.stderr[-3000:]}")
    wall, user, sys_, rss = re.search(r"TIME (\S+) (\S+) (\S+) (\S+)", done.stderr).groups()
    return {"wall_s": float(wall), "cpu_s": float(user) + float(sys_), "rss_mb": int(rss) / 1024}


def measure(sides: list[int]) -> list[dict[str, float]]:
    rows = []
    for side in sides:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            make_slide(folder / "s.tif", side)
            for stage in STAGES:
                result = {"stage": stage, "width": side, "height": side * 3 // 4, **run_stage(stage, folder)}
                result["mpx"] = result["width"] * result["height"] / 1e6
                rows.append(result)
                print(json.dumps(result), flush=True)
    return rows


def report(rows: list[dict[str, float]]) -> str:
    lines = ["## Per-slide job resources against slide area (`benchmarks/bench_slide_resources.py`)", "",
             f"One fresh process per stage (`/usr/bin/time`), JPEG-tiled pyramidal TIFFs at 0.5 µm/px with blob "
             f"tissue (about half the area), cache at patch_px {CACHE['patch_px']} (JPEG), on {platform.machine()} "
             f"with {os.cpu_count()} CPUs shared with other users (wall time is noisy).", "",
             "| stage | slide px | Mpx | peak RSS MB | CPU s | wall s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['width']}x{r['height']} | {r['mpx']:.1f} | {r['rss_mb']:.0f} | "
                     f"{r['cpu_s']:.1f} | {r['wall_s']:.1f} |")
    lines += ["", "rules/inputs.smk (SLIDE_RESOURCES) asks, per attempt, for mem_mb = base + k x Mpx and runtime "
              "(min) = base + k x Mpx: tissue 1000 + 0.1 x Mpx MB, cache 1000 + 1.0 x Mpx MB (peak RSS grows by about "
              "1 MB per megapixel here), runtimes 5 + 0.005 x Mpx and 10 + 0.01 x Mpx minutes (about 35 times the "
              "CPU rate measured here, for real scans with more tissue and slower storage). Inspection runs before "
              "the size is known and asks 1000 MB + 1 MB per MB of slide file.", "",
              "Reproduce: `.venv/bin/python benchmarks/bench_slide_resources.py`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    section = report(measure(args.sides))
    print(section)
    if not args.no_write:
        from results_md import update_section  # benchmarks/ is on sys.path when run as a script

        update_section("bench_slide_resources", section)


if __name__ == "__main__":
    main()

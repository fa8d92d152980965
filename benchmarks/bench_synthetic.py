"""Benchmark: how long the synthetic dataset takes to generate (issue 2, "Measured").

Times one default-size slide (drawing and writing separately) and the whole default set, serially, and reports
them against a reference measured in the same run on the same pixels: writing the finished RGB array as an
Aperio pyramid with no drawing (`write_svs` alone). The ratio says how much the drawing costs on top of the
unavoidable JPEG encoding, independently of how fast this machine is.

    .venv/bin/python benchmarks/bench_synthetic.py            # 3 slides + the full default set
    .venv/bin/python benchmarks/bench_synthetic.py --quick    # 3 slides only, no full set

Results go to stdout and to the `synthetic` section of benchmarks/RESULTS.md (replaced on rerun).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from msamil.slides.svs import write_svs
from msamil.slides.synthetic import make_slide, synthetic_table, write_synthetic_slide
from msamil.util.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_synthetic:start -->", "<!-- bench_synthetic:end -->"


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is what a shared, loaded machine does not inflate."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - t0, time.process_time() - c0


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def measure(n_slides: int, full_set: bool) -> dict[str, float]:
    """Median seconds per slide for drawing, writing and both, the reference, and optionally the full set."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    syn, seed = cfg["synthetic"], int(cfg["seed"])
    sizes = {k: syn[k] for k in ("width", "height", "tile_size", "jpeg_quality", "lesion_fraction")}
    table = synthetic_table(syn, seed)
    draw, write, reference, total = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for slide, label in zip(table["slide"][:n_slides], table["label"][:n_slides], strict=True):
            t0, c0 = time.perf_counter(), time.process_time()
            rendered = make_slide(slide, label, seed, mpp=cfg["mpp_20x"], **sizes)
            draw.append((time.perf_counter() - t0, time.process_time() - c0))
            write.append(_timed(write_svs, out / f"{slide}.svs", rendered.rgb, cfg["mpp_20x"], syn["tile_size"],
                                syn["jpeg_quality"]))
            reference.append(_timed(write_svs, out / "ref.svs", rendered.rgb, cfg["mpp_20x"], syn["tile_size"],
                                    syn["jpeg_quality"]))
            total.append(_timed(write_synthetic_slide, out / f"{slide}.svs", out / f"{slide}.geojson", slide, label,
                                seed, mpp=cfg["mpp_20x"], **sizes))
        result = {
            "n": n_slides,
            "width": syn["width"],
            "height": syn["height"],
            "n_default": syn["n_slides"],
            "draw": _median(draw),
            "write": _median(write),
            "total": _median(total),
            "reference": _median(reference),
        }
        if full_set:
            t0, c0 = time.perf_counter(), time.process_time()
            for slide, label in zip(table["slide"], table["label"], strict=True):
                write_synthetic_slide(out / f"{slide}.svs", out / f"{slide}.geojson", slide, label, seed,
                                      mpp=cfg["mpp_20x"], **sizes)
            result["full_set"] = (time.perf_counter() - t0, time.process_time() - c0)
    return result


def markdown(r: dict) -> str:
    ref = r["reference"][1]
    rows = [
        ("draw one slide (make_slide)", r["draw"]),
        ("write it as SVS (write_svs)", r["write"]),
        ("draw + write + GeoJSON (write_synthetic_slide)", r["total"]),
        ("reference: write_svs of the same pixels, no drawing", r["reference"]),
    ]
    if "full_set" in r:
        wall, cpu = r["full_set"]
        rows.append((f"default set, {r['n_default']} slides, serial", (wall, cpu)))
        rows.append(("default set, estimate with `--cores 2`", (wall / 2, cpu / 2)))
    else:
        rows.append((f"default set, {r['n_default']} slides, serial (estimate)",
                     tuple(v * r["n_default"] for v in r["total"])))
    lines = [
        START,
        "## Synthetic slides (`msamil.slides.synthetic`)",
        "",
        f"One default slide is {r['width']}x{r['height']} px at 0.5 µm/px; medians of {r['n']} slides in one "
        f"process on {platform.machine()} with {os.cpu_count()} CPUs visible. Wall time depends on how busy the "
        "machine is; CPU time and the ratio to the reference (CPU seconds of writing the same pixels with no "
        "drawing, measured in the same run) do not.",
        "",
        "| step | wall s | CPU s | CPU x reference |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {wall:.3f} | {cpu:.3f} | {cpu / ref:.1f} |" for name, (wall, cpu) in rows]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/bench_synthetic.py`", END, ""]
    return "\n".join(lines)


def update_results(section: str, path: Path = REPO / "benchmarks" / "RESULTS.md") -> None:
    """Replace this benchmark's section in RESULTS.md (other benchmarks keep theirs), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    write_text(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=3, help="slides for the per-slide medians")
    parser.add_argument("--quick", action="store_true", help="skip generating the full default set")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    section = markdown(measure(args.slides, not args.quick))
    print(section)
    if not args.no_write:
        update_results(section)


if __name__ == "__main__":
    main()

"""Benchmark: a scan-sized slide through generate, inspect, tissue and cache with bounded memory (issue 17, item 9).

For each size, a one-slide synthetic dataset is run through the real workflow (`snakemake` up to the slide's
cache), and each job's wall time, CPU time and peak RSS are read from Snakemake's own `benchmark:` files
(results/benchmarks/<rule>/...). The table shows how each stage grows with the slide's area; the claim to check
is that every job of a typical 20x scan (50,000 x 40,000 px, 2 gigapixels) stays under 2 GB.

    .venv/bin/python benchmarks/bench_real_size.py                       # 12.5k x 10k, 25k x 20k, 50k x 40k
    .venv/bin/python benchmarks/bench_real_size.py --sizes 6400x5120     # quick
    .venv/bin/python benchmarks/bench_real_size.py --keep /tmp/big       # keep the run folders

Writes the `bench_real_size` section of benchmarks/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from results_md import update_section

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
STAGES = ("generate_synthetic", "inspect_slide", "inspect", "tissue", "cache")


def run_size(width: int, height: int, workdir: Path) -> pd.DataFrame:
    """Run one slide of this size through the cache stage; one row per job with wall s, CPU s and peak RSS MB."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["synthetic"].update({"n_slides": 1, "n_patients": 1, "positive_fraction": 1.0, "width": width,
                             "height": height})
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the target goes first: `--resources` takes any number of values and would swallow it
    cmd = [SNAKEMAKE, "results/synthetic/cache/syn_000.h5", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--workflow-profile", "none", "--cores", "2", "--resources", "mem_mb=100000"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed for {width}x{height}:\n{proc.stderr[-4000:]}")
    rows = []
    for tsv in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0]
        bench = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "wall_s": float(bench["s"].iloc[0]), "cpu_s": float(bench["cpu_time"].iloc[0]),
                     "max_rss_mb": float(bench["max_rss"].iloc[0])})
    frame = pd.DataFrame(rows).groupby("rule", as_index=False).agg("max")
    frame["width"], frame["height"] = width, height
    frame["gigapixels"] = width * height / 1e9
    frame.attrs["total_wall_s"] = time.perf_counter() - start
    return frame


def markdown(frame: pd.DataFrame) -> str:
    order = {rule: k for k, rule in enumerate(STAGES)}
    frame = frame.assign(order=frame["rule"].map(order).fillna(len(order))).sort_values(["gigapixels", "order"])
    worst = frame["max_rss_mb"].max()
    lines = [
        "## Scan-sized slides: time and memory per stage (`benchmarks/bench_real_size.py`, issue 17)",
        "",
        "One synthetic slide per size (tissue ~35-55 % of the slide, default config otherwise: 64 px patches, raw "
        "cache), run through the real workflow up to its cache with `snakemake --cores 2`; each job's numbers come "
        "from its own Snakemake benchmark file (wall s, CPU s, peak RSS). Peak RSS includes the Python interpreter "
        "and the imported libraries (~150-300 MB).",
        "",
        "| slide (px) | gigapixels | job | wall s | CPU s | peak RSS MB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in frame.itertuples():
        lines.append(f"| {row.width}x{row.height} | {row.gigapixels:.3f} | {row.rule} | {row.wall_s:.1f} | "
                     f"{row.cpu_s:.1f} | {row.max_rss_mb:.0f} |")
    lines += ["", f"Largest peak RSS of any job: **{worst:.0f} MB** (target: every job under 2,000 MB).", "",
              "Reproduce: `.venv/bin/python benchmarks/bench_real_size.py` (sizes as in the table)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["12500x10000", "25000x20000", "50000x40000"])
    parser.add_argument("--keep", type=Path, help="keep the run folders under this directory")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    frames = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        workdir = Path(tempfile.mkdtemp(prefix=f"real_{size}_", dir=args.keep))
        try:
            frames.append(run_size(width, height, workdir))
            print(frames[-1].to_string(index=False), flush=True)
        finally:
            if args.keep is None:
                shutil.rmtree(workdir, ignore_errors=True)
    section = markdown(pd.concat(frames, ignore_index=True))
    print(section)
    if not args.no_write:
        update_section("bench_real_size", section)


if __name__ == "__main__":
    main()

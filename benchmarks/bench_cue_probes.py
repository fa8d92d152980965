"""Benchmark: what each scale of the demo model can see of the synthetic cues (issue 13, msamil.slides.synthetic_probes).

For each cue, renders lesion-only regions of both kinds (the other cue balanced), cuts cache-grid patches at 20x,
10x and 5x exactly as the cache does, and trains two probes per scale on some regions and scores the others:
the demo backbone (test_efficientnet, stride 16, 32 px input) with a one-logit head, and a logistic regression on
colour and texture statistics. Larger and over more generator seeds than tests/test_synthetic_cues.py.

    .venv/bin/python benchmarks/bench_cue_probes.py --seeds 101 202 --regions 18 --epochs 25
    .venv/bin/python benchmarks/bench_cue_probes.py --no-write      # print only

Writes a table and a figure (benchmarks/figures/cue_probes.png: example patches as the model sees them) into the
`bench_cue_probes` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from results_md import update_section

from msamil.config import SCALES
from msamil.slides.synthetic_probes import (
    CUES,
    DEMO_BACKBONE,
    REGION_PX,
    ProbePatches,
    probe_patches,
    run_probes,
)

FIGURE = Path(__file__).resolve().parent / "figures" / "cue_probes.png"


def figure(examples: dict[str, ProbePatches], path: Path, per_kind: int = 3) -> None:
    """Rows: cue x kind; columns: scale; each cell `per_kind` patches at the model's input size (32 px), enlarged."""
    rows = []
    for data in examples.values():
        for label in (0, 1):
            cells = []
            for scale in SCALES:
                idx = np.flatnonzero(data.labels[scale] == label)[:per_kind]
                small = [cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in data.patches[scale][idx]]
                cells.append(np.concatenate([cv2.resize(p, (96, 96), interpolation=cv2.INTER_NEAREST) for p in small], 1))
                cells.append(np.full((96, 8, 3), 255, np.uint8))
            rows.append(np.concatenate(cells[:-1], 1))
            rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows[:-1], 0), cv2.COLOR_RGB2BGR))


def markdown(frame: pd.DataFrame, args: argparse.Namespace, seconds: float) -> str:
    table = frame.pivot_table(index=["cue", "probe"], columns="scale", values="auc", aggfunc=["mean", "min", "max"])
    lines = [
        "## What each scale sees of the synthetic cues (`msamil.slides.synthetic_probes`, issue 13)",
        "",
        f"Patch-level test AUC of two probes per scale, generator seeds {', '.join(map(str, args.seeds))} (never the "
        f"default seed 0), {args.regions} lesion-only regions per class and seed (side in px: {REGION_PX}; every "
        f"third one held out, at most {args.per_region} patches per region and scale) in matched pairs: region i of "
        f"both classes shares stain, gland step and the other cue (balanced). Probes: the demo backbone "
        f"({DEMO_BACKBONE['backbone']}, {DEMO_BACKBONE['backbone_kwargs']}, {DEMO_BACKBONE['input_px']} px input) "
        f"trained {args.epochs} epochs on single-scale patches, and a logistic regression on per-channel colour "
        f"percentiles, gradient and Laplacian energy. Mean [min, max] over seeds. Design: a cue is seen where a probe "
        f"reaches >= 0.9 and unseen where both stay <= 0.6 (cellular: 20x only; architectural: 5x, not 20x).",
        "",
        "| cue | probe | " + " | ".join(SCALES) + " |",
        "|---|---|" + "---:|" * len(SCALES),
    ]
    for (cue, probe), row in table.iterrows():
        cells = [f"{row[('mean', s)]:.3f} [{row[('min', s)]:.3f}, {row[('max', s)]:.3f}]" for s in SCALES]
        lines.append(f"| {cue} | {probe} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![cue probes](figures/{FIGURE.name})",
        "",
        "Rows: regular, atypical (cellular cue); meanders, rosettes (architectural cue). Columns: 20x, 10x, 5x "
        "patches at the model's 32 px input, enlarged.",
        "",
        f"Wall time {seconds / 60:.1f} min on this machine (shared, 1 torch thread). Reproduce: "
        f"`.venv/bin/python benchmarks/bench_cue_probes.py --seeds {' '.join(map(str, args.seeds))} "
        f"--regions {args.regions} --epochs {args.epochs} --per-region {args.per_region}`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 202])
    parser.add_argument("--regions", type=int, default=18, help="regions per class and seed")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--per-region", type=int, default=64, help="patches per region and scale")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows, examples = [], {}
    for seed in args.seeds:
        for cue in CUES:
            data = probe_patches(cue, seed, args.regions, per_region=args.per_region)
            examples.setdefault(cue, data)
            for result in run_probes(data, epochs=args.epochs, seed=seed):
                rows.append({"seed": seed, "cue": cue, **result})
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    section = markdown(frame, args, time.perf_counter() - start)
    print(section)
    if not args.no_write:
        figure(examples, FIGURE)
        update_section("bench_cue_probes", section)


if __name__ == "__main__":
    main()

"""Benchmark of the lesion stage on generated synthetic slides: U-Net++ quality, inference time, SFFM savings.

Builds (or reuses) a synthetic set in a work directory with the library calls the rules make (slides, tissue masks,
caches), then per fold: trains the U-Net++ on the fold's training slides, maps every slide, runs the SFFM and
scores it against the ground-truth lesion polygons:

* best validation IoU (history.tsv);
* lesion inference seconds per slide;
* recall of ground-truth lesion 20x patches (polygon coverage of the footprint > lesion_min, computed exactly
  with shapely) among the SFFM-kept 20x patches, on the fold's test slides and on all slides;
* kept share of tissue patches per scale (the SFFM's compute saving).

Usage: python benchmarks/bench_lesion.py [--workdir /tmp/bench_lesion] [--slides 30] [--folds 0 1] [--threads 1]
  [--write-results] (replace this script's section of benchmarks/RESULTS.md) [--report-only] (reuse the JSON).
Timings depend on the machine; run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import shapely
import yaml

from msamil.cache.writer import build_cache
from msamil.lesion.annotation_masks import iter_polygons
from msamil.lesion.sffm import load_selection, run_sffm
from msamil.lesion.unetpp import run_lesion_infer, run_lesion_train
from msamil.slides.synthetic import synthetic_table, write_synthetic_slide
from msamil.splits.folds import make_folds
from msamil.tissue.detect import run_tissue

REPO = Path(__file__).resolve().parents[1]


def prepare(workdir: Path, cfg: dict[str, Any], n_slides: int, n_patients: int) -> pd.DataFrame:
    """Synthetic slides + tissue masks + caches, as the workflow would make them; reused when present."""
    syn = {**cfg["synthetic"], "n_slides": n_slides, "n_patients": n_patients}
    table = synthetic_table(syn, cfg["seed"])
    rows = []
    for rec in table.itertuples(index=False):
        svs, geo = workdir / "slides" / f"{rec.slide}.svs", workdir / "annotations" / f"{rec.slide}.geojson"
        if not svs.exists():
            write_synthetic_slide(svs, geo, rec.slide, rec.label, cfg["seed"],
                                  **{k: v for k, v in syn.items() if k in ("width", "height", "tile_size",
                                                                             "jpeg_quality", "lesion_fraction")})
        mask = workdir / "tissue" / f"{rec.slide}.png"
        if not mask.exists():
            run_tissue(svs, rec.slide, 0.5, mask, workdir / "tissue" / f"{rec.slide}.geojson",
                       workdir / "tissue" / f"{rec.slide}_qc.png", dict(cfg["tissue"]))
        cache = workdir / "cache" / f"{rec.slide}.h5"
        if not cache.exists():
            build_cache(svs, rec.slide, mask, cache, mpp=0.5, mpp_20x=cfg["mpp_20x"], patch_px=cfg["patch_px"],
                        tissue_min=dict(cfg["cache"]["tissue_min"]), encoding="raw")
        rows.append({"slide": rec.slide, "patient": rec.patient, "label": rec.label, "path": str(svs),
                     "annotation": str(geo), "mpp": 0.5, "width": int(syn["width"]), "height": int(syn["height"])})
    slides = pd.DataFrame(rows)
    slides.to_csv(workdir / "slides.tsv", sep="\t", index=False)
    return slides


def gt_lesion_share(geojson: str, cache: str, scale: str = "20x") -> np.ndarray:
    """Exact share of each cached patch footprint covered by the ground-truth lesion polygons."""
    polys = [shapely.Polygon(r[0], r[1:]) for r in iter_polygons(json.loads(Path(geojson).read_text()))]
    lesion = shapely.union_all(polys) if polys else shapely.Polygon()
    with h5py.File(cache, "r") as h5:
        coords = h5[scale]["coords"][:]
        size = float(h5[scale].attrs["patch_size_level0"])
    boxes = shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + size, coords[:, 1] + size)
    return shapely.area(shapely.intersection(boxes, lesion)) / (size * size)


def run_fold(workdir: Path, cfg: dict[str, Any], slides: pd.DataFrame, folds: pd.DataFrame, fold: int,
             threads: int) -> dict[str, Any]:
    out = workdir / f"fold{fold}"
    lesion_cfg = dict(cfg["lesion"])
    start = time.perf_counter()
    hist = run_lesion_train(str(workdir / "slides.tsv"), str(workdir / "folds.tsv"), fold, lesion_cfg,
                            str(out / "unetpp.pt"), str(out / "history.tsv"), seed=cfg["seed"], device="cpu",
                            threads=threads)
    train_s = time.perf_counter() - start
    times = run_lesion_infer(str(workdir / "slides.tsv"), str(out / "unetpp.pt"), str(out / "probmaps.h5"),
                             device="cpu", threads=threads)
    caches = [str(workdir / "cache" / f"{s}.h5") for s in slides["slide"]]
    summary = run_sffm(out / "probmaps.h5", caches, out / "selection.h5", out / "selection_summary.tsv",
                       prob_threshold=lesion_cfg["prob_threshold"], lesion_min=lesion_cfg["lesion_min"],
                       fallback_k=lesion_cfg["fallback_k"])
    split = folds[folds["fold"] == fold].set_index("slide")["split"]
    hits = {"all": [0, 0], "test": [0, 0]}
    for rec in slides.itertuples(index=False):
        gt = np.flatnonzero(gt_lesion_share(rec.annotation, str(workdir / "cache" / f"{rec.slide}.h5"))
                            > lesion_cfg["lesion_min"])
        kept = load_selection(out / "selection.h5", rec.slide)["20x"]
        found = len(np.intersect1d(gt, kept))
        for key in ("all", "test") if split[rec.slide] == "test" else ("all",):
            hits[key][0] += found
            hits[key][1] += len(gt)
    share = summary.groupby("scale").agg(tissue=("tissue_patches", "sum"), kept=("kept", "sum"),
                                         fallback_slides=("fallback", "sum"))
    best = hist.loc[hist["val_iou"].idxmax()]
    return {
        "fold": fold, "best_val_iou": float(best["val_iou"]), "best_epoch": int(best["epoch"]),
        "train_seconds": train_s, "infer_seconds_per_slide": float(np.mean(list(times.values()))),
        "recall_20x_all": hits["all"][0] / max(hits["all"][1], 1), "gt_patches_all": hits["all"][1],
        "recall_20x_test": hits["test"][0] / max(hits["test"][1], 1), "gt_patches_test": hits["test"][1],
        "kept_share": {s: float(r.kept / max(r.tissue, 1)) for s, r in share.iterrows()},
        "fallback_slides": {s: int(r.fallback_slides) for s, r in share.iterrows()},
    }


def results_markdown(results: list[dict[str, Any]], cfg: dict[str, Any], n_slides: int, threads: int) -> str:
    """This script's section of benchmarks/RESULTS.md."""
    import platform

    lc = cfg["lesion"]
    lines = [
        "## Lesion segmentation and SFFM (`msamil.lesion.unetpp`, `msamil.lesion.sffm`)",
        "",
        f"Default synthetic set ({n_slides} slides, 3072x2048 px at 0.5 µm/px), default config: U-Net++ "
        f"`{lc['encoder']}` from scratch, {lc['epochs']} epochs, tiles {lc['tile_px']} px at {lc['seg_mpp']} µm/px, "
        f"prob_threshold {lc['prob_threshold']}, lesion_min {lc['lesion_min']}. CPU only ({platform.machine()}, "
        f"{threads} torch thread(s), machine shared with other jobs, so times are upper bounds). Ground-truth "
        "lesion patches: 20x patches whose footprint the GeoJSON polygons cover by more than lesion_min (exact "
        "polygon/box intersection).",
        "",
        "| fold | best val IoU (epoch) | train s | inference s/slide | recall 20x, test slides | recall 20x, all "
        "slides | kept share 20x / 10x / 5x | fallback slides |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ks, fb = r["kept_share"], r["fallback_slides"]
        lines.append(
            f"| {r['fold']} | {r['best_val_iou']:.3f} ({r['best_epoch']}) | {r['train_seconds']:.0f} | "
            f"{r['infer_seconds_per_slide']:.2f} | {r['recall_20x_test']:.3f} ({r['gt_patches_test']} patches) | "
            f"{r['recall_20x_all']:.3f} ({r['gt_patches_all']}) | "
            f"{ks.get('20x', 0):.3f} / {ks.get('10x', 0):.3f} / {ks.get('5x', 0):.3f} | "
            f"{sum(fb.values())} |")
    lines += ["", "Targets (issue 4): best val IoU >= 0.6; recall >= 0.90 while keeping <= 40 % of the 20x tissue "
              "patches.", "", "Reproduce: `.venv/bin/python benchmarks/bench_lesion.py --write-results`"]
    return "\n".join(lines)


def write_section(text: str, name: str = "bench_lesion") -> None:
    """Replace (or append) the marked section of benchmarks/RESULTS.md, leaving the other sections alone."""
    path = REPO / "benchmarks" / "RESULTS.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_lesion"))
    parser.add_argument("--slides", type=int, default=30)
    parser.add_argument("--patients", type=int, default=26)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override lesion.epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--report-only", action="store_true", help="reuse WORKDIR/bench_lesion.json, run nothing")
    args = parser.parse_args()

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if args.epochs:
        cfg["lesion"]["epochs"] = args.epochs
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((args.workdir / "bench_lesion.json").read_text())
    else:
        slides = prepare(args.workdir, cfg, args.slides, args.patients)
        folds = make_folds(slides, cfg["splits"]["folds"], cfg["splits"]["val_fraction"], cfg["seed"])
        folds.to_csv(args.workdir / "folds.tsv", sep="\t", index=False)
        results = [run_fold(args.workdir, cfg, slides, folds, k, args.threads) for k in args.folds]
        (args.workdir / "bench_lesion.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps(r))
    if args.write_results:
        write_section(results_markdown(results, cfg, args.slides, args.threads))


if __name__ == "__main__":
    main()

"""Benchmark: what validation costs per epoch with `train.val_bags` (a fixed draw of val_bags bags per slide)
against embedding every selected patch (val_bags null), in the same process (issue 13).

Reads a finished run's slides.tsv, folds.tsv and a fold's SFFM selection, builds the run's model (random init:
the cost does not depend on the weights) and times `predict_slide` over the fold's validation slides under both
policies, interleaved, best of `--repeat`.

    .venv/bin/python benchmarks/bench_val_bags.py --workdir <a finished run's directory> [--config <its config>]

Results go to stdout and to the `bench_val_bags` section of benchmarks/RESULTS.md (replaced on rerun).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml
from results_md import update_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msamil.config import method_settings  # noqa: E402
from msamil.models import build_model  # noqa: E402
from msamil.slides.outcomes import slide_caches  # noqa: E402
from msamil.splits.folds import load_fold  # noqa: E402
from msamil.training.data import SlideData  # noqa: E402
from msamil.training.inference import policy, predict_slide  # noqa: E402


def validation_seconds(model, data, slides, tcfg, seed, fold, val_bags, chunk, input_px) -> tuple[float, int]:
    """Seconds to predict every validation slide, and the patches embedded."""
    cfg = {**tcfg, "val_bags": val_bags}
    start, patches = time.perf_counter(), 0
    for slide in slides:
        with data.open(slide) as reader:
            out = predict_slide(model, reader, torch.device("cpu"), input_px, chunk, slide,
                                **policy(cfg, seed, fold, slide, validation=True))
        patches += len(out["attention"])
    return time.perf_counter() - start, patches


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None, help="the run's config (default <workdir>/config.yaml)")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.workdir = args.workdir.resolve()
    config = yaml.safe_load((args.config or args.workdir / "config.yaml").resolve().read_text())
    settings = method_settings({**config, "methods": {"msamil": {"kind": "msamil"}}}, "msamil")
    model_cfg, tcfg = settings["model"], settings["train"]
    os.chdir(args.workdir)  # slides.tsv names the caches relative to the run's directory
    res = Path("results") / args.dataset
    classes = config["dataset_config"][args.dataset]["classes"]
    split = load_fold(res / "slides.tsv", res / "splits" / "folds.tsv", args.fold, classes)
    data = SlideData(list(slide_caches(res / "slides.tsv").values()), res / "lesion" / f"fold{args.fold}" /
                     "selection.h5", settings["scales"])
    model = build_model(settings, len(classes), seed=0).eval()
    slides, seed, chunk = split.slides["val"], int(config["seed"]), int(tcfg.get("infer_chunk", 64))
    px = int(model_cfg["input_px"])
    load_before = os.getloadavg()
    runs: dict[str, list[tuple[float, int]]] = {"all": [], "draw": []}
    for _ in range(args.repeat):
        runs["all"].append(validation_seconds(model, data, slides, tcfg, seed, args.fold, None, chunk, px))
        runs["draw"].append(validation_seconds(model, data, slides, tcfg, seed, args.fold, 2, chunk, px))
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    load_after = os.getloadavg()
    (t_all, n_all), (t_draw, n_draw) = min(runs["all"]), min(runs["draw"])
    lines = [
        "## Validation per epoch: a fixed draw of bags against every patch (`benchmarks/bench_val_bags.py`, issue 13)",
        "",
        f"MsaMIL-Net's validation pass (`predict_slide`, one thread, random-init demo model) over the "
        f"{len(slides)} validation slides of fold {args.fold} of `{args.workdir.name}` (its config: seed {seed}, "
        f"{config['synthetic']['n_slides']} slides), best of {args.repeat} interleaved runs, on "
        f"{platform.machine()} with {os.cpu_count()} CPUs; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after.", "",
        "| validation | patches embedded | seconds |", "|---|---:|---:|",
        f"| every selected patch (`val_bags: null`, reference) | {n_all} | {t_all:.2f} |",
        f"| a fixed draw of 2 bags per slide (`val_bags: 2`) | {n_draw} | {t_draw:.2f} |", "",
        f"Ratio draw / every patch: time {t_draw / t_all:.2f}, patches {n_draw / n_all:.2f}. Validation runs once "
        "per epoch; test predictions always embed every patch.", "",
        "Reproduce: `.venv/bin/python benchmarks/bench_val_bags.py --workdir <a finished run's directory>`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section("bench_val_bags", text)

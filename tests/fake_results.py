"""A small fake results tree in exactly the formats of docs/CONTRACT.md, for testing the aggregate stage alone.

Upstream stages are slow (and may not exist yet); the tables and figures only read files, so tests write those
files directly: slides.tsv, qc thumbnails, tissue masks, caches (coordinates only), folds, lesion histories,
probability maps, SFFM selections and per-fold run outputs for every method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from msamil.reporting.report import is_ablation

# Dataset names must be in the config schema's enum; the second one is multi-class on purpose.
FAKE_CLASSES = {"synthetic": ["benign", "malignant"], "ubc_ocean": ["CC", "EC", "HGSC"]}
FAKE_METHODS = {
    "msamil": {"kind": "msamil"},
    "msamil_20x_only": {"kind": "msamil", "scales": ["20x"]},
    "msamil_10x_only": {"kind": "msamil", "scales": ["10x"]},
    "msamil_5x_only": {"kind": "msamil", "scales": ["5x"]},
    "msamil_no_sffm": {"kind": "msamil", "sffm": False},
    "msamil_no_mhe": {"kind": "msamil", "mhe": False},
    "msamil_gated_pool": {"kind": "msamil", "pooling": "gated"},
    "msamil_frozen": {"kind": "msamil", "freeze_backbone": True},
    "abmil": {"kind": "abmil"},
    "dino_abmil": {"kind": "dino_abmil"},
    "icmil_abmil": {"kind": "icmil_abmil"},
}
# How separable each method's fake probabilities are, so the tables have a clear (testable) best.
QUALITY = {"msamil": 1.8, "abmil": 0.6, "dino_abmil": 1.0, "icmil_abmil": 0.8}
# backbone patch-views per run (efficiency.json budget); other methods get 10000, MsaMIL-Net's
BACKBONE_VIEWS = {"abmil": 0, "msamil_frozen": 0, "icmil_abmil": 3000}
WIDTH, HEIGHT, MPP, PATCH_PX, MPP_20X = 2048, 1536, 0.5, 64, 0.5
SEG_MPP = 8.0
F20 = round(PATCH_PX * MPP_20X / MPP)
FOOT = {"20x": F20, "10x": 2 * F20, "5x": 4 * F20}


@dataclass
class FakeTree:
    root: Path
    results: Path
    datasets: list[str]
    methods: dict[str, dict]
    folds: list[int]
    slides: dict[str, list[str]] = field(default_factory=dict)
    missing: set[tuple[str, str]] = field(default_factory=set)


def _tissue(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An ellipse of tissue in level-0 coordinates."""
    return ((x - WIDTH / 2) / (0.42 * WIDTH)) ** 2 + ((y - HEIGHT / 2) / (0.4 * HEIGHT)) ** 2 <= 1


def _lesion(x: np.ndarray, y: np.ndarray, cx: float, cy: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= (0.18 * WIDTH) ** 2


def _mask_grid(step: float) -> tuple[np.ndarray, np.ndarray]:
    w, h = int(np.ceil(WIDTH / step)), int(np.ceil(HEIGHT / step))
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs + 0.5) * step, (ys + 0.5) * step


def _write_slide_files(ds_dir: Path, slide: str, rng: np.random.Generator) -> tuple[float, float]:
    """qc thumbnail, tissue mask, cache coordinates; returns the lesion centre."""
    step = SEG_MPP / MPP
    x, y = _mask_grid(step)
    tissue = _tissue(x, y)
    cx = WIDTH / 2 + rng.uniform(-0.15, 0.15) * WIDTH
    cy = HEIGHT / 2 + rng.uniform(-0.1, 0.1) * HEIGHT
    lesion = _lesion(x, y, cx, cy) & tissue
    thumb = np.full(tissue.shape + (3,), 245, np.uint8)
    thumb[tissue] = (230, 160, 200)
    thumb[lesion] = (150, 60, 140)
    (ds_dir / "qc").mkdir(parents=True, exist_ok=True)
    (ds_dir / "tissue").mkdir(parents=True, exist_ok=True)
    Image.fromarray(thumb).save(ds_dir / "qc" / f"{slide}.png")
    Image.fromarray((tissue * 255).astype(np.uint8)).save(ds_dir / "tissue" / f"{slide}.png")

    (ds_dir / "cache").mkdir(parents=True, exist_ok=True)
    with h5py.File(ds_dir / "cache" / f"{slide}.h5", "w") as h5:
        h5.attrs.update(slide=slide, mpp=MPP, mpp_20x=MPP_20X, patch_px=PATCH_PX, width=WIDTH, height=HEIGHT,
                        sha256="0" * 64, version=1, encoding="raw", complete=True)
        f5 = FOOT["5x"]
        cells = [(i * f5, j * f5) for j in range(HEIGHT // f5) for i in range(WIDTH // f5)
                 if _tissue(np.array(i * f5 + f5 / 2), np.array(j * f5 + f5 / 2))]
        coords5 = np.array(cells, dtype=np.int64)
        per_scale = {"5x": (coords5, np.full(len(coords5), -1, np.int64))}
        for scale, k in (("10x", 2), ("20x", 4)):
            foot = FOOT[scale]
            child, parent = [], []
            for p, (x0, y0) in enumerate(coords5):
                for dj in range(k):
                    for di in range(k):
                        child.append((x0 + di * foot, y0 + dj * foot))
                        parent.append(p)
            per_scale[scale] = (np.array(child, np.int64), np.array(parent, np.int64))
        for scale in ("20x", "10x", "5x"):
            coords, parent = per_scale[scale]
            grp = h5.create_group(scale)
            grp.attrs["patch_size_level0"] = FOOT[scale]
            grp["coords"] = coords
            grp["parent"] = parent
            grp["tissue_frac"] = np.ones(len(coords), np.float32)
    return cx, cy


def _lesion_frac(coords: np.ndarray, foot: int, cx: float, cy: float) -> np.ndarray:
    centres = coords + foot / 2
    dist = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)
    return np.clip((0.18 * WIDTH + foot / 2 - dist) / foot, 0, 1).astype(np.float32)


def build_fake_results(root: str | Path, datasets: Sequence[str] = tuple(FAKE_CLASSES),
                       methods: dict[str, dict] | None = None, folds: int = 3, n_slides: int = 12,
                       missing: Iterable[tuple[str, str]] = (), seed: int = 0) -> FakeTree:
    """Write `root/results/...` for `datasets` x `methods` x `folds`; `missing` (dataset, method) pairs get no runs."""
    root = Path(root)
    results = root / "results"
    methods = dict(FAKE_METHODS if methods is None else methods)
    tree = FakeTree(root, results, list(datasets), methods, list(range(folds)), missing=set(missing))
    rng = np.random.default_rng(seed)
    for dataset in datasets:
        classes = FAKE_CLASSES[dataset]
        ds_dir = results / dataset
        ds_dir.mkdir(parents=True, exist_ok=True)
        slides = [f"{dataset[:3]}_{i:03d}" for i in range(n_slides)]
        labels = np.arange(n_slides) * len(classes) // n_slides
        tree.slides[dataset] = slides
        centres = {s: _write_slide_files(ds_dir, s, rng) for s in slides}
        table = pd.DataFrame({
            "slide": slides, "patient": [f"p{i // 2:03d}" for i in range(n_slides)],
            "label": [classes[i] for i in labels], "label_idx": labels,
            "path": [f"raw/slides/{s}.svs" for s in slides], "annotation": "", "mpp": MPP, "mpp_source": "slide",
            "objective_power": 20, "magnification": "20x", "width": WIDTH, "height": HEIGHT, "levels": 3,
            "vendor": "aperio",
        })
        table.to_csv(ds_dir / "slides.tsv", sep="\t", index=False)
        pd.DataFrame(columns=["slide", "path", "reason", "fix"]).to_csv(ds_dir / "excluded.tsv", sep="\t", index=False)
        test_fold = {s: i % folds for i, s in enumerate(slides)}
        split_rows = []
        for k in range(folds):
            for i, s in enumerate(slides):
                split = "test" if test_fold[s] == k else ("val" if test_fold[s] == (k + 1) % folds else "train")
                split_rows.append({"fold": k, "slide": s, "patient": table.patient[i], "label": table.label[i],
                                   "split": split})
        (ds_dir / "splits").mkdir(exist_ok=True)
        pd.DataFrame(split_rows).to_csv(ds_dir / "splits" / "folds.tsv", sep="\t", index=False)
        for k in range(folds):
            _write_lesion(ds_dir / "lesion" / f"fold{k}", slides, centres, k, rng)
        for method in methods:
            if (dataset, method) in tree.missing:
                continue
            for k in range(folds):
                test = [i for i, s in enumerate(slides) if test_fold[s] == k]
                _write_run(ds_dir / "runs" / method / f"fold{k}", method, [slides[i] for i in test], labels[test],
                           classes, k, rng, centres, ds_dir, multi_query=dataset != "synthetic")
    return tree


def _write_lesion(fold_dir: Path, slides: list[str], centres: dict, fold: int, rng: np.random.Generator) -> None:
    fold_dir.mkdir(parents=True, exist_ok=True)
    epochs = np.arange(1, 9)
    iou = 0.75 * (1 - np.exp(-epochs / 3)) + rng.normal(0, 0.02, len(epochs))
    pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs, "val_loss": 1.2 / epochs, "val_iou": iou}).to_csv(
        fold_dir / "history.tsv", sep="\t", index=False)
    x, y = _mask_grid(SEG_MPP / MPP)
    with h5py.File(fold_dir / "probmaps.h5", "w") as pm, h5py.File(fold_dir / "selection.h5", "w") as sel:
        for slide in slides:
            cx, cy = centres[slide]
            prob = np.clip(1.2 - np.hypot(x - cx, y - cy) / (0.18 * WIDTH), 0, 1) * _tissue(x, y)
            pm[slide] = (prob * 255).astype(np.uint8)
            grp = sel.create_group(slide)
            with h5py.File(fold_dir.parents[1] / "cache" / f"{slide}.h5", "r") as cache:
                for scale in ("20x", "10x", "5x"):
                    frac = _lesion_frac(cache[scale]["coords"][:], FOOT[scale], cx, cy)
                    kept = np.flatnonzero(frac > 0.7).astype(np.int64)
                    fallback = kept.size == 0
                    if fallback:
                        kept = np.argsort(-frac)[:8].astype(np.int64)
                    sub = grp.create_group(scale)
                    sub["kept"] = kept
                    sub["lesion_frac"] = frac
                    sub.attrs["fallback"] = fallback
        sel.attrs["complete"] = True


def _write_run(run: Path, method: str, slides: list[str], labels: np.ndarray, classes: list[str], fold: int,
               rng: np.random.Generator, centres: dict, ds_dir: Path, multi_query: bool) -> None:
    run.mkdir(parents=True, exist_ok=True)
    quality = QUALITY.get(method, 1.3 if is_ablation(method) else 0.8)
    logits = rng.normal(0, 1, (len(slides), len(classes)))
    logits[np.arange(len(slides)), labels] += quality
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"slide": slides, "fold": fold, "label": labels,
                          "label_name": [classes[i] for i in labels], "pred": probs.argmax(axis=1)})
    for c in range(len(classes)):
        frame[f"prob_{c}"] = probs[:, c]
    frame.to_csv(run / "predictions.tsv", sep="\t", index=False, float_format="%.6f")
    (run / "metrics.json").write_text(json.dumps({"acc": 0.0, "balanced_acc": 0.0, "macro_f1": 0.0, "auc": 0.0,
                                                  "n": len(slides)}))
    patches = 900.0 if method == "msamil_no_sffm" else 120.0
    views = BACKBONE_VIEWS.get(method, 10000)
    (run / "efficiency.json").write_text(json.dumps({
        "backbone_steps": views // 100, "backbone_patch_views": views, "wall_s": 60 + rng.uniform(0, 10),
        "patches_per_slide": patches + rng.normal(0, 5), "seconds_per_epoch": 3.0 + rng.uniform(0, 1),
        "train_patches_per_s": 400 + rng.uniform(0, 100), "infer_patches_per_s": 1500 + rng.uniform(0, 100),
        "peak_mem_mb": 800 + rng.uniform(0, 100), "device": "cpu"}))
    with h5py.File(run / "attention.h5", "w") as att:
        for slide in slides:
            cx, cy = centres[slide]
            coords, scale_idx = [], []
            with h5py.File(ds_dir / "cache" / f"{slide}.h5", "r") as cache:
                for s_i, scale in enumerate(("20x", "10x", "5x")):
                    c = cache[scale]["coords"][:]
                    coords.append(c)
                    scale_idx.append(np.full(len(c), s_i, np.int64))
            coords_a = np.concatenate(coords)
            w = np.exp(-np.hypot(coords_a[:, 0] - cx, coords_a[:, 1] - cy) / 300)
            grp = att.create_group(slide)
            grp["coords"] = coords_a
            grp["scale_idx"] = np.concatenate(scale_idx)
            grp["attention"] = np.stack([w, w ** 2], axis=1) if multi_query else w

"""Tiny fake inputs for the baseline tests: caches in the CONTRACT layout (20x group only), slides.tsv, folds.tsv.

Patches are flat-coloured squares with a little noise: negative slides are pink, positive slides carry a share of
dark purple "lesion" patches, so a random backbone already separates them a bit and DINO has structure to learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

PINK = np.array([230, 150, 190])
PURPLE = np.array([90, 40, 130])
WHITE_PINK = np.array([245, 210, 225])


def write_fake_cache(path: Path, slide: str, label: int, *, n: int = 24, patch_px: int = 32, seed: int = 0) -> Path:
    """A complete cache h5 with `n` 20x patches (plus empty 10x/5x groups)."""
    rng = np.random.default_rng(seed)
    colours = np.where(rng.random(n)[:, None] < 0.5, PINK, WHITE_PINK)
    if label == 1:
        lesion = rng.random(n) < 0.4
        colours[lesion] = PURPLE
    imgs = colours[:, None, None, :] + rng.normal(0, 12, (n, patch_px, patch_px, 3))
    # a few stripes so crops and rotations change the picture
    imgs[:, :, ::8, :] -= 40
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)
    side = int(np.ceil(np.sqrt(n)))
    coords = np.array([((i % side) * 64, (i // side) * 64) for i in range(n)], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for scale, k in (("20x", n), ("10x", 0), ("5x", 0)):
            g = f.create_group(scale)
            g.create_dataset("coords", data=coords[:k] if k else np.zeros((0, 2), np.int64))
            g.create_dataset("imgs", data=imgs[:k] if k else np.zeros((0, patch_px, patch_px, 3), np.uint8),
                             chunks=(1, patch_px, patch_px, 3) if k else None)
            g.create_dataset("parent", data=np.full(k, -1, np.int64))
            g.create_dataset("tissue_frac", data=np.ones(k, np.float32))
            g.attrs["patch_size_level0"] = 64
            g.attrs["encoding"] = "raw"
        root = f.create_dataset("coords", data=coords)
        root.attrs["patch_level"] = 0
        root.attrs["patch_size"] = 64
        f.attrs.update({"slide": slide, "mpp": 0.5, "mpp_20x": 0.5, "patch_px": patch_px, "width": 64 * side,
                        "height": 64 * side, "encoding": "raw", "version": "test", "complete": True})
    return path


def fake_dataset(root: Path, n_slides: int = 10, n_patches: int = 24, patch_px: int = 32) -> dict[str, Any]:
    """slides.tsv, folds.tsv (2 folds, long format) and one cache per slide under `root`."""
    slides = [f"fake_{i:03d}" for i in range(n_slides)]
    labels = [i % 2 for i in range(n_slides)]
    classes = ["benign", "malignant"]
    caches = [write_fake_cache(root / "cache" / f"{s}.h5", s, lab, n=n_patches, patch_px=patch_px, seed=i)
              for i, (s, lab) in enumerate(zip(slides, labels, strict=True))]
    table = pd.DataFrame({"slide": slides, "patient": [f"p{i}" for i in range(n_slides)],
                          "label": [classes[lab] for lab in labels], "label_idx": labels})
    slides_tsv = root / "slides.tsv"
    table.to_csv(slides_tsv, sep="\t", index=False)
    rows = []
    for fold in range(2):
        for i, s in enumerate(slides):
            # fold k tests slides 4k..4k+3, validates the next two, trains on the rest
            pos = (i - 4 * fold) % n_slides
            split = "test" if pos < 4 else "val" if pos < 6 else "train"
            rows.append((fold, s, f"p{i}", classes[labels[i]], split))
    folds_tsv = root / "folds.tsv"
    pd.DataFrame(rows, columns=["fold", "slide", "patient", "label", "split"]).to_csv(folds_tsv, sep="\t",
                                                                                    index=False)
    return {"slides_tsv": slides_tsv, "folds_tsv": folds_tsv, "caches": caches, "slides": slides,
            "classes": classes}


def tiny_config(classes: list[str], input_px: int = 32) -> dict[str, Any]:
    """A config with tiny models and budgets, enough for every baseline to run end to end on the CPU in seconds."""
    return {
        "seed": 0,
        "device": "cpu",
        "dataset_config": {"fake": {"source": "synthetic", "classes": classes}},
        "model": {"backbone": "test_efficientnet", "pretrained": False, "pretrained_path": None,
                  "input_px": input_px},
        "train": {},
        "baselines": {
            "feature_chunk": 16,
            "abmil": {"epochs": 4, "lr": 0.001, "weight_decay": 0.0001, "hidden": 16, "attn_dim": 8},
            "dino": {"epochs": 1, "batch_size": 8, "patches_per_epoch": 16, "out_dim": 32, "head_hidden": 32,
                     "bottleneck": 16, "n_local_crops": 2},
            "icmil": {"rounds": 1, "iters": 2, "batch_size": 8, "lr": 0.0001, "beta": 2.0},
        },
        "methods": {"abmil": {"kind": "abmil"}, "dino_abmil": {"kind": "dino_abmil"},
                    "icmil_abmil": {"kind": "icmil_abmil"}},
    }

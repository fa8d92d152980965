"""Method comparisons outside Snakemake: run paths in the workflow's layout, and test AUC per method over folds.

`compare_methods` trains the runs it lacks through `run_training`, for checks such as "MsaMIL-Net beats its 20x-only
ablation" from a Python session.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msamil.training.trainer import run_training


def run_paths(results: str | Path, dataset: str, method: str, fold: int) -> dict[str, Any]:
    """The workflow's file layout for one run (what rule `train` passes), for calling `run_training` directly."""
    root = Path(results) / dataset
    table = pd.read_csv(root / "slides.tsv", sep="\t", dtype={"slide": str})
    return {"slides_tsv": root / "slides.tsv", "folds_tsv": root / "splits" / "folds.tsv",
            "caches": [root / "cache" / f"{s}.h5" for s in table["slide"]],
            "selection": root / "lesion" / f"fold{fold}" / "selection.h5",
            "out_dir": root / "runs" / method / f"fold{fold}"}


def compare_methods(config: dict[str, Any], results: str | Path, dataset: str, methods: Sequence[str],
                    folds: Sequence[int], train: bool = True) -> pd.DataFrame:
    """Mean and standard deviation of test AUC over folds per method, training missing runs when `train`.

    Used for "MsaMIL-Net beats its 20x-only ablation": `compare_methods(cfg, "results", "synthetic",
    ["msamil", "msamil_20x_only"], range(5))`.
    """
    rows = []
    for method in methods:
        aucs = []
        for fold in folds:
            paths = run_paths(results, dataset, method, fold)
            metrics_path = paths["out_dir"] / "metrics.json"
            if not metrics_path.exists():
                if not train:
                    raise FileNotFoundError(metrics_path)
                run_training(config, dataset, method, fold, **paths, progress=False)
            aucs.append(json.loads(metrics_path.read_text())["auc"])
        rows.append({"method": method, "auc_mean": float(np.nanmean(aucs)),
                     "auc_std": float(np.nanstd(aucs, ddof=1)) if len(aucs) > 1 else 0.0, "n_folds": len(aucs),
                     "aucs": aucs})
    return pd.DataFrame(rows)

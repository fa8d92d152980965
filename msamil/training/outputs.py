"""Per-fold run outputs shared by MsaMIL-Net and the baselines: predictions.tsv, metrics.json, efficiency.json.

Every method writes these through the same functions, so the tables and figures treat all methods alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msamil.training.metrics import classification_metrics, prob_columns
from msamil.util.atomic import write_json, write_tsv


def predictions_frame(slides: Sequence[str], labels: Sequence[int], probs: np.ndarray, fold: int,
                      classes: Sequence[str]) -> pd.DataFrame:
    """Columns: slide, fold, label (class index), label_name, pred, prob_0 .. prob_{C-1}."""
    probs = np.asarray(probs, dtype=float)
    frame = pd.DataFrame({"slide": list(slides), "fold": fold, "label": np.asarray(labels, dtype=int)})
    frame["label_name"] = [classes[i] for i in frame["label"]]
    frame["pred"] = probs.argmax(axis=1)
    for c in range(probs.shape[1]):
        frame[f"prob_{c}"] = probs[:, c]
    return frame


def write_run_outputs(run_dir: str | Path, predictions: pd.DataFrame, efficiency: dict[str, Any],
                      extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write predictions.tsv, metrics.json and efficiency.json under `run_dir`; return the metrics."""
    run_dir = Path(run_dir)
    metrics = classification_metrics(predictions["label"].to_numpy(), predictions[prob_columns(predictions)].to_numpy())
    metrics.update(extra_metrics or {})
    write_tsv(run_dir / "predictions.tsv", predictions, float_format="%.6f")
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "efficiency.json", efficiency)
    return metrics


BUDGET_FIELDS = ("backbone_steps", "backbone_patch_views", "wall_s", "peak_mem_mb")


def budget(*, backbone_steps: int, backbone_patch_views: int, wall_s: float, peak_mem_mb: float,
           backbone_init_sha256: str | None = None) -> dict[str, Any]:
    """The four budget fields every method's efficiency.json carries (DESIGN.md section 7), defined alike:

    backbone_steps: optimizer steps that updated the backbone (0 for a frozen backbone);
    backbone_patch_views: patch views the backbone embedded with gradients while training (a DINO crop, an ICMIL
    augmented view, a patch of an MsaMIL-Net training bag; 0 for a frozen backbone);
    wall_s: the run's wall time (training, validation, inference; feature extraction for the two-stage methods);
    peak_mem_mb: peak GPU allocation, or the peak resident set size on CPU.
    """
    out = {"backbone_steps": int(backbone_steps), "backbone_patch_views": int(backbone_patch_views),
           "wall_s": round(float(wall_s), 3), "peak_mem_mb": round(float(peak_mem_mb), 1)}
    if backbone_init_sha256 is not None:
        out["backbone_init_sha256"] = backbone_init_sha256
    return out


def peak_memory_mb(device: Any = None) -> float:
    """Peak memory of this process: CUDA peak allocation on a GPU, else the peak resident set size."""
    import resource
    import sys

    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024

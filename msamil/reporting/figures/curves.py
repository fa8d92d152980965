"""Curves: Fig. 3a (U-Net++ validation IoU per epoch) and ROC per dataset from pooled out-of-fold predictions.

Pooling the test predictions of all folds gives one ROC curve per method over every slide exactly once, which
is steadier than averaging per-fold curves on the small demo test sets; the per-fold spread is in the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from msamil.config import SCALES
from msamil.reporting.figures import style
from msamil.reporting.report import (
    ablation_methods,
    load_history,
    load_predictions,
    main_methods,
    method_label,
)
from msamil.training.metrics import prob_columns

log = logging.getLogger("msamil.reporting.figures")
FPR_GRID = np.linspace(0.0, 1.0, 201)


def fig3a_unetpp_iou(results: str | Path, datasets: Sequence[str], folds: Sequence[int],
                     png: str | Path, pdf: str | Path) -> None:
    """One panel per dataset: validation IoU per epoch, thin line per fold, bold mean ± std band."""
    history = load_history(results, datasets, folds)
    fig, axes = style.new_figure("fig3a_unetpp_iou", len(datasets), ncols=max(len(datasets), 1), sharey=True)
    fold_colors = [style.OKABE_ITO[k] for k in ("blue", "orange", "green", "purple", "sky", "yellow", "black")]
    for ax, dataset in zip(axes[0], datasets, strict=False):
        sub = history[history["dataset"] == dataset]
        if sub.empty:
            style.empty_panel(ax, f"{dataset}: no lesion history")
            continue
        for i, (fold, grp) in enumerate(sub.groupby("fold")):
            grp = grp.sort_values("epoch")
            ax.plot(grp["epoch"], grp["val_iou"], color=fold_colors[i % len(fold_colors)], lw=1, alpha=0.7,
                    label=f"fold {fold}")
        stats = sub.groupby("epoch")["val_iou"].agg(["mean", "std"]).reset_index()
        ax.plot(stats["epoch"], stats["mean"], color="black", lw=2.2, label="mean")
        ax.fill_between(stats["epoch"], stats["mean"] - stats["std"].fillna(0),
                        stats["mean"] + stats["std"].fillna(0), color="black", alpha=0.12, lw=0)
        best = stats["mean"].max()
        ax.set_title(f"{dataset} (best mean IoU {best:.3f})")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", ncols=2)
    axes[0, 0].set_ylabel("validation IoU (lesion)")
    if not datasets:
        style.empty_panel(axes[0, 0], "no datasets")
    fig.suptitle("U-Net++ lesion segmentation: validation IoU per epoch", fontweight="bold")
    style.save_figure(fig, png, pdf)


def pooled_roc(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auc) of pooled predictions: binary ROC, or macro-average of one-vs-rest curves.

    The multi-class AUC is the mean of the per-class one-vs-rest AUCs, as in `msamil.training.metrics`.
    """
    labels = frame["label"].to_numpy(dtype=int)
    probs = frame[prob_columns(frame)].to_numpy(dtype=float)
    if probs.shape[1] == 2:
        if len(np.unique(labels)) < 2:
            return FPR_GRID, np.full_like(FPR_GRID, np.nan), float("nan")
        fpr, tpr, _ = roc_curve(labels, probs[:, 1])
        return fpr, tpr, float(roc_auc_score(labels, probs[:, 1]))
    tprs, aucs = [], []
    for c in range(probs.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        tprs.append(np.interp(FPR_GRID, fpr, tpr))
        aucs.append(roc_auc_score(positive, probs[:, c]))
    if not tprs:
        return FPR_GRID, np.full_like(FPR_GRID, np.nan), float("nan")
    tpr = np.mean(tprs, axis=0)
    tpr[0] = 0.0
    return FPR_GRID, tpr, float(np.mean(aucs))


def _roc_panel(ax: Any, predictions: pd.DataFrame, methods: Sequence[str], labels: Mapping[str, str],
               known: Sequence[str], title: str) -> None:
    shown = [m for m in methods if m in set(predictions["method"])]
    if not shown:
        style.empty_panel(ax, f"{title}: no runs")
        return
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
    for i, method in enumerate(shown):
        fpr, tpr, auc = pooled_roc(predictions[predictions["method"] == method])
        ax.plot(fpr, tpr, color=style.method_color(method, known), lw=2.2 if method == "msamil" else 1.4,
                ls=["-", "--", "-.", (0, (3, 1, 1, 1))][i % 4] if method != "msamil" else "-",
                label=f"{labels.get(method, method)} (AUC {auc:.3f})", drawstyle="default")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)


def roc_figure(results: str | Path, dataset: str, methods: Mapping[str, Mapping[str, Any]] | Sequence[str],
               folds: Sequence[int], png: str | Path, pdf: str | Path, scales: Sequence[str] = SCALES) -> None:
    """Two panels: the compared methods, and MsaMIL-Net with its ablations; one pooled curve per method."""
    specs = dict(methods) if isinstance(methods, Mapping) else {m: {} for m in methods}
    names = list(specs)
    labels = {m: method_label(m, specs[m] or None, scales) for m in names}
    predictions = load_predictions(results, [dataset], names, folds)
    fig, axes = style.new_figure("roc", ncols=2)
    n_classes = len(prob_columns(predictions)) if not predictions.empty else 0
    kind = "binary" if n_classes == 2 else f"{n_classes} classes, macro one-vs-rest"
    _roc_panel(axes[0, 0], predictions, main_methods(names), labels, names, "Methods")
    _roc_panel(axes[0, 1], predictions, ablation_methods(names), labels, names, "MsaMIL-Net ablations")
    fig.suptitle(f"ROC, {dataset}: pooled out-of-fold test predictions ({kind})", fontweight="bold")
    style.save_figure(fig, png, pdf)

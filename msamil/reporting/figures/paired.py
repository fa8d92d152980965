"""Fig. 3b: DINO two-stage (frozen self-supervised features + ABMIL) against MsaMIL-Net trained end to end.

The folds share their test slides across methods, so the comparison is paired: one line per fold joins the two
methods' scores, which shows whether end-to-end training wins fold by fold and not only on average.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msamil.reporting.figures import style
from msamil.reporting.report import load_predictions, method_label
from msamil.reporting.tables import fold_metrics

log = logging.getLogger("msamil.reporting.figures")
PAIRED_METRICS = {"acc": "ACC", "auc": "AUC"}


def fig3b_dino_vs_e2e(results: str | Path, datasets: Sequence[str], folds: Sequence[int], png: str | Path,
                      pdf: str | Path, two_stage: str = "dino_abmil", end_to_end: str = "msamil") -> None:
    """Rows = datasets, columns = ACC and AUC; per-fold paired lines, means as diamonds with the mean gain."""
    per_fold = fold_metrics(load_predictions(results, datasets, [two_stage, end_to_end], folds))
    fig, axes = style.new_figure("fig3b_dino_vs_e2e", len(datasets), nrows=max(len(datasets), 1),
                                 ncols=len(PAIRED_METRICS))
    names = ["DINO two-stage" if two_stage == "dino_abmil" else method_label(two_stage),
             "MsaMIL-Net end-to-end" if end_to_end == "msamil" else method_label(end_to_end)]
    colors = [style.method_color(two_stage), style.method_color(end_to_end)]
    for row, dataset in enumerate(datasets):
        sub = per_fold[per_fold["dataset"] == dataset]
        wide = {m: sub[sub["method"] == m].set_index("fold") for m in (two_stage, end_to_end)}
        paired = sorted(set(wide[two_stage].index) & set(wide[end_to_end].index))
        for col, (metric, shown) in enumerate(PAIRED_METRICS.items()):
            ax = axes[row, col]
            if not paired:
                style.empty_panel(ax, f"{dataset}: needs runs of {two_stage} and {end_to_end} on the same folds")
                continue
            a = wide[two_stage].loc[paired, metric].to_numpy(dtype=float)
            b = wide[end_to_end].loc[paired, metric].to_numpy(dtype=float)
            for fold, y0, y1 in zip(paired, a, b, strict=True):
                ax.plot([0, 1], [y0, y1], color="0.6", lw=1, zorder=1)
                ax.annotate(f"f{fold}", (1.04, y1), fontsize=6, color="0.4", va="center")
            ax.scatter(np.zeros_like(a), a, color=colors[0], s=28, zorder=2)
            ax.scatter(np.ones_like(b), b, color=colors[1], s=28, zorder=2)
            means = [np.nanmean(a), np.nanmean(b)]
            ax.plot([0, 1], means, color="black", lw=2, zorder=3)
            ax.scatter([0, 1], means, marker="D", s=50, color=colors, edgecolor="black", zorder=4)
            ax.set_xticks([0, 1], names)
            ax.set_xlim(-0.4, 1.4)
            ax.set_ylim(min(0.0, np.nanmin(np.r_[a, b]) - 0.05), 1.05)
            ax.set_ylabel(shown)
            ax.set_title(f"{dataset} {shown}: mean gain {means[1] - means[0]:+.3f}")
    if not datasets:
        style.empty_panel(axes[0, 0], "no datasets")
    fig.suptitle("Two-stage (DINO features) vs end-to-end, paired by fold", fontweight="bold")
    style.save_figure(fig, png, pdf)

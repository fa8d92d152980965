"""Efficiency plot: what each method's accuracy costs in compute, and how much SFFM saves.

Left: AUC (mean ± std over folds) against training throughput. Right: seconds per epoch with the patches per
slide written on each bar, so the SFFM saving (msamil vs msamil_no_sffm) is read directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from msamil.config import SCALES
from msamil.reporting.figures import style
from msamil.reporting.report import load_efficiency, load_predictions, method_label
from msamil.reporting.tables import efficiency_summary, fold_metrics, summarize

log = logging.getLogger("msamil.reporting.figures")


def efficiency_figure(results: str | Path, datasets: Sequence[str],
                      methods: Mapping[str, Mapping[str, Any]] | Sequence[str], folds: Sequence[int],
                      png: str | Path, pdf: str | Path, scales: Sequence[str] = SCALES) -> None:
    """One row per dataset; size `style.figure_px("efficiency", len(datasets))`."""
    specs = dict(methods) if isinstance(methods, Mapping) else {m: {} for m in methods}
    names = list(specs)
    labels = {m: method_label(m, specs[m] or None, scales) for m in names}
    summary = summarize(fold_metrics(load_predictions(results, datasets, names, folds)))
    eff = efficiency_summary(load_efficiency(results, datasets, names, folds))
    fig, axes = style.new_figure("efficiency", len(datasets), nrows=max(len(datasets), 1), ncols=2)
    for row, dataset in enumerate(datasets):
        left, right = axes[row]
        e = eff[eff["dataset"] == dataset].set_index("method")
        s = summary[summary["dataset"] == dataset].set_index("method")
        shown = [m for m in names if m in e.index]
        if not shown:
            style.empty_panel(left, f"{dataset}: no efficiency records")
            style.empty_panel(right, "")
            continue
        for method in shown:
            if method not in s.index:
                continue
            x = float(e.loc[method, "train_patches_per_s"])
            left.errorbar(x, s.loc[method, "auc_mean"], yerr=np.nan_to_num(s.loc[method, "auc_std"]), fmt="o",
                          ms=7 if method == "msamil" else 5, color=style.method_color(method, names), capsize=2,
                          label=labels[method])
        left.set_xscale("log")
        left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        left.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        left.set_ylim(top=1.02)
        left.set_xlabel("training throughput (patches / s, log)")
        left.set_ylabel("AUC (mean ± std over folds)")
        left.set_title(f"{dataset}: accuracy vs throughput")
        left.legend(fontsize=6, loc="best")

        y = np.arange(len(shown))
        secs = e.loc[shown, "seconds_per_epoch"].to_numpy(dtype=float)
        right.barh(y, secs, color=[style.method_color(m, names) for m in shown], edgecolor="black", lw=0.4)
        for yi, sec, method in zip(y, secs, shown, strict=True):
            pps = e.loc[method, "patches_per_slide"]
            right.text(sec, yi, f"  {pps:.0f} patches/slide", va="center", fontsize=6)
        right.set_yticks(y, [labels[m] for m in shown], fontsize=7)
        right.invert_yaxis()
        right.set_xlim(0, np.nanmax(secs) * 1.45 if np.isfinite(secs).any() else 1)
        right.set_xlabel("seconds per epoch")
        right.set_title(f"{dataset}: training cost")
    if not datasets:
        style.empty_panel(axes[0, 0], "no datasets")
    fig.suptitle("Efficiency: accuracy, throughput and patches per slide", fontweight="bold")
    style.save_figure(fig, png, pdf)

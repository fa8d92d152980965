"""Attention heatmaps: where MsaMIL-Net looks on held-out slides, one panel per scale over the thumbnail.

Attention is min-max normalised per slide and scale: absolute weights differ between scales (there are 16x more
20x patches than 5x ones), and the question the figure answers is *which* regions a scale attends to.
Multi-query attention (DMQ, shape (n, Q)) is averaged over the queries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from msamil.config import SCALES
from msamil.reporting.figures import style
from msamil.reporting.figures.slideview import (
    canvas_extent,
    image_axes,
    load_slide_view,
    paint,
    show_thumbnail,
)
from msamil.reporting.report import run_dir, test_fold

log = logging.getLogger("msamil.reporting.figures")


def load_attention(results: str | Path, dataset: str, method: str, slide: str, folds: Sequence[int]
                   ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | None:
    """(fold, coords, scale_idx, attention (n,)) from the run that tested `slide`; None if no run holds it."""
    first = test_fold(results, dataset, slide, folds)
    for fold in [first, *[k for k in folds if k != first]]:
        path = run_dir(results, dataset, method, fold) / "attention.h5"
        if not path.exists():
            continue
        with h5py.File(path, "r") as handle:
            if slide not in handle:
                continue
            grp = handle[slide]
            att = grp["attention"][:].astype(float)
            if att.ndim > 1:
                att = att.reshape(att.shape[0], -1).mean(axis=1)
            return fold, grp["coords"][:].astype(np.int64), grp["scale_idx"][:].astype(np.int64), att
    return None


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant vector maps to 0.5 (no preference) rather than dividing by zero."""
    if values.size == 0:
        return values
    lo, hi = np.nanmin(values), np.nanmax(values)
    return np.full_like(values, 0.5) if hi - lo <= 0 else (values - lo) / (hi - lo)


def attention_figure(results: str | Path, dataset: str, slides: Sequence[str], folds: Sequence[int],
                     png: str | Path, pdf: str | Path, method: str = "msamil",
                     scales: Sequence[str] = SCALES) -> None:
    """Rows = slides, columns = thumbnail + one heatmap per scale; size `style.figure_px("attention", len(slides))`."""
    fig, axes = style.new_figure("attention", len(slides), nrows=max(len(slides), 1), ncols=1 + len(SCALES))
    image = None
    if not slides:
        for ax in axes.ravel():
            style.empty_panel(ax, "")
        style.empty_panel(axes[0, 0], "no slides chosen")
    for row, slide in enumerate(slides):
        ax = axes[row]
        view = load_slide_view(results, dataset, slide)
        show_thumbnail(ax[0], view)
        found = load_attention(results, dataset, method, slide, folds)
        if found is None:
            log.warning("no %s attention for %s/%s in any fold", method, dataset, slide)
            for a in ax[1:]:
                style.empty_panel(a, "no attention saved")
            ax[0].set_ylabel(f"{slide}", fontsize=8)
            continue
        fold, coords, scale_idx, att = found
        ax[0].set_ylabel(f"{slide}\n(test fold {fold})", fontsize=8)
        for j, scale in enumerate(SCALES, start=1):
            show_thumbnail(ax[j], view, grey=True)
            sel = scale_idx == SCALES.index(scale)
            if scale not in scales or not sel.any():
                ax[j].set_xlabel(f"{scale}: not used", fontsize=7)
                continue
            foot = view.footprint.get(scale, view.cell * 2 ** SCALES.index(scale))
            raster = paint(view, coords[sel], foot, normalise(att[sel]))
            image = ax[j].imshow(raster, cmap=style.HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.75,
                                 extent=canvas_extent(view))
            image_axes(ax[j], view)
            ax[j].set_xlabel(f"{scale}: {int(sel.sum())} patches", fontsize=7)
    for j, title in enumerate(["Thumbnail", *(f"Attention {s}" for s in SCALES)]):
        axes[0, j].set_title(title)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=min(0.8, 0.4 + 0.1 * len(slides)), location="right",
                     label="attention (min-max per slide and scale)")
    fig.suptitle(f"{dataset}: {method} attention on held-out slides", fontweight="bold")
    style.save_figure(fig, png, pdf)

"""Fig. 2: what SFFM does to a slide: thumbnail, tissue mask, lesion probability, kept patches per scale.

Each slide is shown with the lesion model of the fold that held it out (its test fold), so the figure shows the
selection the classifier actually saw at test time, not one from a model trained on that slide.
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
    draw_boxes,
    draw_mask_outline,
    image_axes,
    load_slide_view,
    paint,
    show_thumbnail,
)
from msamil.reporting.report import lesion_dir, test_fold

log = logging.getLogger("msamil.reporting.figures")
COLUMNS = ("Thumbnail", "Tissue mask", "Lesion probability", *(f"Kept at {s}" for s in SCALES))


def _selection(path: Path, slide: str) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """scale -> (kept indices, lesion_frac per cache patch, fallback flag); empty when the slide is absent."""
    out = {}
    if not path.exists():
        return out
    with h5py.File(path, "r") as handle:
        if slide not in handle:
            return out
        for scale, sub in handle[slide].items():
            out[scale] = (sub["kept"][:].astype(np.int64), sub["lesion_frac"][:].astype(float),
                          bool(sub.attrs.get("fallback", False)))
    return out


def _probmap(path: Path, slide: str) -> np.ndarray | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as handle:
        return handle[slide][:].astype(float) / 255.0 if slide in handle else None


def fig2_sffm(results: str | Path, picks: Sequence[tuple[str, str]], folds: Sequence[int],
              png: str | Path, pdf: str | Path) -> None:
    """One row per (dataset, slide) in `picks`; size `style.figure_px("fig2_sffm", len(picks))`."""
    fig, axes = style.new_figure("fig2_sffm", len(picks), nrows=max(len(picks), 1), ncols=len(COLUMNS))
    if not picks:
        for ax in axes.ravel():
            style.empty_panel(ax, "")
        style.empty_panel(axes[0, 0], "no slides chosen")
    prob_image = None
    for row, (dataset, slide) in enumerate(picks):
        ax = axes[row]
        view = load_slide_view(results, dataset, slide)
        fold = test_fold(results, dataset, slide, folds)
        lesion = lesion_dir(results, dataset, fold)
        selection = _selection(lesion / "selection.h5", slide)

        show_thumbnail(ax[0], view)
        ax[0].set_ylabel(f"{dataset}\n{slide}", fontsize=8)
        show_thumbnail(ax[1], view, grey=True)
        if view.mask is not None:
            ax[1].imshow(np.ma.masked_where(~view.mask, view.mask.astype(float)), cmap="Blues", vmin=0, vmax=1.5,
                         alpha=0.6, extent=view.extent)
            draw_mask_outline(ax[1], view)

        show_thumbnail(ax[2], view, grey=True)
        prob = _probmap(lesion / "probmaps.h5", slide)
        if prob is not None:
            prob_image = ax[2].imshow(np.ma.masked_less(prob, 0.02), cmap=style.PROB_CMAP, vmin=0, vmax=1, alpha=0.8, extent=view.extent)
        elif "20x" in selection and "20x" in view.coords:
            raster = paint(view, view.coords["20x"], view.footprint["20x"], selection["20x"][1])
            prob_image = ax[2].imshow(np.ma.masked_less(raster, 0.02), cmap=style.PROB_CMAP, vmin=0, vmax=1, alpha=0.8,
                                      extent=canvas_extent(view))
        image_axes(ax[2], view)
        ax[2].set_xlabel(f"fold {fold} lesion model", fontsize=7)

        for j, scale in enumerate(SCALES, start=3):
            show_thumbnail(ax[j], view, grey=True)
            if scale not in selection or scale not in view.coords:
                ax[j].set_xlabel(f"{scale}: no selection", fontsize=7)
                continue
            kept, frac, fallback = selection[scale]
            draw_boxes(ax[j], view.coords[scale][kept], view.footprint[scale], style.SCALE_COLORS[scale])
            note = " (fallback top-k)" if fallback else ""
            ax[j].set_xlabel(f"{scale}: {len(kept)} of {len(frac)} kept{note}", fontsize=7)
    for j, title in enumerate(COLUMNS):
        axes[0, j].set_title(title)
    if prob_image is not None:
        fig.colorbar(prob_image, ax=axes, shrink=min(0.8, 0.4 + 0.1 * len(picks)), label="lesion probability",
                     location="right")
    fig.suptitle("SFFM: lesion-guided patch selection at 20x / 10x / 5x", fontweight="bold")
    style.save_figure(fig, png, pdf)

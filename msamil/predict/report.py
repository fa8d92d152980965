"""The folds' predictions on new slides in one table, and one attention heatmap per slide (the `predict` job).

predictions.tsv has, per slide, the mean probability of each class over the fold models (`prob_<class>`), the
predicted class (`pred`), and every fold's own value (`prob_<class>_fold<k>`), so agreement between folds is
visible. Heatmaps show, per scale, attention min-max normalised per fold and then averaged over the folds that
looked at a patch (folds may keep different patches when their lesion models differ).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from msamil.config import SCALES
from msamil.reporting.figures import style
from msamil.reporting.figures.heatmaps import normalise
from msamil.reporting.figures.slideview import (
    canvas_extent,
    image_axes,
    load_slide_view,
    paint,
    show_thumbnail,
)
from msamil.util.atomic import write_tsv

log = logging.getLogger(__name__)


def combine_folds(fold_tables: Sequence[str | Path], slides_tsv: str | Path) -> pd.DataFrame:
    """Per-fold probabilities -> one row per slide: the fold mean per class, the argmax class, every fold's value."""
    folds = [pd.read_csv(p, sep="\t", dtype={"slide": str}) for p in fold_tables]
    slides = pd.read_csv(slides_tsv, sep="\t", dtype=str, keep_default_na=False)
    probs = [c for c in folds[0].columns if c.startswith("prob_")]
    out = slides[["slide", "label"]].rename(columns={"label": "given_label"}).set_index("slide")
    for frame in folds:
        fold = int(frame["fold"].iloc[0]) if len(frame) else 0
        per = frame.set_index("slide")[probs]
        out = out.join(per.rename(columns={c: f"{c}_fold{fold}" for c in probs}))
    fold_ids = sorted(int(f["fold"].iloc[0]) for f in folds if len(f))
    for c in probs:
        out[c] = out[[f"{c}_fold{k}" for k in fold_ids]].mean(axis=1)
    out["pred"] = out[probs].idxmax(axis=1).str.removeprefix("prob_")
    out["n_folds"] = len(fold_ids)
    ordered = ["given_label", "pred", "n_folds", *probs, *[f"{c}_fold{k}" for k in fold_ids for c in probs]]
    return out[ordered].reset_index()


def _fold_attention(path: str | Path, slide: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    with h5py.File(path, "r") as h5:
        if slide not in h5:
            return None
        g = h5[slide]
        att = g["attention"][:].astype(float)
        if att.ndim > 1:  # DMQ: one column per query
            att = att.reshape(att.shape[0], -1).mean(axis=1)
        return g["coords"][:].astype(np.int64), g["scale_idx"][:].astype(np.int64), att


def mean_attention(attention_files: Sequence[str | Path], slide: str, scale: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(coords, values) of one scale: each fold's attention min-max normalised, averaged where folds overlap."""
    sums: dict[tuple[int, int], list[float]] = {}
    for path in attention_files:
        found = _fold_attention(path, slide)
        if found is None:
            continue
        coords, scales, att = found
        sel = scales == scale
        for (x, y), v in zip(coords[sel].tolist(), normalise(att[sel]).tolist(), strict=True):
            sums.setdefault((x, y), []).append(v)
    if not sums:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    keys = sorted(sums)
    return np.asarray(keys, dtype=np.int64), np.asarray([np.mean(sums[k]) for k in keys])


def slide_heatmap(results: str | Path, dataset: str, slide: str, attention_files: Sequence[str | Path],
                  scales: Sequence[str], title: str, png: str | Path) -> None:
    """Thumbnail plus one attention panel per scale (the method's scales; others say 'not used')."""
    view = load_slide_view(results, dataset, slide)
    fig, axes = style.new_figure("attention", 1, nrows=1, ncols=1 + len(SCALES))
    ax = axes[0]
    show_thumbnail(ax[0], view)
    ax[0].set_title("Thumbnail")
    image = None
    for j, scale in enumerate(SCALES, start=1):
        show_thumbnail(ax[j], view, grey=True)
        ax[j].set_title(f"Attention {scale}")
        coords, values = mean_attention(attention_files, slide, SCALES.index(scale))
        if scale not in scales or not len(coords):
            ax[j].set_xlabel(f"{scale}: not used", fontsize=7)
            continue
        foot = view.footprint.get(scale, view.cell * 2 ** SCALES.index(scale))
        image = ax[j].imshow(paint(view, coords, foot, values), cmap=style.HEATMAP_CMAP, vmin=0, vmax=1,
                             alpha=0.75, extent=canvas_extent(view))
        image_axes(ax[j], view)
        ax[j].set_xlabel(f"{scale}: {len(coords)} patches", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, location="right", label="attention (min-max, mean over folds)")
    fig.suptitle(title, fontweight="bold")
    style.save_figure(fig, png)


def write_predictions(results: str | Path, name: str, slides_tsv: str | Path, fold_tables: Sequence[str | Path],
                      attention_files: Sequence[str | Path], scales: Sequence[str], method: str,
                      out_predictions: str | Path, out_heatmaps: str | Path) -> pd.DataFrame:
    """The `predict` job: predictions.tsv and heatmaps/<slide>.png for the slides of prediction set `name`."""
    table = combine_folds(fold_tables, slides_tsv)
    write_tsv(out_predictions, table, float_format="%.6f")
    out = Path(out_heatmaps)
    out.mkdir(parents=True, exist_ok=True)
    for row in table.to_dict("records"):  # not itertuples: class names such as "N+" are no identifiers
        best = row["pred"]
        title = f"{row['slide']}: {method} predicts {best} ({row['prob_' + best]:.2f}, mean of {row['n_folds']} folds)"
        slide_heatmap(results, f"predict/{name}", row["slide"], attention_files, scales, title,
                      out / f"{row['slide']}.png")
    log.info("%s: %d slides predicted, heatmaps in %s", name, len(table), out)
    return table

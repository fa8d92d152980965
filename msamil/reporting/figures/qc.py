"""Per-slide QC sheets for the report: thumbnail next to the tissue outline, with the slide's metadata.

A reviewer scrolling the report's QC category can spot a wrong magnification or a failed tissue mask at a
glance, which is where whole-slide pipelines most often go silently wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from msamil.reporting.figures import style
from msamil.reporting.figures.slideview import SlideView, draw_mask_outline, image_axes, show_thumbnail

log = logging.getLogger("msamil.reporting.figures")


def _view(ds: Path, slide: str, meta: pd.Series) -> SlideView:
    """A view from slides.tsv and the images alone (no cache needed: QC comes before patching matters)."""
    from PIL import Image

    thumb_path, mask_path = ds / "qc" / f"{slide}.png", ds / "tissue" / f"{slide}.png"
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127 if mask_path.exists() else None
    if thumb_path.exists():
        thumb = np.asarray(Image.open(thumb_path).convert("RGB"))
    else:
        thumb = np.full((64, 64, 3), 250, np.uint8)
    return SlideView(ds.name, slide, int(meta.get("width", thumb.shape[1])),
                     int(meta.get("height", thumb.shape[0])), thumb, mask)


def qc_sheets(results: str | Path, dataset: str, out_dir: str | Path,
              slides: Sequence[str] | None = None) -> list[Path]:
    """Write `out_dir/{slide}.png` for every usable slide (or `slides`); return the paths written."""
    ds = Path(results) / dataset
    table = pd.read_csv(ds / "slides.tsv", sep="\t", dtype={"slide": str}).set_index("slide", drop=False)
    wanted = list(table.index) if slides is None else list(slides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for slide in wanted:
        meta = table.loc[slide]
        view = _view(ds, slide, meta)
        fig, axes = style.new_figure("qc", ncols=2)
        show_thumbnail(axes[0, 0], view)
        axes[0, 0].set_title(f"{slide} ({meta.get('label', '?')})")
        show_thumbnail(axes[0, 1], view, grey=True)
        draw_mask_outline(axes[0, 1], view)
        image_axes(axes[0, 1], view)
        tissue = f"{100 * view.mask.mean():.1f}% of the mask" if view.mask is not None else "no mask"
        axes[0, 1].set_title(f"tissue: {tissue}")
        mpp = pd.to_numeric(meta.get("mpp"), errors="coerce")
        info = (f"{view.width} x {view.height} px at {mpp:.3g} µm/px "
                f"({meta.get('mpp_source', '?')}), magnification {meta.get('magnification', '?')}, "
                f"{meta.get('levels', '?')} levels, {meta.get('vendor', '?')}")
        fig.supxlabel(info, fontsize=7)
        path = out_dir / f"{slide}.png"
        style.save_figure(fig, path)
        written.append(path)
    log.info("%d QC sheets for %s in %s", len(written), dataset, out_dir)
    return written

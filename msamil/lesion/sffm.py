"""SFFM patch selection: keep the cache patches whose footprint is mostly lesion.

The paper slides windows of each scale's footprint over the low-resolution lesion mask and keeps those whose lesion
share exceeds 0.7. Our cache already holds the aligned tissue patches, so the same rule becomes a lookup: the
lesion share of every cached patch's footprint, computed exactly (fractional mask pixels included) from a
summed-area table of the binarised probability map. Nothing is re-read from the slide, and the kept indices point
straight into the cache's scale groups. A slide that keeps nothing at a scale keeps its top-k patches by lesion
share instead, flagged, so benign slides still form a bag.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from msamil.cache.access import open_cache
from msamil.config import SCALES
from msamil.errors import SlideError
from msamil.slides.outcomes import slide_caches
from msamil.util.atomic import atomic_path, write_tsv

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["slide", "scale", "tissue_patches", "kept", "fallback", "kept_share"]


def summed_area(mask: np.ndarray) -> np.ndarray:
    """(R+1, C+1) table: entry [i, j] = number of set pixels in mask[:i, :j]."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    return sat


def _sat_at(sat: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Area integral of the mask over [0, x] x [0, y] at real (y, x): the table is exactly bilinear per cell.

    Points outside the mask are clamped to its edge, so footprint parts beyond the mask count as non-lesion.
    """
    rows, cols = sat.shape[0] - 1, sat.shape[1] - 1
    y = np.clip(y, 0.0, rows)
    x = np.clip(x, 0.0, cols)
    y0 = np.minimum(np.floor(y).astype(np.int64), max(rows - 1, 0))
    x0 = np.minimum(np.floor(x).astype(np.int64), max(cols - 1, 0))
    fy, fx = y - y0, x - x0
    return (sat[y0, x0] * (1 - fy) * (1 - fx) + sat[y0, x0 + 1] * (1 - fy) * fx
            + sat[y0 + 1, x0] * fy * (1 - fx) + sat[y0 + 1, x0 + 1] * fy * fx)


def footprint_fractions(mask: np.ndarray, coords: np.ndarray, size_level0: float, scale: float) -> np.ndarray:
    """Lesion share of each square footprint (level-0 top-left `coords`, side `size_level0`).

    `scale` maps level-0 pixels to mask pixels (slide_mpp / mask_mpp). The share is over the whole footprint, so
    a patch hanging over the mask edge is diluted rather than judged on its visible part only.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    sat = summed_area(mask)
    x0, y0 = coords[:, 0] * scale, coords[:, 1] * scale
    side = size_level0 * scale
    x1, y1 = x0 + side, y0 + side
    area = _sat_at(sat, y1, x1) - _sat_at(sat, y0, x1) - _sat_at(sat, y1, x0) + _sat_at(sat, y0, x0)
    return np.clip(area / (side * side), 0.0, 1.0).astype(np.float32)


def select_patches(frac: np.ndarray, lesion_min: float, fallback_k: int, tiebreak: np.ndarray | None = None
                   ) -> tuple[np.ndarray, bool]:
    """Indices with lesion share > `lesion_min` (sorted); if none, the top-`fallback_k` by share and True.

    Ties in the fallback (an empty map gives all zeros) go to the higher `tiebreak` (the cache's tissue share),
    then the lower index, so the fallback bag is the most tissue-filled patches, deterministically.
    """
    frac = np.asarray(frac)
    kept = np.flatnonzero(frac > lesion_min).astype(np.int64)
    if len(kept) or len(frac) == 0:
        return kept, False
    second = np.zeros(len(frac)) if tiebreak is None else -np.asarray(tiebreak, dtype=np.float64)
    order = np.lexsort((np.arange(len(frac)), second, -frac.astype(np.float64)))
    return np.sort(order[:fallback_k]).astype(np.int64), True


def binarise(probmap: np.ndarray, prob_threshold: float) -> np.ndarray:
    """uint8 prob*255 (or float prob) -> bool lesion mask at `prob_threshold` (prob >= threshold)."""
    prob = probmap.astype(np.float32) / 255.0 if probmap.dtype == np.uint8 else probmap
    return prob >= prob_threshold


def select_slide(probmap: np.ndarray, map_mpp: float, cache_path: str | Path, *, prob_threshold: float,
                 lesion_min: float, fallback_k: int) -> dict[str, dict[str, Any]]:
    """Per scale of one slide's cache: {'kept', 'lesion_frac', 'fallback', 'tissue_patches'}."""
    mask = binarise(probmap, prob_threshold)
    out: dict[str, dict[str, Any]] = {}
    with open_cache(cache_path) as h5:
        slide_mpp = float(h5.attrs["mpp"])
        for scale in SCALES:
            if scale not in h5:
                continue
            group = h5[scale]
            coords = group["coords"][:]
            tissue = group["tissue_frac"][:] if "tissue_frac" in group else None
            frac = footprint_fractions(mask, coords, float(group.attrs["patch_size_level0"]), slide_mpp / map_mpp)
            kept, fallback = select_patches(frac, lesion_min, fallback_k, tissue)
            out[scale] = {"kept": kept, "lesion_frac": frac, "fallback": fallback, "tissue_patches": len(coords)}
    return out


def cache_slide_id(cache_path: str | Path) -> str:
    """The slide id of a cache file: its `slide` attribute, else the file stem (`cache/{slide}.h5`)."""
    with open_cache(cache_path) as h5:
        value = h5.attrs.get("slide")
    if value is None:
        return Path(cache_path).stem
    return value.decode() if isinstance(value, bytes) else str(value)


def run_sffm(probmaps_h5: str | Path, cache_paths: list[str] | str | Path, out_h5: str | Path,
             summary_tsv: str | Path, *, prob_threshold: float, lesion_min: float, fallback_k: int) -> pd.DataFrame:
    """Rule entry point: selection.h5 (group per slide, subgroup per scale) and the per-fold summary table.

    `cache_paths` is a list of caches, or the dataset's slides.tsv manifest that lists them."""
    if isinstance(cache_paths, (str, Path)):
        cache_paths = list(slide_caches(cache_paths).values())
    rows = []
    with h5py.File(probmaps_h5, "r") as maps, atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as out:
        out.attrs.update({"prob_threshold": prob_threshold, "lesion_min": lesion_min, "fallback_k": fallback_k})
        for cache_path in tqdm(cache_paths, desc="SFFM", mininterval=5):
            slide = cache_slide_id(cache_path)
            if slide not in maps:
                raise SlideError(slide, f"no lesion probability map in {probmaps_h5}",
                                 "rerun lesion_infer for this fold (delete probmaps.h5)")
            ds = maps[slide]
            sel = select_slide(ds[:], float(ds.attrs["mpp"]), cache_path, prob_threshold=prob_threshold,
                               lesion_min=lesion_min, fallback_k=fallback_k)
            group = out.create_group(slide)
            for scale, res in sel.items():
                sub = group.create_group(scale)
                sub.create_dataset("kept", data=res["kept"], dtype=np.int64)
                sub.create_dataset("lesion_frac", data=res["lesion_frac"], dtype=np.float32)
                sub.attrs["fallback"] = bool(res["fallback"])
                n = res["tissue_patches"]
                rows.append((slide, scale, n, len(res["kept"]), bool(res["fallback"]),
                             len(res["kept"]) / n if n else 0.0))
            group.attrs["fallback"] = any(bool(r["fallback"]) for r in sel.values())
        out.attrs["complete"] = True
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    if len(summary):
        per_scale = summary.groupby("scale").agg(tissue=("tissue_patches", "sum"), kept=("kept", "sum"),
                                                 fallback_slides=("fallback", "sum"))
        per_scale["kept_share"] = per_scale["kept"] / per_scale["tissue"].clip(lower=1)
        log.info("SFFM over %d slides:\n%s", summary["slide"].nunique(), per_scale.to_string())
    write_tsv(summary_tsv, summary, float_format="%.4f")
    return summary


def load_selection(path: str | Path, slide: str) -> dict[str, np.ndarray]:
    """Kept patch indices per scale of one slide (indices into the cache's `/{scale}` group)."""
    with h5py.File(path, "r") as h5:
        if slide not in h5:
            raise SlideError(slide, f"not in the SFFM selection {path}", "rerun the sffm rule for this fold")
        return {scale: h5[slide][scale]["kept"][:] for scale in SCALES if scale in h5[slide]}

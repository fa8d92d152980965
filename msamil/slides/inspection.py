"""The inspect checkpoint: decide, slide by slide, what the rest of the workflow may use (DESIGN.md sections 2, 10).

Each slide of the source table is opened, its pyramid and MPP checked, its pixels decoded once (truncated files
open fine and fail later), its illumination checked (brightfield only: msamil.slides.brightfield), its tissue
detected, and a QC thumbnail drawn. Unusable slides go to excluded.tsv with a
precise reason and a fix; one bad slide never stops the others, but a dataset with no usable slide is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from msamil.errors import MsamilError, SlideError
from msamil.slides.brightfield import NOT_BRIGHTFIELD_FIX, brightfield_problem
from msamil.slides.slide import Slide, SlideInfo
from msamil.slides.slide_table import read_slide_table, slide_id_problem
from msamil.tissue.detect import TISSUE_DEFAULTS, overlay, qc_mpp, tissue_mask, write_png
from msamil.util.atomic import write_tsv

log = logging.getLogger(__name__)

SLIDES_COLUMNS = [
    "slide", "patient", "label", "label_idx", "path", "annotation", "mpp", "mpp_source", "objective_power",
    "magnification", "width", "height", "levels", "vendor", "tissue_fraction",
]
EXCLUDED_COLUMNS = ["slide", "path", "reason", "fix"]
TABLE_COLUMNS = ["slide", "patient", "label", "path"]
DEFAULT_TISSUE = TISSUE_DEFAULTS


@dataclass
class Decision:
    """The outcome for one slide: a slides.tsv row, or an excluded.tsv row."""

    slide: str
    row: dict[str, Any] | None = None
    excluded: dict[str, str] | None = None


def read_table(table_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The dataset's raw/table.tsv as strings (empty cells ''); ConfigError for missing columns or an id that
    occurs twice (msamil.slides.slide_table: a duplicated id would silently pick one of two labels)."""
    table = read_slide_table(table_path, required=TABLE_COLUMNS)
    for col in ("annotation", "mpp", "mpp_source"):
        if col not in table.columns:
            table[col] = ""
    return table


def resolve_path(path: str, table_path: str | os.PathLike[str]) -> Path:
    """A slide path as given, or relative to the table's directory when that is where it exists."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = Path(table_path).parent / p
    return alt if alt.exists() else p


def _parse_override(value: str, slide: str) -> float | None:
    if not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise SlideError(slide, f"mpp column value {value!r} is not a number",
                         fix="put the slide's µm/px (e.g. 0.25) in the mpp column or leave it empty") from None


def _mpp_provenance(info: SlideInfo, override: float | None, table_source: str) -> str:
    """Where the slide's MPP came from, as slides.tsv records it.

    The table's `mpp_source` (e.g. `dataset_config.bcnb.default_mpp`) names who gave a table `mpp`: it replaces
    the bare "override", and when a converted TIFF carries that same value in its tags (conversion wrote it
    there) the file is not its origin either.
    """
    source = str(table_source or "").strip()
    if not source or override is None:
        return info.mpp_source
    if info.mpp_source == "override":
        return source
    if abs(info.mpp - override) <= 1e-3 * override:
        return f"{source} (in the converted TIFF)"
    return info.mpp_source


def _check_label(label: str, classes: list[str], slide: str, dataset: str) -> int:
    if label not in classes:
        raise SlideError(slide, f"label {label!r} is not one of the dataset's classes {classes}",
                         fix=f"correct the label in the slide table or add it to dataset_config.{dataset}.classes")
    return classes.index(label)


def _tissue_check(slide: Slide, tissue_cfg: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """The tissue mask exactly as the tissue rule will compute it; no tissue is a reason to exclude."""
    cfg = dict(tissue_cfg)
    seg_mpp = float(cfg.pop("seg_mpp", DEFAULT_TISSUE["seg_mpp"]))
    mask = tissue_mask(slide.image_at_mpp(seg_mpp), seg_mpp, **cfg)
    frac = float(mask.mean())
    if frac == 0.0:
        threshold = cfg.get("threshold", TISSUE_DEFAULTS["threshold"])
        raise SlideError(
            slide.info.slide,
            f"no tissue detected (no stain optical density above {threshold:g} at {seg_mpp:g} µm/px)",
            fix="check the QC thumbnail; if it shows faint tissue, lower threshold / seed_threshold or the "
                "fragment areas in dataset_config.<ds>.tissue (or tissue: for all datasets)",
        )
    return mask, frac


def _draw_qc(thumb: np.ndarray, mask: np.ndarray | None, qc_dir: Path, slide_id: str, caption: str) -> None:
    if mask is None:
        mask = np.zeros(thumb.shape[:2], dtype=bool)
    write_png(qc_dir / f"{slide_id}.png", overlay(thumb, mask, caption))


def inspect_slide(
    rec: Mapping[str, str],
    table_path: str | os.PathLike[str],
    classes: list[str],
    dataset: str,
    default_mpp: float | None,
    tissue_cfg: Mapping[str, Any],
    qc_dir: Path,
) -> dict[str, Any]:
    """One usable slide's slides.tsv row; SlideError (with reason and fix) for anything that makes it unusable."""
    slide_id = rec["slide"]
    label_idx = _check_label(rec["label"], classes, slide_id, dataset)
    override = _parse_override(rec.get("mpp", ""), slide_id)
    path = resolve_path(rec["path"], table_path)
    with Slide.open(path, slide_id, override_mpp=override, default_mpp=default_mpp) as slide:
        slide.verify()
        info: SlideInfo = replace(slide.info, mpp_source=_mpp_provenance(slide.info, override,
                                                                        rec.get("mpp_source", "")))
        caption = f"{slide_id} {rec['label']} {info.mpp:g}um/px ({info.mpp_source}) {info.magnification:g}x"
        thumb = slide.image_at_mpp(qc_mpp(info.width, info.height, info.mpp))
        problem = brightfield_problem(slide, thumb)
        if problem:
            _draw_qc(thumb, None, qc_dir, slide_id, caption + " NOT BRIGHTFIELD")
            raise SlideError(slide_id, f"not a brightfield slide: {problem}", fix=NOT_BRIGHTFIELD_FIX)
        try:
            mask, frac = _tissue_check(slide, tissue_cfg)
        except SlideError:
            _draw_qc(thumb, None, qc_dir, slide_id, caption + " NO TISSUE")
            raise
        slide.verify_tiles(mask, float(tissue_cfg.get("seg_mpp", DEFAULT_TISSUE["seg_mpp"])))
        _draw_qc(thumb, mask, qc_dir, slide_id, caption + f" tissue {100 * frac:.0f}%")
    if info.levels == 1 and max(info.width, info.height) > 20000:
        log.warning("slide %s: a single-level %dx%d slide (no pyramid): reads at 5x will be slow", slide_id,
                    info.width, info.height)
    row = {"slide": slide_id, "patient": rec["patient"] or slide_id, "label": rec["label"], "label_idx": label_idx,
           "path": str(path), "annotation": rec.get("annotation", "")}
    row.update(info.row())
    row["tissue_fraction"] = frac
    return row


def _decide(rec: Mapping[str, str], **kwargs: Any) -> Decision:
    """Turn every failure of one slide, expected or not, into an exclusion so the others still run."""
    slide_id = rec["slide"]
    try:
        problem = slide_id_problem(slide_id)
        if problem:  # the id names files (qc/{slide}.png, cache/{slide}.h5): never write with it
            raise SlideError(slide_id, f"slide id {slide_id!r} {problem}",
                             fix="rename the slide in the slide table (letters, digits, '_', '-', '.')")
        return Decision(slide_id, row=inspect_slide(rec, **kwargs))
    except SlideError as err:
        return Decision(slide_id, excluded={"slide": slide_id, "path": rec["path"], "reason": err.reason,
                                            "fix": err.fix})
    except Exception as exc:  # a library failure on one odd file must not stop the dataset
        log.exception("slide %s: unexpected error", slide_id)
        return Decision(slide_id, excluded={"slide": slide_id, "path": rec["path"],
                                            "reason": f"unexpected error: {type(exc).__name__}: {exc}",
                                            "fix": "see the inspect log for the traceback; report it if the file is fine"})


def _log_decision(d: Decision) -> None:
    if d.row is not None:
        r = d.row
        log.info("%s: ok  %s %dx%d, %d level(s), %g um/px (%s), %gx, label %s, tissue %.0f%%", d.slide, r["vendor"],
                 r["width"], r["height"], r["levels"], r["mpp"], r["mpp_source"], r["magnification"], r["label"],
                 100 * r["tissue_fraction"])
    else:
        log.warning("%s: EXCLUDED  %s (fix: %s)", d.slide, d.excluded["reason"], d.excluded["fix"])


def inspect_dataset(
    table_path: str | os.PathLike[str],
    dataset_cfg: Mapping[str, Any],
    out_slides: str | os.PathLike[str],
    out_excluded: str | os.PathLike[str],
    qc_dir: str | os.PathLike[str],
    *,
    dataset: str = "dataset",
    tissue_cfg: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inspect every slide of `table_path`; write slides.tsv, excluded.tsv and qc/{slide}.png.

    `dataset_cfg` is `config["dataset_config"][dataset]` (its `classes` fix label_idx, `default_mpp` is the last
    MPP fallback). Raises MsamilError, after writing both tables, when no slide is usable.
    """
    table = read_table(table_path)
    classes = list(dataset_cfg["classes"])
    qc = Path(qc_dir)
    qc.mkdir(parents=True, exist_ok=True)
    kwargs = {"table_path": table_path, "classes": classes, "dataset": dataset,
              "default_mpp": dataset_cfg.get("default_mpp"), "tissue_cfg": dict(tissue_cfg or DEFAULT_TISSUE),
              "qc_dir": qc}
    decisions = []
    for rec in tqdm(table.to_dict("records"), desc=f"inspect {dataset}", unit="slide"):
        decision = _decide(rec, **kwargs)
        _log_decision(decision)
        decisions.append(decision)
    slides = pd.DataFrame([d.row for d in decisions if d.row is not None], columns=SLIDES_COLUMNS)
    excluded = pd.DataFrame([d.excluded for d in decisions if d.excluded is not None], columns=EXCLUDED_COLUMNS)
    write_tsv(out_slides, slides)
    write_tsv(out_excluded, excluded)
    _summarise(dataset, slides, excluded, out_excluded)
    return slides, excluded


def _summarise(dataset: str, slides: pd.DataFrame, excluded: pd.DataFrame, out_excluded: Any) -> None:
    """One summary line (WARNING when anything was excluded); no usable slide at all is fatal."""
    total = len(slides) + len(excluded)
    if excluded.empty:
        log.info("dataset %s: %d/%d slides usable", dataset, len(slides), total)
        return
    reasons = "; ".join(f"{s}: {r}" for s, r in zip(excluded["slide"], excluded["reason"], strict=True))
    if slides.empty:
        raise MsamilError(
            f"dataset {dataset}: no usable slide, all {total} excluded (see {out_excluded} and the inspect log): "
            f"{reasons[:2000]}"
        )
    log.warning("dataset %s: %d/%d slides usable, %d EXCLUDED (see %s): %s", dataset, len(slides), total,
                len(excluded), out_excluded, reasons[:2000])

"""Inspection: decide, slide by slide, what the rest of the workflow may use (DESIGN.md sections 2, 10).

Each row of the slide table is one inspect job: the slide is opened, its pyramid and MPP checked, its pixels
decoded once (truncated files open fine and fail later), its illumination checked (brightfield only:
msamil.slides.brightfield), its tissue detected, and a QC thumbnail drawn. The job
writes a decision file (msamil.slides.outcomes): the slides.tsv row, or the exclusion with a precise reason and a
fix. One bad slide never stops the others; a dataset with no usable slide is an error at the gather.
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

from msamil.errors import SlideError
from msamil.slides.brightfield import NOT_BRIGHTFIELD_FIX, brightfield_problem
from msamil.slides.outcomes import (
    EXCLUDED_COLUMNS,
    SLIDES_COLUMNS,
    excluded_record,
    summarise,
    write_decision,
)
from msamil.slides.slide import Slide, SlideInfo
from msamil.slides.slide_table import slide_id_problem
from msamil.slides.table import read_slide_table
from msamil.tissue.detect import TISSUE_DEFAULTS, overlay, qc_mpp, tissue_mask, write_png
from msamil.util.atomic import write_tsv

log = logging.getLogger(__name__)

__all__ = ["EXCLUDED_COLUMNS", "SLIDES_COLUMNS", "decide", "inspect_dataset", "inspect_row", "inspect_slide"]
DEFAULT_TISSUE = TISSUE_DEFAULTS


@dataclass
class Decision:
    """The outcome for one slide: a slides.tsv row, or an excluded.tsv row."""

    slide: str
    row: dict[str, Any] | None = None
    excluded: dict[str, str] | None = None


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


def _check_label(label: str, classes: list[str] | None, slide: str, dataset: str) -> int:
    """The label's class index; -1 for an unlabelled slide of a prediction table (`classes` None)."""
    if classes is None:
        return -1
    if not label:
        raise SlideError(slide, "no label", fix=f"give the row a label, one of dataset_config.{dataset}.classes")
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


def _draw_qc(thumb: np.ndarray, mask: np.ndarray | None, qc_path: Path, caption: str) -> None:
    if mask is None:
        mask = np.zeros(thumb.shape[:2], dtype=bool)
    write_png(qc_path, overlay(thumb, mask, caption))


def _placeholder_qc(qc_path: Path, caption: str) -> None:
    """A QC image for a slide that could not be drawn, so every row has one and the caption says why."""
    write_png(qc_path, overlay(np.full((120, 960, 3), 235, np.uint8), np.ones((120, 960), bool), caption[:110]))


def inspect_slide(
    rec: Mapping[str, str],
    classes: list[str] | None,
    dataset: str,
    default_mpp: float | None,
    tissue_cfg: Mapping[str, Any],
    qc_path: str | os.PathLike[str],
) -> dict[str, Any]:
    """One usable slide's slides.tsv row; SlideError (with reason and fix) for anything that makes it unusable.

    `rec` is the slide-table row with its paths already resolved (msamil.slides.table); `classes` None means an
    unlabelled prediction table. The QC thumbnail is drawn whenever the slide can be read.
    """
    slide_id = rec["slide"]
    if rec.get("exclude", ""):
        raise SlideError(slide_id, f"excluded by the slide table: {rec['exclude']}",
                         fix="clear the row's exclude column to use the slide")
    label_idx = _check_label(rec.get("label", ""), classes, slide_id, dataset)
    override = _parse_override(rec.get("mpp", ""), slide_id)
    path = Path(rec["path"])
    if not rec["path"]:
        raise SlideError(slide_id, "no file given (empty path)", fix="put the slide file's path in the path column")
    annotation = rec.get("annotation", "")
    if annotation and not Path(annotation).is_file():
        raise SlideError(slide_id, f"annotation file not found: {annotation}",
                         fix="correct the annotation column (a QuPath GeoJSON) or leave it empty")
    with Slide.open(path, slide_id, override_mpp=override, default_mpp=default_mpp) as slide:
        slide.verify()
        info: SlideInfo = replace(slide.info, mpp_source=_mpp_provenance(slide.info, override,
                                                                        rec.get("mpp_source", "")))
        caption = f"{slide_id} {rec.get('label', '')} {info.mpp:g}um/px ({info.mpp_source}) {info.magnification:g}x"
        thumb = slide.image_at_mpp(qc_mpp(info.width, info.height, info.mpp))
        problem = brightfield_problem(slide, thumb)
        if problem:
            _draw_qc(thumb, None, Path(qc_path), caption + " NOT BRIGHTFIELD")
            raise SlideError(slide_id, f"not a brightfield slide: {problem}", fix=NOT_BRIGHTFIELD_FIX)
        try:
            mask, frac = _tissue_check(slide, tissue_cfg)
        except SlideError:
            _draw_qc(thumb, None, Path(qc_path), caption + " NO TISSUE")
            raise
        slide.verify_tiles(mask, float(tissue_cfg.get("seg_mpp", DEFAULT_TISSUE["seg_mpp"])))
        _draw_qc(thumb, mask, Path(qc_path), caption + f" tissue {100 * frac:.0f}%")
    if info.levels == 1 and max(info.width, info.height) > 20000:
        log.warning("slide %s: a single-level %dx%d slide (no pyramid): reads at 5x will be slow", slide_id,
                    info.width, info.height)
    row = {"slide": slide_id, "patient": rec.get("patient", "") or slide_id, "label": rec.get("label", ""),
           "label_idx": label_idx, "path": str(path), "annotation": annotation}
    row.update(info.row())
    row["tissue_fraction"] = frac
    return row


def decide(rec: Mapping[str, str], **kwargs: Any) -> Decision:
    """Turn every failure of one slide, expected or not, into an exclusion so the others still run."""
    slide_id = rec["slide"]
    try:
        problem = slide_id_problem(slide_id)
        if problem:  # the id names files (qc/{slide}.png, cache/{slide}.h5): never write with it
            raise SlideError(slide_id, f"slide id {slide_id!r} {problem}",
                             fix="rename the slide in the slide table (letters, digits, '_', '-', '.')")
        return Decision(slide_id, row=inspect_slide(rec, **kwargs))
    except SlideError as err:
        return Decision(slide_id, excluded=excluded_record(slide_id, rec["path"], "inspect", err.reason, err.fix))
    except Exception as exc:  # a library failure on one odd file must not stop the dataset
        log.exception("slide %s: unexpected error", slide_id)
        return Decision(slide_id, excluded=excluded_record(
            slide_id, rec["path"], "inspect", f"unexpected error: {type(exc).__name__}: {exc}",
            "see the inspect log for the traceback; report it if the file is fine"))


def _log_decision(d: Decision) -> None:
    if d.row is not None:
        r = d.row
        log.info("%s: ok  %s %dx%d, %d level(s), %g um/px (%s), %gx, label %s, tissue %.0f%%", d.slide, r["vendor"],
                 r["width"], r["height"], r["levels"], r["mpp"], r["mpp_source"], r["magnification"], r["label"],
                 100 * r["tissue_fraction"])
    else:
        log.warning("%s: EXCLUDED  %s (fix: %s)", d.slide, d.excluded["reason"], d.excluded["fix"])


def inspect_row(
    rec: Mapping[str, str],
    decision_out: str | os.PathLike[str],
    qc_out: str | os.PathLike[str],
    *,
    dataset: str,
    classes: list[str] | None,
    default_mpp: float | None = None,
    tissue_cfg: Mapping[str, Any] | None = None,
) -> Decision:
    """The per-slide inspect job: decide on one slide-table row, write its decision file and its QC image."""
    rec = {k: str(v) for k, v in rec.items()}
    qc = Path(qc_out)
    decision = decide(rec, classes=None if classes is None else list(classes), dataset=dataset,
                      default_mpp=default_mpp, tissue_cfg=dict(tissue_cfg or DEFAULT_TISSUE), qc_path=qc)
    _log_decision(decision)
    if decision.excluded is not None and not qc.exists():
        _placeholder_qc(qc, f"{decision.slide}: EXCLUDED {decision.excluded['reason']}")
    write_decision(decision_out, rec, row=decision.row, excluded=decision.excluded)
    return decision


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
    """Inspect every row of the slide table at `table_path` in one process (what the workflow's per-slide jobs and
    gather do, for scripts and tests): write slides.tsv, excluded.tsv and qc/{slide}.png.

    Raises MsamilError, after writing both tables, when no slide is usable.
    """
    table = read_slide_table(table_path)
    qc = Path(qc_dir)
    kwargs = {"classes": list(dataset_cfg["classes"]), "dataset": dataset,
              "default_mpp": dataset_cfg.get("default_mpp"), "tissue_cfg": dict(tissue_cfg or DEFAULT_TISSUE)}
    decisions = []
    for rec in tqdm(table.to_dict("records"), desc=f"inspect {dataset}", unit="slide"):
        decision = decide(rec, qc_path=qc / f"{rec['slide']}.png", **kwargs)
        _log_decision(decision)
        decisions.append(decision)
    slides = pd.DataFrame([d.row for d in decisions if d.row is not None], columns=SLIDES_COLUMNS)
    excluded = pd.DataFrame([d.excluded for d in decisions if d.excluded is not None], columns=EXCLUDED_COLUMNS)
    write_tsv(out_slides, slides)
    write_tsv(out_excluded, excluded)
    summarise(dataset, "inspect", slides, excluded, out_excluded)
    return slides, excluded

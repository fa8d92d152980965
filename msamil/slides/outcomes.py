"""What happened to each slide, stage by stage, and the per-dataset tables gathered from it (DESIGN.md 2, 10).

Per slide, the inspect job writes a *decision* (`results/{ds}/inspect/{slide}.json`): the slides.tsv row it made,
or an exclusion (reason, fix). Later per-slide stages (tissue, cache) that fail on a slide do not fail the job: they
write a failure record into their own outputs (`failure_record`) so that one bad slide never blocks the others,
even without `--keep-going`. Two gathers then make the per-dataset tables:

- `gather_inspection`: decisions -> `inspect/slides.tsv` and `inspect/excluded.tsv` (which slides get tissue and
  cache jobs);
- `gather_slides`: those plus each cache's root attributes -> `slides.tsv` (usable slides, each with its cache and
  the cache's content checksum: the one manifest every training job depends on) and `excluded.tsv` (every slide
  left out, with the stage, reason and fix).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from msamil.errors import MsamilError, SlideError
from msamil.util.atomic import write_json, write_tsv

log = logging.getLogger(__name__)

SLIDES_COLUMNS = [
    "slide", "patient", "label", "label_idx", "path", "annotation", "mpp", "mpp_source", "objective_power",
    "magnification", "width", "height", "levels", "vendor", "tissue_fraction",
]
EXCLUDED_COLUMNS = ["slide", "path", "stage", "reason", "fix"]
CACHE_COLUMNS = ["cache", "cache_sha256"]
#: Failures that say nothing about the slide: the job must fail (and be retried), not exclude the slide.
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EROFS, errno.EIO}


def excluded_record(slide: str, path: str, stage: str, reason: str, fix: str) -> dict[str, str]:
    return {"slide": slide, "path": path, "stage": stage, "reason": reason, "fix": fix}


def write_decision(path: str | os.PathLike[str], source_row: Mapping[str, str], *, row: Mapping[str, Any] | None,
                   excluded: Mapping[str, str] | None) -> None:
    """One slide's inspect outcome; `source_row` (its slide-table row) lets the workflow tell a stale one apart."""
    if (row is None) == (excluded is None):
        raise ValueError("a decision is either a slides.tsv row or an exclusion")
    write_json(path, {"slide": source_row["slide"], "status": "usable" if row is not None else "excluded",
                      "source_row": dict(source_row), "row": row, "excluded": excluded})


def read_decision(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def usable_decision(path: str | os.PathLike[str], stage: str) -> dict[str, Any]:
    """The slides.tsv row of a slide that passed inspection; SlideError (with the exclusion reason) otherwise."""
    decision = read_decision(path)
    if decision["row"] is None:
        exc = decision["excluded"]
        raise SlideError(decision["slide"], f"excluded at inspection, so it has no {stage}: {exc['reason']}",
                         exc["fix"])
    return decision["row"]


def failure_record(slide: str, stage: str, exc: BaseException) -> dict[str, str] | None:
    """The exclusion record for a per-slide failure, or None when the failure is not the slide's (re-raise it).

    A full disk, a read-only or failing file system and exhausted memory would exclude good slides one by one,
    so they fail the job instead (Snakemake retries it or stops with the error).
    """
    if isinstance(exc, SlideError):
        return excluded_record(slide, "", stage, exc.reason, exc.fix)
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError):
        return None
    if isinstance(exc, OSError) and exc.errno in _SYSTEM_ERRNOS:
        return None
    return excluded_record(slide, "", stage, f"{stage} failed: {type(exc).__name__}: {exc}",
                           f"see results/logs/{stage}/ for the traceback; replace the file if it is damaged")


def _frame(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(list(records), columns=list(columns))


def gather_inspection(decisions: Sequence[str | os.PathLike[str]], out_slides: str | os.PathLike[str],
                      out_excluded: str | os.PathLike[str], dataset: str,
                      unnamed: Sequence[Mapping[str, str]] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decisions -> inspect/slides.tsv and inspect/excluded.tsv; no usable slide at all is an error.

    `unnamed` are the exclusions of rows whose id cannot name a file, so they never had an inspect job."""
    rows, excluded = [], [dict(r) for r in unnamed]
    for path in decisions:
        decision = read_decision(path)
        if decision["row"] is not None:
            rows.append(decision["row"])
        else:
            excluded.append({"stage": "inspect", **decision["excluded"]})
    slides, excl = _frame(rows, SLIDES_COLUMNS), _frame(excluded, EXCLUDED_COLUMNS)
    write_tsv(out_slides, slides)
    write_tsv(out_excluded, excl)
    summarise(dataset, "inspect", slides, excl, out_excluded)
    return slides, excl


def _cache_outcome(cache_path: str | os.PathLike[str]) -> tuple[str | None, dict[str, str] | None]:
    """(content checksum, None) for a built cache; (None, failure) for a slide whose cache job failed."""
    from msamil.cache.access import open_cache

    with open_cache(cache_path, require_complete=False) as h5:  # a damaged file: CacheError naming it and the fix
        attrs = dict(h5.attrs)
    if "failed_reason" in attrs:
        return None, {"stage": str(attrs.get("failed_stage", "cache")), "reason": str(attrs["failed_reason"]),
                      "fix": str(attrs.get("failed_fix", ""))}
    if not attrs.get("complete"):
        raise MsamilError(f"cache {cache_path} is incomplete (no 'complete' flag): delete it and rerun snakemake")
    return str(attrs.get("content_sha256", "")), None


def gather_slides(inspected: str | os.PathLike[str], inspect_excluded: str | os.PathLike[str],
                  caches: Sequence[str | os.PathLike[str]], out_slides: str | os.PathLike[str],
                  out_excluded: str | os.PathLike[str], dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final slides.tsv (usable and cached, with the cache path and checksum) and excluded.tsv (all stages)."""
    slides = pd.read_csv(inspected, sep="\t", dtype=str, keep_default_na=False)
    excluded = pd.read_csv(inspect_excluded, sep="\t", dtype=str, keep_default_na=False)
    by_slide = {Path(p).name.removesuffix(".h5"): os.fspath(p) for p in caches}
    missing = sorted(set(slides["slide"]) - set(by_slide))
    if missing:
        raise MsamilError(f"dataset {dataset}: no cache given for slide(s) {missing[:10]}")
    keep, checksums, failed = [], [], []
    for slide, path in zip(slides["slide"], slides["path"], strict=True):
        checksum, failure = _cache_outcome(by_slide[slide])
        if failure is None:
            keep.append(True)
            checksums.append(checksum)
        else:
            keep.append(False)
            failed.append(excluded_record(slide, path, failure["stage"], failure["reason"], failure["fix"]))
    usable = slides[keep].copy()
    usable["cache"] = [by_slide[s] for s in usable["slide"]]
    usable["cache_sha256"] = checksums
    excl = pd.concat([excluded, _frame(failed, EXCLUDED_COLUMNS)], ignore_index=True)[EXCLUDED_COLUMNS]
    write_tsv(out_slides, usable)
    write_tsv(out_excluded, excl)
    summarise(dataset, "all stages", usable, excl, out_excluded)
    return usable, excl


def summarise(dataset: str, stage: str, slides: pd.DataFrame, excluded: pd.DataFrame, out_excluded: Any) -> None:
    """One summary line (WARNING when anything was excluded); no usable slide at all is fatal."""
    total = len(slides) + len(excluded)
    if excluded.empty:
        log.info("dataset %s (%s): %d/%d slides usable", dataset, stage, len(slides), total)
        return
    reasons = "; ".join(f"{s}: {r}" for s, r in zip(excluded["slide"], excluded["reason"], strict=True))
    if slides.empty:
        raise MsamilError(f"dataset {dataset}: no usable slide, all {total} excluded (see {out_excluded} and the "
                          f"logs): {reasons[:2000]}")
    log.warning("dataset %s (%s): %d/%d slides usable, %d EXCLUDED (see %s): %s", dataset, stage, len(slides), total,
                len(excluded), out_excluded, reasons[:2000])


def slide_caches(slides_tsv: str | os.PathLike[str]) -> dict[str, str]:
    """{slide: cache path} from the final slides.tsv: how training jobs find caches without listing them as inputs."""
    table = pd.read_csv(slides_tsv, sep="\t", dtype=str, keep_default_na=False)
    if "cache" not in table.columns:
        raise MsamilError(f"{slides_tsv} has no 'cache' column: it is not the final slides.tsv of a dataset "
                          "(results/<ds>/slides.tsv); rerun snakemake to rebuild it")
    return dict(zip(table["slide"], table["cache"], strict=True))


def summary_line(results: str | os.PathLike[str], dataset: str) -> str | None:
    """"N slides used, M excluded (results/<ds>/excluded.tsv)" from the newest tables a run has written."""
    root = Path(results) / dataset
    for slides, excluded in ((root / "slides.tsv", root / "excluded.tsv"),
                             (root / "inspect" / "slides.tsv", root / "inspect" / "excluded.tsv")):
        if slides.is_file() and excluded.is_file():
            n_used = len(pd.read_csv(slides, sep="\t", usecols=[0]))
            n_excl = len(pd.read_csv(excluded, sep="\t", usecols=[0]))
            done = "" if slides.parent == root else ", so far: inspection only"
            return f"{dataset}: {n_used} slides used, {n_excl} excluded ({excluded}{done})"
    return None

"""A user's own cohort, end to end: slides exported from the synthetic generator under a new dataset name, with a
label vocabulary of their own, listed in a CSV slide table with paths relative to it (README "Your own slides").

One real Snakemake run covers: every row used or excluded with a reason (a missing file, an unknown label, a row
the user excluded, a slide without MPP, and one whose level-0 tile inside tissue is corrupt, found only after
inspection), the end-of-run summary line, `msamil cache-info` on a cache the workflow built, a one-line failure
when a target names an excluded slide, and reruns: nothing without an edit, only the edited slide's jobs (and
what depends on them) after one row changes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import slide_fixtures as sf
from fault_fixtures import corrupt_tissue_tile

from msamil.cli import main as msamil_cli
from msamil.slides.synthetic import make_slide, write_synthetic_slide
from tests.workflow_helpers import snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e_cohort")]

DS = "mycohort"
GOOD = [f"c{i:02d}" for i in range(8)]
SIZE = {"width": 1536, "height": 1024, "tile_size": 256, "jpeg_quality": 85, "mpp": 0.5}
CONFIG = {
    "datasets": [DS],
    "dataset_config": {DS: {"source": "local", "slide_table": "../cohort/slides.csv", "classes": ["normal", "tumour"]}},
    "splits": {"folds": 2, "val_fraction": 0.25},
    "lesion": {"epochs": 1},
    "model": {"input_px": 32, "dim": 32},
    "train": {"epochs": 2, "bag_size": 16, "micro_batch": 8, "accum_slides": 1, "bn_calib_patches": 32},
    "methods": {"msamil": {"kind": "msamil"}},
    "report": {"heatmap_slides": 1, "fig2_slides": 1},
}


def _row(slide: str, label: str, path: str, **extra: str) -> dict[str, str]:
    return {"slide": slide, "patient": extra.pop("patient", f"P_{slide}"), "label": label, "path": path,
            "annotation": "", "mpp": "", "exclude": "", **extra}


def make_cohort(folder: Path) -> Path:
    """Slides in folder/scans, lesions in folder/lesions, and folder/slides.csv listing them (relative paths)."""
    rows = []
    for i, slide in enumerate([*GOOD, "broken"]):
        tumour = i % 2 == 1
        write_synthetic_slide(folder / "scans" / f"{slide}.svs", folder / "lesions" / f"{slide}.geojson", slide,
                              "malignant" if tumour else "benign", seed=11, **SIZE)
        rows.append(_row(slide, "tumour" if tumour else "normal", f"scans/{slide}.svs",
                         annotation=f"lesions/{slide}.geojson", patient=f"P{i // 2}"))
    plain = make_slide("nompp", "benign", 11, **SIZE)
    sf.write_no_mpp(folder / "scans" / "nompp.tif", plain.rgb)  # a scanner that records no pixel size
    rows += [_row("nompp", "normal", "scans/nompp.tif"),
             _row("lost", "normal", "scans/lost.svs"),
             _row("odd", "unknown", "scans/c00.svs"),
             _row("skipped", "normal", "scans/c01.svs", exclude="duplicate scan of c01")]
    table = folder / "slides.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cohort")
    table = make_cohort(root / "cohort")
    work = root / "work"
    work.mkdir()
    config = write_config(work, CONFIG, replace=("methods", "datasets", "dataset_config"))
    snakemake(work, config, "--cores", "2", f"results/{DS}/inspect/slides.tsv", check=True)
    # Damage that inspection did not see: a corrupt level-0 tile inside tissue (file dates kept, as a bit flip
    # on disk would), first read by a later per-slide stage.
    corrupt_tissue_tile(root / "cohort" / "scans" / "broken.svs")  # keeps the file's dates
    done = snakemake(work, config, "--cores", "2", check=True)  # no --keep-going: nothing may fail
    return {"work": work, "config": config, "table": table, "log": done.stdout + done.stderr}


def test_the_cohort_runs_end_to_end_with_its_own_labels(cohort_run):
    results = cohort_run["work"] / "results" / DS
    slides = pd.read_csv(results / "slides.tsv", sep="\t", dtype=str)
    assert sorted(slides["slide"]) == GOOD
    assert set(slides["label"]) == {"normal", "tumour"}
    folder = cohort_run["table"].parent.resolve()  # the table's relative paths are relative to its folder
    assert all((cohort_run["work"] / p).resolve().parent == folder / "scans" for p in slides["path"])
    for fold in (0, 1):
        metrics = json.loads((results / f"runs/msamil/fold{fold}/metrics.json").read_text())
        assert 0.0 <= metrics["auc"] <= 1.0
    assert (cohort_run["work"] / "results/tables/main_results.tsv").stat().st_size > 0


def test_every_row_is_used_or_excluded_with_its_reason(cohort_run):
    results = cohort_run["work"] / "results" / DS
    excluded = pd.read_csv(results / "excluded.tsv", sep="\t", keep_default_na=False).set_index("slide")
    assert sorted(excluded.index) == ["broken", "lost", "nompp", "odd", "skipped"]
    assert excluded.loc["broken", "stage"] in {"tissue", "cache"}
    assert excluded.loc["broken", "reason"].startswith("unreadable: truncated or corrupt")
    assert excluded.loc["nompp", "reason"].startswith("no MPP")
    assert excluded.loc["lost", "reason"].startswith("file not found")
    assert excluded.loc["odd", "reason"].startswith("label 'unknown' is not one of")
    assert excluded.loc["skipped", "reason"] == "excluded by the slide table: duplicate scan of c01"
    assert (excluded["fix"] != "").all()
    assert f"{DS}: 8 slides used, 5 excluded (results/{DS}/excluded.tsv)" in cohort_run["log"]


def test_cache_info_reads_a_workflow_cache(cohort_run, capsys):
    cache = cohort_run["work"] / f"results/{DS}/cache/c00.h5"
    assert msamil_cli(["cache-info", str(cache), str(cache.with_name("broken.h5"))]) == 0
    good, broken = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert good["scales"] == ["20x", "10x", "5x"] and len(good["tissue_min"]) == 3
    assert good["complete"] is True and good["n_20x"] > 0 and len(good["content_sha256"]) == 64
    assert broken["complete"] is False and broken["failed_reason"].startswith("unreadable")


def test_a_target_of_an_excluded_slide_fails_in_one_line(cohort_run):
    done = snakemake(cohort_run["work"], cohort_run["config"], "--cores", "1", f"results/{DS}/cache/lost.h5")
    out = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "Traceback" not in out
    assert out.splitlines()[-1].startswith(f"msamil: slide lost of dataset {DS} was excluded at inspection: "
                                           "file not found")


def _planned(work: Path, config: Path, *targets: str) -> list[tuple[str, str]]:
    """(rule, slide or '') of every job a dry run plans."""
    done = snakemake(work, config, "-n", "--cores", "1", *targets, check=True)
    out = done.stdout + done.stderr
    if "Nothing to be done" in out:
        return []
    jobs = []
    for match in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", out, re.M | re.S):
        slide = re.search(r"wildcards: .*slide=([^,\s]+)", match.group(2))
        jobs.append((match.group(1), slide.group(1) if slide else ""))
    return jobs


def test_no_edit_reruns_nothing_and_one_edited_row_only_its_slide(cohort_run):
    work, config, table = cohort_run["work"], cohort_run["config"], cohort_run["table"]
    assert _planned(work, config) == []
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame["notes"] = "a column the workflow does not use"
    frame.to_csv(table, index=False)
    assert _planned(work, config) == []  # the table changed, none of its rows did

    frame.loc[frame["slide"] == "nompp", "mpp"] = "0.5"  # the fix the exclusion message asks for
    frame.to_csv(table, index=False)
    jobs = _planned(work, config)
    assert ("inspect_slide", "nompp") in jobs and ("inspect", "") in jobs
    assert {s for _, s in jobs if s} == {"nompp"}  # no other slide's jobs
    snakemake(work, config, "--cores", "2", f"results/{DS}/inspect/slides.tsv", check=True)
    jobs = _planned(work, config)  # the inspect checkpoint has run: now the plan reaches the end
    per_slide = {(rule, s) for rule, s in jobs if s}
    assert per_slide == {("tissue", "nompp"), ("cache", "nompp")}
    rules = {rule for rule, _ in jobs}
    assert {"slides", "splits", "lesion_train", "train", "tables"} <= rules

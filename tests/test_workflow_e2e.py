"""The whole DAG for real: synthetic slides -> inspect -> tissue -> cache -> splits -> lesion/SFFM -> every method
kind -> tables, figures and the HTML report, on a small config, with one slide corrupted on purpose.

One Snakemake run covers what unit tests cannot: the rules' wiring, the inspect checkpoint re-planning the DAG,
`--keep-going` past a bad slide, and the report. It is the slowest test of the suite (a few minutes on 2 cores).
The same trained models are then applied to unlabelled slides (`predict:`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.workflow_helpers import snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]

SMALL = {
    "synthetic": {"n_slides": 10, "n_patients": 9, "width": 2048, "height": 1536},
    "splits": {"folds": 2, "val_fraction": 0.25},
    "lesion": {"epochs": 2},
    "model": {"input_px": 32, "dim": 32},
    "train": {"epochs": 2, "bag_size": 16, "micro_batch": 8, "accum_slides": 1, "bn_calib_patches": 32},
    "baselines": {
        "abmil": {"epochs": 3},
        "dino": {"epochs": 1, "patches_per_epoch": 64, "batch_size": 16},
        "icmil": {"iters": 4, "batch_size": 16},
    },
    "methods": {
        "msamil": {"kind": "msamil"},
        "msamil_20x_only": {"kind": "msamil", "scales": ["20x"]},
        "abmil": {"kind": "abmil"},
        "dino_abmil": {"kind": "dino_abmil"},
        "icmil_abmil": {"kind": "icmil_abmil"},
    },
    "report": {"heatmap_slides": 1, "fig2_slides": 1},
}
BROKEN = "syn_003"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    config = write_config(work, SMALL)
    raw = [f"results/synthetic/raw/slides/syn_{i:03d}.svs" for i in range(10)]
    snakemake(work, config, "--cores", "2", "results/synthetic/raw/table.tsv", *raw, check=True)
    slide = work / f"results/synthetic/raw/slides/{BROKEN}.svs"
    slide.write_bytes(slide.read_bytes()[: slide.stat().st_size // 3])  # truncated mid-file, as a bad copy
    snakemake(work, config, "--cores", "2", "--keep-going", check=True)
    return work


def test_bad_slide_is_excluded_with_its_reason_and_the_rest_runs(finished_run):
    results = finished_run / "results/synthetic"
    excluded = pd.read_csv(results / "excluded.tsv", sep="\t")
    assert excluded["slide"].tolist() == [BROKEN]
    assert excluded["reason"].iloc[0] and excluded["fix"].iloc[0]
    usable = pd.read_csv(results / "slides.tsv", sep="\t")["slide"].tolist()
    assert BROKEN not in usable and len(usable) == 9
    assert not (results / f"cache/{BROKEN}.h5").exists()
    assert all((results / f"cache/{s}.h5").exists() for s in usable)


def test_every_method_and_fold_has_its_outputs(finished_run):
    runs = finished_run / "results/synthetic/runs"
    for method in SMALL["methods"]:
        for fold in range(2):
            run = runs / method / f"fold{fold}"
            for name in ("predictions.tsv", "metrics.json", "efficiency.json", "attention.h5"):
                assert (run / name).stat().st_size > 0, run / name
    predictions = pd.concat(pd.read_csv(p, sep="\t") for p in runs.glob("msamil/fold*/predictions.tsv"))
    assert sorted(predictions["slide"]) == sorted(
        pd.read_csv(finished_run / "results/synthetic/slides.tsv", sep="\t")["slide"]
    )  # every usable slide is tested exactly once


def test_tables_and_figures_exist(finished_run):
    tables = finished_run / "results/tables"
    for name in ("main_results", "ablation", "comparisons", "efficiency"):
        for ext in ("tsv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    main = pd.read_csv(tables / "main_results.tsv", sep="\t")
    assert {"msamil", "abmil", "dino_abmil", "icmil_abmil"} <= set(main["method"])
    figures = sorted((finished_run / "results/figures").glob("*.png"))
    assert len(figures) >= 6
    for png in figures:
        with Image.open(png) as image:
            assert image.size[0] > 100 and image.size[1] > 100
        assert png.with_suffix(".pdf").stat().st_size > 0


def test_nothing_left_to_do_and_report_holds_every_figure(finished_run):
    config = finished_run / "test_config.yaml"
    dry = snakemake(finished_run, config, "-n", "--cores", "1", check=True)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    snakemake(finished_run, config, "--report", "results/report.html", check=True)
    html = (finished_run / "results/report.html").read_text(errors="ignore")
    for png in (finished_run / "results/figures").glob("*.png"):
        assert png.name in html, png.name


def test_predict_on_unlabelled_slides_with_the_trained_folds(finished_run):
    """`predict:` applies the run's trained msamil folds (and their lesion models, for SFFM) to new slides of a
    table without labels: predictions.tsv with every fold's probabilities and their mean, one heatmap per slide."""
    new = finished_run / "new"
    new.mkdir()
    for src, dst in (("syn_000", "case_a"), ("syn_001", "case_b")):
        (new / f"{dst}.svs").write_bytes((finished_run / f"results/synthetic/raw/slides/{src}.svs").read_bytes())
    (new / "slides.tsv").write_text("slide\tpath\ncase_a\tcase_a.svs\ncase_b\tcase_b.svs\ngone\tgone.svs\n")
    cfg = yaml.safe_load((finished_run / "test_config.yaml").read_text())
    cfg["predict"] = {"newcases": {"slide_table": str(new / "slides.tsv"), "dataset": "synthetic",
                                   "method": "msamil"}}
    config = finished_run / "predict_config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    trained = sorted((finished_run / "results/synthetic/runs/msamil").glob("fold*/best.pt"))
    before = [p.stat().st_mtime_ns for p in trained]
    snakemake(finished_run, config, "--cores", "2", "results/predict/newcases/predictions.tsv", check=True)

    out = finished_run / "results/predict/newcases"
    assert [p.stat().st_mtime_ns for p in trained] == before  # applied, not retrained
    excluded = pd.read_csv(out / "excluded.tsv", sep="\t")
    assert excluded["slide"].tolist() == ["gone"] and "not found" in excluded["reason"].iloc[0]
    table = pd.read_csv(out / "predictions.tsv", sep="\t", keep_default_na=False)
    assert table["slide"].tolist() == ["case_a", "case_b"]
    assert (table["given_label"] == "").all() and (table["n_folds"] == 2).all()
    classes = ["benign", "malignant"]
    for c in classes:
        folds = table[[f"prob_{c}_fold0", f"prob_{c}_fold1"]]
        assert np.allclose(table[f"prob_{c}"], folds.mean(axis=1), atol=1e-5)
    assert np.allclose(table[[f"prob_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-4)
    assert set(table["pred"]) <= set(classes)
    for k in range(2):  # each fold's own lesion model selected the new slides' patches
        assert (out / f"lesion/fold{k}/selection.h5").stat().st_size > 0
        fold = pd.read_csv(out / f"fold{k}/predictions.tsv", sep="\t")
        assert fold["slide"].tolist() == ["case_a", "case_b"]
    for slide in ("case_a", "case_b"):
        with Image.open(out / f"heatmaps/{slide}.png") as image:
            assert image.size[0] > 200 and image.size[1] > 100
    assert sorted(p.name for p in (out / "heatmaps").glob("*.png")) == ["case_a.png", "case_b.png"]

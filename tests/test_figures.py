"""Figures: each is a valid, non-empty PNG of the fixed size plus a PDF; missing runs degrade to empty panels.

The slow test runs the aggregate rules through Snakemake on a fake results tree and builds the report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_results import FAKE_CLASSES, FAKE_METHODS, build_fake_results
from PIL import Image

from msamil.reporting.figures.curves import fig3a_unetpp_iou, pooled_roc, roc_figure
from msamil.reporting.figures.efficiency import efficiency_figure
from msamil.reporting.figures.heatmaps import attention_figure
from msamil.reporting.figures.paired import fig3b_dino_vs_e2e
from msamil.reporting.figures.qc import qc_sheets
from msamil.reporting.figures.sffm import fig2_sffm
from msamil.reporting.figures.style import figure_px, method_color

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["synthetic", "ubc_ocean"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_fake_results(tmp_path_factory.mktemp("figs"), n_slides=9, missing=[("ubc_ocean", "dino_abmil")])


def check_figure(png: Path, name: str, n: int = 1) -> None:
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG"
        assert img.size == figure_px(name, n)
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 5, "figure looks blank"
    pdf = png.with_suffix(".pdf")
    assert pdf.exists() and pdf.read_bytes()[:4] == b"%PDF"


def test_fig2_sffm(tree, tmp_path):
    picks = [("synthetic", "syn_000"), ("ubc_ocean", "ubc_008")]
    fig2_sffm(tree.results, picks, tree.folds, tmp_path / "fig2.png", tmp_path / "fig2.pdf")
    check_figure(tmp_path / "fig2.png", "fig2_sffm", 2)


def test_fig3a_iou(tree, tmp_path):
    fig3a_unetpp_iou(tree.results, DATASETS, tree.folds, tmp_path / "f.png", tmp_path / "f.pdf")
    check_figure(tmp_path / "f.png", "fig3a_unetpp_iou", 2)


def test_fig3b_paired_with_a_missing_method(tree, tmp_path):
    fig3b_dino_vs_e2e(tree.results, DATASETS, tree.folds, tmp_path / "f.png", tmp_path / "f.pdf")
    check_figure(tmp_path / "f.png", "fig3b_dino_vs_e2e", 2)


@pytest.mark.parametrize("dataset", DATASETS)
def test_roc(tree, tmp_path, dataset):
    roc_figure(tree.results, dataset, FAKE_METHODS, tree.folds, tmp_path / "r.png", tmp_path / "r.pdf")
    check_figure(tmp_path / "r.png", "roc")


def test_attention_with_a_slide_no_run_tested(tree, tmp_path):
    ds = tree.results / "ubc_ocean"
    shutil.copy(ds / "cache" / "ubc_000.h5", ds / "cache" / "ubc_extra.h5")  # a slide absent from attention.h5
    attention_figure(tree.results, "ubc_ocean", ["ubc_000", "ubc_extra"], tree.folds, tmp_path / "a.png",
                     tmp_path / "a.pdf")
    check_figure(tmp_path / "a.png", "attention", 2)


def test_efficiency(tree, tmp_path):
    efficiency_figure(tree.results, DATASETS, FAKE_METHODS, tree.folds, tmp_path / "e.png", tmp_path / "e.pdf")
    check_figure(tmp_path / "e.png", "efficiency", 2)


def test_qc_sheets(tree, tmp_path):
    written = qc_sheets(tree.results, "synthetic", tmp_path / "qc", slides=["syn_000", "syn_001"])
    assert [p.name for p in written] == ["syn_000.png", "syn_001.png"]
    with Image.open(written[0]) as img:
        assert img.size == figure_px("qc")


def test_pooled_roc_binary_and_multiclass():
    import pandas as pd

    frame = pd.DataFrame({"label": [0, 0, 1, 1], "prob_0": [0.9, 0.6, 0.4, 0.2], "prob_1": [0.1, 0.4, 0.6, 0.8]})
    fpr, tpr, auc = pooled_roc(frame)
    assert auc == 1.0 and tpr[-1] == 1.0
    multi = pd.DataFrame({"label": [0, 1, 2, 2], "prob_0": [0.8, 0.1, 0.1, 0.3], "prob_1": [0.1, 0.8, 0.1, 0.3],
                          "prob_2": [0.1, 0.1, 0.8, 0.4]})
    _, tpr, auc = pooled_roc(multi)
    assert auc == pytest.approx(1.0) and tpr[0] == 0.0


def test_method_colours_fixed_and_distinct():
    colours = [method_color(m) for m in FAKE_METHODS]
    assert len(set(colours)) == len(colours)
    assert method_color("msamil") == method_color("msamil")


STUB_SNAKEFILE = f"""
import sys

sys.path.insert(0, "{REPO}")  # this checkout's msamil, as the real Snakefile does


report: "{REPO}/workflow/report/workflow.rst"


include: "{REPO}/rules/common.smk"


checkpoint slides:
    output:
        slides=f"{{RESULTS}}/{{{{dataset}}}}/slides.tsv",
        excluded=f"{{RESULTS}}/{{{{dataset}}}}/excluded.tsv",
    shell:
        "echo 'the test writes the slides gather outputs itself' >&2; exit 1"


include: "{REPO}/rules/aggregate.smk"


rule aggregate_all:
    input:
        aggregate_targets(),
"""


@pytest.mark.slow
def test_aggregate_rules_and_report(tmp_path):
    """Runs only rules/aggregate.smk (with common.smk and a stand-in for the `slides` checkpoint) on a fake tree.

    The real Snakefile cannot be used on a fake tree: Snakemake walks every upstream producer of the inputs and
    needs their own inputs (raw slides, models) to exist. The full chain is covered by the end-to-end test.
    """
    tree = build_fake_results(tmp_path, n_slides=6)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"] = DATASETS
    cfg["dataset_config"]["ubc_ocean"] = {"source": "synthetic", "classes": FAKE_CLASSES["ubc_ocean"]}
    cfg["splits"]["folds"] = len(tree.folds)
    cfg["report"] = {"heatmap_slides": 2, "fig2_slides": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "Snakefile").write_text(STUB_SNAKEFILE)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    base = [snakemake, "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), "--configfile",
            str(tmp_path / "config.yaml"), "--workflow-profile", "none", "--cores", "2"]
    for extra in (["aggregate_all"], ["--report", "report.html", "aggregate_all"]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-6000:]
    figures = tree.results / "figures"
    for name, n in [("fig2_sffm", 2), ("fig3a_unetpp_iou", 2), ("fig3b_dino_vs_e2e", 2), ("efficiency", 2),
                    ("roc_synthetic", 1), ("roc_ubc_ocean", 1), ("attention_synthetic", 2)]:
        check_figure(figures / f"{name}.png", name.split("_")[0] if name.startswith(("roc", "attention")) else name,
                     n)
    for name in ("main_results", "ablation", "comparisons", "efficiency", "sffm"):
        for ext in ("tsv", "md", "tex"):
            assert (tree.results / "tables" / f"{name}.{ext}").stat().st_size > 0
    html = (tmp_path / "report.html").read_text()
    for name in ("fig2_sffm.png", "fig3a_unetpp_iou.png", "fig3b_dino_vs_e2e.png", "efficiency.png",
                 "roc_synthetic.png", "roc_ubc_ocean.png", "attention_synthetic.png", "attention_ubc_ocean.png",
                 "main_results.tsv", "ablation.tsv", "comparisons.tsv", "syn_000.png", "ubc_005.png"):
        assert name in html, name

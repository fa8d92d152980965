"""Tables: numbers recomputed independently from predictions.tsv, bold marks, ablation labels, missing runs."""

from __future__ import annotations

import logging
import re

import h5py
import numpy as np
import pandas as pd
import pytest
from fake_results import build_fake_results
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from msamil.reporting.report import method_label, pick_slides, spread_over_datasets
from msamil.reporting.tables import build_tables

MISSING = ("ubc_ocean", "icmil_abmil")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tree = build_fake_results(tmp_path_factory.mktemp("agg"), missing=[MISSING])
    out = tree.results / "tables"
    build_tables(tree.results, [*tree.datasets, "camelyon16"], tree.methods, tree.folds, out)
    return tree, out


def independent_metrics(tree, dataset: str, method: str) -> dict[str, tuple[float, float]]:
    """Mean and sample std over folds, straight from predictions.tsv with sklearn (no msamil code)."""
    per_fold = {"acc": [], "balanced_acc": [], "macro_f1": [], "auc": []}
    for fold in tree.folds:
        frame = pd.read_csv(tree.results / dataset / "runs" / method / f"fold{fold}" / "predictions.tsv", sep="\t")
        probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
        y, pred = frame["label"].to_numpy(), probs.argmax(axis=1)
        per_fold["acc"].append(accuracy_score(y, pred))
        per_fold["balanced_acc"].append(balanced_accuracy_score(y, pred))
        per_fold["macro_f1"].append(f1_score(y, pred, average="macro", labels=list(range(probs.shape[1])),
                                             zero_division=0))
        if probs.shape[1] == 2:
            per_fold["auc"].append(roc_auc_score(y, probs[:, 1]))
        else:
            per_fold["auc"].append(roc_auc_score(y, probs / probs.sum(1, keepdims=True), multi_class="ovr",
                                                 average="macro"))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1))) for k, v in per_fold.items()}


def md_rows(path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def test_main_table_matches_independent_recompute(built):
    tree, out = built
    tsv = pd.read_csv(out / "main_results.tsv", sep="\t")
    header, rows = md_rows(out / "main_results.md")
    md = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    checked = 0
    for dataset in tree.datasets:
        for method in ("msamil", "abmil", "dino_abmil", "icmil_abmil"):
            if (dataset, method) == MISSING:
                continue
            ref = independent_metrics(tree, dataset, method)
            row = tsv[(tsv.dataset == dataset) & (tsv.method == method)].iloc[0]
            for metric, (mean, std) in ref.items():
                assert row[f"{metric}_mean"] == pytest.approx(mean, abs=0.5e-4 + 1e-9)
                assert row[f"{metric}_std"] == pytest.approx(std, abs=0.5e-4 + 1e-9)
            for metric, shown in (("acc", "ACC"), ("auc", "AUC")):
                mean, std = ref[metric]
                cell = md[row["label"]][f"{dataset} {shown}"].strip("*")
                assert cell == f"{mean:.3f} ± {std:.3f}"
                checked += 1
    assert checked == 14


def test_bold_marks_best_per_column(built):
    _, out = built
    for name in ("main_results", "ablation"):
        header, rows = md_rows(out / f"{name}.md")
        tex_rows = [ln for ln in (out / f"{name}.tex").read_text().splitlines() if " $\\pm$ " in ln]
        assert len(tex_rows) == len(rows)
        for j in range(1, len(header)):
            means = [float(r[j].strip("*").split(" ")[0]) if r[j] not in ("–", "n/a") else -1 for r in rows]
            best = max(means)
            for i, row in enumerate(rows):
                is_bold = row[j].startswith("**")
                assert is_bold == (means[i] == best), (name, header[j], row)
                tex_cell = tex_rows[i].rstrip(" \\").split(" & ")[j]
                assert tex_cell.startswith("\\textbf{") == is_bold
        tex = (out / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_main_and_ablation_split_methods_with_labels(built):
    _, out = built
    main = pd.read_csv(out / "main_results.tsv", sep="\t")
    ablation = pd.read_csv(out / "ablation.tsv", sep="\t")
    assert not main.method.str.startswith("msamil_").any()
    assert set(main.method) == {"msamil", "abmil", "dino_abmil", "icmil_abmil"}
    assert ablation.method.iloc[0] == "msamil"
    assert set(ablation.method) == {"msamil", "msamil_20x_only", "msamil_no_sffm", "msamil_no_mhe",
                                    "msamil_gated_pool", "msamil_frozen"}
    labels = dict(zip(ablation.method, ablation.label, strict=True))
    assert labels["msamil_20x_only"] == "20x only"
    assert labels["msamil_no_sffm"] == "no SFFM (all tissue)"
    assert labels["msamil_gated_pool"] == "gated attention instead of DMQ"
    assert labels["msamil_frozen"] == "frozen backbone (two-stage)"
    assert "no MHE" in (out / "ablation.md").read_text()


def test_missing_method_and_dataset_are_skipped(built, tmp_path, caplog):
    tree, out = built
    main = pd.read_csv(out / "main_results.tsv", sep="\t")
    assert main[(main.dataset == MISSING[0]) & (main.method == MISSING[1])].empty
    assert "camelyon16" not in set(main.dataset)
    header, rows = md_rows(out / "main_results.md")
    icmil = next(r for r in rows if r[0].startswith("ICMIL"))
    assert icmil[header.index("ubc_ocean AUC")] == "–"
    with caplog.at_level(logging.WARNING, logger="msamil"):
        build_tables(tree.results, ["camelyon16"], {"nosuch": {"kind": "abmil"}}, tree.folds, tmp_path)
    assert "camelyon16" in caplog.text
    assert (tmp_path / "main_results.md").exists()


def test_efficiency_and_sffm_tables(built):
    tree, out = built
    eff = pd.read_csv(out / "efficiency.tsv", sep="\t").set_index(["dataset", "method"])
    assert eff.loc[("synthetic", "msamil_no_sffm"), "patches_per_slide"] > 3 * eff.loc[("synthetic", "msamil"),
                                                                                         "patches_per_slide"]
    for field in ("seconds_per_epoch", "train_patches_per_s", "infer_patches_per_s", "peak_mem_mb"):
        assert eff[field].notna().all()
    sffm = pd.read_csv(out / "sffm.tsv", sep="\t").set_index(["dataset", "scale"])
    kept, tissue = [], []
    for fold in tree.folds:
        with h5py.File(tree.results / "synthetic" / "lesion" / f"fold{fold}" / "selection.h5") as h5:
            for slide in h5:
                kept.append(h5[slide]["20x"]["kept"].shape[0])
                tissue.append(h5[slide]["20x"]["lesion_frac"].shape[0])
    assert sffm.loc[("synthetic", "20x"), "kept_per_slide"] == pytest.approx(np.mean(kept), abs=1e-4)
    assert sffm.loc[("synthetic", "20x"), "tissue_per_slide"] == pytest.approx(np.mean(tissue), abs=1e-4)
    assert (sffm["kept_per_slide"] <= sffm["tissue_per_slide"]).all()
    assert re.search(r"\| synthetic \| all \|", (out / "sffm.md").read_text())


def test_method_label_from_switches():
    assert method_label("msamil") == "MsaMIL-Net"
    assert method_label("dino_abmil", {"kind": "dino_abmil"}) == "DINO + ABMIL (two-stage)"
    assert method_label("abmil_big", {"kind": "abmil"}) == "ABMIL (abmil_big)"
    assert method_label("msamil_two", {"kind": "msamil", "scales": ["20x", "5x"]}) == "20x + 5x only"
    assert method_label("msamil_x", {"kind": "msamil", "mhe": False, "sffm": False}) == \
        "no SFFM (all tissue), no MHE"


def test_slide_picks_cover_classes():
    slides = pd.DataFrame({"slide": [f"s{i}" for i in range(6)], "label": ["a", "a", "a", "b", "b", "c"]})
    assert pick_slides(slides, 3) == ["s0", "s3", "s5"]
    assert pick_slides(slides, 0) == []
    assert spread_over_datasets({"x": ["1", "2"], "y": ["3"]}, 3) == [("x", "1"), ("y", "3"), ("x", "2")]


def test_aggregate_plan_targets_and_inputs(tmp_path):
    from types import SimpleNamespace

    from msamil.reporting.report import AggregatePlan

    slides = tmp_path / "slides.tsv"
    pd.DataFrame({"slide": ["a", "b", "c"], "label": ["x", "y", "x"]}).to_csv(slides, sep="\t", index=False)
    config = {"datasets": ["synthetic"], "methods": {"msamil": {"kind": "msamil"}, "abmil": {"kind": "abmil"}},
              "scales": ["20x", "10x", "5x"], "report": {"heatmap_slides": 2, "fig2_slides": 1}}
    plan = AggregatePlan(config, "results", list(config["methods"]), [0, 1], lambda d: slides)
    targets = plan.targets()
    assert "results/tables/main_results.tex" in targets
    assert "results/figures/roc_synthetic.png" in targets and "results/figures/attention_synthetic.pdf" in targets
    assert "results/figures/fig3b_dino_vs_e2e.png" not in targets  # no dino_abmil configured
    assert "results/synthetic/qc_sheets" in targets
    assert len(plan.run_outputs("predictions.tsv")) == 4
    assert plan.fig2_picks() == [("synthetic", "a")]
    att = plan.attention_inputs(SimpleNamespace(dataset="synthetic"))
    assert att["caches"] == ["results/synthetic/cache/a.h5", "results/synthetic/cache/b.h5"]
    assert att["attention"] == ["results/synthetic/runs/msamil/fold0/attention.h5",
                                "results/synthetic/runs/msamil/fold1/attention.h5"]

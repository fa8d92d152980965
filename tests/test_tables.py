"""Tables: numbers recomputed independently from predictions.tsv, bold marks, ablation labels, missing runs,
pooled intervals and paired comparisons (the statistics themselves are tested in test_stats.py)."""

from __future__ import annotations

import logging
import re

import h5py
import numpy as np
import pandas as pd
import pytest
from fake_results import build_fake_results
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from msamil.reporting import stats
from msamil.reporting.comparisons import paired_comparisons, pooled_predictions
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


def sklearn_auc(y: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs / probs.sum(1, keepdims=True), multi_class="ovr", average="macro"))


def pooled_frame(tree, dataset: str, method: str) -> pd.DataFrame:
    """Every fold's test predictions of one method together, by slide."""
    frames = [pd.read_csv(tree.results / dataset / "runs" / method / f"fold{k}" / "predictions.tsv", sep="\t")
              for k in tree.folds]
    return pd.concat(frames).sort_values("slide").reset_index(drop=True)


def probs_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()


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
            mean, std = ref["auc"]
            assert md[row["label"]][f"{dataset} AUC fold mean ± std"].strip("*") == f"{mean:.3f} ± {std:.3f}"
            pooled = pooled_frame(tree, dataset, method)
            y, probs = pooled["label"].to_numpy(), probs_of(pooled)
            auc, acc = sklearn_auc(y, probs), accuracy_score(y, probs.argmax(axis=1))
            assert row["n_slides"] == len(tree.slides[dataset]) == len(pooled)
            assert row["auc_pooled"] == pytest.approx(auc, abs=0.5e-4 + 1e-9)
            assert row["acc_pooled"] == pytest.approx(acc, abs=0.5e-4 + 1e-9)
            assert row["auc_ci_low"] <= row["auc_pooled"] <= row["auc_ci_high"]
            assert row["acc_ci_low"] <= row["acc_pooled"] <= row["acc_ci_high"]
            assert row["n_resamples"] == stats.N_RESAMPLES
            low, high = row["auc_ci_low"], row["auc_ci_high"]
            assert md[row["label"]][f"{dataset} AUC [95 % CI]"].strip("*") == f"{auc:.3f} [{low:.3f}, {high:.3f}]"
            assert md[row["label"]][f"{dataset} ACC [95 % CI]"].strip("*").startswith(f"{acc:.3f} [")
            checked += 1
    assert checked == 7


def test_bold_marks_best_per_column(built):
    _, out = built
    for name in ("main_results", "ablation"):
        header, rows = md_rows(out / f"{name}.md")
        tex = (out / f"{name}.tex").read_text().splitlines()
        tex_rows = tex[tex.index("\\midrule") + 1:tex.index("\\bottomrule")]
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
    assert set(ablation.method) == {"msamil", "msamil_20x_only", "msamil_10x_only", "msamil_5x_only",
                                    "msamil_no_sffm", "msamil_no_mhe", "msamil_gated_pool", "msamil_frozen"}
    labels = dict(zip(ablation.method, ablation.label, strict=True))
    assert labels["msamil_20x_only"] == "20x only"
    assert labels["msamil_10x_only"] == "10x only" and labels["msamil_5x_only"] == "5x only"
    assert method_label("msamil_5x_only") == "5x only"  # by name too, when the switches are not at hand
    caption = (out / "ablation.tex").read_text().splitlines()[0]
    assert f"95 % percentile intervals from {stats.N_RESAMPLES} bootstrap resamples stratified by class" in caption
    assert labels["msamil_no_sffm"] == "no SFFM (all tissue)"
    assert labels["msamil_gated_pool"] == "gated attention instead of DMQ"
    assert labels["msamil_frozen"] == "frozen backbone (two-stage, BN calibrated)"
    assert "no MHE" in (out / "ablation.md").read_text()


def test_missing_method_and_dataset_are_skipped(built, tmp_path, caplog):
    tree, out = built
    main = pd.read_csv(out / "main_results.tsv", sep="\t")
    assert main[(main.dataset == MISSING[0]) & (main.method == MISSING[1])].empty
    assert "camelyon16" not in set(main.dataset)
    header, rows = md_rows(out / "main_results.md")
    icmil = next(r for r in rows if r[0].startswith("ICMIL"))
    assert icmil[header.index("ubc_ocean AUC [95 % CI]")] == "–"
    comparisons = pd.read_csv(out / "comparisons.tsv", sep="\t")
    assert comparisons[(comparisons.dataset == MISSING[0]) & (comparisons.method == MISSING[1])].empty
    with caplog.at_level(logging.WARNING, logger="msamil"):
        build_tables(tree.results, ["camelyon16"], {"nosuch": {"kind": "abmil"}}, tree.folds, tmp_path)
    assert "camelyon16" in caplog.text
    assert (tmp_path / "main_results.md").exists()
    assert pd.read_csv(tmp_path / "comparisons.tsv", sep="\t").empty  # written, with its header, but no rows


def test_efficiency_and_sffm_tables(built):
    tree, out = built
    eff = pd.read_csv(out / "efficiency.tsv", sep="\t").set_index(["dataset", "method"])
    assert eff.loc[("synthetic", "msamil_no_sffm"), "patches_per_slide"] > 3 * eff.loc[("synthetic", "msamil"),
                                                                                         "patches_per_slide"]
    for field in ("seconds_per_epoch", "train_patches_per_s", "infer_patches_per_s", "peak_mem_mb",
                  "backbone_steps", "backbone_patch_views", "wall_s"):
        assert eff[field].notna().all()
    # the budget of every method, its share of MsaMIL-Net's backbone patch-views and a note where it is < 1/2
    header, rows = md_rows(out / "efficiency.md")
    for column in ("Backbone steps", "Backbone patch-views", "Views / MsaMIL-Net", "Wall (s)", "Peak mem. (MB)",
                   "Note"):
        assert column in header
    md = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    label = {m: method_label(m, tree.methods[m]) for m in tree.methods}
    assert len(md) == len(eff)  # every method of every dataset has a row
    for (dataset, method), rec in eff.iterrows():
        note = md[(dataset, label[method])]["Note"]
        if method in ("abmil", "msamil_frozen"):
            assert rec["views_vs_msamil"] == 0 and note.startswith("frozen backbone")
        elif method == "icmil_abmil":
            assert rec["views_vs_msamil"] == pytest.approx(0.3) and "< 0.5 x MsaMIL-Net" in note
        else:
            assert rec["views_vs_msamil"] == pytest.approx(1.0) and note == ""
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
    assert method_label("dino_abmil", {"kind": "dino_abmil"}) == "DINO + ABMIL (DINO features, BN calibrated)"
    assert method_label("icmil_abmil", {"kind": "icmil_abmil"}) == \
        "ICMIL + ABMIL (ICMIL-tuned features, BN calibrated)"
    # what ABMIL's frozen features are follows the backbone's initialisation (config or the method's override)
    assert method_label("abmil", {"kind": "abmil"}, pretrained=False) == \
        "ABMIL on frozen random-init features (BN calibrated)"
    assert method_label("abmil_big", {"kind": "abmil"}, pretrained=True) == \
        "ABMIL on frozen ImageNet features (BN calibrated) (abmil_big)"
    assert method_label("abmil", {"kind": "abmil", "model": {"pretrained": False}}, pretrained=True) == \
        "ABMIL on frozen random-init features (BN calibrated)"
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


def test_comparisons_pair_every_method_with_msamil(built):
    tree, out = built
    table = pd.read_csv(out / "comparisons.tsv", sep="\t")
    header, rows = md_rows(out / "comparisons.md")
    assert len(rows) == len(table) == 2 * (len(tree.methods) - 1) - 1  # less the missing (dataset, method)
    assert list(table.method[table.dataset == "synthetic"][:3]) == ["abmil", "dino_abmil", "icmil_abmil"]
    for dataset, family in table.groupby("dataset"):
        ref = pooled_frame(tree, dataset, "msamil")
        for r in family.itertuples():
            other = pooled_frame(tree, dataset, r.method)
            assert r.reference == "msamil" and r.n_slides == len(ref) and r.n_unpaired == 0
            expected = sklearn_auc(ref["label"].to_numpy(), probs_of(ref)) - sklearn_auc(
                other["label"].to_numpy(), probs_of(other))
            assert r.delta_auc == pytest.approx(expected, abs=1e-4)
            assert r.ci_low <= r.delta_auc <= r.ci_high and r.delong_low <= r.delta_auc <= r.delong_high
            assert r.p_boot <= r.p_boot_holm <= 1 and r.p_delong <= r.p_delong_holm <= 1
            shown = next(row for row in rows if row[0] == dataset and row[1] == r.label)
            assert shown[header.index("ΔAUC [95 % CI]")] == f"{r.delta_auc:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        # from the TSV's 4-decimal p-values, so up to m * 0.5e-4 apart
        np.testing.assert_allclose(family.p_boot_holm, stats.holm(family.p_boot), atol=1e-3)
        np.testing.assert_allclose(family.p_delong_holm, stats.holm(family.p_delong), atol=1e-3)
    significant = (table.p_boot_holm < 0.05) & (table.p_delong_holm < 0.05) & (table.ci_low > 0)
    assert (table.verdict == np.where(significant, "better", "inconclusive")).all()
    assert "$\\Delta$AUC" in (out / "comparisons.tex").read_text()


def test_a_method_missing_slides_is_compared_on_the_intersection(tmp_path, caplog):
    methods = {"msamil": {"kind": "msamil"}, "abmil": {"kind": "abmil"}}
    tree = build_fake_results(tmp_path, datasets=["synthetic"], methods=methods)
    runs = tree.results / "synthetic" / "runs" / "abmil"
    fold0 = pd.read_csv(runs / "fold0" / "predictions.tsv", sep="\t")
    fold0.iloc[1:].to_csv(runs / "fold0" / "predictions.tsv", sep="\t", index=False)  # a slide never predicted
    fold1 = pd.read_csv(runs / "fold1" / "predictions.tsv", sep="\t")
    fold1.loc[0, ["prob_0", "prob_1"]] = np.nan  # a failed prediction
    fold1.to_csv(runs / "fold1" / "predictions.tsv", sep="\t", index=False)
    gone = {fold0.slide[0], fold1.slide[0]}
    with caplog.at_level(logging.WARNING, logger="msamil"):
        build_tables(tree.results, ["synthetic"], methods, tree.folds, tmp_path / "tables")
    assert "without probabilities" in caplog.text and "2 unpaired" in caplog.text
    row = pd.read_csv(tmp_path / "tables" / "comparisons.tsv", sep="\t").iloc[0]
    assert (row.n_slides, row.n_unpaired) == (10, 2)
    ref, other = pooled_frame(tree, "synthetic", "msamil"), pooled_frame(tree, "synthetic", "abmil").dropna()
    ref = ref[~ref.slide.isin(gone)]
    assert row.auc_reference == pytest.approx(roc_auc_score(ref.label, ref.prob_1), abs=1e-4)
    assert row.auc_method == pytest.approx(roc_auc_score(other.label, other.prob_1), abs=1e-4)
    assert "| 10 (2 unpaired) |" in (tmp_path / "tables" / "comparisons.md").read_text()
    main = pd.read_csv(tmp_path / "tables" / "main_results.tsv", sep="\t").set_index("method")
    assert main.loc["msamil", "n_slides"] == 12 and main.loc["abmil", "n_slides"] == 10


def predictions_frame(slides: list[str], labels: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """A long predictions frame (as load_predictions returns) for one binary dataset, 4 folds."""
    frames = []
    for method, s in scores.items():
        frames.append(pd.DataFrame({"dataset": "synthetic", "method": method, "slide": slides,
                                    "fold": np.arange(len(slides)) % 4, "label": labels, "prob_0": 1 - s,
                                    "prob_1": s}))
    return pd.concat(frames, ignore_index=True)


def test_verdicts_duplicates_and_label_clashes(caplog):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    slides = [f"s{i:03d}" for i in range(200)]
    strong = 1 / (1 + np.exp(-(rng.normal(0, 1, 200) + 2.5 * (labels - 0.5))))
    weak = 1 / (1 + np.exp(-(rng.normal(0, 1, 200) + 0.4 * (labels - 0.5))))
    frame = predictions_frame(slides, labels, {"msamil": strong, "weak": weak, "same": strong.copy(),
                                               "oracle": labels * 0.9 + 0.05})
    table = paired_comparisons(frame, n_resamples=1000).set_index("method")
    assert table.loc["weak", "verdict"] == "better" and table.loc["weak", "ci_low"] > 0
    assert table.loc["same", "verdict"] == "inconclusive" and table.loc["same", "p_boot"] == 1.0
    assert table.loc["oracle", "verdict"] == "worse" and table.loc["oracle", "ci_high"] < 0
    assert paired_comparisons(frame[frame.method != "msamil"]).empty  # no reference, no comparisons

    dup = pd.concat([frame, frame[(frame.method == "weak") & (frame.slide == "s005")].assign(fold=9)])
    with caplog.at_level(logging.WARNING, logger="msamil"):
        pooled = pooled_predictions(dup)
    assert "more than one fold" in caplog.text and "s005" in caplog.text
    assert len(pooled[("synthetic", "weak")]) == 200
    clash = frame.copy()
    clash.loc[(clash.method == "weak") & (clash.slide == "s007"), "label"] = 1
    with pytest.raises(ValueError, match="s007"):
        paired_comparisons(clash, n_resamples=200)

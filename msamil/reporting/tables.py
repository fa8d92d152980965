"""The paper's tables (main results, ablation, comparisons, efficiency, SFFM selection) as TSV, Markdown and LaTeX.

Metrics are recomputed here from every run's predictions.tsv with the same `classification_metrics` the runs
use, rather than read from metrics.json: the tables then depend only on predictions, which a test can check
independently, and a stale metrics.json can never leak into the paper's numbers. Main and ablation tables give
the pooled out-of-fold AUC and ACC with stratified-bootstrap 95 % intervals beside the mean ± std over folds;
`comparisons` gives each method's paired AUC difference to MsaMIL-Net (msamil.reporting.comparisons).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from msamil.config import SCALES
from msamil.reporting import stats
from msamil.reporting.comparisons import paired_comparisons, pooled_summary
from msamil.reporting.report import (
    ablation_methods,
    lesion_dir,
    load_efficiency,
    load_predictions,
    main_methods,
    method_label,
)
from msamil.training.metrics import classification_metrics, prob_columns
from msamil.util.atomic import write_text, write_tsv

log = logging.getLogger("msamil.reporting.tables")

METRICS = ("acc", "balanced_acc", "macro_f1", "auc")
# What the Markdown/LaTeX metric tables print per dataset (the TSV has every metric): header, TSV columns of the
# estimate (and of its interval, or its std over folds).
SHOWN = (("AUC [95 % CI]", "auc_pooled", ("auc_ci_low", "auc_ci_high")),
         ("ACC [95 % CI]", "acc_pooled", ("acc_ci_low", "acc_ci_high")),
         ("AUC fold mean ± std", "auc_mean", ("auc_std",)))
DIGITS = 3  # printed precision of Markdown/LaTeX
TSV_DIGITS = 4
# Efficiency fields averaged over folds; the budget (DESIGN.md section 7, msamil.training.outputs.budget) first.
EFFICIENCY_FIELDS = {
    "backbone_steps": "Backbone steps",
    "backbone_patch_views": "Backbone patch-views",
    "wall_s": "Wall (s)",
    "peak_mem_mb": "Peak mem. (MB)",
    "patches_per_slide": "Patches / slide",
    "seconds_per_epoch": "s / epoch",
    "train_patches_per_s": "Train patches / s",
    "infer_patches_per_s": "Infer patches / s",
}
POOLED_NOTE = ("pooled out-of-fold AUC and ACC with 95 %% percentile intervals from %d bootstrap resamples "
               "stratified by class; AUC mean ± sample std over folds")
EFFICIENCY_SHOWN = ("backbone_steps", "backbone_patch_views", "views_vs_msamil", "wall_s", "peak_mem_mb",
                    "patches_per_slide", "train_patches_per_s", "infer_patches_per_s")
VIEWS_FLOOR = 0.5  # a method below this share of MsaMIL-Net's backbone patch-views is flagged in the table
TABLE_NAMES = ("main_results", "ablation", "comparisons", "efficiency", "sffm")
FORMATS = ("tsv", "md", "tex")


# ---------------------------------------------------------------------------------------------- numbers
def fold_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, fold) with ACC, balanced ACC, macro-F1, AUC and n.

    Slides without probabilities (a failed prediction) are left out, as in the pooled numbers, which log them.
    """
    rows = []
    for (dataset, method, fold), group in predictions.groupby(["dataset", "method", "fold"], sort=False):
        cols = prob_columns(group)
        group = group[group[cols].notna().all(axis=1)]
        if group.empty:
            continue
        probs = group[cols].to_numpy(dtype=float)
        metrics = classification_metrics(group["label"].to_numpy(dtype=int), probs)
        rows.append({"dataset": dataset, "method": method, "fold": int(fold), **metrics})
    return pd.DataFrame(rows, columns=["dataset", "method", "fold", *METRICS, "n"])


def summarize(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over folds; NaN folds (single-class AUC) are left out."""
    rows = []
    for (dataset, method), group in per_fold.groupby(["dataset", "method"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "method": method, "n_folds": len(group)}
        for metric in METRICS:
            values = group[metric].astype(float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1)
        rows.append(row)
    columns = ["dataset", "method", "n_folds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    return pd.DataFrame(rows, columns=columns)


def efficiency_summary(efficiency: pd.DataFrame) -> pd.DataFrame:
    """Mean of each efficiency field over folds, per (dataset, method); the device(s) the runs used."""
    columns = ["dataset", "method", "n_folds", *EFFICIENCY_FIELDS, "device"]
    if efficiency.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (dataset, method), group in efficiency.groupby(["dataset", "method"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "method": method, "n_folds": len(group)}
        for field in EFFICIENCY_FIELDS:
            row[field] = pd.to_numeric(group[field], errors="coerce").mean() if field in group else np.nan
        row["device"] = ",".join(sorted(set(group["device"].astype(str)))) if "device" in group else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def selection_summary(results: str | Path, datasets: Sequence[str], folds: Sequence[int],
                      scales: Sequence[str] = SCALES) -> pd.DataFrame:
    """Patches per slide before (all tissue) and after SFFM, per dataset and scale, from selection.h5.

    `lesion_frac` has one entry per cache patch, so its length is the all-tissue count and no cache is needed.
    Averaged over every (fold, slide) pair; the `all` row sums the scales per slide first.
    """
    records = []
    for dataset in datasets:
        for fold in folds:
            path = lesion_dir(results, dataset, fold) / "selection.h5"
            if not path.exists():
                log.warning("skipping SFFM selection of %s fold %d: %s does not exist", dataset, fold, path)
                continue
            with h5py.File(path, "r") as handle:
                for slide, group in handle.items():
                    if not isinstance(group, h5py.Group):
                        continue
                    for scale in scales:
                        if scale not in group:
                            continue
                        sub = group[scale]
                        records.append({
                            "dataset": dataset, "fold": fold, "slide": slide, "scale": scale,
                            "tissue": int(sub["lesion_frac"].shape[0]), "kept": int(sub["kept"].shape[0]),
                            "fallback": bool(sub.attrs.get("fallback", False)),
                        })
    columns = ["dataset", "scale", "n_slides", "tissue_per_slide", "kept_per_slide", "kept_pct", "fallback_pct"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records)
    total = frame.groupby(["dataset", "fold", "slide"], as_index=False, sort=False).agg(
        tissue=("tissue", "sum"), kept=("kept", "sum"), fallback=("fallback", "any"))
    total["scale"] = "all"
    frame = pd.concat([frame, total], ignore_index=True)
    rows = []
    for (dataset, scale), group in frame.groupby(["dataset", "scale"], sort=False):
        rows.append({
            "dataset": dataset, "scale": scale, "n_slides": group["slide"].nunique(),
            "tissue_per_slide": group["tissue"].mean(), "kept_per_slide": group["kept"].mean(),
            "kept_pct": 100.0 * group["kept"].sum() / max(int(group["tissue"].sum()), 1),
            "fallback_pct": 100.0 * group["fallback"].mean(),
        })
    order = {s: i for i, s in enumerate([*scales, "all"])}
    out = pd.DataFrame(rows, columns=columns)
    out["_d"], out["_s"] = out["dataset"].map({d: i for i, d in enumerate(datasets)}), out["scale"].map(order)
    return out.sort_values(["_d", "_s"]).drop(columns=["_d", "_s"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- rendering
def mean_std_text(mean: float, std: float, digits: int = DIGITS) -> str:
    """`0.912 ± 0.034`; the std is left out when undefined (a single fold), and NaN prints as `n/a`."""
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def interval_text(estimate: float, low: float, high: float, digits: int = DIGITS, sign: bool = False) -> str:
    """`0.912 [0.861, 0.955]` (`+0.052 [+0.010, +0.094]` with `sign`); the interval is left out when undefined."""
    if not np.isfinite(estimate):
        return "n/a"
    fmt = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return fmt.format(estimate)
    return f"{fmt.format(estimate)} [{fmt.format(low)}, {fmt.format(high)}]"


def p_text(p: float) -> str:
    """p-values to 3 decimals, `<0.001` below that (the bootstrap's own floor is 2 / (resamples + 1))."""
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def best_mask(means: np.ndarray, digits: int = DIGITS) -> np.ndarray:
    """True where a column's mean is the best (highest) at the printed precision; ties are all marked."""
    rounded = np.round(np.asarray(means, dtype=float), digits)
    mask = np.zeros(rounded.shape, dtype=bool)
    for j in range(rounded.shape[1]):
        col = rounded[:, j]
        if np.isfinite(col).any():
            mask[:, j] = col == np.nanmax(col)
    return mask


def num_text(value: Any) -> str:
    """Efficiency numbers with precision that suits their size (0.42 s, 13.5 s, 1234 patches/s)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(x):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                "Δ": r"$\Delta$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def render_markdown(stubs: Sequence[str], columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]],
                    bold: np.ndarray | None = None) -> str:
    """A pipe table; `rows` hold the stub cells then the value cells; `bold` marks value cells."""
    header = list(stubs) + [f"{g} {c}".strip() for g, c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] * len(stubs) + ["---:"] * len(columns)) + "|"]
    for i, row in enumerate(rows):
        cells = list(row)
        for j in range(len(columns)):
            if bold is not None and bold[i, j]:
                cells[len(stubs) + j] = f"**{cells[len(stubs) + j]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_latex(stubs: Sequence[str], columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]],
                 bold: np.ndarray | None = None, caption: str = "") -> str:
    """A booktabs tabular (no float, so it can be `\\input` anywhere); grouped headers get a cmidrule."""
    n_stub = len(stubs)
    out = [f"% {caption}" if caption else "% generated by msamil.reporting.tables",
           r"% needs \usepackage{booktabs}",
           r"\begin{tabular}{" + "l" * n_stub + "c" * len(columns) + "}", r"\toprule"]
    if any(g for g, _ in columns):
        cells, rules, j = [""] * n_stub, [], 0
        while j < len(columns):
            k = j
            while k < len(columns) and columns[k][0] == columns[j][0]:
                k += 1
            cells.append(rf"\multicolumn{{{k - j}}}{{c}}{{{tex_escape(columns[j][0])}}}")
            if columns[j][0]:
                rules.append(rf"\cmidrule(lr){{{n_stub + j + 1}-{n_stub + k}}}")
            j = k
        out.append(" & ".join(cells) + r" \\")
        out.append(" ".join(rules))
    out.append(" & ".join(tex_escape(s) for s in list(stubs) + [c for _, c in columns]) + r" \\")
    out.append(r"\midrule")
    for i, row in enumerate(rows):
        cells = [tex_escape(c) for c in row]
        for j in range(len(columns)):
            if bold is not None and bold[i, j]:
                cells[n_stub + j] = rf"\textbf{{{cells[n_stub + j]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write_formats(out_dir: str | Path, name: str, tsv: pd.DataFrame, stubs: Sequence[str],
                  columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]],
                  bold: np.ndarray | None = None, caption: str = "") -> None:
    out_dir = Path(out_dir)
    write_tsv(out_dir / f"{name}.tsv", tsv, float_format=f"%.{TSV_DIGITS}f", na_rep="NA")
    write_text(out_dir / f"{name}.md", render_markdown(stubs, columns, rows, bold))
    write_text(out_dir / f"{name}.tex", render_latex(stubs, columns, rows, bold, caption))


def metric_grid(summary: pd.DataFrame, methods: Sequence[str], labels: Mapping[str, str]
                ) -> tuple[list[tuple[str, str]], list[list[str]], np.ndarray]:
    """Methods x (dataset, SHOWN) cells (`est [low, high]` or `mean ± std`) and the best-per-column mask."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    methods = [m for m in methods if m in set(summary["method"])]
    columns = [(d, header) for d in datasets for header, _, _ in SHOWN]
    spec = {header: (est, spread) for header, est, spread in SHOWN}
    means = np.full((len(methods), len(columns)), np.nan)
    rows = []
    indexed = summary.set_index(["dataset", "method"])
    for i, method in enumerate(methods):
        cells = [labels.get(method, method)]
        for j, (dataset, header) in enumerate(columns):
            if (dataset, method) not in indexed.index:
                cells.append("–")
                continue
            rec = indexed.loc[(dataset, method)]
            est, spread = spec[header]
            means[i, j] = rec[est]
            values = [float(rec[k]) for k in spread]
            cells.append(interval_text(rec[est], *values) if len(values) == 2 else mean_std_text(rec[est], *values))
        rows.append(cells)
    return columns, rows, best_mask(means)


# ---------------------------------------------------------------------------------------------- tables
def _ordered(summary: pd.DataFrame, methods: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    keep = summary[summary["method"].isin(methods) & summary["dataset"].isin(datasets)].copy()
    keep["_m"] = keep["method"].map({m: i for i, m in enumerate(methods)})
    keep["_d"] = keep["dataset"].map({d: i for i, d in enumerate(datasets)})
    return keep.sort_values(["_d", "_m"]).drop(columns=["_m", "_d"]).reset_index(drop=True)


def metric_table(out_dir: str | Path, name: str, summary: pd.DataFrame, methods: Sequence[str],
                 datasets: Sequence[str], labels: Mapping[str, str], stub: str, caption: str) -> pd.DataFrame:
    """Write one methods x datasets table (main or ablation) in the three formats; return its TSV frame.

    `summary` holds the fold means and stds (`summarize`) and the pooled estimates (`pooled_summary`).
    """
    table = _ordered(summary, methods, datasets)
    table.insert(2, "label", table["method"].map(lambda m: labels.get(m, m)))
    columns, rows, bold = metric_grid(table, methods, labels)
    write_formats(out_dir, name, table, [stub], columns, rows, bold, caption)
    return table


COMPARISON_SHOWN = ("Slides", "AUC", "MsaMIL-Net AUC", "ΔAUC [95 % CI]", "p", "p (Holm)", "DeLong p (Holm)",
                    "Verdict")
VERDICT_TEXT = {"better": "MsaMIL-Net better", "worse": "MsaMIL-Net worse", "inconclusive": "not shown"}


def comparison_table(out_dir: str | Path, comparisons: pd.DataFrame, methods: Sequence[str],
                     datasets: Sequence[str], labels: Mapping[str, str]) -> pd.DataFrame:
    """Paired comparisons with MsaMIL-Net, one row per (dataset, method); ΔAUC = MsaMIL-Net minus the method."""
    table = _ordered(comparisons, methods, datasets)
    table.insert(2, "label", table["method"].map(lambda m: labels.get(m, m)))
    rows = []
    for r in table.itertuples():
        slides = f"{r.n_slides}" + (f" ({r.n_unpaired} unpaired)" if r.n_unpaired else "")
        rows.append([r.dataset, r.label, slides, f"{r.auc_method:.{DIGITS}f}", f"{r.auc_reference:.{DIGITS}f}",
                     interval_text(r.delta_auc, r.ci_low, r.ci_high, sign=True), p_text(r.p_boot),
                     p_text(r.p_boot_holm), p_text(r.p_delong_holm), VERDICT_TEXT.get(r.verdict, r.verdict)])
    resamples = int(table["n_resamples"].max()) if len(table) else 0
    write_formats(out_dir, "comparisons", table, ["Dataset", "Method"], [("", c) for c in COMPARISON_SHOWN], rows,
                  caption=f"paired comparisons with MsaMIL-Net: AUC difference (MsaMIL-Net - method) on the same "
                          f"slides, 95 % percentile interval and p from {resamples} stratified bootstrap resamples, "
                          f"Holm-adjusted within each dataset; DeLong's test as a check")
    return table


def budget_notes(eff: pd.DataFrame, reference: str = "msamil") -> pd.DataFrame:
    """`views_vs_msamil` (backbone patch-views / the full MsaMIL-Net's, same dataset) and a `note` that says when
    a method's backbone trains on less than VIEWS_FLOOR of that, or not at all (a frozen backbone, by design)."""
    eff = eff.copy()
    ref = eff[eff["method"] == reference].set_index("dataset")["backbone_patch_views"]
    views = pd.to_numeric(eff["backbone_patch_views"], errors="coerce")
    base = pd.to_numeric(eff["dataset"].map(ref), errors="coerce")
    eff["views_vs_msamil"] = views / base.where(base > 0)
    notes = []
    for v, ratio in zip(views, eff["views_vs_msamil"], strict=True):
        if v == 0:
            notes.append("frozen backbone: no backbone training")
        elif np.isfinite(ratio) and ratio < VIEWS_FLOOR:
            notes.append(f"backbone trained on < {VIEWS_FLOOR:g} x MsaMIL-Net's patch-views")
        else:
            notes.append("")
    eff["note"] = notes
    return eff


def efficiency_table(out_dir: str | Path, eff: pd.DataFrame, methods: Sequence[str], datasets: Sequence[str],
                     labels: Mapping[str, str]) -> pd.DataFrame:
    """Every method's budget (backbone steps, patch-views and their ratio to MsaMIL-Net's, wall time, peak
    memory) with a note where a backbone gets less than half of MsaMIL-Net's patch-views, then throughput."""
    table = budget_notes(_ordered(eff, methods, datasets))
    table.insert(2, "label", table["method"].map(lambda m: labels.get(m, m)))
    names = {**EFFICIENCY_FIELDS, "views_vs_msamil": "Views / MsaMIL-Net"}
    columns = [("", names[f]) for f in EFFICIENCY_SHOWN] + [("", "Device"), ("", "Note")]
    counts = ("backbone_steps", "backbone_patch_views")  # whole numbers (means over folds, rounded)

    def cell(r: Any, f: str) -> str:
        value = getattr(r, f)
        return f"{float(value):.0f}" if f in counts and np.isfinite(float(value)) else num_text(value)

    rows = [[r.dataset, r.label] + [cell(r, f) for f in EFFICIENCY_SHOWN] + [r.device, r.note]
            for r in table.itertuples()]
    write_formats(out_dir, "efficiency", table, ["Dataset", "Method"], columns, rows,
                  caption="efficiency and budget per method: means over folds")
    return table


def sffm_table(out_dir: str | Path, sel: pd.DataFrame) -> pd.DataFrame:
    columns = [("", "Slides"), ("", "All tissue / slide"), ("", "Kept / slide"), ("", "Kept (%)"),
               ("", "Fallback (%)")]
    rows = [[r.dataset, r.scale, str(r.n_slides), num_text(r.tissue_per_slide), num_text(r.kept_per_slide),
             f"{r.kept_pct:.1f}", f"{r.fallback_pct:.1f}"] for r in sel.itertuples()]
    write_formats(out_dir, "sffm", sel, ["Dataset", "Scale"], columns, rows,
                  caption="SFFM: patches per slide before and after lesion selection")
    return sel


def build_tables(results: str | Path, datasets: Sequence[str], methods: Mapping[str, Mapping[str, Any]] | Sequence[str],
                 folds: Sequence[int], out_dir: str | Path, scales: Sequence[str] = SCALES,
                 n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED,
                 pretrained: bool | None = None) -> dict[str, pd.DataFrame]:
    """Write main_results, ablation, comparisons, efficiency and sffm as .tsv/.md/.tex under `out_dir`.

    `methods` is config["methods"] (name -> switches, used for the ablation labels) or just names; `pretrained`
    (config model.pretrained) names the baselines' frozen features in the labels. Methods, datasets or folds
    without outputs are skipped with a warning, so a partial run still gets tables.
    `n_resamples` and `seed` drive every bootstrap interval and paired p-value (report.bootstrap_* in config).
    """
    specs = dict(methods) if isinstance(methods, Mapping) else {m: {} for m in methods}
    names = list(specs)
    labels = {m: method_label(m, specs[m] or None, scales, pretrained) for m in names}
    predictions = load_predictions(results, datasets, names, folds)
    per_fold = fold_metrics(predictions)
    summary = summarize(per_fold).merge(pooled_summary(predictions, n_resamples, seed),
                                        on=["dataset", "method"], how="left")
    present = [d for d in datasets if d in set(summary["dataset"])]
    for dataset in set(datasets) - set(present):
        log.warning("dataset %s has no predictions; left out of the tables", dataset)
    compared = [*main_methods(names), *ablation_methods(names)]  # baselines first, then the ablations
    out = {
        "main_results": metric_table(out_dir, "main_results", summary, main_methods(names), present, labels,
                                     "Method", f"main results: {POOLED_NOTE % n_resamples}"),
        "ablation": metric_table(out_dir, "ablation", summary, ablation_methods(names), present, labels,
                                 "Variant", f"ablation of MsaMIL-Net: {POOLED_NOTE % n_resamples}"),
        "comparisons": comparison_table(
            out_dir, paired_comparisons(predictions, compared, n_resamples=n_resamples, seed=seed), compared,
            present, labels),
        "efficiency": efficiency_table(out_dir, efficiency_summary(load_efficiency(results, datasets, names, folds)),
                                       names, datasets, labels),
        "sffm": sffm_table(out_dir, selection_summary(results, datasets, folds, scales)),
    }
    log.info("tables written to %s", out_dir)
    return out

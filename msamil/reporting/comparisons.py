"""Pooled out-of-fold metrics with bootstrap intervals, and paired comparisons of every method with MsaMIL-Net.

The folds' test splits partition the slides, so pooling every fold's test predictions gives each slide exactly
once. Pooled AUC is then computed on all slides at once (not averaged over small folds) and two methods can be
compared paired, on the slides both scored. The statistics live in `msamil.reporting.stats`; this module only
turns the runs' predictions into the labels and probability matrices those functions take, and says what it had
to leave out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from msamil.reporting import stats
from msamil.reporting.report import FULL_METHOD
from msamil.training.metrics import prob_columns

log = logging.getLogger("msamil.reporting.comparisons")

ALPHA = 0.05  # family-wise level of the Holm-adjusted claims
POOLED_COLUMNS = ["dataset", "method", "n_slides", "auc_pooled", "auc_ci_low", "auc_ci_high", "acc_pooled",
                  "acc_ci_low", "acc_ci_high", "n_resamples"]
COMPARISON_COLUMNS = ["dataset", "method", "reference", "n_slides", "n_unpaired", "auc_reference", "auc_method",
                      "delta_auc", "ci_low", "ci_high", "p_boot", "p_boot_holm", "delong_se", "delong_low",
                      "delong_high", "p_delong", "p_delong_holm", "verdict", "n_resamples"]


def pooled_predictions(predictions: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(dataset, method) -> one row per slide (slide, label, prob_0..), sorted by slide id.

    Rows without probabilities (a failed prediction) are left out as missing; a slide predicted in more than
    one fold (overlapping test splits, which the splits never make) keeps its first fold. Both are logged.
    """
    pooled: dict[tuple[str, str], pd.DataFrame] = {}
    for dataset, by_dataset in predictions.groupby("dataset", sort=False):
        cols = prob_columns(by_dataset)
        for method, frame in by_dataset.groupby("method", sort=False):
            bad = frame[cols].isna().any(axis=1)
            if bad.any():
                log.warning("%s/%s: %d slide(s) without probabilities left out: %s", dataset, method,
                            int(bad.sum()), ", ".join(map(str, frame.loc[bad, "slide"])))
            frame = frame[~bad].sort_values(["fold", "slide"], kind="stable")
            dup = frame["slide"].duplicated()
            if dup.any():
                log.warning("%s/%s: slide(s) predicted in more than one fold, first fold kept: %s", dataset,
                            method, ", ".join(sorted(set(frame.loc[dup, "slide"].astype(str)))))
            frame = frame[~dup].sort_values("slide", kind="stable")
            pooled[(str(dataset), str(method))] = frame[["slide", "label", *cols]].reset_index(drop=True)
    return pooled


def _arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame["label"].to_numpy(dtype=int), frame[prob_columns(frame)].to_numpy(dtype=float)


def pooled_summary(predictions: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED,
                   level: float = stats.LEVEL) -> pd.DataFrame:
    """Per (dataset, method): pooled AUC and ACC over all test slides with stratified-bootstrap intervals."""
    rows = []
    for (dataset, method), frame in pooled_predictions(predictions).items():
        labels, probs = _arrays(frame)
        res = stats.pooled_intervals(labels, probs, n_resamples, stats.dataset_seed(seed, dataset), level)
        rows.append({"dataset": dataset, "method": method, "n_slides": res["n"], "n_resamples": res["n_resamples"],
                     **{f"{m}_pooled": res[m] for m in ("auc", "acc")},
                     **{f"{m}_ci_{e}": res[f"{m}_{e}"] for m in ("auc", "acc") for e in ("low", "high")}})
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


def verdict(delta: float, low: float, high: float, p_holm: float, p_delong_holm: float,
            alpha: float = ALPHA) -> str:
    """`better` / `worse` (the reference against the method) or `inconclusive` (NaN included).

    A difference counts when the bootstrap interval excludes 0 on its side and both Holm-adjusted p-values,
    bootstrap and DeLong, are below `alpha`. On a few hundred slides the two tests agree closely, so asking for
    both costs little power; on a handful of slides the percentile bootstrap is too narrow and DeLong holds back.
    """
    if not all(np.isfinite(p) and p < alpha for p in (p_holm, p_delong_holm)):
        return "inconclusive"
    if delta > 0 and low > 0:
        return "better"
    if delta < 0 and high < 0:
        return "worse"
    return "inconclusive"


def _pair(ref: pd.DataFrame, other: pd.DataFrame, where: str) -> tuple[pd.DataFrame, int]:
    """The two methods' predictions on the slides both scored, aligned by slide; and how many were unpaired."""
    merged = ref.merge(other, on="slide", suffixes=("_ref", "_other"), validate="one_to_one")
    clash = merged[merged["label_ref"] != merged["label_other"]]
    if not clash.empty:
        raise ValueError(f"{where}: slide(s) {', '.join(clash['slide'].astype(str))} have different labels in "
                         "the two methods' predictions.tsv; rerun both from the same slides.tsv")
    unpaired = len(set(ref["slide"]) ^ set(other["slide"]))
    return merged, unpaired


def paired_comparisons(predictions: pd.DataFrame, methods: Sequence[str] | None = None,
                       reference: str = FULL_METHOD, n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED,
                       level: float = stats.LEVEL, alpha: float = ALPHA) -> pd.DataFrame:
    """Every method against `reference` on the same slides: AUC difference (reference - method), its paired
    stratified-bootstrap percentile interval and p-value, DeLong's test, both Holm-adjusted within a dataset.

    A method whose slides differ from the reference's (an excluded slide, a missing fold) is compared on the
    slides both have; `n_slides` says how many and `n_unpaired` how many were left out.
    """
    pooled = pooled_predictions(predictions)
    rows: list[dict[str, Any]] = []
    datasets = list(dict.fromkeys(ds for ds, _ in pooled))
    for dataset in datasets:
        ref = pooled.get((dataset, reference))
        present = [m for ds, m in pooled if ds == dataset and m != reference]
        order = [m for m in (methods or present) if m in present]
        if ref is None:
            if order:
                log.warning("%s: no predictions of %s, so no paired comparisons", dataset, reference)
            continue
        family = []
        for method in order:
            merged, unpaired = _pair(ref, pooled[(dataset, method)], f"{dataset}/{method}")
            if unpaired:
                log.warning("%s: %s compared with %s on the %d slides both scored (%d unpaired left out)",
                            dataset, method, reference, len(merged), unpaired)
            labels = merged["label_ref"].to_numpy(dtype=int)
            cols = prob_columns(ref)
            probs_ref = merged[[f"{c}_ref" for c in cols]].to_numpy(dtype=float)
            probs_other = merged[[f"{c}_other" for c in cols]].to_numpy(dtype=float)
            boot = stats.paired_bootstrap(labels, probs_ref, probs_other, n_resamples,
                                          stats.dataset_seed(seed, dataset), level)
            delong = stats.delong_test(labels, probs_ref, probs_other, level)
            family.append({
                "dataset": dataset, "method": method, "reference": reference, "n_slides": len(merged),
                "n_unpaired": unpaired, "auc_reference": boot["auc_a"], "auc_method": boot["auc_b"],
                "delta_auc": boot["delta"], "ci_low": boot["low"], "ci_high": boot["high"], "p_boot": boot["p"],
                "delong_se": delong["se"], "delong_low": delong["low"], "delong_high": delong["high"],
                "p_delong": delong["p"], "n_resamples": boot["n_resamples"],
            })
        p_boot_holm = stats.holm([r["p_boot"] for r in family])
        p_delong_holm = stats.holm([r["p_delong"] for r in family])
        for row, pb, pd_ in zip(family, p_boot_holm, p_delong_holm, strict=True):
            row["p_boot_holm"], row["p_delong_holm"] = float(pb), float(pd_)
            row["verdict"] = verdict(row["delta_auc"], row["ci_low"], row["ci_high"], row["p_boot_holm"],
                                     row["p_delong_holm"], alpha)
        rows += family
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)

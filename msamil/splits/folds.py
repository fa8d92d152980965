"""Cross-validation folds shared by every method: stratified by label, grouped by patient, seeded.

Why our own assignment instead of sklearn's StratifiedGroupKFold: that greedy heuristic can miss a class share by
more than one slide when patients hold several slides, and it offers nothing for the train/validation split inside a
fold. Here one routine assigns whole patients to bins (test folds, then train/val) by a greedy pass followed by
local search (single moves and pairwise swaps) on the squared deviation from the ideal per-class counts, so every
fold is within one slide of perfect stratification whenever the patient groups allow it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msamil.errors import ConfigError, SlideError

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ["fold", "slide", "patient", "label", "split"]


def make_folds(slides: pd.DataFrame, folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Assign every slide to exactly one test fold and, per fold, the other patients to train or val.

    `slides` needs columns slide, patient, label. Returns the long table (fold, slide, patient, label, split), one
    row per fold and slide, split in {train, val, test}. Same input and seed -> same table.
    """
    missing = {"slide", "patient", "label"} - set(slides.columns)
    if missing:
        raise ConfigError(f"slide table lacks column(s) {sorted(missing)}; splits need slide, patient, label")
    if folds < 2:
        raise ConfigError(f"splits.folds is {folds}; use at least 2")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"splits.val_fraction is {val_fraction}; use a number strictly between 0 and 1")
    table = slides[["slide", "patient", "label"]].astype(str).reset_index(drop=True)
    if table["slide"].duplicated().any():
        dup = table.loc[table["slide"].duplicated(), "slide"].tolist()[:5]
        raise ConfigError(f"slide ids must be unique; duplicated: {dup}")

    classes = sorted(table["label"].unique())
    patients = sorted(table["patient"].unique())
    if len(patients) < folds:
        raise ConfigError(
            f"{len(patients)} patient(s) cannot fill splits.folds={folds} test folds; lower splits.folds"
        )
    counts = (
        pd.crosstab(table["patient"], table["label"]).reindex(index=patients, columns=classes, fill_value=0)
    ).to_numpy(dtype=np.int64)
    totals = counts.sum(axis=0)
    for cls, n in zip(classes, totals, strict=True):
        if n < folds:
            log.warning("class %r has %d slide(s) for %d folds: some test folds will lack it", cls, n, folds)

    rng = np.random.default_rng(seed)
    test_targets = np.tile(totals / folds, (folds, 1))
    test_bin = assign_groups(counts, test_targets, rng)

    rows = []
    patient_of = dict(zip(patients, range(len(patients)), strict=True))
    for k in range(folds):
        rest = np.flatnonzero(test_bin != k)
        rest_counts = counts[rest]
        rest_totals = rest_counts.sum(axis=0)
        val_target = val_fraction * rest_totals
        # at least one validation slide per class when the class has a slide to spare for training
        val_target = np.where(rest_totals >= 2, np.maximum(val_target, 1.0), val_target)
        targets = np.stack([rest_totals - val_target, val_target])  # bin 0 = train, 1 = val
        inner = assign_groups(rest_counts, targets, rng)
        inner = _ensure_val_per_class(rest_counts, inner)
        split_of = {int(g): ("val" if b == 1 else "train") for g, b in zip(rest, inner, strict=True)}
        for slide, patient, label in table.itertuples(index=False):
            g = patient_of[patient]
            rows.append((k, slide, patient, label, "test" if test_bin[g] == k else split_of[g]))
    out = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    return out.sort_values(["fold", "slide"], kind="stable").reset_index(drop=True)


def assign_groups(counts: np.ndarray, targets: np.ndarray, rng: np.random.Generator, max_rounds: int = 200
                  ) -> np.ndarray:
    """Put each group (row of `counts`, per-class slide counts) into one bin so bin sums approach `targets`.

    Greedy largest-first (random tie order from `rng`), then local search: the best single move or pairwise swap
    that lowers the squared deviation, until none does. Returns the bin index per group.
    """
    n_groups = counts.shape[0]
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    bins = np.empty(n_groups, dtype=np.int64)
    sums = np.zeros_like(targets, dtype=np.float64)
    for g in order:
        # cost increase of adding group g to each bin; ties go to the bin furthest below its total target
        gain = ((sums + counts[g] - targets) ** 2 - (sums - targets) ** 2).sum(axis=1)
        slack = (sums - targets).sum(axis=1)
        b = int(np.lexsort((slack, gain))[0])
        bins[g] = b
        sums[b] += counts[g]

    for _ in range(max_rounds):
        if not _improve(counts, targets, bins, sums):
            break
    return bins


def _cost(sums: np.ndarray, targets: np.ndarray) -> float:
    return float(((sums - targets) ** 2).sum())


def _improve(counts: np.ndarray, targets: np.ndarray, bins: np.ndarray, sums: np.ndarray) -> bool:
    """Apply the single best improving move or swap in place; False when at a local optimum."""
    base = _cost(sums, targets)
    dev = sums - targets  # (B, C)
    best_delta, best_action = -1e-9, None
    # moves: group g from bin a to bin b
    cg = counts.astype(np.float64)  # (G, C)
    a = bins
    dev_a = dev[a]  # (G, C)
    for b in range(targets.shape[0]):
        movable = a != b
        if not movable.any():
            continue
        delta = (((dev_a - cg) ** 2 - dev_a**2).sum(axis=1)
                 + ((dev[b] + cg) ** 2 - dev[b] ** 2).sum(axis=1))
        delta = np.where(movable, delta, np.inf)
        g = int(np.argmin(delta))
        if delta[g] < best_delta:
            best_delta, best_action = float(delta[g]), ("move", g, b)
    # swaps: g (bin a) <-> h (bin b), only between groups of different composition
    n_bins = targets.shape[0]
    for ba in range(n_bins):
        ga = np.flatnonzero(bins == ba)
        for bb in range(ba + 1, n_bins):
            gb = np.flatnonzero(bins == bb)
            if len(ga) == 0 or len(gb) == 0:
                continue
            diff = cg[ga][:, None, :] - cg[gb][None, :, :]  # what leaves a and enters b
            delta = (((dev[ba] - diff) ** 2).sum(axis=2) - (dev[ba] ** 2).sum()
                     + ((dev[bb] + diff) ** 2).sum(axis=2) - (dev[bb] ** 2).sum())
            i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
            if delta[i, j] < best_delta:
                best_delta, best_action = float(delta[i, j]), ("swap", int(ga[i]), int(gb[j]))
    if best_action is None:
        return False
    if best_action[0] == "move":
        _, g, b = best_action
        sums[bins[g]] -= counts[g]
        sums[b] += counts[g]
        bins[g] = b
    else:
        _, g, h = best_action
        a, b = bins[g], bins[h]
        sums[a] += counts[h] - counts[g]
        sums[b] += counts[g] - counts[h]
        bins[g], bins[h] = b, a
    assert _cost(sums, targets) < base + 1e-9
    return True


def _ensure_val_per_class(counts: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Move the smallest suitable patient to val for a class val lacks, if train keeps one of that class."""
    bins = bins.copy()
    for c in range(counts.shape[1]):
        in_val = counts[bins == 1, c].sum()
        in_train = counts[bins == 0, c].sum()
        if in_val > 0 or in_train < 2:
            continue
        cand = np.flatnonzero((bins == 0) & (counts[:, c] > 0) & (counts[:, c] < in_train))
        if len(cand):
            g = cand[np.argmin(counts[cand].sum(axis=1))]
            bins[g] = 1
    return bins


def run_splits(slides_tsv: str, out_tsv: str, folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Rule entry point: read the inspect checkpoint's slide table, write `splits/folds.tsv`, log the shares."""
    from msamil.util.atomic import write_tsv

    slides = pd.read_csv(slides_tsv, sep="\t", dtype={"slide": str, "patient": str, "label": str})
    table = make_folds(slides, folds, val_fraction, seed)
    summary = table.groupby(["fold", "split", "label"]).size().unstack(fill_value=0)
    log.info("%d slides, %d patients, %d folds; slides per fold/split/label:\n%s",
             len(slides), slides["patient"].nunique(), folds, summary.to_string())
    write_tsv(out_tsv, table)
    return table


@dataclass
class FoldSplit:
    """Slides and class indices of one fold, per split, in folds.tsv order."""

    slides: dict[str, list[str]]
    labels: dict[str, list[int]]


def load_fold(slides_tsv: str | Path, folds_tsv: str | Path, fold: int, classes: Sequence[str]) -> FoldSplit:
    """One fold of folds.tsv with class indices from slides.tsv: what every method trains and tests on."""
    table = pd.read_csv(slides_tsv, sep="\t", dtype={"slide": str})
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"slide": str})
    part = folds[folds["fold"] == fold]
    if part.empty:
        raise ConfigError(f"fold {fold} is not in {folds_tsv} (folds: {sorted(folds['fold'].unique())}); "
                          f"check splits.folds")
    label_of = dict(zip(table["slide"], table["label"], strict=True))
    out = FoldSplit({}, {})
    for split in ("train", "val", "test"):
        slides = part.loc[part["split"] == split, "slide"].tolist()
        labels = []
        for slide in slides:
            name = str(label_of.get(slide, part.loc[part["slide"] == slide, "label"].iloc[0]))
            if name not in classes:
                raise SlideError(slide, f"label {name!r} is not one of the classes {list(classes)}",
                                 "fix the slide table or dataset_config.<dataset>.classes")
            labels.append(list(classes).index(name))
        out.slides[split], out.labels[split] = slides, labels
    if not out.slides["train"]:
        raise ConfigError(f"fold {fold} has no training slides in {folds_tsv}")
    return out

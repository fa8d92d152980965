"""Confidence intervals and paired tests for slide-level AUC and ACC (numpy/scipy only: the report env has no torch).

Why these statistics: with a few dozen test slides per fold, fold means move in coarse steps and their standard
deviations are wide, so "method A has the higher mean" says little. Every slide is tested exactly once over the
folds, so the pooled out-of-fold predictions give one AUC per method on all slides, and two methods scored on the
same slides can be compared *paired*, which removes the slide-to-slide variation they share.

- **Stratified bootstrap**: each resample draws, with replacement, as many slides of each class as the data hold
  (so every resample has every class and the class balance of the data); intervals are percentile intervals.
  A resample is a vector of integer counts per slide, and AUC on counts is the Mann-Whitney statistic with each
  pair weighted by the product of the counts, so thousands of resamples cost one matrix product.
- **Paired comparison**: the same resamples for both methods; the two-sided p-value inverts the percentile
  interval (p < 0.05 exactly when the 95 % interval of the difference excludes 0, up to resampling noise).
- **DeLong et al. (1988)**: the analytic variance of correlated AUCs from each slide's placement values
  (structural components), as an independent check of the bootstrap. For macro one-vs-rest AUC (several classes)
  the per-class placement values of a slide are summed into one influence value and the variance is taken within
  each true class, which reduces to DeLong's formula for two classes.
- **Holm (1979)** step-down adjustment across the comparisons of a family.
Ties between scores count one half, as in the ROC AUC.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

N_RESAMPLES = 5000  # bootstrap resamples: p-values resolve down to 2 / (N + 1) ~ 4e-4 before Holm
LEVEL = 0.95
SEED = 0
CHUNK = 500  # resamples per matrix product, bounds memory for large cohorts


def dataset_seed(seed: int, name: str) -> np.random.SeedSequence:
    """One resampling stream per dataset, independent of which methods are configured or their order.

    Every method of a dataset and every paired comparison on the same slides then use the same resamples.
    """
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])


def _pair_kernel(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """psi(x_i, y_j): 1 if the positive scores higher, 1/2 on a tie, 0 otherwise (n_pos x n_neg)."""
    diff = pos[:, None] - neg[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


@dataclass
class _Task:
    """One binary AUC inside the (macro) AUC: which slides are positives/negatives and their pair kernel."""

    pos: np.ndarray
    neg: np.ndarray
    kernel: np.ndarray


class AucKernel:
    """AUC of fixed labels and scores under any slide weights: binary, or macro one-vs-rest over the classes present.

    `labels` are class indices (n,), `probs` class probabilities (n, C). With two columns the positive class is
    column 1 (as in `msamil.training.metrics`); with more, the macro mean of one-vs-rest AUCs over the classes
    present in `labels`. Fewer than two classes present: every AUC is NaN.
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=int)
        probs = np.asarray(probs, dtype=float)
        if probs.ndim != 2 or len(probs) != len(self.labels):
            raise ValueError(f"probs must be (n, C) with n = {len(self.labels)} labels, got {probs.shape}")
        self.n = len(self.labels)
        present = np.unique(self.labels)
        if len(present) < 2:
            classes: list[int] = []
        elif probs.shape[1] == 2:
            classes = [1]
        else:
            classes = [int(c) for c in present]
        self.tasks = []
        for c in classes:
            pos, neg = np.flatnonzero(self.labels == c), np.flatnonzero(self.labels != c)
            self.tasks.append(_Task(pos, neg, _pair_kernel(probs[pos, c], probs[neg, c]).astype(float)))

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """AUC per row of `weights` (B, n) (counts of each slide in a resample); NaN where a class has no weight."""
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        if not self.tasks:
            return np.full(len(weights), np.nan)
        per_task = []
        for task in self.tasks:
            wp, wn = weights[:, task.pos], weights[:, task.neg]
            denom = wp.sum(axis=1) * wn.sum(axis=1)
            num = ((wp @ task.kernel) * wn).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_task.append(np.where(denom > 0, num / np.where(denom > 0, denom, 1), np.nan))
        # macro mean over the tasks defined in each resample (a class without weight drops out, as in metrics.py)
        stacked = np.vstack(per_task)
        valid = np.isfinite(stacked)
        count = valid.sum(axis=0)
        total = np.where(valid, stacked, 0.0).sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def point(self) -> float:
        return float(self(np.ones((1, self.n)))[0])

    def influence(self) -> np.ndarray:
        """Each slide's first-order contribution to the AUC (DeLong's placement values, centred and scaled).

        For one binary task: positives (V10_i - AUC) / n_pos, negatives (V01_j - AUC) / n_neg; averaged over the
        tasks of a macro AUC. Their variance within each true class gives DeLong's variance estimate.
        """
        phi = np.zeros(self.n)
        if not self.tasks:
            return np.full(self.n, np.nan)
        for task in self.tasks:
            theta = task.kernel.mean()
            phi[task.pos] += (task.kernel.mean(axis=1) - theta) / len(task.pos)
            phi[task.neg] += (task.kernel.mean(axis=0) - theta) / len(task.neg)
        return phi / len(self.tasks)


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary or macro one-vs-rest AUC, the same number as `classification_metrics(...)["auc"]`."""
    return AucKernel(labels, probs).point()


def accuracy_kernel(labels: np.ndarray, probs: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """ACC (argmax of the probabilities) under slide weights (B, n)."""
    correct = (np.asarray(probs, dtype=float).argmax(axis=1) == np.asarray(labels, dtype=int)).astype(float)

    def acc(weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        total = weights.sum(axis=1)
        return np.where(total > 0, weights @ correct / np.where(total > 0, total, 1), np.nan)

    return acc


def stratified_counts(labels: np.ndarray, n_resamples: int, seed: np.random.SeedSequence | int,
                      chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Bootstrap resamples as count matrices (<= chunk, n), each drawing n_c slides of class c with replacement.

    Deterministic for a seed, the label vector and `chunk` (the chunk size changes the order of the draws).
    """
    labels = np.asarray(labels, dtype=int)
    n = len(labels)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        counts = np.zeros((b, n), dtype=np.int64)
        for members in groups:
            draws = members[rng.integers(0, len(members), size=(b, len(members)))]
            flat = (draws + np.arange(b)[:, None] * n).ravel()
            counts += np.bincount(flat, minlength=b * n).reshape(b, n)
        yield counts
        done += b


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of the finite samples; NaN if none is finite."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided p-value for "difference = 0" by inverting the percentile interval, with the +1 correction.

    2 * min(share of resamples <= 0, share >= 0), each counted as (k + 1) / (B + 1) so p is never 0.
    """
    finite = deltas[np.isfinite(deltas)]
    if finite.size == 0:
        return float("nan")
    b = finite.size
    below, above = (finite <= 0).sum(), (finite >= 0).sum()
    return float(min(1.0, 2 * min(below + 1, above + 1) / (b + 1)))


def pooled_intervals(labels: np.ndarray, probs: np.ndarray, n_resamples: int = N_RESAMPLES,
                     seed: np.random.SeedSequence | int = SEED, level: float = LEVEL) -> dict[str, float]:
    """Pooled AUC and ACC with stratified-bootstrap percentile intervals.

    Keys: n, auc, auc_low, auc_high, acc, acc_low, acc_high, n_resamples (resamples with a defined AUC).
    """
    labels = np.asarray(labels, dtype=int)
    auc_k, acc_k = AucKernel(labels, probs), accuracy_kernel(labels, probs)
    aucs, accs = [], []
    for counts in stratified_counts(labels, n_resamples, seed):
        aucs.append(auc_k(counts))
        accs.append(acc_k(counts))
    auc_s = np.concatenate(aucs) if aucs else np.array([])
    acc_s = np.concatenate(accs) if accs else np.array([])
    out = {"n": int(len(labels)), "auc": auc_k.point(), "acc": float(acc_k(np.ones((1, len(labels))))[0])}
    out["auc_low"], out["auc_high"] = percentile_interval(auc_s, level)
    out["acc_low"], out["acc_high"] = percentile_interval(acc_s, level)
    out["n_resamples"] = int(np.isfinite(auc_s).sum())
    return out


def delong_variance(labels: np.ndarray, probs: np.ndarray) -> float:
    """DeLong's estimate of var(AUC): sum over true classes g of n_g * sample variance of the influence values."""
    return _grouped_variance(np.asarray(labels, dtype=int), AucKernel(labels, probs).influence())


def _grouped_variance(labels: np.ndarray, phi: np.ndarray) -> float:
    total = 0.0
    for c in np.unique(labels):
        values = phi[labels == c]
        if len(values) > 1:
            total += len(values) * values.var(ddof=1)
    return float(total)


def delong_test(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                level: float = LEVEL) -> dict[str, float]:
    """DeLong's test of AUC(a) - AUC(b) on the same slides: difference, standard error, z, p, normal interval.

    A zero standard error (identical rankings, or two perfect/constant classifiers) gives p = 1 when the
    difference is 0 and p = 0 otherwise.
    """
    labels = np.asarray(labels, dtype=int)
    ka, kb = AucKernel(labels, probs_a), AucKernel(labels, probs_b)
    delta = ka.point() - kb.point()
    se = float(np.sqrt(_grouped_variance(labels, ka.influence() - kb.influence())))
    if not np.isfinite(delta):
        return {"delta": float("nan"), "se": float("nan"), "z": float("nan"), "p": float("nan"),
                "low": float("nan"), "high": float("nan")}
    if se == 0:
        z = 0.0 if delta == 0 else float(np.sign(delta) * np.inf)
        p = 1.0 if delta == 0 else 0.0
    else:
        z = delta / se
        p = float(2 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return {"delta": float(delta), "se": se, "z": float(z), "p": p, "low": delta - half, "high": delta + half}


def paired_bootstrap(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                     n_resamples: int = N_RESAMPLES, seed: np.random.SeedSequence | int = SEED,
                     level: float = LEVEL) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same slides: percentile interval and p-value from the same stratified resamples.

    Keys: auc_a, auc_b, delta, low, high, se (bootstrap standard deviation of the difference), p, n_resamples.
    """
    labels = np.asarray(labels, dtype=int)
    ka, kb = AucKernel(labels, probs_a), AucKernel(labels, probs_b)
    deltas = np.concatenate([ka(c) - kb(c) for c in stratified_counts(labels, n_resamples, seed)] or [[]])
    auc_a, auc_b = ka.point(), kb.point()
    low, high = percentile_interval(deltas, level)
    finite = deltas[np.isfinite(deltas)]
    return {"auc_a": auc_a, "auc_b": auc_b, "delta": auc_a - auc_b, "low": low, "high": high,
            "se": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"), "p": bootstrap_p(deltas),
            "n_resamples": int(finite.size)}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaN stays NaN, uncounted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out

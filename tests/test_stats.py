"""Bootstrap intervals, DeLong's test and Holm's adjustment (msamil.reporting.stats), checked against sklearn,
replicated samples, DeLong's two-class formula written out pair by pair, and seeded simulations with known truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from msamil.reporting import stats
from msamil.training.metrics import classification_metrics


def binary(n_per_class: int, shift: float, rng: np.random.Generator, decimals: int | None = None):
    labels = np.repeat([0, 1], n_per_class)
    scores = rng.normal(0, 1, 2 * n_per_class) + shift * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # coarse scores: many ties
    return labels, np.c_[1 - scores, scores]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def multiclass(n: int, classes: int, shift: float, rng: np.random.Generator):
    labels = np.arange(n) % classes
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += shift
    return labels, logits


def test_auc_equals_sklearn_and_run_metrics_with_ties():
    rng = np.random.default_rng(0)
    labels, probs = binary(40, 0.7, rng, decimals=1)
    assert len(np.unique(probs[:, 1])) < 60  # ties present
    assert stats.auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12)
    y3, logits = multiclass(60, 3, 1.0, rng)
    p3 = softmax(np.round(logits, 1))
    assert stats.auc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)
    # a class of the dataset absent from these slides: macro over the classes present, as the runs' metrics
    keep = y3 != 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's F1 warns about the absent class
        expected = classification_metrics(y3[keep], p3[keep])["auc"]
    assert stats.auc(y3[keep], p3[keep]) == pytest.approx(expected)


def test_weighted_auc_equals_auc_of_the_replicated_sample():
    rng = np.random.default_rng(1)
    for labels, probs in (binary(25, 0.5, rng, decimals=1), (lambda y, lg: (y, softmax(np.round(lg, 1))))(
            *multiclass(45, 3, 0.8, rng))):
        counts = rng.integers(0, 4, size=(6, len(labels)))
        got = stats.AucKernel(labels, probs)(counts)
        for row, value in zip(counts, got, strict=True):
            idx = np.repeat(np.arange(len(labels)), row)
            assert value == pytest.approx(stats.auc(labels[idx], probs[idx]), abs=1e-12)


def test_stratified_resamples_keep_class_sizes_and_are_seeded():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 1)
    whole = np.vstack(list(stats.stratified_counts(labels, 300, seed=5, chunk=1000)))
    again = np.vstack(list(stats.stratified_counts(labels, 300, seed=5, chunk=1000)))
    chunked = np.vstack(list(stats.stratified_counts(labels, 300, seed=5, chunk=64)))
    other = np.vstack(list(stats.stratified_counts(labels, 300, seed=6, chunk=1000)))
    assert whole.shape == (300, len(labels))
    assert (whole.sum(axis=1) == len(labels)).all()
    for c, size in ((0, 7), (1, 3), (2, 1)):
        assert (whole[:, labels == c].sum(axis=1) == size).all()  # every resample has every class, same balance
    assert (whole[:, -1] == 1).all()  # a class of one slide is always drawn: no resample loses a class
    assert (whole == again).all() and (whole != other).any()
    assert chunked.shape == whole.shape and (chunked.sum(axis=1) == len(labels)).all()


def test_percentile_interval_covers_the_true_auc_at_about_the_nominal_rate():
    """Binormal scores (negatives N(0,1), positives N(d,1)) have AUC = Phi(d / sqrt 2); seeded, < 2 s."""
    rng = np.random.default_rng(2024)
    shift, truth = 1.0, norm.cdf(1.0 / np.sqrt(2))
    hits, widths = [], []
    for rep in range(300):
        labels, probs = binary(30, shift, rng)
        out = stats.pooled_intervals(labels, probs, n_resamples=800, seed=rep)
        assert out["auc_low"] <= out["auc"] <= out["auc_high"] and out["n_resamples"] == 800
        hits.append(out["auc_low"] <= truth <= out["auc_high"])
        widths.append(out["auc_high"] - out["auc_low"])
    coverage = float(np.mean(hits))
    print(f"coverage {coverage:.3f} of 300 intervals, mean width {np.mean(widths):.3f}")
    assert 0.90 <= coverage <= 0.985  # the percentile bootstrap runs slightly below 0.95 at 30 + 30 slides


def test_paired_difference_interval_covers_the_true_difference():
    """Two correlated binormal scorers with known AUCs; the paired interval of their difference covers it."""
    rng = np.random.default_rng(7)
    da, db, rho = 1.4, 0.8, 0.6
    truth = norm.cdf(da / np.sqrt(2)) - norm.cdf(db / np.sqrt(2))
    cov = [[1, rho], [rho, 1]]
    hits = []
    for rep in range(200):
        labels = np.repeat([0, 1], 40)
        noise = rng.multivariate_normal([0, 0], cov, size=80)
        sa, sb = noise[:, 0] + da * labels, noise[:, 1] + db * labels
        res = stats.paired_bootstrap(labels, np.c_[1 - sa, sa], np.c_[1 - sb, sb], n_resamples=800, seed=rep)
        hits.append(res["low"] <= truth <= res["high"])
    coverage = float(np.mean(hits))
    print(f"paired coverage {coverage:.3f}")
    assert 0.89 <= coverage <= 0.99


def delong_two_class_by_definition(labels, sa, sb) -> tuple[float, float]:
    """DeLong et al. (1988) written out: structural components V10, V01 per method, covariance matrices S10, S01,
    var(theta_a - theta_b) = L (S10 / m + S01 / n) L' with L = (1, -1); returns (var_a, var_diff)."""
    xs = [np.asarray(s)[labels == 1] for s in (sa, sb)]
    ys = [np.asarray(s)[labels == 0] for s in (sa, sb)]
    m, n = len(xs[0]), len(ys[0])

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = np.array([[np.mean([psi(x[i], y[j]) for j in range(n)]) for i in range(m)] for x, y in zip(xs, ys, strict=True)])
    v01 = np.array([[np.mean([psi(x[i], y[j]) for i in range(m)]) for j in range(n)] for x, y in zip(xs, ys, strict=True)])
    s = np.cov(v10) / m + np.cov(v01) / n
    ell = np.array([1.0, -1.0])
    return float(s[0, 0]), float(ell @ s @ ell)


def test_delong_matches_its_two_class_definition_and_the_bootstrap_variance():
    rng = np.random.default_rng(11)
    labels = np.repeat([0, 1], [45, 35])
    sa = np.round(rng.normal(0, 1, 80) + 1.0 * labels, 1)
    sb = np.round(0.6 * sa + rng.normal(0, 0.8, 80) + 0.2 * labels, 1)
    pa, pb = np.c_[1 - sa, sa], np.c_[1 - sb, sb]
    var_a, var_diff = delong_two_class_by_definition(labels, sa, sb)
    assert stats.delong_variance(labels, pa) == pytest.approx(var_a, rel=1e-10)
    test = stats.delong_test(labels, pa, pb)
    assert test["se"] ** 2 == pytest.approx(var_diff, rel=1e-10)
    assert test["p"] == pytest.approx(2 * norm.sf(abs(test["delta"]) / test["se"]))

    boot = stats.paired_bootstrap(labels, pa, pb, n_resamples=20000, seed=3)
    assert boot["delta"] == pytest.approx(test["delta"])
    assert boot["se"] ** 2 == pytest.approx(var_diff, rel=0.15)
    kernel = stats.AucKernel(labels, pa)
    draws = np.concatenate([kernel(c) for c in stats.stratified_counts(labels, 20000, seed=4)])
    assert draws.var() == pytest.approx(var_a, rel=0.15)
    assert boot["p"] == pytest.approx(test["p"], abs=0.03)


def test_delong_macro_ovr_variance_matches_the_bootstrap():
    rng = np.random.default_rng(12)
    labels, logits = multiclass(120, 3, 1.0, rng)
    pa, pb = softmax(logits), softmax(logits + rng.normal(0, 1.0, logits.shape))
    kernel = stats.AucKernel(labels, pa)
    draws = np.concatenate([kernel(c) for c in stats.stratified_counts(labels, 20000, seed=1)])
    assert draws.var() == pytest.approx(stats.delong_variance(labels, pa), rel=0.15)
    boot = stats.paired_bootstrap(labels, pa, pb, n_resamples=20000, seed=2)
    assert boot["se"] == pytest.approx(stats.delong_test(labels, pa, pb)["se"], rel=0.1)


def test_holm_on_a_known_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone); NaN not counted
    got = stats.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(got[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(got[4])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert stats.holm([]).size == 0


def test_bootstrap_p_inverts_the_interval():
    assert stats.bootstrap_p(np.full(99, 0.1)) == pytest.approx(2 / 100)  # never 0
    assert stats.bootstrap_p(np.zeros(99)) == 1.0
    assert stats.bootstrap_p(np.r_[np.full(90, 0.1), np.full(9, -0.1)]) == pytest.approx(2 * 10 / 100)
    assert np.isnan(stats.bootstrap_p(np.array([np.nan])))


def test_degenerate_inputs_give_nan_or_exact_answers_not_errors():
    one_class = np.zeros(10, dtype=int)
    probs = np.c_[np.linspace(0, 1, 10), 1 - np.linspace(0, 1, 10)]
    out = stats.pooled_intervals(one_class, probs, n_resamples=200)
    assert np.isnan(out["auc"]) and np.isnan(out["auc_low"]) and out["n_resamples"] == 0
    assert 0 <= out["acc_low"] <= out["acc"] <= out["acc_high"] <= 1  # ACC is still defined
    assert np.isnan(stats.delong_test(one_class, probs, probs)["p"])

    labels = np.repeat([0, 1], 10)
    tied = np.full((20, 2), 0.5)
    assert stats.auc(labels, tied) == 0.5
    same = stats.delong_test(labels, tied, tied)
    assert same["delta"] == 0 and same["p"] == 1.0
    assert stats.paired_bootstrap(labels, tied, tied, n_resamples=200)["p"] == 1.0
    perfect = np.c_[1 - labels, labels].astype(float)
    exact = stats.delong_test(labels, perfect, tied)
    assert exact["delta"] == 0.5 and exact["se"] == 0 and exact["p"] == 0.0
    assert stats.paired_bootstrap(labels, perfect, tied, n_resamples=199)["p"] == pytest.approx(2 / 200)


def test_a_resample_without_a_class_is_nan_and_left_out_of_the_interval():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = softmax(np.eye(3)[labels] * 2.0)
    kernel = stats.AucKernel(labels, probs)
    weights = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1], [2, 0, 0, 0, 0, 0]])
    got = kernel(weights)
    assert got[0] == 1.0 and got[1] == 1.0  # class 1 absent: macro over the classes present
    assert np.isnan(got[2])  # one class only
    assert stats.percentile_interval(np.array([np.nan, 0.4, 0.6]), 0.5) == pytest.approx((0.45, 0.55))
    assert all(np.isnan(stats.percentile_interval(np.array([np.nan]))))


def test_dataset_seeds_are_stable_and_distinct():
    a = np.random.default_rng(stats.dataset_seed(0, "synthetic")).integers(0, 1 << 30, 3)
    b = np.random.default_rng(stats.dataset_seed(0, "synthetic")).integers(0, 1 << 30, 3)
    c = np.random.default_rng(stats.dataset_seed(0, "bcnb")).integers(0, 1 << 30, 3)
    assert (a == b).all() and (a != c).any()

"""DeLong's test against a hand-computed example, an independent O(m n) float64 implementation of the original
1988 formulas, scikit-learn's AUC, and Monte-Carlo checks of its variance and its null distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cmir_trt.evaluation import delong_auc_ci, delong_covariance, delong_test


def _naive_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. 1988 directly: psi over all (positive, negative) pairs, explicit covariance sums."""
    k = scores.shape[0]
    pos = [np.flatnonzero(y == 1)]
    neg = [np.flatnonzero(y == 0)]
    m, n = pos[0].size, neg[0].size
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        for i, pi in enumerate(pos[0]):
            for j, nj in enumerate(neg[0]):
                x, yv = scores[r, pi], scores[r, nj]
                psi = 1.0 if x > yv else (0.5 if x == yv else 0.0)
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    auc = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10[a, b] = sum((v10[a, i] - auc[a]) * (v10[b, i] - auc[b]) for i in range(m)) / (m - 1)
            s01[a, b] = sum((v01[a, j] - auc[a]) * (v01[b, j] - auc[b]) for j in range(n)) / (n - 1)
    return auc, s10 / m + s01 / n


def _data(n: int, seed: int, noise_a: float, noise_b: float, shared: float = 0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    common = rng.normal(size=n)  # correlation between the two models, as on the same cases
    a = y + noise_a * (shared * common + rng.normal(size=n))
    b = y + noise_b * (shared * common + rng.normal(size=n))
    return y, a, b


def test_hand_computed_example():
    # positives X = 0.9, 0.4; negatives Y = 0.5, 0.1
    # V10 = [1, 1/2], V01 = [1/2, 1]; AUC = 3/4; S10 = S01 = var([1, .5], ddof=1) = 1/8; Var = 1/16 + 1/16
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.4, 0.5, 0.1])
    auc, cov = delong_covariance(y, s[None, :])
    assert auc[0] == pytest.approx(0.75, abs=1e-15)
    assert cov[0, 0] == pytest.approx(0.125, abs=1e-15)
    auc_, lo, hi = delong_auc_ci(y, s)
    half = 1.959963984540054 * math.sqrt(0.125)
    assert (lo, hi) == pytest.approx((max(0.0, 0.75 - half), min(1.0, 0.75 + half)), abs=1e-12)


@pytest.mark.parametrize("n,seed,ties", [(23, 0, False), (41, 1, True), (60, 2, False)])
def test_matches_naive_implementation(n, seed, ties):
    y, a, b = _data(n, seed, 1.0, 1.5)
    c = np.random.default_rng(seed + 100).normal(size=n) + 0.3 * y
    scores = np.stack([a, b, c])
    if ties:
        scores = np.round(scores, 0)
    auc, cov = delong_covariance(y, scores)
    auc_ref, cov_ref = _naive_delong(y, scores)
    np.testing.assert_allclose(auc, auc_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=0, atol=1e-12)
    for r in range(3):
        assert auc[r] == pytest.approx(roc_auc_score(y, scores[r]), abs=1e-12)
    d = delong_test(y, scores[0], scores[1])
    var = cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1]
    z = (auc_ref[0] - auc_ref[1]) / math.sqrt(var)
    assert d.z == pytest.approx(z, abs=1e-9)
    assert d.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=1e-12)


def test_identical_predictions_give_p_one():
    y, a, _ = _data(80, 3, 1.0, 1.0)
    d = delong_test(y, a, a)
    assert d.p_value == 1.0 and d.difference == 0.0
    # a strictly monotone transform keeps the ranking, hence the AUC: still p = 1
    d = delong_test(y, a, 1.0 / (1.0 + np.exp(-3.0 * a)))
    assert d.p_value == 1.0


def test_clearly_better_model_is_significant():
    y, a, b = _data(200, 4, 0.5, 3.0)
    d = delong_test(y, a, b)
    assert d.auc_a > d.auc_b
    assert d.p_value < 0.05
    # symmetric in the order of the models
    r = delong_test(y, b, a)
    assert r.p_value == pytest.approx(d.p_value, abs=1e-15) and r.z == pytest.approx(-d.z, abs=1e-12)


def test_variance_matches_monte_carlo():
    # DeLong's variance of AUC_a - AUC_b vs the empirical variance over 400 independent cohorts (within 20%)
    diffs, vars_ = [], []
    for seed in range(400):
        y, a, b = _data(120, 1000 + seed, 1.0, 1.3)
        auc, cov = delong_covariance(y, np.stack([a, b]))
        diffs.append(auc[0] - auc[1])
        vars_.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert np.var(diffs, ddof=1) == pytest.approx(np.mean(vars_), rel=0.2)


def test_null_p_values_are_calibrated():
    # two equally good models: p < 0.05 in about 5% of 300 cohorts (binomial 99.9% band: 1%..10.3%)
    ps = [delong_test(*_data(100, 5000 + s, 1.0, 1.0)).p_value for s in range(300)]
    frac = np.mean(np.array(ps) < 0.05)
    assert 0.01 <= frac <= 0.103, frac


def test_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="scores_b"):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.3, float("nan"), 0.1])
    with pytest.raises(ValueError, match="differ in length"):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.1])

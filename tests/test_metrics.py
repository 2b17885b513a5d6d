"""Metrics, Youden threshold, stratified bootstrap CIs and calibration against scikit-learn, naive loops and a
hand-computed case. Tolerances: exact (1e-12) for deterministic metrics; stated per test for statistical ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from cmir_trt.evaluation import (
    binary_metrics,
    bootstrap_replicates,
    brier_score,
    delong_auc_ci,
    metrics_with_ci,
    percentile_ci,
    reliability_curve,
    youden_threshold,
)
from cmir_trt.evaluation.metrics import bootstrap_indices


def _cohort(n: int, seed: int, signal: float = 1.2, prevalence: float = 0.35, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[0], y[1] = 0, 1  # both classes always present
    z = rng.normal(size=n) + signal * y
    p = 1.0 / (1.0 + np.exp(-z))
    if ties:
        p = np.round(p, 1)
    return y, p


def test_hand_computed_case():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]
    r = binary_metrics(y, s, 0.5)
    # predictions >= 0.5: [0, 0, 0, 1, 1, 1] -> tp 2, fn 1, tn 2, fp 1
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (2, 1, 2, 1)
    assert r["sen"] == pytest.approx(2 / 3, abs=1e-15)
    assert r["spe"] == pytest.approx(2 / 3, abs=1e-15)
    assert r["acc"] == pytest.approx(4 / 6, abs=1e-15)
    # positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.4, 0.7: 1 + 3 + 3 = 7 of 9 pairs ordered correctly
    assert r["auc"] == pytest.approx(7 / 9, abs=1e-15)
    # threshold exactly on a score counts as positive (>=)
    assert binary_metrics(y, s, 0.35)["tp"] == 3


@pytest.mark.parametrize("n,seed,ties", [(37, 0, False), (101, 1, True), (250, 2, False)])
def test_metrics_match_sklearn(n, seed, ties):
    y, p = _cohort(n, seed, ties=ties)
    thr = 0.47
    r = binary_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert r["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert r["acc"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert r["sen"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert r["spe"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    assert r["n"] == n and r["n_pos"] == int(y.sum())


def test_single_class_gives_nan_not_crash():
    r = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(r["auc"]) and math.isnan(r["spe"])
    assert r["sen"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("labels,scores,msg", [
    ([0, 1, 1], [0.1, float("nan"), 0.3], "non-finite"),
    ([0, 1], [0.1, 0.2, 0.3], "differ in length"),
    ([0, 2, 1], [0.1, 0.2, 0.3], "0/1"),
    ([], [], "no cases"),
    ([[0, 1]], [[0.1, 0.2]], "1-D"),
])
def test_bad_input_raises_clear_error(labels, scores, msg):
    with pytest.raises(ValueError, match=msg):
        binary_metrics(labels, scores, 0.5)


def _naive_youden(y: np.ndarray, p: np.ndarray) -> float:
    best = -np.inf
    for t in np.unique(p):
        pred = p >= t
        j = pred[y == 1].mean() + (~pred[y == 0]).mean() - 1.0
        best = max(best, j)
    return best


@pytest.mark.parametrize("n,seed,ties", [(53, 3, False), (120, 4, True), (9, 5, False)])
def test_youden_threshold_reaches_max_j(n, seed, ties):
    y, p = _cohort(n, seed, ties=ties)
    thr = youden_threshold(y, p)
    r = binary_metrics(y, p, thr)
    assert r["sen"] + r["spe"] - 1.0 == pytest.approx(_naive_youden(y, p), abs=1e-12)
    # the threshold lies strictly between two observed scores (or on the lowest one), never on a rounding edge
    assert not np.any(p == thr) or thr == p.min()


def test_youden_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1, 1], [0.1, 0.5, 0.9])


def test_bootstrap_auc_matches_sklearn_per_resample():
    y, p = _cohort(61, 6, ties=True)
    reps = bootstrap_replicates(y, p, 0.5, n_resamples=40, seed=11)
    pos_i, neg_i = bootstrap_indices(y, 40, 11)
    assert pos_i.shape == (40, y.sum()) and neg_i.shape == (40, (y == 0).sum())  # stratified: class counts kept
    assert np.all(y[pos_i] == 1) and np.all(y[neg_i] == 0)
    for r in range(40):
        idx = np.concatenate([pos_i[r], neg_i[r]])
        yy, pp = y[idx], p[idx]
        assert reps["auc"][r] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
        assert reps["sen"][r] == pytest.approx(np.mean(pp[yy == 1] >= 0.5), abs=1e-12)
        assert reps["spe"][r] == pytest.approx(np.mean(pp[yy == 0] < 0.5), abs=1e-12)
        assert reps["acc"][r] == pytest.approx(np.mean((pp >= 0.5) == yy), abs=1e-12)


def test_ci_seeded_contains_estimate_and_matches_numpy_percentile():
    y, p = _cohort(150, 7)
    a = metrics_with_ci(y, p, 0.5, n_resamples=500, seed=3)
    b = metrics_with_ci(y, p, 0.5, n_resamples=500, seed=3)
    c = metrics_with_ci(y, p, 0.5, n_resamples=500, seed=4)
    assert a == b
    assert a["auc_ci"] != c["auc_ci"]
    reps = bootstrap_replicates(y, p, 0.5, n_resamples=500, seed=3)
    for k in ("acc", "auc", "sen", "spe"):
        lo, hi = a[f"{k}_ci"]
        assert lo <= a[k] <= hi
        assert (lo, hi) == pytest.approx(tuple(np.percentile(reps[k], [2.5, 97.5])), abs=1e-12)


def test_ci_width_shrinks_with_n():
    widths = []
    for n in (40, 160, 640):
        y, p = _cohort(n, 8)
        r = metrics_with_ci(y, p, 0.5, n_resamples=1000, seed=0)
        widths.append({k: r[f"{k}_ci"][1] - r[f"{k}_ci"][0] for k in ("acc", "auc", "sen", "spe")})
    for k in ("acc", "auc", "sen", "spe"):
        assert widths[0][k] > widths[1][k] > widths[2][k], (k, widths)
        # 16x the cases -> about 1/4 of the width (1/sqrt(n)); allow a wide band
        assert 0.15 < widths[2][k] / widths[0][k] < 0.4, (k, widths)


def test_bootstrap_se_agrees_with_delong_se():
    # two independent estimates of the AUC's sampling spread: bootstrap SD vs DeLong's asymptotic SE (within 15%)
    y, p = _cohort(400, 9)
    reps = bootstrap_replicates(y, p, 0.5, n_resamples=2000, seed=1)
    auc, lo, hi = delong_auc_ci(y, p)
    se_delong = (hi - lo) / (2 * 1.959963984540054)
    assert np.std(reps["auc"], ddof=1) == pytest.approx(se_delong, rel=0.15)
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_percentile_ci_ignores_nan():
    assert percentile_ci(np.array([np.nan, np.nan])) != percentile_ci(np.array([0.0, 1.0]))
    lo, hi = percentile_ci(np.array([np.nan, 0.0, 1.0, 0.5]), level=0.5)
    assert (lo, hi) == pytest.approx((0.25, 0.75))


def test_brier_and_reliability_against_naive():
    y, p = _cohort(203, 10)
    assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    c = reliability_curve(y, p, n_bins=7)
    # naive: bin k holds p in (k/7, (k+1)/7] (first bin includes 0)
    mp, fp, cnt = [], [], []
    for k in range(7):
        lo, hi = k / 7, (k + 1) / 7
        m = (p > lo) & (p <= hi) if k else (p <= hi)
        if m.any():
            mp.append(p[m].mean())
            fp.append(y[m].mean())
            cnt.append(int(m.sum()))
    assert c["mean_predicted"] == pytest.approx(mp, abs=1e-12)
    assert c["fraction_positive"] == pytest.approx(fp, abs=1e-12)
    assert c["count"] == cnt and sum(cnt) == 203
    one = reliability_curve([1, 1, 1], [0.2, 0.25, 0.9], n_bins=4)
    assert one["fraction_positive"] == [1.0, 1.0] and one["count"] == [2, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([0, 1], [0.2, 1.5])

"""DeLong's test for the difference of two correlated AUCs (two models scored on the same cases).

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, computed with the mid-rank formulation of
Sun & Xu (2014), IEEE Signal Processing Letters 21:1389-1393 (O(N log N) per model instead of O(m n)):

    positives X_1..X_m, negatives Y_1..Y_n, psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise
    V10_i = (1/n) sum_j psi(X_i, Y_j) = (Tz_i - Tx_i) / n          (structural components of the positives)
    V01_j = (1/m) sum_i psi(X_i, Y_j) = 1 - (Tz_{m+j} - Ty_j) / m  (... of the negatives)
    AUC = mean(V10) = mean(V01);  Cov(AUC) = S10 / m + S01 / n   (S = sample covariance across models, ddof = 1)
    z = (AUC_a - AUC_b) / sqrt(Var_a + Var_b - 2 Cov_ab),  p = 2 (1 - Phi(|z|))

Tz, Tx, Ty are mid-ranks of the pooled, positive-only and negative-only scores.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .metrics import check_binary


class DeLongResult(NamedTuple):
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float          # standard error of the difference
    z: float
    p_value: float     # two-sided


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def structural_components(labels: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For scores [K, N] of K models: AUCs [K], V10 [K, m] and V01 [K, n]."""
    y = np.asarray(labels)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes (MVI+ and MVI-) among the cases")
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    tx, ty = _midranks(pos), _midranks(neg)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def delong_covariance(labels: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [K] and their DeLong covariance matrix [K, K] for scores [K, N] of K models on the same cases."""
    aucs, v10, v01 = structural_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    # with a single positive or negative the sample covariance is undefined (ddof=1): treat it as zero spread
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((v10.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((v01.shape[0],) * 2)
    return aucs, s10 / m + s01 / n


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> DeLongResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) on paired predictions of the same cases.

    Identical rankings give difference 0 and p = 1; a zero standard error with a non-zero difference (both models
    separate the classes without overlap in incompatible ways cannot happen, but rounding can) gives p = 0.
    """
    from scipy.stats import norm

    y, a = check_binary(labels, scores_a, "scores_a")
    _, b = check_binary(y, scores_b, "scores_b")
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:  # identical rankings (or both perfect): no evidence of a difference unless the AUCs differ
        same = abs(diff) < 1e-12
        return DeLongResult(float(aucs[0]), float(aucs[1]), diff, 0.0, 0.0 if same else math.copysign(math.inf, diff),
                            1.0 if same else 0.0)
    se = math.sqrt(var)
    z = diff / se
    p = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, min(1.0, p))


def delong_auc_ci(labels: Any, scores: Any, level: float = 0.95) -> tuple[float, float, float]:
    """AUC and its DeLong (asymptotic normal) confidence interval, clipped to [0, 1]."""
    from scipy.stats import norm

    y, s = check_binary(labels, scores)
    aucs, cov = delong_covariance(y, s[None, :])
    auc, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    zq = float(norm.ppf(0.5 + level / 2.0))
    return auc, max(0.0, auc - zq * se), min(1.0, auc + zq * se)

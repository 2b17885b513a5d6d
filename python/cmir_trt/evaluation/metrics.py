"""Binary classification metrics (ACC, AUC, SEN, SPE), Youden's-J threshold and stratified-bootstrap CIs.

Point estimates come from scikit-learn (roc_auc_score, roc_curve, confusion_matrix). The bootstrap uses a
vectorised rank-based AUC (Mann-Whitney U with mid-ranks, identical to roc_auc_score) so 2,000 resamples of a few
hundred cases take milliseconds; the tests check it against roc_auc_score resample by resample.

Decision rule everywhere: a case is called positive (MVI+) when probability >= threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = ("acc", "auc", "sen", "spe")
DEFAULT_RESAMPLES = 2000


def check_binary(labels: Any, scores: Any, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """labels -> int64 {0,1}, scores -> float64, both 1-D, same length, finite; ValueError naming the problem."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and {name} must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"labels ({y.shape[0]}) and {name} ({s.shape[0]}) differ in length")
    if y.shape[0] == 0:
        raise ValueError("no cases to evaluate")
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"{name} contain {bad} non-finite value(s) (NaN/inf)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))[:5]}")
    return y.astype(np.int64), s


def youden_threshold(labels: Any, scores: Any) -> float:
    """The cut-off maximising Youden's J = SEN + SPE - 1 on (labels, scores).

    Among the ROC operating points (scikit-learn's roc_curve, drop_intermediate=False) the first with maximal J is
    taken (ties -> the highest cut-off, i.e. the most specific). The returned threshold is the midpoint between that
    cut-off score and the next lower distinct score, so `probability >= threshold` reproduces the same operating
    point and is robust to rounding differences between backends (fp32 vs fp16 engines).
    """
    from sklearn.metrics import roc_curve

    y, s = check_binary(labels, scores)
    if y.min() == y.max():
        raise ValueError("Youden's J needs both classes (MVI+ and MVI-) in the threshold-selection split")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    finite = np.isfinite(thr)  # the first point (thr = inf) calls every case negative: J = 0, never useful
    j = np.where(finite, j, -np.inf)
    k = int(np.argmax(j))
    cut = float(thr[k])
    lower = s[s < cut]
    if lower.size == 0:
        return cut
    return float(0.5 * (cut + lower.max()))


def binary_metrics(labels: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """n, n_pos, n_neg, auc (NaN if one class only), acc, sen (NaN without positives), spe (NaN without negatives),
    and the confusion counts tp, fn, tn, fp at `probability >= threshold`."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y, s = check_binary(labels, scores)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    pred = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    n_pos, n_neg = tp + fn, tn + fp
    auc = float(roc_auc_score(y, s)) if n_pos and n_neg else math.nan
    return {
        "n": int(y.size), "n_pos": n_pos, "n_neg": n_neg,
        "auc": auc,
        "acc": (tp + tn) / y.size,
        "sen": tp / n_pos if n_pos else math.nan,
        "spe": tn / n_neg if n_neg else math.nan,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def _rank_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Row-wise AUC of [R, m] positive vs [R, n] negative scores via mid-ranks (Mann-Whitney U / (m n))."""
    from scipy.stats import rankdata

    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # average ranks for ties
    u = ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0
    return u / (m * n)


def bootstrap_indices(labels: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified resampling: [R, n_pos] indices drawn with replacement from the positives, [R, n_neg] from the
    negatives. The class counts stay fixed, so every resample has an AUC."""
    rng = np.random.default_rng(seed)
    pos_idx = np.flatnonzero(labels == 1)
    neg_idx = np.flatnonzero(labels == 0)
    pos = pos_idx[rng.integers(0, pos_idx.size, size=(n_resamples, pos_idx.size))] if pos_idx.size else \
        np.zeros((n_resamples, 0), dtype=np.int64)
    neg = neg_idx[rng.integers(0, neg_idx.size, size=(n_resamples, neg_idx.size))] if neg_idx.size else \
        np.zeros((n_resamples, 0), dtype=np.int64)
    return pos, neg


def bootstrap_replicates(labels: Any, scores: Any, threshold: float, n_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Per-resample acc, auc, sen, spe ([R] arrays; NaN where undefined) under stratified bootstrap."""
    y, s = check_binary(labels, scores)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    pos_i, neg_i = bootstrap_indices(y, n_resamples, seed)
    pos, neg = s[pos_i], s[neg_i]
    m, n = pos.shape[1], neg.shape[1]
    tp = (pos >= threshold).sum(axis=1)
    tn = (neg < threshold).sum(axis=1)
    nan = np.full(n_resamples, np.nan)
    return {
        "acc": (tp + tn) / (m + n),
        "auc": _rank_auc(pos, neg) if m and n else nan,
        "sen": tp / m if m else nan,
        "spe": tn / n if n else nan,
    }


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates; (nan, nan) if there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [a, 1.0 - a])
    return (float(lo), float(hi))


def metrics_with_ci(labels: Any, scores: Any, threshold: float, n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """binary_metrics plus `<metric>_ci` = 95% percentile interval of a seeded stratified bootstrap."""
    out = binary_metrics(labels, scores, threshold)
    reps = bootstrap_replicates(labels, scores, threshold, n_resamples, seed)
    for key in METRICS:
        out[f"{key}_ci"] = list(percentile_ci(reps[key], level)) if math.isfinite(out[key]) else [math.nan, math.nan]
    out["threshold"] = float(threshold)
    out["n_resamples"] = int(n_resamples)
    out["ci_level"] = float(level)
    return out

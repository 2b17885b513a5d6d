"""Calibration: Brier score and the reliability curve (scikit-learn's brier_score_loss and calibration_curve)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import check_binary


def brier_score(labels: Any, probabilities: Any) -> float:
    """Mean squared error of the probabilities against the 0/1 labels (lower is better)."""
    from sklearn.metrics import brier_score_loss

    y, p = check_binary(labels, probabilities, "probabilities")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"probabilities must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    return float(brier_score_loss(y, p))


def reliability_curve(labels: Any, probabilities: Any, n_bins: int = 10) -> dict[str, list[float]]:
    """Observed MVI+ fraction vs mean predicted probability in `n_bins` equal-width bins (empty bins dropped),
    plus the number of cases per non-empty bin."""
    from sklearn.calibration import calibration_curve

    y, p = check_binary(labels, probabilities, "probabilities")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # the bins calibration_curve(strategy="uniform") uses: equal width on [0, 1], searchsorted side="left"
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(idx, minlength=n_bins)
    keep = counts > 0
    if y.min() == y.max():  # calibration_curve refuses a single class; the observed fraction is then constant
        mean_pred = np.bincount(idx, weights=p, minlength=n_bins)[keep] / counts[keep]
        frac = np.full(int(keep.sum()), float(y[0]))
    else:
        frac, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    return {"mean_predicted": [float(v) for v in mean_pred], "fraction_positive": [float(v) for v in frac],
            "count": counts[keep].astype(int).tolist()}

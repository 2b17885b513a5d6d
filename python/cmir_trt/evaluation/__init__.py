"""Evaluation: metrics with stratified-bootstrap CIs, Youden threshold, DeLong's test, calibration, reports.

Needs numpy, scipy and scikit-learn (matplotlib for plots); never torch, except `evaluation.predict`.
"""

from .calibration import brier_score, reliability_curve
from .delong import DeLongResult, delong_auc_ci, delong_covariance, delong_test
from .metrics import binary_metrics, bootstrap_replicates, metrics_with_ci, percentile_ci, youden_threshold
from .report import CaseTable, ModelPredictions, build_report, write_report

__all__ = [
    "CaseTable", "DeLongResult", "ModelPredictions", "binary_metrics", "bootstrap_replicates", "brier_score",
    "build_report", "delong_auc_ci", "delong_covariance", "delong_test", "metrics_with_ci", "percentile_ci",
    "reliability_curve", "write_report", "youden_threshold",
]

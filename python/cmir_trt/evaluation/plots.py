"""ROC curves and reliability diagrams per centre group (PNG, matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_write_via

if TYPE_CHECKING:
    from .report import CaseTable, ModelPredictions


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: object, path: Path) -> None:
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")  # type: ignore[attr-defined]


def write_plots(out_dir: Path, cases: CaseTable, models: Sequence[ModelPredictions], synthetic: bool) -> list[str]:
    """roc_<group>.png and calibration_<group>.png with one curve per model; returns the file names."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    from .calibration import reliability_curve

    tag = " (SYNTHETIC data)" if synthetic else ""
    written = []
    for g, mask in cases.groups().items():
        y = cases.labels[mask]
        if y.min() == y.max():
            continue  # no ROC with a single class
        fig, ax = plt.subplots(figsize=(4.8, 4.6))
        for m in models:
            p = np.asarray(m.probability, dtype=np.float64)[mask]
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{m.name} AUC={roc_auc_score(y, p):.3f}")
            pred = p >= m.threshold
            ax.plot([np.mean(pred[y == 0])], [np.mean(pred[y == 1])], "o", ms=5, color=ax.lines[-1].get_color())
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, {g}{tag}", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        name = f"roc_{_safe(g)}.png"
        _save(fig, out_dir / name)
        plt.close(fig)
        written.append(name)

        fig, ax = plt.subplots(figsize=(4.8, 4.6))
        for m in models:
            p = np.asarray(m.probability, dtype=np.float64)[mask]
            c = reliability_curve(y, p)
            ax.plot(c["mean_predicted"], c["fraction_positive"], "o-", ms=3, label=m.name)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlabel="mean predicted probability", ylabel="observed MVI+ fraction",
               title=f"Reliability, {g}{tag}", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        name = f"calibration_{_safe(g)}.png"
        _save(fig, out_dir / name)
        plt.close(fig)
        written.append(name)
    return written

"""Training of CMIR models: `fit` on prepared arrays, `train_from_directory` on a cohort folder.

`TrainConfig` is plain data (no torch); everything else imports torch, lazily, on first use.
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainData", "TrainResult", "cohort_description", "fit", "predict_proba", "resume_path",
           "train_from_directory"]

_LAZY = {"TrainData": "loop", "TrainResult": "loop", "fit": "loop", "predict_proba": "loop", "resume_path": "loop",
         "cohort_description": "cohort", "train_from_directory": "cohort"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

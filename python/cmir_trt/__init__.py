"""cmir_trt: a compiled inference engine for CMIR (microvascular-invasion prediction from two-phase liver MRI).

`import cmir_trt` needs only numpy: the PyTorch reference model, export and training import torch lazily, and the
CUDA extension is loaded only when a GPU is asked for.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CaseFailure", "CaseResult", "Engine", "Prediction", "Predictor", "__version__", "build_info"]


def __getattr__(name: str) -> Any:
    # Lazy: the engine facade pulls in the native core, and backends pull in torch/cupy only when used.
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "Prediction":
        from .prediction import Prediction

        return Prediction
    if name in ("Predictor", "CaseResult", "CaseFailure"):  # the per-case pipeline (data path needs SimpleITK)
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'cmir_trt' has no attribute {name!r}")


def build_info() -> dict[str, Any]:
    """What this build contains: version, CPU core, CUDA architectures, TensorRT plugins, compiler versions."""
    from ._native import native_build_info

    return native_build_info()

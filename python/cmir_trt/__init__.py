"""cmir_trt: a compiled inference engine for CMIR (microvascular-invasion prediction from two-phase liver MRI).

`import cmir_trt` needs only numpy: the PyTorch reference model, export and training import torch lazily, and the
CUDA extension is loaded only when a GPU is asked for.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_info"]


def build_info() -> dict[str, Any]:
    """What this build contains: version, CPU core, CUDA architectures, TensorRT plugins, compiler versions."""
    from ._native import native_build_info

    return native_build_info()

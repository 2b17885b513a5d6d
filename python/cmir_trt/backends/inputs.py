"""Input checks shared by the backends: numpy/torch/array-likes in, C-contiguous float32 out, or a clear error."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_float32(x: Any, name: str) -> np.ndarray:
    """`x` as a C-contiguous float32 numpy array; floating dtypes are cast, anything else is a TypeError."""
    if x is None:
        raise ValueError(f"{name} is missing")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor (any device): an explicit host copy
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's bad input
        raise TypeError(f"{name} cannot be converted to a numpy array: {exc}") from exc
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array (float32 preferred), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_inputs(spec: dict[str, Any], art: Any, pv: Any, clinical: Any) -> tuple[np.ndarray, np.ndarray | None,
                                                                                   np.ndarray | None]:
    """Validate art/pv/clinical against a plan's input spec: shapes, dtypes, finiteness. Returns float32 arrays."""
    s, c, f = spec["image_size"], spec["in_channels"], spec["num_clinical"]
    a = as_float32(art, "art")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (c, s, s):
        raise ValueError(f"art has shape {list(a.shape)}, expected [B, {c}, {s}, {s}]")
    if a.shape[0] < 1:  # an empty batch is a caller's mistake, not "no results"
        raise ValueError(f"art holds 0 cases (shape {list(a.shape)}); predict needs at least one case (B >= 1)")
    b = a.shape[0]
    p = None
    if spec["two_phase"]:
        p = as_float32(pv, "pv")
        if p.ndim == 3:
            p = p[None]
        if p.shape != a.shape:
            raise ValueError(f"pv has shape {list(p.shape)}, expected {list(a.shape)} (same as art)")
    cl = None
    if f > 0:
        cl = as_float32(clinical, "clinical")
        if cl.ndim == 1:
            cl = cl[None]
        if cl.shape != (b, f):
            raise ValueError(f"clinical has shape {list(cl.shape)}, expected [{b}, {f}]")
    for name, arr in (("art", a), ("pv", p), ("clinical", cl)):
        if arr is not None and not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinity")
    return a, p, cl

"""Loading of the compiled extension modules, with errors that say what to do."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent


class NativeExtensionError(ImportError):
    """The compiled part of cmir_trt is missing or could not be loaded."""


def load_core() -> ModuleType:
    """The CPU extension `cmir_trt._C` (never touches CUDA)."""
    # OpenMP reads this once, when the runtime starts with _C: spinning waits are very slow on shared/small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return importlib.import_module("cmir_trt._C")
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise NativeExtensionError(
            f"cmir_trt's compiled core (cmir_trt._C) could not be loaded: {exc}. "
            "Build it with `pip install -e .` (or `make install`)."
        ) from exc


def load_cuda() -> ModuleType:
    """The CUDA extension `cmir_trt._cuda`; a clear error when the build has no CUDA or the machine no driver."""
    info = load_core().build_info()
    if not info["cuda"]:
        raise RuntimeError("cmir_trt was built without CUDA (no nvcc at build time); device='cuda' is unavailable")
    try:
        return importlib.import_module("cmir_trt._cuda")
    except ImportError as exc:
        raise RuntimeError(f"cmir_trt's CUDA extension could not be loaded: {exc}") from exc


def plugin_library_path() -> Path | None:
    """Path of the TensorRT plugin library shipped with this build, or None."""
    import cmir_trt

    # An editable install keeps compiled files in site-packages/cmir_trt, beside the redirected sources.
    for d in [*(Path(p) for p in getattr(cmir_trt, "__path__", [])), _PACKAGE_DIR]:
        p = d / "libcmir_trt_plugins.so"
        if p.is_file():
            return p
    return None


def native_build_info() -> dict[str, Any]:
    info = dict(load_core().build_info())
    lib = plugin_library_path()
    info["tensorrt_plugins"] = bool(info.get("tensorrt_plugins")) and lib is not None
    info["tensorrt_plugin_library"] = str(lib) if lib is not None else None
    return info


def cuda_device_count() -> int:
    """Number of visible CUDA devices; 0 when the build has no CUDA or the machine has no driver/GPU."""
    try:
        mod = load_cuda()
    except RuntimeError:
        return 0
    return int(mod.device_count())

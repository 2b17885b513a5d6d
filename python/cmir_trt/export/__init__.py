"""Export of a CMIR checkpoint to TorchScript, ONNX (standard ops / TensorRT custom ops), plan and Triton, with
sidecars and parity validation.

Importing this package needs no torch: `schema`, `sidecar` and `trt_graph` are torch-free; the exporters
(`export_model`, `export_onnx`, `export_torchscript`) and the validation import torch when first used.
"""

from __future__ import annotations

from typing import Any

from .schema import PluginSchema, SchemaError, load_schema
from .sidecar import ArtifactError, read_sidecar, sidecar_path, verify_artifact

_LAZY = {
    "export_model": "exporters",
    "export_onnx": "exporters",
    "export_torchscript": "exporters",
    "expected_custom_counts": "exporters",
    "FORMATS": "exporters",
    "exportable_model": "graph",
    "validate_checkpoint": "validation",
    "check_custom_graph": "trt_graph",
    "expand_custom_nodes": "trt_graph",
}

__all__ = ["ArtifactError", "PluginSchema", "SchemaError", "load_schema", "read_sidecar", "sidecar_path",
           "verify_artifact", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

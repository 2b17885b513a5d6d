"""Shared pytest set-up: the `gpu` and `trt` markers skip (with the reason) where their hardware/library is absent."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def gpu_skip_reason() -> str | None:
    try:
        from cmir_trt._native import cuda_device_count, load_core
    except ImportError as exc:
        return f"cmir_trt is not built: {exc}"
    if not load_core().build_info()["cuda"]:
        return "cmir_trt was built without CUDA"
    if cuda_device_count() == 0:
        return "no CUDA device visible (no GPU or no driver on this machine)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch has no CUDA (CPU wheel or no device)"
    return None


@functools.cache
def trt_skip_reason() -> str | None:
    from cmir_trt._native import plugin_library_path

    if plugin_library_path() is None:
        return ("the TensorRT plugin library is not in this build (CMIR_TENSORRT=OFF, or no TensorRT headers found at "
                "build time; see cuda/plugins/README.md)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords:
            reason = gpu_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu: {reason}"))
        if "trt" in item.keywords:
            reason = trt_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"trt: {reason}"))

"""GPU backend of cmir_trt: the reference CMIR model run with the CUDA kernels of cmir_trt.ops (involution with a
fused BN/ReLU epilogue or fully fused generation, fused CMAM), conv+BN folded, fp32/fp16/bf16, CUDA graphs per batch
size. ``TorchCudaBackend`` is what ``cmir_trt.Engine(path, device="cuda", backend="torch")`` delegates to.

Importing this package needs neither torch nor a GPU; constructing a backend without one raises RuntimeError.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRECISIONS", "TorchCudaBackend", "require_cuda"]

PRECISIONS = ("fp32", "fp16", "bf16")


def require_cuda(device: int = 0) -> None:
    """RuntimeError with the reason when CUDA device `device` cannot be used (no CUDA build, driver, GPU or torch)."""
    from .._native import cuda_device_count, load_cuda

    try:
        load_cuda()  # RuntimeError when the build has no CUDA
        n = cuda_device_count()
    except ImportError as exc:  # a broken/missing compiled core: still a "cannot use cuda" answer
        raise RuntimeError(f"device='cuda' is unavailable: {exc}") from exc
    if n == 0:
        raise RuntimeError("device='cuda' requested but no CUDA GPU/driver is available on this machine")
    if not 0 <= device < n:
        raise RuntimeError(f"CUDA device {device} requested but only {n} device(s) are visible")
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("the torch CUDA backend needs PyTorch with CUDA support (import torch failed)") from exc
    if not torch.cuda.is_available():
        raise RuntimeError("the torch CUDA backend needs a CUDA build of PyTorch; torch.cuda.is_available() is False")


def __getattr__(name: str) -> Any:
    if name == "TorchCudaBackend":
        from .backend import TorchCudaBackend

        return TorchCudaBackend
    raise AttributeError(f"module 'cmir_trt.gpu' has no attribute {name!r}")

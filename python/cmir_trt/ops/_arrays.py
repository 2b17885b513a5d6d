"""Host-side view of the arrays handed to the CUDA ops: torch tensors, cupy arrays (or anything with
``__cuda_array_interface__``) and other DLPack producers, inspected without copying and without touching the GPU.

Every argument check of the ops runs here, on shapes/dtypes/devices/strides only, so it works on a machine without a
GPU (the tests use CPU and meta torch tensors).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

# CmirDType codes of cuda/common.cuh.
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
_CAI_TYPESTR = {"<f4": "float32", "<f2": "float16", "|u1": "uint8"}  # cupy has no bfloat16; use torch for bf16


@dataclass(frozen=True)
class ArrayInfo:
    """What the ops' argument checks need to know about one array: shape, element type, device, layout. No
    address: reading ``data_ptr()`` here would stop torch.compile(fullgraph=True) from tracing the torch ops (the
    custom ops read their pointers inside, where Dynamo does not look)."""

    kind: str  # "torch" | "cai"
    shape: tuple[int, ...]
    dtype: str  # float32 | float16 | bfloat16 | other name
    device: str  # "cuda:N", "cpu", "meta", ...
    contiguous: bool


def _torch_module() -> Any | None:
    return sys.modules.get("torch")


def is_torch_tensor(a: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(a, torch.Tensor)


def describe(a: Any, name: str) -> ArrayInfo:
    """ArrayInfo of a torch tensor or a ``__cuda_array_interface__`` object; TypeError for anything else."""
    if is_torch_tensor(a):
        dt = str(a.dtype).replace("torch.", "")
        dev = a.device
        device = f"cuda:{dev.index}" if dev.type == "cuda" else dev.type
        return ArrayInfo("torch", tuple(int(s) for s in a.shape), dt, device, bool(a.is_contiguous()))
    cai = getattr(a, "__cuda_array_interface__", None)
    if isinstance(cai, dict):
        shape = tuple(int(s) for s in cai.get("shape", ()))
        typestr = str(cai.get("typestr", "?"))
        dt = _CAI_TYPESTR.get(typestr, f"typestr {typestr}")
        strides = cai.get("strides")
        itemsize = {"float32": 4, "uint8": 1}.get(dt, 2)
        contiguous = strides is None or tuple(strides) == _c_strides(shape, itemsize)
        device = f"cuda:{_cai_device(a)}"
        return ArrayInfo("cai", shape, dt, device, contiguous)
    if type(a).__module__ == "numpy" or not hasattr(a, "__dlpack__"):
        raise TypeError(f"{name} must be a CUDA tensor (torch.Tensor or cupy.ndarray), got {type(a).__module__}."
                        f"{type(a).__name__}")
    if hasattr(a, "__dlpack__"):
        raise TypeError(f"{name}: DLPack arrays other than torch/cupy are not taken directly; wrap it with "
                        f"torch.from_dlpack(...) (no copy) first")
    raise TypeError(f"{name} must be a CUDA tensor (torch.Tensor or cupy.ndarray), got {type(a).__module__}."
                    f"{type(a).__name__}")


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = []
    acc = itemsize
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _cai_device(a: Any) -> int:
    dev = getattr(a, "device", None)
    ident = getattr(dev, "id", None)
    return int(ident) if ident is not None else 0


def check_float(info: ArrayInfo, name: str, allowed: tuple[str, ...] = ("float32", "float16", "bfloat16")) -> None:
    if info.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {' / '.join(allowed)}, got {info.dtype}")


def check_same_dtype(infos: dict[str, ArrayInfo]) -> str:
    dtypes = {n: i.dtype for n, i in infos.items()}
    if len(set(dtypes.values())) != 1:
        raise TypeError(f"all tensors of this op must share one dtype, got {dtypes}")
    return next(iter(dtypes.values()))


def check_contiguous(infos: dict[str, ArrayInfo]) -> None:
    for n, i in infos.items():
        if not i.contiguous:
            raise ValueError(f"{n} must be contiguous (dense row-major); call .contiguous() first")


def check_cuda(infos: dict[str, ArrayInfo]) -> str:
    """All arrays on one CUDA device and of one kind (torch or cupy); returns the device string."""
    for n, i in infos.items():
        if not i.device.startswith("cuda"):
            raise ValueError(f"{n} must be on a CUDA device, got device {i.device!r}")
    devices = {i.device for i in infos.values()}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one CUDA device, got {sorted(devices)}")
    kinds = {i.kind for i in infos.values()}
    if len(kinds) != 1:
        raise TypeError("mix of torch tensors and cupy arrays; pass one kind (convert with torch.from_dlpack / "
                        "cupy.from_dlpack, no copy)")
    return next(iter(devices))

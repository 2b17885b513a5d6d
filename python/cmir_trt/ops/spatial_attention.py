"""CMIR's spatial attention on the GPU over two maps without concatenating them: per pixel the channel mean and max
of [a; p], a k x k convolution of the two statistics, sigmoid, and both maps multiplied by the attention — two
launches where PyTorch runs nine kernels (cat, mean, amax, cat, conv, bias add, sigmoid, two multiplies). torch
tensors go through the custom op ``torch.ops.cmir_trt.spatial_attention``; cupy arrays call the launcher directly.
"""

from __future__ import annotations

from typing import Any

from ._arrays import (
    DTYPE_CODES,
    ArrayInfo,
    check_contiguous,
    check_cuda,
    check_float,
    check_same_dtype,
    describe,
    is_torch_tensor,
)

# The launcher's limits (cuda/spatial_attention.cuh): the image's statistics live in shared memory.
MAX_PIXELS = 2048
MAX_KERNEL = 15


def check_spatial_attention_args(a: ArrayInfo, p: ArrayInfo | None, weight: ArrayInfo,
                                 bias: ArrayInfo) -> tuple[int, int, int, int, int, int]:
    """Validate; returns (B, Ca, Cp, H, W, k). Raises ValueError/TypeError with one line saying what is wrong."""
    if len(a.shape) != 4 or min(a.shape) < 1:
        raise ValueError(f"a must be a non-empty [B, Ca, H, W], got shape {a.shape}")
    b, ca, h, w = a.shape
    cp = 0
    if p is not None:
        if len(p.shape) != 4 or p.shape[0] != b or p.shape[2:] != (h, w) or p.shape[1] < 1:
            raise ValueError(f"p must be [B={b}, Cp, {h}, {w}], got shape {p.shape}")
        cp = p.shape[1]
    if len(weight.shape) != 4 or weight.shape[:2] != (1, 2) or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be the SA conv's [1, 2, k, k], got shape {weight.shape}")
    k = weight.shape[2]
    if k % 2 == 0 or k > MAX_KERNEL:
        raise ValueError(f"kernel size must be odd and at most {MAX_KERNEL}, got {k}")
    if bias.shape != (1,):
        raise ValueError(f"bias must have shape (1,), got {bias.shape}")
    if h * w > MAX_PIXELS:
        raise ValueError(f"H*W = {h * w} exceeds the kernel's limit {MAX_PIXELS}")
    maps = {"a": a} if p is None else {"a": a, "p": p}
    for n, i in maps.items():
        check_float(i, n)
    check_same_dtype(maps)
    for n, i in (("weight", weight), ("bias", bias)):
        check_float(i, n, ("float32",))
    check_contiguous({**maps, "weight": weight, "bias": bias})
    check_cuda({**maps, "weight": weight, "bias": bias})
    return b, ca, cp, h, w, k


def spatial_attention(a: Any, p: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
    """(a * att, p * att, att) with att = sigmoid(conv_kxk([mean_c(x), max_c(x)]) + bias), x = [a; p] (channels).

    a [B, Ca, H, W], p [B, Cp, H, W] or None (attention of a alone; the second result is then None): one dtype
    (float32/float16/bfloat16), contiguous, on one CUDA device; weight [1, 2, k, k] and bias [1] float32 (the SA
    module's conv); att [B, 1, H, W] in the maps' dtype. Statistics, conv and products in fp32, one rounding at each
    store. torch tensors or cupy arrays (results of the same kind); asynchronous on the current stream.
    """
    if is_torch_tensor(a):
        from ._torch_ops import torch_spatial_attention

        return torch_spatial_attention(a, p, weight, bias)
    from .involution import _to_cupy

    aa, pa, wa, ba = _to_cupy(a, p, weight, bias)
    ai = describe(aa, "a")
    b, ca, cp, h, w, k = check_spatial_attention_args(ai, None if pa is None else describe(pa, "p"),
                                                      describe(wa, "weight"), describe(ba, "bias"))
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(aa.device.id):
        ya = cupy.empty_like(aa)
        yp = None if pa is None else cupy.empty_like(pa)
        att = cupy.empty((b, 1, h, w), dtype=aa.dtype)
        nbytes = mod.spatial_attention_workspace_size(b, ca, cp, h, w)
        ws = cupy.empty(nbytes // 4, dtype=cupy.float32)
        mod.spatial_attention(DTYPE_CODES[ai.dtype], aa.data.ptr, 0 if pa is None else pa.data.ptr, wa.data.ptr,
                              ba.data.ptr, ya.data.ptr, 0 if yp is None else yp.data.ptr, att.data.ptr, ws.data.ptr,
                              nbytes, b, ca, cp, h, w, k, stream=cupy.cuda.get_current_stream().ptr)
    return ya, yp, att

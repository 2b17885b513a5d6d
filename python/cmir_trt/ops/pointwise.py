"""Pointwise (1x1) convolution on the GPU with its epilogue in the same kernel: bias, optional residual add and
ReLU — the model's conv1x1 + folded BN [+ ReLU] and a bottleneck's conv3 + identity + ReLU as one launch (cuDNN
adds a convolution's bias in a second kernel and the ReLU / residual in more). torch tensors go through the custom
op ``torch.ops.cmir_trt.pointwise_conv``; cupy arrays call the launcher directly.
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

# The launcher's size limits (cuda/pointwise.cuh: kPointwiseMaxRows, kPointwiseMaxCout): element offsets are 64-bit,
# GEMM row indices (batch * H * W) ints, output channels at most 65535 tiles of 128.
MAX_ROWS = 2**30
MAX_COUT = 65535 * 128


def check_pointwise_args(x: ArrayInfo, weight: ArrayInfo, bias: ArrayInfo,
                         residual: ArrayInfo | None = None) -> tuple[int, int, int, int, int]:
    """Validate; returns (B, Cin, Cout, H, W). Raises ValueError/TypeError with one line saying what is wrong."""
    if len(x.shape) != 4 or min(x.shape) < 1:
        raise ValueError(f"x must be a non-empty [B, Cin, H, W], got shape {x.shape}")
    b, cin, h, w = x.shape
    if len(weight.shape) == 4 and weight.shape[2:] != (1, 1):
        raise ValueError(f"weight must be a 1x1 kernel [Cout, Cin(, 1, 1)], got shape {weight.shape}")
    if len(weight.shape) not in (2, 4) or weight.shape[0] < 1 or weight.shape[1] != cin:
        raise ValueError(f"weight must be [Cout, Cin={cin}] or [Cout, {cin}, 1, 1], got shape {weight.shape}")
    cout = weight.shape[0]
    if bias.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {bias.shape}")
    if residual is not None and residual.shape != (b, cout, h, w):
        raise ValueError(f"residual must have the output's shape {(b, cout, h, w)}, got {residual.shape}")
    if b * h * w > MAX_ROWS:
        raise ValueError(f"B*H*W = {b * h * w} exceeds the kernel's limit {MAX_ROWS}")
    if cout > MAX_COUT:
        raise ValueError(f"Cout = {cout} exceeds the kernel's limit {MAX_COUT}")
    infos = {"x": x, "weight": weight, "bias": bias}
    if residual is not None:
        infos["residual"] = residual
    for n, i in infos.items():
        check_float(i, n)
    check_same_dtype(infos)
    check_contiguous(infos)
    check_cuda(infos)
    return b, cin, cout, h, w


def pointwise_conv(x: Any, weight: Any, bias: Any, residual: Any = None, relu: bool = False) -> Any:
    """y[b, n, h, w] = relu?(sum_k weight[n, k] x[b, k, h, w] + bias[n] + residual[b, n, h, w]), one kernel.

    x [B, Cin, H, W], weight [Cout, Cin] (or [Cout, Cin, 1, 1]), bias [Cout], optional residual [B, Cout, H, W]:
    one dtype (float32/float16/bfloat16), contiguous, on one CUDA device; torch tensors or cupy arrays (result of the
    same kind). fp32 accumulation, one rounding at the store. Runs asynchronously on the current stream.
    """
    if is_torch_tensor(x):
        from ._torch_ops import torch_pointwise_conv

        return torch_pointwise_conv(x, weight, bias, residual, relu)
    from .involution import _to_cupy

    xa, wa, ba, ra = _to_cupy(x, weight, bias, residual)
    xi = describe(xa, "x")
    b, cin, cout, h, w = check_pointwise_args(xi, describe(wa, "weight"), describe(ba, "bias"),
                                              None if ra is None else describe(ra, "residual"))
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(xa.device.id):
        y = cupy.empty((b, cout, h, w), dtype=xa.dtype)
        mod.pointwise_conv(DTYPE_CODES[xi.dtype], xa.data.ptr, wa.data.ptr, ba.data.ptr,
                           0 if ra is None else ra.data.ptr, y.data.ptr, b, cin, cout, h, w, bool(relu),
                           stream=cupy.cuda.get_current_stream().ptr)
    return y

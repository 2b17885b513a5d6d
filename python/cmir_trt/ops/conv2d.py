"""Convolution on the GPU as one implicit-GEMM launch with its epilogue: bias, optional residual add and ReLU — the
model's small convolutions (the stems' 3x3 + folded BN + ReLU, cuDNN's three kernels at batch 1) as one kernel, on
the tensor-core GEMM shared with ``pointwise_conv`` (the input gathered per output pixel and tap). torch tensors go
through the custom op ``torch.ops.cmir_trt.conv2d``; cupy arrays call the launcher directly. The split-K workspace
is ``pointwise_conv``'s (``conv2d_workspace``).
"""

from __future__ import annotations

from typing import Any

from ._arrays import DTYPE_CODES, ArrayInfo, describe, is_torch_tensor
from .pointwise import MAX_ROWS, check_gemm_conv_epilogue, check_workspace

# The launcher's limits (cuda/conv2d.cuh): the GEMM's (MAX_ROWS output pixels, MAX_COUT as pointwise_conv's) and int
# K (Cin * kh * kw).
MAX_K = 2**30
__all__ = ["MAX_K", "MAX_ROWS", "check_conv2d_args", "conv2d", "conv2d_output_size", "conv2d_workspace",
           "conv2d_workspace_size"]


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """PyTorch's output size of one spatial dimension (< 1 when the kernel does not fit)."""
    return (size + 2 * padding - kernel) // stride + 1


def _int(v: Any, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return v


def check_conv2d_args(x: ArrayInfo, weight: ArrayInfo, bias: ArrayInfo, residual: ArrayInfo | None, stride: int,
                      padding: int) -> tuple[int, int, int, int, int, int, int, int, int]:
    """Validate; returns (B, Cin, Cout, H, W, kh, kw, Ho, Wo). Raises ValueError/TypeError with one line saying what
    is wrong."""
    stride, padding = _int(stride, "stride", 1), _int(padding, "padding", 0)
    if len(x.shape) != 4 or min(x.shape) < 1:
        raise ValueError(f"x must be a non-empty [B, Cin, H, W], got shape {x.shape}")
    b, cin, h, w = x.shape
    if len(weight.shape) != 4 or weight.shape[1] != cin or min(weight.shape) < 1:
        raise ValueError(f"weight must be [Cout, Cin={cin}, kh, kw] (one group), got shape {weight.shape}")
    cout, _, kh, kw = weight.shape
    if padding >= kh or padding >= kw:
        raise ValueError(f"padding {padding} must be smaller than the {kh}x{kw} kernel")
    ho, wo = conv2d_output_size(h, kh, stride, padding), conv2d_output_size(w, kw, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"the {kh}x{kw} kernel does not fit the {h}x{w} input padded by {padding}")
    if cin * kh * kw > MAX_K:
        raise ValueError(f"Cin*kh*kw = {cin * kh * kw} exceeds the kernel's limit {MAX_K}")
    check_gemm_conv_epilogue({"x": x, "weight": weight}, bias, residual, (b, cout, ho, wo))
    return b, cin, cout, h, w, kh, kw, ho, wo


def conv2d_workspace_size(batch: int, cin: int, cout: int, height: int, width: int, kh: int, kw: int,
                          stride: int = 1, padding: int = 0) -> int:
    """Bytes of split-K workspace ``conv2d`` can use at these sizes on any GPU (0: it never splits K there)."""
    from .._native import load_cuda

    return int(load_cuda().conv2d_workspace_size(batch, cin, cout, height, width, kh, kw, stride, padding))


def conv2d_workspace(x: Any, weight: Any, stride: int = 1, padding: int = 0, nbytes: int = 0) -> Any:
    """A zeroed split-K workspace for ``conv2d(x, weight, ...)`` (as ``pointwise_workspace``: one workspace, zeroed
    once, serves every later call that fits it, on one stream at a time); None when no plan splits K."""
    from .pointwise import zeroed_workspace

    b, cin, h, w = (int(s) for s in x.shape)
    cout, _, kh, kw = (int(s) for s in weight.shape)
    return zeroed_workspace(x, max(conv2d_workspace_size(b, cin, cout, h, w, kh, kw, stride, padding), int(nbytes)))


def conv2d(x: Any, weight: Any, bias: Any, residual: Any = None, relu: bool = False, stride: int = 1,
           padding: int = 0, workspace: Any = None) -> Any:
    """y = relu?(conv2d(x, weight, stride, padding) + bias + residual), one kernel (one group, dilation 1).

    x [B, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout], optional residual [B, Cout, Ho, Wo]: one dtype
    (float32/float16/bfloat16), contiguous, on one CUDA device; torch tensors or cupy arrays (result of the same
    kind). fp32 accumulation, one rounding at the store. Runs asynchronously on the current stream. workspace: None
    (K never split) or ``conv2d_workspace(x, weight, stride, padding)``.
    """
    if is_torch_tensor(x):
        from ._torch_ops import torch_conv2d

        return torch_conv2d(x, weight, bias, residual, relu, stride, padding, workspace)
    from .involution import _to_cupy

    xa, wa, ba, ra, wsa = _to_cupy(x, weight, bias, residual, workspace)
    xi = describe(xa, "x")
    b, cin, cout, h, w, kh, kw, ho, wo = check_conv2d_args(xi, describe(wa, "weight"), describe(ba, "bias"),
                                                           None if ra is None else describe(ra, "residual"),
                                                           stride, padding)
    ws_bytes = 0 if wsa is None else check_workspace(describe(wsa, "workspace"), xi.device, conv2d_workspace_size(
        b, cin, cout, h, w, kh, kw, stride, padding))
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(xa.device.id):
        y = cupy.empty((b, cout, ho, wo), dtype=xa.dtype)
        mod.conv2d(DTYPE_CODES[xi.dtype], xa.data.ptr, wa.data.ptr, ba.data.ptr, 0 if ra is None else ra.data.ptr,
                   y.data.ptr, b, cin, cout, h, w, kh, kw, stride=stride, pad=padding, relu=bool(relu),
                   workspace=0 if wsa is None else wsa.data.ptr, workspace_bytes=ws_bytes,
                   stream=cupy.cuda.get_current_stream().ptr)
    return y

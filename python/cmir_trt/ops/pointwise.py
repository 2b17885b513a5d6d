"""Pointwise (1x1) convolution on the GPU with its epilogue in the same kernel: bias, optional residual add and
ReLU — the model's conv1x1 + folded BN [+ ReLU] and a bottleneck's conv3 + identity + ReLU as one launch (cuDNN
adds a convolution's bias in a second kernel and the ReLU / residual in more). torch tensors go through the custom
op ``torch.ops.cmir_trt.pointwise_conv``; cupy arrays call the launcher directly.

With a workspace (``pointwise_workspace``) the launch splits K over blocks where the output tiles alone would leave
most SMs idle (small maps with many channels: the last ResNet stages at batch 1); the last block of each tile adds
the fp32 partial sums in split order, so the result does not depend on block timing. Still one launch, no memset.
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


def pointwise_workspace_size(batch: int, cin: int, cout: int, height: int, width: int) -> int:
    """Bytes of split-K workspace ``pointwise_conv`` can use at these sizes on any GPU (0: it never splits K there)."""
    from .._native import load_cuda

    return int(load_cuda().pointwise_conv_workspace_size(batch, cin, cout, height, width))


def pointwise_workspace(x: Any, weight: Any, nbytes: int = 0) -> Any:
    """A zeroed split-K workspace for ``pointwise_conv(x, weight, ...)`` on x's device (a uint8 torch tensor or cupy
    array, as x), of max(``pointwise_workspace_size``, nbytes) bytes; None when that is 0. Zero it once (this does):
    every launch leaves its leading counters zero, so one workspace serves any later call that fits it — calls on
    one stream at a time (calls that may overlap in time need their own). With a shortcut, weight's second
    dimension (Cin + Cs) is the GEMM's K the size depends on."""
    b, _, h, w = (int(s) for s in x.shape)
    return zeroed_workspace(x, max(pointwise_workspace_size(b, int(weight.shape[1]), int(weight.shape[0]), h, w),
                                   int(nbytes)))


def zeroed_workspace(x: Any, nbytes: int) -> Any:
    """nbytes of zeros on x's device, of x's kind (uint8 torch tensor or cupy array); None for 0 bytes."""
    if nbytes == 0:
        return None
    if is_torch_tensor(x):
        import torch

        return torch.zeros(nbytes, dtype=torch.uint8, device=x.device)
    import cupy

    with cupy.cuda.Device(x.device.id):
        return cupy.zeros(nbytes, dtype=cupy.uint8)


def check_workspace(ws: ArrayInfo, device: str, need: int) -> int:
    """A workspace argument: a contiguous uint8 array on the op's device of >= need bytes; returns its size."""
    if ws.dtype != "uint8" or len(ws.shape) != 1:
        raise TypeError(f"workspace must be a 1-D uint8 array (pointwise_workspace(x, weight)), got {ws.dtype} "
                        f"of shape {ws.shape}")
    if not ws.contiguous or ws.device != device:
        raise ValueError(f"workspace must be contiguous and on {device}, got {ws.device}")
    if ws.shape[0] < need:
        raise ValueError(f"workspace has {ws.shape[0]} bytes, these sizes need {need} (pointwise_workspace(x, "
                         f"weight))")
    return ws.shape[0]


def check_shortcut(x_shape: tuple[int, ...], shortcut: ArrayInfo, stride: int) -> int:
    """A projection shortcut for x [B, Cin, H, W]: [B, Cs, Hs, Ws] with ceil(Hs/stride) = H, ceil(Ws/stride) = W
    and Cin a multiple of 32 (cuda/pointwise.cuh: pointwise_shortcut_unsupported); returns Cs."""
    b, cin, h, w = x_shape
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"shortcut_stride must be an int >= 1, got {stride!r}")
    if len(shortcut.shape) != 4 or shortcut.shape[0] != b or min(shortcut.shape) < 1:
        raise ValueError(f"shortcut must be a non-empty [B={b}, Cs, Hs, Ws], got shape {shortcut.shape}")
    _, cs, hs, ws = shortcut.shape
    if -(-hs // stride) != h or -(-ws // stride) != w:
        raise ValueError(f"shortcut map {hs}x{ws} at stride {stride} gives {-(-hs // stride)}x{-(-ws // stride)}, "
                         f"not the output's {h}x{w}")
    if cin % 32 != 0:
        raise ValueError(f"Cin = {cin} must be a multiple of 32 with a shortcut (the GEMM's k-step)")
    return cs


def check_pointwise_args(x: ArrayInfo, weight: ArrayInfo, bias: ArrayInfo, residual: ArrayInfo | None = None,
                         shortcut: ArrayInfo | None = None,
                         shortcut_stride: int = 1) -> tuple[int, int, int, int, int, int]:
    """Validate; returns (B, Cin, Cout, H, W, Cs) (Cs = 0 without a shortcut). Raises ValueError/TypeError with one
    line saying what is wrong."""
    if len(x.shape) != 4 or min(x.shape) < 1:
        raise ValueError(f"x must be a non-empty [B, Cin, H, W], got shape {x.shape}")
    b, cin, h, w = x.shape
    cs = 0 if shortcut is None else check_shortcut(x.shape, shortcut, shortcut_stride)
    k = cin + cs
    if len(weight.shape) == 4 and weight.shape[2:] != (1, 1):
        raise ValueError(f"weight must be a 1x1 kernel [Cout, Cin(, 1, 1)], got shape {weight.shape}")
    if len(weight.shape) not in (2, 4) or weight.shape[0] < 1 or weight.shape[1] != k:
        what = f"Cin={cin}" if cs == 0 else f"Cin + Cs = {cin} + {cs}"
        raise ValueError(f"weight must be [Cout, {what}] or [Cout, {k}, 1, 1], got shape {weight.shape}")
    cout = weight.shape[0]
    check_gemm_conv_epilogue({"x": x, "weight": weight, "shortcut": shortcut}, bias, residual, (b, cout, h, w))
    return b, cin, cout, h, w, cs


def check_gemm_conv_epilogue(inputs: dict[str, ArrayInfo | None], bias: ArrayInfo, residual: ArrayInfo | None,
                             out_shape: tuple[int, int, int, int]) -> None:
    """The checks the GEMM convolutions (pointwise_conv, conv2d) share: bias [Cout], residual of the output's shape,
    the launchers' row / Cout limits, and one float dtype, contiguous, one CUDA device for every array given."""
    b, cout, ho, wo = out_shape
    if bias.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {bias.shape}")
    if residual is not None and residual.shape != out_shape:
        raise ValueError(f"residual must have the output's shape {out_shape}, got {residual.shape}")
    if b * ho * wo > MAX_ROWS:
        raise ValueError(f"B*H*W of the output = {b * ho * wo} exceeds the kernel's limit {MAX_ROWS}")
    if cout > MAX_COUT:
        raise ValueError(f"Cout = {cout} exceeds the kernel's limit {MAX_COUT}")
    infos = {n: i for n, i in {**inputs, "bias": bias, "residual": residual}.items() if i is not None}
    for n, i in infos.items():
        check_float(i, n)
    check_same_dtype(infos)
    check_contiguous(infos)
    check_cuda(infos)


def pointwise_conv(x: Any, weight: Any, bias: Any, residual: Any = None, relu: bool = False,
                   workspace: Any = None, shortcut: Any = None, shortcut_stride: int = 1) -> Any:
    """y[b, n, h, w] = relu?(sum_k weight[n, k] x[b, k, h, w] + bias[n] + residual[b, n, h, w]), one kernel.

    x [B, Cin, H, W], weight [Cout, Cin] (or [Cout, Cin, 1, 1]), bias [Cout], optional residual [B, Cout, H, W]:
    one dtype (float32/float16/bfloat16), contiguous, on one CUDA device; torch tensors or cupy arrays (result of the
    same kind). fp32 accumulation, one rounding at the store. Runs asynchronously on the current stream.
    workspace: None (K never split) or ``pointwise_workspace(x, weight)`` (or a larger one made by it), reused
    across calls on one stream: split-K for small maps, same result whichever block finishes last.
    shortcut [B, Cs, Hs, Ws] (same dtype): a projection shortcut in the same GEMM — weight is then [Cout, Cin + Cs]
    and its last Cs columns apply to shortcut[:, :, ::shortcut_stride, ::shortcut_stride] (a strided 1x1
    convolution onto the H x W map; bias holds both biases); Cin must be a multiple of 32.
    """
    if is_torch_tensor(x):
        from ._torch_ops import torch_pointwise_conv

        return torch_pointwise_conv(x, weight, bias, residual, relu, workspace, shortcut, shortcut_stride)
    from .involution import _to_cupy

    xa, wa, ba, ra, wsa, sa = _to_cupy(x, weight, bias, residual, workspace, shortcut)
    xi = describe(xa, "x")
    b, cin, cout, h, w, cs = check_pointwise_args(xi, describe(wa, "weight"), describe(ba, "bias"),
                                                  None if ra is None else describe(ra, "residual"),
                                                  None if sa is None else describe(sa, "shortcut"), shortcut_stride)
    ws_bytes = 0 if wsa is None else check_workspace(describe(wsa, "workspace"), xi.device,
                                                     pointwise_workspace_size(b, cin + cs, cout, h, w))
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(xa.device.id):
        y = cupy.empty((b, cout, h, w), dtype=xa.dtype)
        mod.pointwise_conv(DTYPE_CODES[xi.dtype], xa.data.ptr, wa.data.ptr, ba.data.ptr,
                           0 if ra is None else ra.data.ptr, y.data.ptr, b, cin, cout, h, w, bool(relu),
                           workspace=0 if wsa is None else wsa.data.ptr, workspace_bytes=ws_bytes,
                           shortcut=0 if sa is None else sa.data.ptr, shortcut_channels=cs,
                           shortcut_height=0 if sa is None else sa.shape[2],
                           shortcut_width=0 if sa is None else sa.shape[3], shortcut_stride=int(shortcut_stride),
                           stream=cupy.cuda.get_current_stream().ptr)
    return y

"""Involution on the GPU: ``involution`` (aggregation with the kernel tensor of ``Involution2d.generate_kernel``) and
``involution_fused`` (generation + aggregation in one kernel), for torch tensors and cupy arrays.

torch inputs go through the custom ops ``torch.ops.cmir_trt.involution`` / ``involution_fused`` (with fake
implementations, so torch.compile and CUDA graphs see them); cupy inputs call the launcher directly. Both run on the
caller's current stream and copy nothing.
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

MAX_KERNEL_SIZE = 15
MAX_STRIDE = 4


def output_size(size: int, stride: int) -> int:
    """ceil(size / stride), as Involution2d."""
    return (size + stride - 1) // stride


def check_involution_args(x: ArrayInfo, kernel: ArrayInfo, kernel_size: int, stride: int,
                          scale: ArrayInfo | None = None, shift: ArrayInfo | None = None) -> tuple[int, ...]:
    """Validate shapes/dtypes/layout/devices; returns (B, C, H, W, G, Ho, Wo). Raises ValueError/TypeError."""
    _check_ks(kernel_size, stride)
    if len(x.shape) != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {x.shape}")
    if len(kernel.shape) != 6:
        raise ValueError(f"kernel must be [B, G, K, K, H', W'] (as Involution2d.generate_kernel), got {kernel.shape}")
    b, c, h, w = x.shape
    g = kernel.shape[1]
    ho, wo = output_size(h, stride), output_size(w, stride)
    if min(b, c, h, w) < 1:
        raise ValueError(f"x must be non-empty, got shape {x.shape}")
    if g < 1 or c % g != 0:
        raise ValueError(f"channels ({c}) must be divisible by the kernel's group count G={g}")
    expected = (b, g, kernel_size, kernel_size, ho, wo)
    if kernel.shape != expected:
        raise ValueError(f"kernel shape {kernel.shape} does not match x {x.shape} with kernel_size={kernel_size}, "
                         f"stride={stride}: expected {expected}")
    infos = {"x": x, "kernel": kernel}
    for n, i in infos.items():
        check_float(i, n)
    check_same_dtype(infos)
    _check_epilogue(c, scale, shift, infos)
    check_contiguous(infos)
    check_cuda(infos)
    return b, c, h, w, g, ho, wo


def check_fused_args(x: ArrayInfo, w1: ArrayInfo, b1: ArrayInfo, w2: ArrayInfo, b2: ArrayInfo, kernel_size: int,
                     stride: int, group_channels: int, scale: ArrayInfo | None = None,
                     shift: ArrayInfo | None = None) -> tuple[int, ...]:
    """Validate the fused op's arguments; returns (B, C, H, W, G, hidden, Ho, Wo)."""
    _check_ks(kernel_size, stride)
    if kernel_size not in (1, 3, 5, 7):
        raise ValueError(f"involution_fused supports kernel_size 1, 3, 5, 7 (got {kernel_size}); use involution()")
    if len(x.shape) != 4 or min(x.shape) < 1:
        raise ValueError(f"x must be a non-empty [B, C, H, W], got shape {x.shape}")
    b, c, h, w = x.shape
    if group_channels < 1 or c % group_channels != 0:
        raise ValueError(f"channels ({c}) must be divisible by group_channels ({group_channels})")
    g = c // group_channels
    if len(w1.shape) != 2 or w1.shape[1] != c or w1.shape[0] < 1:
        raise ValueError(f"w1 must be [hidden, C={c}], got {w1.shape}")
    hidden = w1.shape[0]
    kk = kernel_size * kernel_size
    for n, info, shape in (("b1", b1, (hidden,)), ("w2", w2, (g * kk, hidden)), ("b2", b2, (g * kk,))):
        if info.shape != shape:
            raise ValueError(f"{n} must have shape {shape}, got {info.shape}")
    check_float(x, "x")
    params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    for n, i in params.items():
        check_float(i, n, ("float32",))
    infos = {"x": x, **params}
    _check_epilogue(c, scale, shift, infos)
    check_contiguous(infos)
    check_cuda(infos)
    return b, c, h, w, g, hidden, output_size(h, stride), output_size(w, stride)


def _check_ks(kernel_size: int, stride: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0 or kernel_size > MAX_KERNEL_SIZE:
        raise ValueError(f"kernel_size must be an odd int in [1, {MAX_KERNEL_SIZE}], got {kernel_size!r}")
    if not isinstance(stride, int) or not 1 <= stride <= MAX_STRIDE:
        raise ValueError(f"stride must be an int in [1, {MAX_STRIDE}], got {stride!r}")


def _check_epilogue(channels: int, scale: ArrayInfo | None, shift: ArrayInfo | None,
                    infos: dict[str, ArrayInfo]) -> None:
    for n, i in (("scale", scale), ("shift", shift)):
        if i is None:
            continue
        if i.shape != (channels,):
            raise ValueError(f"{n} must have shape ({channels},), got {i.shape}")
        check_float(i, n, ("float32",))
        infos[n] = i


def involution(x: Any, kernel: Any, kernel_size: int, stride: int = 1, scale: Any = None, shift: Any = None,
               relu: bool = False) -> Any:
    """Involution aggregation on the GPU: y[n,c,h,w] = sum_{kh,kw} kernel[n,g(c),kh,kw,h,w] x[n,c,h*s-p+kh,w*s-p+kw].

    x [B, C, H, W] and kernel [B, G, K, K, H', W'] (exactly as ``Involution2d.generate_kernel`` returns it), one
    dtype (float32/float16/bfloat16), contiguous, on one CUDA device; torch tensors or cupy arrays (result of the
    same kind). Optional epilogue y = relu?(y * scale[c] + shift[c]) with fp32 [C] scale/shift (a folded BN).
    Runs asynchronously on the current stream.
    """
    if is_torch_tensor(x):
        from ._torch_ops import torch_involution

        return torch_involution(x, kernel, kernel_size, stride, scale, shift, relu)
    xa, ka, sa, ha = _to_cupy(x, kernel, scale, shift)
    dims = check_involution_args(describe(xa, "x"), describe(ka, "kernel"), kernel_size, stride,
                                 None if sa is None else describe(sa, "scale"),
                                 None if ha is None else describe(ha, "shift"))
    b, c, h, w, g, ho, wo = dims
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(xa.device.id):
        y = cupy.empty((b, c, ho, wo), dtype=xa.dtype)
        mod.involution(DTYPE_CODES[describe(xa, "x").dtype], xa.data.ptr, ka.data.ptr, y.data.ptr, b, c, h, w,
                       kernel_size, stride, c // g, stream=cupy.cuda.get_current_stream().ptr,
                       scale=0 if sa is None else sa.data.ptr, shift=0 if ha is None else ha.data.ptr, relu=relu)
    return y


def involution_fused(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, kernel_size: int, stride: int = 1,
                     group_channels: int = 16, scale: Any = None, shift: Any = None, relu: bool = False) -> Any:
    """Kernel generation + aggregation in one kernel (the [B,G,K,K,H',W'] tensor never reaches memory).

    Per pixel: h = relu(w1 . avgpool_s(x) + b1); k = w2 . h + b2; then the aggregation of ``involution``. w1 [hidden,
    C], b1 [hidden], w2 [G*K*K, hidden], b2 [G*K*K] are fp32 with the generator's BN folded in (see
    ``fold_generator``). kernel_size 1/3/5/7.
    """
    if is_torch_tensor(x):
        from ._torch_ops import torch_involution_fused

        return torch_involution_fused(x, w1, b1, w2, b2, kernel_size, stride, group_channels, scale, shift, relu)
    xa, w1a, b1a, w2a, b2a, sa, ha = _to_cupy(x, w1, b1, w2, b2, scale, shift)
    dims = check_fused_args(describe(xa, "x"), describe(w1a, "w1"), describe(b1a, "b1"), describe(w2a, "w2"),
                            describe(b2a, "b2"), kernel_size, stride, group_channels,
                            None if sa is None else describe(sa, "scale"),
                            None if ha is None else describe(ha, "shift"))
    b, c, h, w, _g, hidden, ho, wo = dims
    import cupy

    from .._native import load_cuda

    mod = load_cuda()
    with cupy.cuda.Device(xa.device.id):
        y = cupy.empty((b, c, ho, wo), dtype=xa.dtype)
        mod.involution_fused(DTYPE_CODES[describe(xa, "x").dtype], xa.data.ptr, w1a.data.ptr, b1a.data.ptr,
                             w2a.data.ptr, b2a.data.ptr, y.data.ptr, b, c, h, w, kernel_size, stride, group_channels,
                             hidden, stream=cupy.cuda.get_current_stream().ptr,
                             scale=0 if sa is None else sa.data.ptr, shift=0 if ha is None else ha.data.ptr,
                             relu=relu)
    return y


def fold_generator(module: Any) -> dict[str, Any]:
    """fp32 generator weights of an ``Involution2d`` (eval-mode BN folded into the first 1x1 conv) for
    ``involution_fused``: {"w1", "b1", "w2", "b2", "kernel_size", "stride", "group_channels"} (torch tensors on the
    module's device)."""
    import torch

    with torch.no_grad():
        bn = module.bn
        inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
        s = gamma * inv_std
        w1 = module.reduce.weight.double().flatten(1) * s[:, None]
        b1 = beta - bn.running_mean.double() * s
        w2 = module.span.weight.double().flatten(1)
        b2 = module.span.bias.double() if module.span.bias is not None else torch.zeros(w2.shape[0], dtype=w2.dtype,
                                                                                         device=w2.device)
    return {"w1": w1.float().contiguous(), "b1": b1.float().contiguous(), "w2": w2.float().contiguous(),
            "b2": b2.float().contiguous(), "kernel_size": module.kernel_size, "stride": module.stride,
            "group_channels": module.group_channels}


def _to_cupy(*arrays: Any) -> tuple[Any, ...]:
    """cupy views (no copy) of __cuda_array_interface__ objects; None stays None. Describes/validates first so that a
    wrong type is a TypeError even without cupy installed."""
    out = []
    for i, a in enumerate(arrays):
        if a is None:
            out.append(None)
            continue
        describe(a, f"argument {i}")
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError("cupy is needed for non-torch CUDA arrays (pip install cupy-cuda13x)") from exc
        out.append(a if isinstance(a, cupy.ndarray) else cupy.asarray(a))
    return tuple(out)

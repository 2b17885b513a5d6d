"""torch custom ops over the CUDA launchers: ``torch.ops.cmir_trt.involution``, ``.involution_fused``, ``.cmam``,
``.pointwise_conv``, ``.conv2d``, ``.spatial_attention``.

Registered with torch.library (CUDA implementation + fake implementation), so eager code, torch.compile (the fake
impl gives output shapes) and CUDA graph capture (no host sync, outputs from the caching allocator) all see one op.
Imported only when a torch tensor reaches cmir_trt.ops (it imports torch).
"""

# No `from __future__ import annotations` and Optional[...] rather than `X | None`: torch.library infers the op
# schema from the annotation objects, and Optional is the form every torch version since 2.4 understands.
# ruff: noqa: UP045
import math
from typing import Optional

import torch
from torch import Tensor

from ._arrays import DTYPE_CODES, describe
from .cmam import check_cmam_args
from .conv2d import check_conv2d_args, conv2d_output_size, conv2d_workspace_size
from .involution import check_fused_args, check_involution_args, output_size
from .pointwise import check_pointwise_args, check_workspace, pointwise_workspace_size
from .spatial_attention import check_spatial_attention_args

_mod = None


def _cuda_module():  # noqa: ANN202 - the compiled extension
    global _mod
    if _mod is None:
        from .._native import load_cuda

        _mod = load_cuda()
    return _mod


def _stream(t: Tensor) -> int:
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else int(t.data_ptr())


def _dtype_code(t: Tensor) -> int:
    return DTYPE_CODES[str(t.dtype).replace("torch.", "")]


@torch.library.custom_op("cmir_trt::involution", mutates_args=(), device_types="cuda")
def _involution_op(x: Tensor, kernel: Tensor, kernel_size: int, stride: int, scale: Optional[Tensor],
                   shift: Optional[Tensor], relu: bool) -> Tensor:
    b, c, h, w = x.shape
    g = kernel.shape[1]
    y = torch.empty((b, c, output_size(h, stride), output_size(w, stride)), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _cuda_module().involution(_dtype_code(x), x.data_ptr(), kernel.data_ptr(), y.data_ptr(), b, c, h, w,
                                  kernel_size, stride, c // g, stream=_stream(x), scale=_ptr(scale),
                                  shift=_ptr(shift), relu=relu)
    return y


@_involution_op.register_fake
def _involution_fake(x: Tensor, kernel: Tensor, kernel_size: int, stride: int, scale: Optional[Tensor],
                     shift: Optional[Tensor], relu: bool) -> Tensor:
    b, c, h, w = x.shape
    return x.new_empty((b, c, output_size(h, stride), output_size(w, stride)))


@torch.library.custom_op("cmir_trt::involution_fused", mutates_args=(), device_types="cuda")
def _involution_fused_op(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, kernel_size: int, stride: int,
                         group_channels: int, scale: Optional[Tensor], shift: Optional[Tensor], relu: bool) -> Tensor:
    b, c, h, w = x.shape
    y = torch.empty((b, c, output_size(h, stride), output_size(w, stride)), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _cuda_module().involution_fused(_dtype_code(x), x.data_ptr(), w1.data_ptr(), b1.data_ptr(), w2.data_ptr(),
                                        b2.data_ptr(), y.data_ptr(), b, c, h, w, kernel_size, stride, group_channels,
                                        w1.shape[0], stream=_stream(x), scale=_ptr(scale), shift=_ptr(shift),
                                        relu=relu)
    return y


@_involution_fused_op.register_fake
def _involution_fused_fake(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, kernel_size: int, stride: int,
                           group_channels: int, scale: Optional[Tensor], shift: Optional[Tensor],
                           relu: bool) -> Tensor:
    b, c, h, w = x.shape
    return x.new_empty((b, c, output_size(h, stride), output_size(w, stride)))


@torch.library.custom_op("cmir_trt::cmam", mutates_args=(), device_types="cuda")
def _cmam_op(art: Tensor, pv: Tensor, weights_art: Tensor, weights_pv: Tensor, heads: int, dim: int,
             eps: float) -> tuple[Tensor, Tensor]:
    b, c, h, w = art.shape
    code = _dtype_code(art)
    mod = _cuda_module()
    out_a = torch.empty_like(art)
    out_p = torch.empty_like(pv)
    with torch.cuda.device(art.device):
        nbytes = int(mod.cmam_workspace_size(code, b, c, h, w, dim, heads))
        ws = torch.empty((nbytes,), dtype=torch.uint8, device=art.device)  # caching allocator: graph-capture safe
        mod.cmam(code, art.data_ptr(), pv.data_ptr(), weights_art.data_ptr(), weights_pv.data_ptr(),
                 out_a.data_ptr(), out_p.data_ptr(), ws.data_ptr(), nbytes, b, c, h, w, dim, heads, float(eps),
                 stream=_stream(art))
    return out_a, out_p


@_cmam_op.register_fake
def _cmam_fake(art: Tensor, pv: Tensor, weights_art: Tensor, weights_pv: Tensor, heads: int, dim: int,
               eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(art), torch.empty_like(pv)


# The split-K workspace is mutated (its partial sums; its counters return to zero), so it is declared as such.
@torch.library.custom_op("cmir_trt::pointwise_conv", mutates_args=("workspace",), device_types="cuda")
def _pointwise_conv_op(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool,
                       workspace: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                       shortcut_stride: int = 1) -> Tensor:
    b, cin, h, w = x.shape
    cout = weight.shape[0]
    y = torch.empty((b, cout, h, w), dtype=x.dtype, device=x.device)
    sc = (0, 0, 0) if shortcut is None else tuple(shortcut.shape[1:])
    with torch.cuda.device(x.device):
        _cuda_module().pointwise_conv(_dtype_code(x), x.data_ptr(), weight.data_ptr(), bias.data_ptr(), _ptr(residual),
                                      y.data_ptr(), b, cin, cout, h, w, relu, workspace=_ptr(workspace),
                                      workspace_bytes=0 if workspace is None else workspace.numel(),
                                      shortcut=_ptr(shortcut), shortcut_channels=sc[0], shortcut_height=sc[1],
                                      shortcut_width=sc[2], shortcut_stride=shortcut_stride, stream=_stream(x))
    return y


@_pointwise_conv_op.register_fake
def _pointwise_conv_fake(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool,
                         workspace: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                         shortcut_stride: int = 1) -> Tensor:
    b, _, h, w = x.shape
    return x.new_empty((b, weight.shape[0], h, w))


@torch.library.custom_op("cmir_trt::conv2d", mutates_args=("workspace",), device_types="cuda")
def _conv2d_op(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool, stride: int,
               padding: int, workspace: Optional[Tensor] = None) -> Tensor:
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = conv2d_output_size(h, kh, stride, padding), conv2d_output_size(w, kw, stride, padding)
    y = torch.empty((b, cout, ho, wo), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _cuda_module().conv2d(_dtype_code(x), x.data_ptr(), weight.data_ptr(), bias.data_ptr(), _ptr(residual),
                              y.data_ptr(), b, cin, cout, h, w, kh, kw, stride=stride, pad=padding, relu=relu,
                              workspace=_ptr(workspace), workspace_bytes=0 if workspace is None else workspace.numel(),
                              stream=_stream(x))
    return y


@_conv2d_op.register_fake
def _conv2d_fake(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool, stride: int,
                 padding: int, workspace: Optional[Tensor] = None) -> Tensor:
    b, _, h, w = x.shape
    _, _, kh, kw = weight.shape
    return x.new_empty((b, weight.shape[0], conv2d_output_size(h, kh, stride, padding),
                        conv2d_output_size(w, kw, stride, padding)))


@torch.library.custom_op("cmir_trt::spatial_attention", mutates_args=(), device_types="cuda")
def _spatial_attention_op(a: Tensor, p: Optional[Tensor], weight: Tensor,
                          bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, ca, h, w = a.shape
    cp = 0 if p is None else p.shape[1]
    ya = torch.empty_like(a)
    yp = torch.empty_like(p) if p is not None else a.new_empty((0,))
    att = a.new_empty((b, 1, h, w))
    with torch.cuda.device(a.device):
        mod = _cuda_module()
        nbytes = mod.spatial_attention_workspace_size(b, ca, cp, h, w)
        ws = torch.empty(nbytes // 4, dtype=torch.float32, device=a.device)  # partial statistics, no initial contents
        mod.spatial_attention(_dtype_code(a), a.data_ptr(), _ptr(p), weight.data_ptr(), bias.data_ptr(),
                              ya.data_ptr(), 0 if p is None else yp.data_ptr(), att.data_ptr(), ws.data_ptr(), nbytes,
                              b, ca, cp, h, w, weight.shape[-1], stream=_stream(a))
    return ya, yp, att


@_spatial_attention_op.register_fake
def _spatial_attention_fake(a: Tensor, p: Optional[Tensor], weight: Tensor,
                            bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, _, h, w = a.shape
    return torch.empty_like(a), torch.empty_like(p) if p is not None else a.new_empty((0,)), a.new_empty((b, 1, h, w))


def _info(t: Optional[Tensor], name: str):  # noqa: ANN202
    return None if t is None else describe(t, name)


def torch_involution(x: Tensor, kernel: Tensor, kernel_size: int, stride: int = 1, scale: Optional[Tensor] = None,
                     shift: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor like x, got {type(kernel).__name__}")
    check_involution_args(describe(x, "x"), describe(kernel, "kernel"), kernel_size, stride, _info(scale, "scale"),
                          _info(shift, "shift"))
    return torch.ops.cmir_trt.involution(x, kernel, kernel_size, stride, scale, shift, bool(relu))


def torch_involution_fused(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, kernel_size: int,
                           stride: int = 1, group_channels: int = 16, scale: Optional[Tensor] = None,
                           shift: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    for n, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{n} must be a torch.Tensor like x, got {type(t).__name__}")
    check_fused_args(describe(x, "x"), describe(w1, "w1"), describe(b1, "b1"), describe(w2, "w2"),
                     describe(b2, "b2"), kernel_size, stride, group_channels, _info(scale, "scale"),
                     _info(shift, "shift"))
    return torch.ops.cmir_trt.involution_fused(x, w1, b1, w2, b2, kernel_size, stride, group_channels, scale, shift,
                                               bool(relu))


def torch_cmam(art: Tensor, pv: Tensor, weights_art: Tensor, weights_pv: Tensor, heads: int,
               dim: Optional[int] = None, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    for n, t in (("pv", pv), ("weights_art", weights_art), ("weights_pv", weights_pv)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{n} must be a torch.Tensor like art, got {type(t).__name__}")
    if not math.isfinite(float(eps)):
        raise ValueError(f"eps must be finite, got {eps!r}")
    *_, dim = check_cmam_args(describe(art, "art"), describe(pv, "pv"), describe(weights_art, "weights_art"),
                              describe(weights_pv, "weights_pv"), heads, dim, eps)
    return torch.ops.cmir_trt.cmam(art, pv, weights_art, weights_pv, heads, dim, float(eps))


def torch_pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor] = None,
                         relu: bool = False, workspace: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                         shortcut_stride: int = 1) -> Tensor:
    optional = ("residual", "workspace", "shortcut")
    for n, t in (("weight", weight), ("bias", bias), ("residual", residual), ("workspace", workspace),
                 ("shortcut", shortcut)):
        if not isinstance(t, Tensor) and not (n in optional and t is None):
            raise TypeError(f"{n} must be a torch.Tensor like x, got {type(t).__name__}")
    xi = describe(x, "x")
    b, cin, cout, h, w, cs = check_pointwise_args(xi, describe(weight, "weight"), describe(bias, "bias"),
                                                  _info(residual, "residual"), _info(shortcut, "shortcut"),
                                                  shortcut_stride)
    if workspace is not None:
        check_workspace(describe(workspace, "workspace"), xi.device,
                        pointwise_workspace_size(b, cin + cs, cout, h, w))
    return torch.ops.cmir_trt.pointwise_conv(x, weight, bias, residual, bool(relu), workspace, shortcut,
                                             int(shortcut_stride))


def torch_conv2d(x: Tensor, weight: Tensor, bias: Tensor, residual: Optional[Tensor] = None, relu: bool = False,
                 stride: int = 1, padding: int = 0, workspace: Optional[Tensor] = None) -> Tensor:
    for n, t in (("weight", weight), ("bias", bias), ("residual", residual), ("workspace", workspace)):
        if not isinstance(t, Tensor) and not (n in ("residual", "workspace") and t is None):
            raise TypeError(f"{n} must be a torch.Tensor like x, got {type(t).__name__}")
    xi = describe(x, "x")
    b, cin, cout, h, w, kh, kw, _, _ = check_conv2d_args(xi, describe(weight, "weight"), describe(bias, "bias"),
                                                         _info(residual, "residual"), stride, padding)
    if workspace is not None:
        check_workspace(describe(workspace, "workspace"), xi.device,
                        conv2d_workspace_size(b, cin, cout, h, w, kh, kw, stride, padding))
    return torch.ops.cmir_trt.conv2d(x, weight, bias, residual, bool(relu), int(stride), int(padding), workspace)


def torch_spatial_attention(a: Tensor, p: Optional[Tensor], weight: Tensor,
                            bias: Tensor) -> tuple[Tensor, Optional[Tensor], Tensor]:
    for n, t in (("p", p), ("weight", weight), ("bias", bias)):
        if not isinstance(t, Tensor) and not (n == "p" and t is None):
            raise TypeError(f"{n} must be a torch.Tensor like a, got {type(t).__name__}")
    check_spatial_attention_args(describe(a, "a"), _info(p, "p"), describe(weight, "weight"), describe(bias, "bias"))
    ya, yp, att = torch.ops.cmir_trt.spatial_attention(a, p, weight, bias)
    return ya, (yp if p is not None else None), att

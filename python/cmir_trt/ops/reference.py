"""float64 references of the GPU ops, written independently of the model code (padding + shifted slices and einsum,
no unfold, no nn modules). Same signatures as cmir_trt.ops; inputs on any device; results float64 on the input's
device. Used by the tests (tier 0/1) and by ``prepare_model(..., impl="reference")`` to check the GPU model rewrite
on a machine without a GPU."""

from __future__ import annotations

import math
from typing import Any


def _epilogue(y: Any, scale: Any, shift: Any, relu: bool) -> Any:
    if scale is not None:
        y = y * scale.double()[None, :, None, None]
    if shift is not None:
        y = y + shift.double()[None, :, None, None]
    return y.clamp_min(0.0) if relu else y


def involution_ref(x: Any, kernel: Any, kernel_size: int, stride: int = 1, scale: Any = None, shift: Any = None,
                   relu: bool = False) -> Any:
    """y[n,c,h,w] = sum_{kh,kw} kernel[n, c//gc, kh, kw, h, w] * xpad[n, c, h*s+kh, w*s+kw] in float64."""
    import torch.nn.functional as F

    x = x.double()
    kernel = kernel.double()
    b, c, h, w = x.shape
    g = kernel.shape[1]
    k = kernel_size
    ho, wo = kernel.shape[4], kernel.shape[5]
    p = (k - 1) // 2
    # pad enough on the bottom/right for the last window of a ceil-mode output
    xp = F.pad(x, (p, p + stride, p, p + stride))
    y = x.new_zeros((b, c, ho, wo))
    kg = kernel.repeat_interleave(c // g, dim=1)  # [B, C, K, K, Ho, Wo]
    for kh in range(k):
        for kw in range(k):
            win = xp[:, :, kh:kh + (ho - 1) * stride + 1:stride, kw:kw + (wo - 1) * stride + 1:stride]
            y += kg[:, :, kh, kw] * win
    return _epilogue(y, scale, shift, relu)


def avg_pool_ceil_ref(x: Any, stride: int) -> Any:
    """Mean over each stride x stride block, partial border blocks averaging their valid pixels (float64)."""
    x = x.double()
    if stride == 1:
        return x
    b, c, h, w = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    out = x.new_zeros((b, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean(dim=(2, 3))
    return out


def generate_kernel_ref(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, kernel_size: int, stride: int,
                        group_channels: int) -> Any:
    """The [B, G, K, K, Ho, Wo] kernel of the (BN-folded) generator in float64."""
    import torch

    t = avg_pool_ceil_ref(x, stride)
    hid = torch.relu(torch.einsum("jc,bchw->bjhw", w1.double(), t) + b1.double()[None, :, None, None])
    wk = torch.einsum("oj,bjhw->bohw", w2.double(), hid) + b2.double()[None, :, None, None]
    b, _, h, w = wk.shape
    g = x.shape[1] // group_channels
    return wk.view(b, g, kernel_size, kernel_size, h, w)


def involution_fused_ref(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, kernel_size: int, stride: int = 1,
                         group_channels: int = 16, scale: Any = None, shift: Any = None, relu: bool = False) -> Any:
    kernel = generate_kernel_ref(x, w1, b1, w2, b2, kernel_size, stride, group_channels)
    return involution_ref(x, kernel, kernel_size, stride, scale, shift, relu)


def unpack_cmam_weights(w: Any, channels: int, dim: int) -> dict[str, Any]:
    """Views of a packed CMAM buffer (export/plugin_schema.json order)."""
    c, d = channels, dim
    sizes = [("wq", (d, c)), ("bq", (d,)), ("wk", (d, c)), ("bk", (d,)), ("wv", (d, c)), ("bv", (d,)),
             ("wo", (c, d)), ("bo", (c,)), ("gamma", (c,)), ("beta", (c,))]
    out, off = {}, 0
    for name, shape in sizes:
        n = math.prod(shape)
        out[name] = w[off:off + n].view(shape)
        off += n
    if off != w.numel():
        raise ValueError(f"packed CMAM buffer has {w.numel()} elements, expected {off}")
    return out


def cmam_ref(art: Any, pv: Any, weights_art: Any, weights_pv: Any, heads: int, dim: int | None = None,
             eps: float = 1e-5) -> tuple[Any, Any]:
    """Both CMAM directions in float64 from packed weights; returns NCHW float64 maps."""
    import torch

    b, c, h, w = art.shape
    if dim is None:
        dim = (weights_art.numel() - 3 * c) // (4 * c + 3)
    hd = dim // heads
    ta = art.double().flatten(2).transpose(1, 2)  # [B, N, C]
    tp = pv.double().flatten(2).transpose(1, 2)

    def direction(tq: Any, tkv: Any, packed: Any) -> Any:
        p = {k: v.double() for k, v in unpack_cmam_weights(packed, c, dim).items()}
        q = (tq @ p["wq"].T + p["bq"]).view(b, -1, heads, hd).transpose(1, 2)
        k = (tkv @ p["wk"].T + p["bk"]).view(b, -1, heads, hd).transpose(1, 2)
        v = (tkv @ p["wv"].T + p["bv"]).view(b, -1, heads, hd).transpose(1, 2)
        att = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd), dim=-1)
        y = torch.einsum("bhqk,bhkd->bhqd", att, v).transpose(1, 2).reshape(b, -1, dim)
        z = tq + y @ p["wo"].T + p["bo"]
        mean = z.mean(dim=-1, keepdim=True)
        var = ((z - mean) ** 2).mean(dim=-1, keepdim=True)
        out = (z - mean) / torch.sqrt(var + eps) * p["gamma"] + p["beta"]
        return out.transpose(1, 2).reshape(b, c, h, w)

    return direction(ta, tp, weights_art), direction(tp, ta, weights_pv)


def pointwise_conv_ref(x: Any, weight: Any, bias: Any = None, residual: Any = None, relu: bool = False,
                       shortcut: Any = None, shortcut_stride: int = 1) -> Any:
    """1x1 convolution y[b,n,p] = relu?(sum_k weight[n,k] x[b,k,p] + bias[n] + residual[b,n,p]) in float64 (NCHW;
    weight [Cout, Cin] or [Cout, Cin, 1, 1]). With a shortcut [B, Cs, Hs, Ws], weight is [Cout, Cin + Cs] and its last
    Cs columns also apply to shortcut[:, :, ::s, ::s] (a stride-s 1x1 convolution onto the output's map)."""
    import torch

    w = weight.double().reshape(weight.shape[0], -1)
    cin = x.shape[1]
    y = torch.einsum("nk,bkhw->bnhw", w[:, :cin], x.double())
    if shortcut is not None:
        s = int(shortcut_stride)
        y = y + torch.einsum("nk,bkhw->bnhw", w[:, cin:], shortcut.double()[:, :, ::s, ::s])
    if bias is not None:
        y = y + bias.double()[None, :, None, None]
    if residual is not None:
        y = y + residual.double()
    return y.clamp_min(0.0) if relu else y


def conv2d_ref(x: Any, weight: Any, bias: Any = None, residual: Any = None, relu: bool = False, stride: int = 1,
               padding: int = 0) -> Any:
    """relu?(conv2d(x, weight, stride, padding) + bias + residual) in float64 (one group, dilation 1; NCHW)."""
    import torch.nn.functional as F

    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride=stride,
                 padding=padding)
    if residual is not None:
        y = y + residual.double()
    return y.clamp_min(0.0) if relu else y


def spatial_attention_ref(a: Any, p: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
    """(a * att, p * att, att) in float64, att = sigmoid(conv([mean_c(x), max_c(x)], weight, bias, padding=(k-1)/2))
    over x = [a; p] (p may be None: the second result is then None) — CMIR's SpatialAttention on the concatenation."""
    import torch
    import torch.nn.functional as F

    x = a.double() if p is None else torch.cat([a.double(), p.double()], dim=1)
    stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    k = weight.shape[-1]
    att = torch.sigmoid(F.conv2d(stats, weight.double(), bias.double(), padding=(k - 1) // 2))
    return a.double() * att, None if p is None else p.double() * att, att

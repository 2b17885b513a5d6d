"""Independent float64 references and helpers for tests/test_cpu_kernels.py (the native CPU kernels)."""

from __future__ import annotations

from typing import Any

import numpy as np

from _reference import conv2d_loop, involution_loop


def kernels_module() -> Any:
    """cmir_trt._C.kernels (the pybind11 bindings of cpp/src/kernels)."""
    from cmir_trt._native import load_core

    return load_core().kernels


def vector_isas() -> list[str]:
    """The vector instruction sets this CPU can run (the tests run every one of them)."""
    k = kernels_module()
    return [isa for isa in ("avx512", "avx2") if k.isa_supported(isa)]


def involution_nhwc64(x: np.ndarray, kernel: np.ndarray, kernel_size: int, stride: int,
                      group_channels: int) -> np.ndarray:
    """float64 involution on NHWC x [B,H,W,C] and kernel [B,Ho,Wo,G*K*K] via the NCHW naive loop of _reference."""
    b, h, w, c = x.shape
    ho, wo = kernel.shape[1:3]
    g = c // group_channels
    k6 = kernel.reshape(b, ho, wo, g, kernel_size, kernel_size).transpose(0, 3, 4, 5, 1, 2)
    y = involution_loop(x.transpose(0, 3, 1, 2), k6, kernel_size, stride)
    return y.transpose(0, 2, 3, 1)


def involution_abs_sum(x: np.ndarray, kernel: np.ndarray, kernel_size: int, stride: int,
                       group_channels: int) -> np.ndarray:
    """sum |k * x| per output element: the scale of the rounding error of a float32 sum of those terms."""
    return involution_nhwc64(np.abs(x), np.abs(kernel), kernel_size, stride, group_channels)


def cmam_direction64(xq: np.ndarray, xkv: np.ndarray, w: np.ndarray, channels: int, dim: int, heads: int,
                     eps: float, rnd: Any = None) -> np.ndarray:
    """LN(xq + O(MHA(Q xq, K xkv, V xkv))) in float64 from the packed weights (export/plugin_schema.json).

    rnd (optional): applied to the four projection weights and to the inputs of the projections (xq, xkv and the
    attention output, the latter first cast to float32 as a kernel holds it), e.g. rounding to bf16."""
    r = rnd or (lambda a: a)
    w = np.asarray(w, dtype=np.float64)
    c, d = channels, dim
    off = 0

    def take(n: int, shape: tuple[int, ...]) -> np.ndarray:
        nonlocal off
        out = w[off:off + n].reshape(shape)
        off += n
        return out

    wq, bq = take(d * c, (d, c)), take(d, (d,))
    wk, bk = take(d * c, (d, c)), take(d, (d,))
    wv, bv = take(d * c, (d, c)), take(d, (d,))
    wo, bo = take(c * d, (c, d)), take(c, (c,))
    gamma, beta = take(c, (c,)), take(c, (c,))
    assert off == w.size
    if rnd is not None:
        wq, wk, wv, wo = (r(x.astype(np.float32)) for x in (wq, wk, wv, wo))
    xq = np.asarray(xq, dtype=np.float64)
    xkv = np.asarray(xkv, dtype=np.float64)
    b, n, _ = xq.shape
    hd = d // heads
    pq, pkv = (xq, xkv) if rnd is None else (r(xq.astype(np.float32)), r(xkv.astype(np.float32)))
    q = (pq @ wq.T + bq).reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
    k = (pkv @ wk.T + bk).reshape(b, -1, heads, hd).transpose(0, 2, 1, 3)
    v = (pkv @ wv.T + bv).reshape(b, -1, heads, hd).transpose(0, 2, 1, 3)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    o = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    if rnd is not None:
        o = r(o.astype(np.float32))
    r = xq + o @ wo.T + bo
    mu = r.mean(axis=-1, keepdims=True)
    var = ((r - mu) ** 2).mean(axis=-1, keepdims=True)
    return (r - mu) / np.sqrt(var + eps) * gamma + beta


def spatial_attention64(a: np.ndarray, p: np.ndarray | None, weight: np.ndarray,
                        bias: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """float64 SA on NHWC maps: att [B,H,W] = sigmoid(conv([mean_c, max_c](cat(a, p)))), a*att, p*att."""
    x = np.asarray(a, dtype=np.float64) if p is None else np.concatenate([a, p], axis=-1).astype(np.float64)
    stats = np.stack([x.mean(axis=-1), x.max(axis=-1)], axis=1)  # [B, 2, H, W]
    k = weight.shape[-1]
    z = conv2d_loop(stats, weight, np.array([bias]), 1, (k - 1) // 2)[:, 0]
    att = 1.0 / (1.0 + np.exp(-z))
    pa = None if p is None else p * att[..., None]
    return att, a * att[..., None], pa


def pack_cmam_direction(attn: Any, norm: Any) -> np.ndarray:
    """Packed float32 weights of one CMAM direction (CrossAttention + its LayerNorm) per export/plugin_schema.json."""
    parts = [attn.q.weight, attn.q.bias, attn.k.weight, attn.k.bias, attn.v.weight, attn.v.bias,
             attn.o.weight, attn.o.bias, norm.weight, norm.bias]
    return np.concatenate([t.detach().double().numpy().ravel() for t in parts]).astype(np.float32)


def fold_involution_generation(mod: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(reduce_wt [C, hidden], reduce_b, span_wt [hidden, G*K*K], span_b) of an eval-mode Involution2d, BN folded
    into the reduce conv in float64, weights transposed as cmir::cpu::InvolutionGeneration expects."""
    bn = mod.bn
    w = mod.reduce.weight.detach().double().numpy()[:, :, 0, 0]  # [hidden, C]
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    rw = w * scale[:, None]
    rb = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale
    sw = mod.span.weight.detach().double().numpy()[:, :, 0, 0]  # [G*K*K, hidden]
    sb = mod.span.bias.detach().double().numpy()
    f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return f(rw.T), f(rb), f(sw.T), f(sb)

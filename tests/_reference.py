"""Independent float64 references of the model's formulas (naive loops; no unfold, no torch.nn)."""

from __future__ import annotations

import numpy as np


def involution_loop(x: np.ndarray, kernel: np.ndarray, kernel_size: int, stride: int) -> np.ndarray:
    """Y[n,c,h,w] = sum_{kh,kw} W[n, c // gc, kh, kw, h, w] * X[n, c, h*s-p+kh, w*s-p+kw], float64, zero padding."""
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    b, c, h, w = x.shape
    g = kernel.shape[1]
    gc = c // g
    k = kernel_size
    p = (k - 1) // 2
    ho, wo = kernel.shape[-2:]
    wfull = np.repeat(kernel, gc, axis=1)  # [B, C, K, K, Ho, Wo]: each channel's own per-pixel kernel
    y = np.zeros((b, c, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            for kh in range(k):
                ih = oh * stride - p + kh
                if not 0 <= ih < h:
                    continue
                for kw in range(k):
                    iw = ow * stride - p + kw
                    if 0 <= iw < w:
                        y[:, :, oh, ow] += wfull[:, :, kh, kw, oh, ow] * x[:, :, ih, iw]
    return y


def avg_pool_ceil_loop(x: np.ndarray, s: int) -> np.ndarray:
    """Mean over the valid pixels of each s x s block, ceil-mode output size (float64)."""
    x = np.asarray(x, dtype=np.float64)
    b, c, h, w = x.shape
    ho, wo = -(-h // s), -(-w // s)
    y = np.zeros((b, c, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            y[:, :, oh, ow] = x[:, :, oh * s:min(oh * s + s, h), ow * s:min(ow * s + s, w)].mean(axis=(2, 3))
    return y


def conv2d_loop(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    """Plain cross-correlation, float64, NCHW / OIHW."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    y = np.zeros((b, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            y += np.einsum("bchw,oc->bohw", patch, weight[:, :, i, j])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y

"""Involution (Li et al., CVPR 2021), the reference implementation every backend is checked against.

Kernel layout: ``generate_kernel`` returns ``W[B, G, K, K, H', W']`` with group ``g`` serving channels
``g*group_channels ... (g+1)*group_channels-1``; in the span convolution's output the channel index is
``g*K*K + kh*K + kw``.

Stride: the kernel-generation input is average-pooled over ``stride x stride`` blocks in ceil mode (a partial block at
the border averages its valid pixels), so that H' = ceil(H / stride) equals the output size of the ``KxK`` stride-s
convolution with padding (K-1)/2 that involution replaces. The official implementation pools in floor mode and fails
on odd inputs with stride 2.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def involution_output_size(size: int, stride: int) -> int:
    """Output size of involution (= of the KxK conv with padding (K-1)/2 at this stride): ceil(size / stride)."""
    return (size + stride - 1) // stride


def involution_aggregate(x: Tensor, kernel: Tensor, kernel_size: int, stride: int = 1) -> Tensor:
    """Y[n,c,h,w] = sum_{kh,kw} W[n, g(c), kh, kw, h, w] * X[n, c, h*s-p+kh, w*s-p+kw] (zero padding).

    x: [B, C, H, W]; kernel: [B, G, K, K, H', W'] with C divisible by G. Implemented with unfold (fast in eager
    PyTorch; the export path writes the same sum without unfold).
    """
    if x.dim() != 4 or kernel.dim() != 6:
        raise ValueError(f"involution expects x [B,C,H,W] and kernel [B,G,K,K,H',W'], got {tuple(x.shape)} and "
                         f"{tuple(kernel.shape)}")
    b, c, h, w = x.shape
    k = kernel_size
    g = kernel.shape[1]
    ho, wo = involution_output_size(h, stride), involution_output_size(w, stride)
    if kernel.shape != (b, g, k, k, ho, wo) or c % g != 0:
        raise ValueError(f"kernel shape {tuple(kernel.shape)} does not match input {tuple(x.shape)} with K={k}, "
                         f"stride={stride} (expected [{b}, G, {k}, {k}, {ho}, {wo}] with C % G == 0)")
    pad = (k - 1) // 2
    cols = F.unfold(x, k, padding=pad, stride=stride)  # [B, C*K*K, H'*W']
    cols = cols.view(b, g, c // g, k, k, ho, wo)
    return (cols * kernel.unsqueeze(2)).sum(dim=(3, 4)).view(b, c, ho, wo)


class Involution2d(nn.Module):
    """Involution with per-pixel kernels generated from the (stride-pooled) input.

    generation: 1x1 conv C -> C/r (no bias), BN, ReLU, 1x1 conv C/r -> K*K*G (with bias).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, group_channels: int = 16,
                 reduction_ratio: int = 4) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if channels % group_channels != 0:
            raise ValueError(f"channels ({channels}) must be divisible by group_channels ({group_channels})")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.group_channels = group_channels
        self.groups = channels // group_channels
        hidden = max(channels // reduction_ratio, 1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.span = nn.Conv2d(hidden, kernel_size * kernel_size * self.groups, 1, bias=True)

    def pool(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x
        return F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)

    def generate_kernel(self, x: Tensor) -> Tensor:
        """Per-pixel kernels W[B, G, K, K, H', W'] for input x [B, C, H, W]."""
        t = F.relu(self.bn(self.reduce(self.pool(x))))
        wgt = self.span(t)
        b, _, h, w = wgt.shape
        return wgt.view(b, self.groups, self.kernel_size, self.kernel_size, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return involution_aggregate(x, self.generate_kernel(x), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}")


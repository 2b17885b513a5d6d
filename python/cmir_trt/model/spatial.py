"""SA localisation module: spatial attention from the channel-wise mean and max."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialAttention(nn.Module):
    """A = sigmoid(conv_kxk([mean_c(x), max_c(x)])), forward returns (x * A, A) with A [B, 1, H, W]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=True)

    def attention(self, x: Tensor) -> Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(stats))

    def apply_pair(self, a: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The attention of the two phases' channel concatenation applied to each: (a * A, p * A, A). One method,
        so that a GPU backend can replace the whole step (the concatenation, the statistics and the multiplies)."""
        att = self.attention(torch.cat([a, p], dim=1))
        return a * att, p * att, att

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attention(x)
        return x * a, a

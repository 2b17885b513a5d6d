"""CMAM: cross-modality attention between the ART and PV token sequences of the last stage."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries from one phase over keys/values of the other, at model width `dim`.

    Scale is 1/sqrt(head_dim), as in scaled_dot_product_attention.
    """

    def __init__(self, channels: int, heads: int = 8, dim: int = 256) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.dim = dim
        self.head_dim = dim // heads
        self.q = nn.Linear(channels, dim)
        self.k = nn.Linear(channels, dim)
        self.v = nn.Linear(channels, dim)
        self.o = nn.Linear(dim, channels)

    def forward(self, xq: Tensor, xkv: Tensor) -> Tensor:
        b, nq, _ = xq.shape
        nk = xkv.shape[1]
        q = self.q(xq).view(b, nq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(xkv).view(b, nk, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(xkv).view(b, nk, self.heads, self.head_dim).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.head_dim)), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, nq, self.dim)
        return self.o(y)


class CMAM(nn.Module):
    """Both directions (ART queries PV, PV queries ART) from the same inputs, residual + LayerNorm over channels.

    forward(art [B,C,H,W], pv [B,C,H,W]) -> (art', pv') of the same shapes.
    """

    def __init__(self, channels: int, heads: int = 8, dim: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.art_from_pv = CrossAttention(channels, heads, dim)
        self.pv_from_art = CrossAttention(channels, heads, dim)
        self.norm_art = nn.LayerNorm(channels)
        self.norm_pv = nn.LayerNorm(channels)

    def forward(self, art: Tensor, pv: Tensor) -> tuple[Tensor, Tensor]:
        if art.shape != pv.shape:
            raise ValueError(f"CMAM needs ART and PV maps of one shape, got {tuple(art.shape)} and {tuple(pv.shape)}")
        b, c, h, w = art.shape
        ta = art.flatten(2).transpose(1, 2)  # [B, N, C] tokens
        tp = pv.flatten(2).transpose(1, 2)
        ya = self.norm_art(ta + self.art_from_pv(ta, tp))
        yp = self.norm_pv(tp + self.pv_from_art(tp, ta))
        return (ya.transpose(1, 2).reshape(b, c, h, w), yp.transpose(1, 2).reshape(b, c, h, w))

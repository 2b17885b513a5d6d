"""Training augmentation: flips, small rotations and intensity jitter, all drawn from an explicit generator.

The same geometric transform is applied to both phases of a case (ART and PV are registered ROIs); intensity jitter
is drawn per phase (contrast timing and scanner gain differ between phases).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_batch(art: Tensor, pv: Tensor, generator: torch.Generator, flip: bool = True, rotate_deg: float = 10.0,
                  intensity_jitter: float = 0.1) -> tuple[Tensor, Tensor]:
    """Augmented copies of art/pv [B, C, S, S]; deterministic given the generator's state."""
    b = art.shape[0]
    x = torch.cat([art, pv], dim=1)  # one geometric transform per case for both phases
    if flip:
        hflip = torch.rand(b, generator=generator) < 0.5
        vflip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(hflip[:, None, None, None], x.flip(-1), x)
        x = torch.where(vflip[:, None, None, None], x.flip(-2), x)
    if rotate_deg > 0:
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotate_deg)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        # border padding: a rotated ROI keeps plausible tissue in its corners instead of black wedges
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = art.shape[1]
    art, pv = x[:, :c], x[:, c:]
    if intensity_jitter > 0:
        j = intensity_jitter

        def jitter(t: Tensor) -> Tensor:
            scale = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * j
            shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * j
            return t * scale.to(t.dtype) + shift.to(t.dtype)

        art, pv = jitter(art), jitter(pv)
    return art.contiguous(), pv.contiguous()

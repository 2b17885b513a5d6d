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
                  intensity_jitter: float = 0.1, noise: float = 0.0, resolution: float = 0.0) -> tuple[Tensor, Tensor]:
    """Augmented copies of art/pv [B, C, S, S]; deterministic given the generator's state.

    noise: Gaussian noise of a per-case, per-phase sigma ~ U(0, noise) (scanner noise differs between centres);
    resolution: with probability 1/2 a case is down-sampled by a factor ~ U(1, 1 + resolution) and up-sampled back
    (coarser in-plane spacing / thicker slices at other centres)."""
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
    if resolution > 0:
        s = x.shape[-1]
        factor = 1 + torch.rand(b, generator=generator) * resolution
        coarse = torch.rand(b, generator=generator) < 0.5
        rows = []
        for i in range(b):  # per case: its own factor (interpolate takes one size per call)
            if coarse[i]:
                small = max(4, int(round(s / float(factor[i]))))
                xi = F.interpolate(x[i:i + 1], size=(small, small), mode="area")
                rows.append(F.interpolate(xi, size=(s, s), mode="bilinear", align_corners=False))
            else:
                rows.append(x[i:i + 1])
        x = torch.cat(rows)
    c = art.shape[1]
    art, pv = x[:, :c], x[:, c:]
    if intensity_jitter > 0:
        j = intensity_jitter

        def jitter(t: Tensor) -> Tensor:
            scale = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * j
            shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * j
            return t * scale.to(t.dtype) + shift.to(t.dtype)

        art, pv = jitter(art), jitter(pv)
    if noise > 0:

        def add_noise(t: Tensor) -> Tensor:
            sigma = torch.rand(b, 1, 1, 1, generator=generator) * noise
            return t + sigma.to(t.dtype) * torch.randn(t.shape, generator=generator, dtype=t.dtype)

        art, pv = add_noise(art), add_noise(pv)
    return art.contiguous(), pv.contiguous()

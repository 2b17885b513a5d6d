"""Involution2d (PyTorch reference) vs an independent float64 loop of the formula (DESIGN.md §1).

Tolerance: float32 result within 1e-6 of the float64 loop, relative to the output's max magnitude (normwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmir_trt.model import Involution2d, involution_aggregate, involution_output_size

from _reference import avg_pool_ceil_loop, conv2d_loop, involution_loop

REL_TOL = 1e-6


def _randomise_bn(bn: torch.nn.BatchNorm2d, gen: torch.Generator) -> None:
    # Non-trivial running statistics so that eval-mode BN is not the identity.
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)


def _generate_kernel_float64(m: Involution2d, x: np.ndarray) -> np.ndarray:
    t = avg_pool_ceil_loop(x, m.stride) if m.stride > 1 else x.astype(np.float64)
    t = conv2d_loop(t, m.reduce.weight.detach().numpy(), None, 1, 0)
    bn = m.bn
    rm, rv = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    t = (t - rm[None, :, None, None]) / np.sqrt(rv + bn.eps)[None, :, None, None] * gamma[None, :, None, None] \
        + beta[None, :, None, None]
    t = np.maximum(t, 0.0)
    w = conv2d_loop(t, m.span.weight.detach().numpy(), m.span.bias.detach().numpy(), 1, 0)
    b, _, h, wd = w.shape
    return w.reshape(b, m.groups, m.kernel_size, m.kernel_size, h, wd)


def _rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels", [16, 48, 64])
@pytest.mark.parametrize("hw", [(13, 13), (15, 17)])
@pytest.mark.parametrize("batch", [1, 3])
def test_involution_matches_float64_loop(kernel_size: int, stride: int, channels: int, hw: tuple[int, int],
                                         batch: int) -> None:
    seed = kernel_size * 1000 + stride * 100 + channels + hw[1] + batch
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = Involution2d(channels, kernel_size, stride).eval()
    _randomise_bn(m.bn, gen)
    x = torch.randn(batch, channels, *hw, generator=gen)
    with torch.no_grad():
        kernel = m.generate_kernel(x)
        y = m(x)
    kernel_ref = _generate_kernel_float64(m, x.numpy())
    assert kernel.shape == kernel_ref.shape
    assert _rel_err(kernel.numpy(), kernel_ref) <= REL_TOL
    # The aggregation alone, on the float32 kernel, against the loop.
    y_ref = involution_loop(x.numpy(), kernel.numpy(), kernel_size, stride)
    assert y.shape == y_ref.shape
    assert _rel_err(y.numpy(), y_ref) <= REL_TOL
    # And end to end against the all-float64 pipeline.
    y_ref64 = involution_loop(x.numpy(), kernel_ref, kernel_size, stride)
    assert _rel_err(y.numpy(), y_ref64) <= 1e-5  # float32 kernel generation + aggregation compound


@pytest.mark.parametrize("size", [13, 15, 16, 17, 32])
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_stride2_output_matches_the_conv_it_replaces(size: int, kernel_size: int) -> None:
    channels = 16
    m = Involution2d(channels, kernel_size, stride=2).eval()
    conv = torch.nn.Conv2d(channels, channels, 3, 2, 1)
    x = torch.randn(1, channels, size, size + 2)
    with torch.no_grad():
        y, yc, kernel = m(x), conv(x), m.generate_kernel(x)
    assert y.shape == yc.shape
    assert kernel.shape[-2:] == yc.shape[-2:]
    assert involution_output_size(size, 2) == yc.shape[2]
    # The official implementation pools in floor mode: on odd inputs its kernel grid is one short of the output grid.
    floor_pooled = F.avg_pool2d(x, 2, 2)
    if size % 2 == 1:
        assert floor_pooled.shape[-2] == yc.shape[-2] - 1
    # Our pooling averages exactly the valid pixels of each (possibly partial) border block.
    ours = m.pool(x).numpy()
    np.testing.assert_allclose(ours, avg_pool_ceil_loop(x.numpy(), 2), rtol=1e-6, atol=1e-6)


def test_aggregate_rejects_mismatched_kernel() -> None:
    x = torch.randn(1, 32, 9, 9)
    with pytest.raises(ValueError, match="kernel shape"):
        involution_aggregate(x, torch.randn(1, 2, 3, 3, 8, 9), 3, 1)
    with pytest.raises(ValueError, match="expects"):
        involution_aggregate(x[0], torch.randn(1, 2, 3, 3, 9, 9), 3, 1)


@pytest.mark.parametrize("bad", [dict(channels=24, kernel_size=3), dict(channels=16, kernel_size=4),
                                 dict(channels=16, kernel_size=3, stride=0)])
def test_constructor_rejects_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        Involution2d(**bad)

"""The end-to-end launch count of benchmarks/gpu/predict.py (issue 13's "≤ 0.2x eager" estimate) checked on models
whose kernels are known by hand: ``count_kernels`` counts the outermost kernel-launching aten op of each call, one
cuDNN bias add per biased convolution (PyTorch adds a convolution's bias in a second kernel), and a cmir_trt op
(``torch.ops.cmir_trt.*``, or the profiler range of the reference op standing in for it on the CPU) as its own
kernels, nothing nested under it. The GPU backend's count comes from the rewritten model itself
(``prepare_model(impl="reference")``), so these tests also pin which convolutions the rewrite moves to the pointwise
op. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cmir_trt.gpu.backend import _ReferenceOps, prepare_model
from cmir_trt.model.resnet import Bottleneck

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predict() -> Any:
    spec = importlib.util.spec_from_file_location("cmir_predict_e2e", ROOT / "benchmarks" / "gpu" / "predict.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cmir_predict_e2e"] = mod
    spec.loader.exec_module(mod)
    return mod


class _Known(nn.Module):
    """conv 3x3 with bias (2 kernels on cuDNN), BN, ReLU, bias-free 1x1 conv, add, mean (one reduction on the GPU,
    aten::sum + aten::div_ on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x)))
        return (self.b(y) + y).mean(dim=(2, 3))


def test_count_kernels_of_a_known_model(predict: Any) -> None:
    got = predict.count_kernels(_Known().eval(), torch.randn(1, 3, 6, 6))
    assert got == {"aten::convolution": 2, predict.CONV_BIAS_ADD: 1, "aten::batch_norm": 1, "aten::relu": 1,
                   "aten::add": 1, "aten::mean": 1}


class _Custom(nn.Module):
    """A pointwise conv (its reference runs einsum/add/clamp underneath: not kernels) and a CMAM (CMAM_LAUNCHES)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReferenceOps.pointwise_conv(x, torch.randn(16, 16), torch.randn(16), x, True)
        c, w = 16, 8  # channels, CMAM width
        packed = torch.randn(4 * w * c + 3 * w + 3 * c)
        a, _ = _ReferenceOps.cmam(y, x, packed, packed, 2, w, 1e-5)
        return a


def test_custom_ops_count_as_their_own_launches(predict: Any) -> None:
    got = predict.count_kernels(_Custom(), torch.randn(1, 16, 2, 2))
    assert got == {"cmir_trt::pointwise_conv": 1, "cmir_trt::cmam": predict.CMAM_LAUNCHES}


# (cin, mid, stride, involution) -> kernels of the rewritten block (10x10 input): ours now / ours before the
# pointwise and conv2d ops / eager
BLOCKS = {
    # conv1, 2 generation convs, conv3 (+ identity + ReLU) on the pointwise op; the aggregation (+ BN + ReLU)
    (64, 16, 1, True): ({"cmir_trt::pointwise_conv": 4, "cmir_trt::involution": 1},
                        # conv1 + bias + ReLU, 2 x (conv + bias) + ReLU, aggregation, conv3 + bias, add, ReLU
                        13,
                        # conv1 + BN + ReLU, reduce + BN + ReLU, span + bias, im2col, mul, sum, BN, ReLU, conv3 + BN,
                        # add, ReLU
                        17),
    # stride 2: the generation's 2x2 average pool folded into its first convolution (a 2x2 stride-2 conv2d); mid 16
    # (not a multiple of 32): the strided downsample is a conv2d launch of its own
    (32, 16, 2, True): ({"cmir_trt::pointwise_conv": 3, "cmir_trt::conv2d": 2, "cmir_trt::involution": 1}, 16, 20),
    # mid 32: the strided downsample joins conv3's launch as its projection shortcut (conv3 + downsample + add + ReLU)
    (64, 32, 2, True): ({"cmir_trt::pointwise_conv": 3, "cmir_trt::conv2d": 1, "cmir_trt::involution": 1}, 16, 20),
    # plain bottleneck, stride 2, mid 32: the 3x3 conv (+ bias + ReLU) one conv2d, conv1 and conv3 + shortcut
    (64, 32, 2, False): ({"cmir_trt::pointwise_conv": 2, "cmir_trt::conv2d": 1}, 12, 12),
    # plain bottleneck, stride 1: the 3x3 conv on conv2d, the stride-1 downsample (cin != cout, mid 16) on the op
    (32, 16, 1, False): ({"cmir_trt::pointwise_conv": 3, "cmir_trt::conv2d": 1},
                         # before: conv1 / conv2 (conv + bias + ReLU), conv3 / downsample (conv + bias), add, ReLU;
                         # eager: the same with BN in place of each bias add
                         12, 12),
}


@pytest.mark.parametrize("key", list(BLOCKS), ids=["inv_s1", "inv_s2_downsample", "inv_s2_shortcut",
                                                   "plain_s2_shortcut", "plain_s1_downsample"])
def test_rewritten_bottleneck_launches(predict: Any, key: tuple[int, int, int, bool]) -> None:
    cin, mid, stride, inv = key
    ours, before, eager = BLOCKS[key]
    block = nn.Sequential(Bottleneck(cin, mid, stride, inv)).eval()
    x = torch.randn(1, cin, 10, 10)
    assert predict.count_kernels(prepare_model(block, "fp32", "cpu", impl="reference"), x) == ours
    assert sum(predict.count_kernels(prepare_model(block, "fp32", "cpu", impl="reference", pointwise_conv=False),
                                     x).values()) == before
    assert sum(predict.count_kernels(block, x).values()) == eager


def test_e2e_estimate_counts_the_rewritten_model(predict: Any) -> None:
    from cmir_trt.model.cmir import CMIRConfig

    cfg = CMIRConfig(width=0.25, image_size=64, cmam_dim=32, cmam_heads=4)
    e = predict.e2e_estimate("fp16", cfg)
    ours = e["ours_by_kind"]
    for kinds, total in ((e["eager_by_kind"], e["eager_ops"]), (e["ours_before_by_kind"], e["ours_kernels_before"]),
                         (ours, e["ours_kernels"])):
        assert sum(kinds.values()) == total
    # Per phase: 8 blocks x (conv1, 2 generation convs, conv3) + the stage-1 downsample (stride 1; mid 16 is not a
    # multiple of 32, so it stays a launch of its own) + the stem involution's 2 generation convs, less the 3 strided
    # blocks' first generation convs (their 2x2 average pool folded in: conv2d launches); the 3 strided downsamples
    # (mid 32, 64, 128) are projection shortcuts inside their conv3 launch; the 2 stem 3x3 convs (+ ReLU) are conv2d
    # launches; the 2 SA modules (concatenation, statistics, conv + bias, sigmoid, both multiplies: 9 kernels each)
    # are 2 launches each; no cuDNN convolution, BN, pool or residual add is left, and of the 5 concatenations only
    # the head's.
    assert ours["cmir_trt::pointwise_conv"] == 2 * (8 * 4 + 1 + 2 - 3)
    assert ours["cmir_trt::conv2d"] == 2 * (2 + 3)
    assert ours["cmir_trt::spatial_attention"] == 2 * 2
    assert "aten::convolution" not in ours and predict.CONV_BIAS_ADD not in ours and "aten::amax" not in ours
    assert "aten::avg_pool2d" not in ours and ours["aten::cat"] == 1
    assert ours["cmir_trt::involution"] == 18 and ours["cmir_trt::cmam"] == predict.CMAM_LAUNCHES
    assert "aten::batch_norm" not in ours and "aten::add_" not in ours
    assert e["eager_by_kind"][predict.CONV_BIAS_ADD] == 2 * 9 + 2  # the involutions' span convs and the SA convs
    assert e["ours_kernels"] < e["ours_kernels_before"] < e["eager_ops"]
    # graph time: cmir_trt's ops at their modelled times (every launch at least one graph kernel), the rest flat
    own = e["own_kernel_us"]
    assert own["cmir_trt::pointwise_conv"] >= ours["cmir_trt::pointwise_conv"] * predict.GRAPH_KERNEL_US
    assert own["cmir_trt::cmam"] >= predict.CMAM_LAUNCHES * predict.GRAPH_KERNEL_US
    assert own["cmir_trt::spatial_attention"] >= ours["cmir_trt::spatial_attention"] * predict.GRAPH_KERNEL_US
    assert own["cmir_trt::conv2d"] >= ours["cmir_trt::conv2d"] * predict.GRAPH_KERNEL_US
    rest = sum(n for k, n in ours.items() if k not in own)
    assert e["ours_graph_us"] == pytest.approx(sum(own.values()) + rest * predict.GRAPH_KERNEL_US)

"""Inv-ResNet (RedNet-style) and the plain bottleneck ResNet used by the ablation variants S1/M1."""

from __future__ import annotations

from torch import Tensor, nn

from .involution import Involution2d

STAGE_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
EXPANSION = 4


def scaled_channels(base: int, width: float, multiple: int = 16) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of the involution group size (min one group)."""
    return max(multiple, int(round(base * width / multiple)) * multiple)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 conv -> (involution 7x7 | conv 3x3) at the block's stride -> 1x1 conv (x4), residual, ReLU."""

    def __init__(self, cin: int, mid: int, stride: int, involution: bool, group_channels: int = 16,
                 reduction_ratio: int = 4) -> None:
        super().__init__()
        cout = mid * EXPANSION
        self.conv1 = conv_bn_relu(cin, mid, 1)
        if involution:
            self.conv2 = nn.Sequential(Involution2d(mid, 7, stride, group_channels, reduction_ratio),
                                       nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        else:
            self.conv2 = conv_bn_relu(mid, mid, 3, stride)
        self.conv3 = conv_bn_relu(mid, cout, 1, relu=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn_relu(cin, cout, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class InvResNet(nn.Module):
    """Stem (conv3x3 s2 -> involution 3x3 | conv3x3 -> conv3x3 -> maxpool) and four bottleneck stages.

    At S=128 and width 1.0 the stage outputs are 256x32², 512x16², 1024x8², 2048x4².
    """

    def __init__(self, depth: int = 26, width: float = 1.0, in_channels: int = 3, involution: bool = True,
                 group_channels: int = 16, reduction_ratio: int = 4) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.depth = depth
        self.width = width
        self.involution = involution
        stem_half = scaled_channels(32, width, group_channels)
        stem_out = scaled_channels(64, width, group_channels)
        mid_layer: nn.Module
        if involution:
            mid_layer = nn.Sequential(Involution2d(stem_half, 3, 1, group_channels, reduction_ratio),
                                      nn.BatchNorm2d(stem_half), nn.ReLU(inplace=True))
        else:
            mid_layer = conv_bn_relu(stem_half, stem_half, 3)
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, stem_half, 3, 2),
            mid_layer,
            conv_bn_relu(stem_half, stem_out, 3),
            nn.MaxPool2d(3, 2, 1),
        )
        cin = stem_out
        self.stage_channels: list[int] = []
        stages = []
        for i, nblocks in enumerate(STAGE_BLOCKS[depth]):
            mid = scaled_channels(64 * 2**i, width, group_channels)
            blocks = []
            for j in range(nblocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(cin, mid, stride, involution, group_channels, reduction_ratio))
                cin = mid * EXPANSION
            stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(cin)
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

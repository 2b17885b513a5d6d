"""CMIR: two-phase (ART, PV) MRI + clinical model of microvascular invasion, and its ablation variants.

Forward pass of the `full` variant (the others drop parts, see VARIANTS):
    per phase: stem, stages 1-3                       -> a3, p3   [B, C3, S/16, S/16]
    SA3 on concat(a3, p3) -> A3; a3 *= A3; p3 *= A3
    per phase: stage 4                                -> a4, p4   [B, C4, S/32, S/32]
    CMAM(a4, p4)                                      -> a4, p4
    SA4 on concat(a4, p4) -> A4; a4 *= A4; p4 *= A4
    z = [GAP(a4), GAP(p4), MLP(clinical)] -> dropout -> linear -> logit
    heatmap = bilinear_S(0.5 * (A3 + bilinear_{S/16}(A4)))
Variants without SA return a class-activation map instead: relu(sum_c w_c * feature_c) of the linear head's weights
for the (predicted) class, divided by its per-case maximum, upsampled bilinearly to S x S.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import dataclass_from_dict
from .cmam import CMAM
from .resnet import STAGE_BLOCKS, InvResNet
from .spatial import SpatialAttention

VARIANTS = ("S1", "M1", "M2", "M3", "full")
# variant -> (two phases, involution, CMAM, SA)
_VARIANT_PARTS = {
    "S1": (False, False, False, False),
    "M1": (True, False, False, False),
    "M2": (True, True, False, False),
    "M3": (True, True, True, False),
    "full": (True, True, True, True),
}
CAM_EPS = 1e-6


@dataclass(frozen=True)
class CMIRConfig:
    variant: str = "full"
    image_size: int = 128
    num_clinical: int = 8
    num_classes: int = 1
    depth: int = 26
    width: float = 1.0
    in_channels: int = 3
    cmam_dim: int = 256
    cmam_heads: int = 8
    sa_kernel: int = 7
    clinical_hidden: int = 32
    dropout: float = 0.2
    group_channels: int = 16
    reduction_ratio: int = 4

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        if self.num_classes not in (1, 3):
            raise ValueError(f"num_classes must be 1 (MVI+/-) or 3 (M0/M1/M2), got {self.num_classes}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 (five stride-2 steps), got {self.image_size}")
        if self.num_clinical < 0:
            raise ValueError(f"num_clinical must be >= 0, got {self.num_clinical}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def two_phase(self) -> bool:
        return _VARIANT_PARTS[self.variant][0]

    @property
    def involution(self) -> bool:
        return _VARIANT_PARTS[self.variant][1]

    @property
    def use_cmam(self) -> bool:
        return _VARIANT_PARTS[self.variant][2]

    @property
    def use_sa(self) -> bool:
        return _VARIANT_PARTS[self.variant][3]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CMIRConfig:
        return dataclass_from_dict(cls, d)


class CMIROutput(NamedTuple):
    logit: Tensor        # [B, num_classes]
    probability: Tensor  # [B, num_classes]: sigmoid (binary) or softmax (grading)
    heatmap: Tensor      # [B, 1, S, S] in [0, 1]


class CMIR(nn.Module):
    def __init__(self, config: CMIRConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CMIRConfig()

        def backbone() -> InvResNet:
            return InvResNet(cfg.depth, cfg.width, cfg.in_channels, cfg.involution, cfg.group_channels,
                             cfg.reduction_ratio)

        self.art_backbone = backbone()
        self.pv_backbone = backbone() if cfg.two_phase else None
        c4 = self.art_backbone.out_channels
        self.cmam = CMAM(c4, cfg.cmam_heads, cfg.cmam_dim) if cfg.use_cmam else None
        self.sa3 = SpatialAttention(cfg.sa_kernel) if cfg.use_sa else None
        self.sa4 = SpatialAttention(cfg.sa_kernel) if cfg.use_sa else None
        self.clinical_mlp: nn.Module | None = None
        clin_dim = 0
        if cfg.num_clinical > 0:
            self.clinical_mlp = nn.Sequential(
                nn.Linear(cfg.num_clinical, cfg.clinical_hidden), nn.ReLU(inplace=True),
                nn.Linear(cfg.clinical_hidden, cfg.clinical_hidden), nn.ReLU(inplace=True))
            clin_dim = cfg.clinical_hidden
        self.image_features = c4 * (2 if cfg.two_phase else 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(self.image_features + clin_dim, cfg.num_classes)

    def forward(self, art: Tensor, pv: Tensor, clinical: Tensor) -> CMIROutput:
        cfg = self.config
        s = art.shape[-1]
        a = self._stages(self.art_backbone, art, 0, 3)
        p = self._stages(self.pv_backbone, pv, 0, 3) if self.pv_backbone is not None else None
        a3_map = None
        if self.sa3 is not None and p is not None:
            a, p, a3_map = self.sa3.apply_pair(a, p)
        a = self._stages(self.art_backbone, a, 3, 4)
        if p is not None and self.pv_backbone is not None:
            p = self._stages(self.pv_backbone, p, 3, 4)
        if self.cmam is not None and p is not None:
            a, p = self.cmam(a, p)
        a4_map = None
        if self.sa4 is not None and p is not None:
            a, p, a4_map = self.sa4.apply_pair(a, p)

        feats = [a.mean(dim=(2, 3))]
        if p is not None:
            feats.append(p.mean(dim=(2, 3)))
        if self.clinical_mlp is not None:
            feats.append(self.clinical_mlp(clinical))
        logit = self.classifier(self.dropout(torch.cat(feats, dim=1)))
        probability = torch.sigmoid(logit) if cfg.num_classes == 1 else torch.softmax(logit, dim=1)

        if a3_map is not None and a4_map is not None:
            up4 = F.interpolate(a4_map, size=a3_map.shape[-2:], mode="bilinear", align_corners=False)
            small = 0.5 * (a3_map + up4)
        else:
            small = self._cam(a, p, logit)
        heatmap = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
        return CMIROutput(logit, probability, heatmap)

    @staticmethod
    def _stages(net: InvResNet | None, x: Tensor, start: int, stop: int) -> Tensor:
        assert net is not None
        if start == 0:
            x = net.stem(x)
        for i in range(start, stop):
            x = net.stages[i](x)
        return x

    def _cam(self, a: Tensor, p: Tensor | None, logit: Tensor) -> Tensor:
        """Normalised class-activation map [B, 1, h, w] of the linear head for the predicted class."""
        c4 = a.shape[1]
        weight = self.classifier.weight  # [num_classes, features]
        if self.config.num_classes == 1:
            w = weight[0].unsqueeze(0).expand(a.shape[0], -1)
        else:
            w = weight[logit.argmax(dim=1)]  # [B, features]
        cam = torch.einsum("bc,bchw->bhw", w[:, :c4], a)
        if p is not None:
            cam = cam + torch.einsum("bc,bchw->bhw", w[:, c4:2 * c4], p)
        cam = F.relu(cam).unsqueeze(1)
        peak = cam.amax(dim=(2, 3), keepdim=True)
        return cam / (peak + CAM_EPS)


def build_model(config: CMIRConfig | None = None) -> CMIR:
    """A CMIR model with freshly initialised weights for `config` (default: the full variant)."""
    return CMIR(config or CMIRConfig())


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

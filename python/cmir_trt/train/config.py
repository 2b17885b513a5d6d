"""Training hyper-parameters (plain data; stored in the checkpoint metadata and the resume file)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .._io import dataclass_from_dict

# the model variants (cmir_trt.model.VARIANTS), repeated here so this module needs no torch
VARIANTS = ("S1", "M1", "M2", "M3", "full")


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "full"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    patience: int = 8            # early stopping: epochs without a better internal-validation AUC
    min_delta: float = 1e-4      # an AUC gain below this is not an improvement
    image_size: int = 64
    depth: int = 26
    width: float = 0.25
    cmam_dim: int = 64
    cmam_heads: int = 4
    dropout: float = 0.2
    threads: int = 2             # fixed intra-op threads: part of what makes CPU training reproducible
    device: str = "cpu"
    # augmentation (applied identically to both phases of a case, so ART and PV stay registered)
    flip: bool = True
    rotate_deg: float = 10.0
    intensity_jitter: float = 0.1  # per phase: x * (1 + U(-j, j)) + U(-j, j)
    noise: float = 0.0           # per phase: + N(0, sigma^2), sigma ~ U(0, noise)
    resolution: float = 0.0      # down-/up-sampling by U(1, 1 + resolution) for half the cases
    eval_batch_size: int = 64
    grad_clip: float = 1.0       # max global gradient norm (0 = off)
    # zero-initialised last BN of each residual branch (Goyal et al. 2017): blocks start as identities. Involution
    # makes a branch's output quadratic in its input, so an eval-mode (running-statistics) network can otherwise
    # amplify an atypical case block after block
    zero_init_residual: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("epochs", "batch_size", "threads", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (batch normalisation needs two cases per batch)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "min_delta", "grad_clip", "rotate_deg", "intensity_jitter", "noise",
                     "resolution"):
            if not getattr(self, name) >= 0:  # also catches NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, d)

    def model_fields(self) -> dict[str, Any]:
        """The CMIRConfig fields this training config decides."""
        return {"variant": self.variant, "image_size": self.image_size, "depth": self.depth, "width": self.width,
                "cmam_dim": self.cmam_dim, "cmam_heads": self.cmam_heads, "dropout": self.dropout}

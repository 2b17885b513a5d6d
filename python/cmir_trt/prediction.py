"""The result type every backend returns (numpy, CPU memory unless a backend documents otherwise)."""

from __future__ import annotations

from typing import Any, NamedTuple


class Prediction(NamedTuple):
    probability: Any  # [B, num_classes] float32: sigmoid (binary) or softmax (grading)
    logit: Any        # [B, num_classes] float32
    heatmap: Any      # [B, 1, S, S] float32 in [0, 1]: the localisation map on the model's input grid

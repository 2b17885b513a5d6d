"""Standard-op ONNX (`--format onnx`) for the variants with CMAM (M3, full): ONNX Runtime vs the PyTorch
checkpoint model at batch 1 and a dynamic batch of 3. Tolerances (issue 5): probability <= 1e-5 abs, logit <= 1e-4
rel (norm-wise), heatmap <= 1e-4 abs. S1, M1, M2: test_export_onnx.py."""

from __future__ import annotations

import pytest
from _export_helpers import check_standard_onnx


@pytest.mark.parametrize("variant", ["M3", "full"])
def test_standard_onnx_matches_pytorch(tmp_path, variant: str) -> None:  # noqa: ANN001
    check_standard_onnx(tmp_path, variant)

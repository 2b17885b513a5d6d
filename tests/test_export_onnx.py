"""Standard-op ONNX (`--format onnx`) for every variant: ONNX Runtime vs the PyTorch checkpoint model at batch 1
and a dynamic batch of 3. Tolerances (issue 5): probability <= 1e-5 abs, logit <= 1e-4 rel (norm-wise), heatmap
<= 1e-4 abs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from _export_helpers import inputs, make_checkpoint, max_abs, max_rel, reference, run_ort
from cmir_trt.export import export_model, read_sidecar, verify_artifact


@pytest.mark.parametrize("variant", ["S1", "M1", "M2", "M3", "full"])
def test_standard_onnx_matches_pytorch(tmp_path, variant: str) -> None:  # noqa: ANN001
    ckpt, model = make_checkpoint(tmp_path, variant, seed=len(variant))
    out = export_model(ckpt, "onnx", tmp_path / "m.onnx")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["art", "pv", "clinical"]
    assert [o.name for o in proto.graph.output] == ["logit", "probability", "heatmap"]
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "standard form must have no custom op"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        x = inputs(batch, seed=batch)
        ref = reference(model, x)
        got = run_ort(out, x)
        assert got[0].shape == ref[0].shape and got[2].shape == ref[2].shape == (batch, 1, 40, 40)
        assert max_abs(got[1], ref[1]) <= 1e-5
        assert max_rel(got[0], ref[0]) <= 1e-4
        assert max_abs(got[2], ref[2]) <= 1e-4
    assert verify_artifact(out)["artifact"]["format"] == "onnx"


def test_static_batch_and_grading_head(tmp_path) -> None:  # noqa: ANN001
    ckpt, model = make_checkpoint(tmp_path, "M2", seed=5, num_classes=3)
    out = export_model(ckpt, "onnx", tmp_path / "m2.onnx", batch=2)
    proto = onnx.load(str(out))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_value == 2
    assert read_sidecar(out)["inputs"][0]["shape"] == [2, 3, 40, 40]
    x = inputs(2, seed=11)
    ref = reference(model, x)
    got = run_ort(out, x)
    assert got[1].shape == (2, 3)
    np.testing.assert_allclose(got[1].sum(axis=1), 1.0, atol=1e-6)
    assert max_abs(got[1], ref[1]) <= 1e-5
    assert max_rel(got[0], ref[0]) <= 1e-4
    assert max_abs(got[2], ref[2]) <= 1e-4
    assert (got[1].argmax(1) == ref[1].argmax(1)).all()

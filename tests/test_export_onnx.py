"""Standard-op ONNX (`--format onnx`) for every variant: ONNX Runtime vs the PyTorch checkpoint model at batch 1
and a dynamic batch of 3. Tolerances (issue 5): probability <= 1e-5 abs, logit <= 1e-4 rel (norm-wise), heatmap
<= 1e-4 abs."""

from __future__ import annotations

import onnx
import pytest
from _export_helpers import inputs, make_checkpoint, max_abs, max_rel, reference, run_ort

from cmir_trt.export import export_model, verify_artifact


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

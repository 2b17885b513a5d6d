"""--precision fp16 for both ONNX forms: weights and activations fp16 (TensorRT 11 is strongly typed), inputs and
outputs fp32 through Casts; ONNX Runtime vs the fp32 PyTorch model: probability <= 1e-2 abs, no decision flip."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from _export_helpers import METADATA, inputs, make_checkpoint, max_abs, reference, run_ort
from onnx import TensorProto, numpy_helper

from cmir_trt.export import export_model, read_sidecar
from cmir_trt.export.trt_graph import expand_custom_nodes

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fp16")
    ckpt, model = make_checkpoint(root, "full", seed=21)
    out: dict[str, Any] = {"model": model}
    for fmt in ("onnx", "onnx-trt"):
        path = export_model(ckpt, fmt, root / f"{fmt}.onnx", precision="fp16")
        out[fmt] = (path, onnx.load(str(path)))
    # M2 has no SA module: its heatmap is the class-activation map (a different fp16 path)
    ckpt, out["model-M2"] = make_checkpoint(root, "M2", seed=22)
    path = export_model(ckpt, "onnx", root / "m2.onnx", precision="fp16")
    out["onnx-M2"] = (path, onnx.load(str(path)))
    return out


def _float_tensors(proto: Any) -> list[tuple[str, int]]:
    """(name, elem_type) of every floating-point initializer, Constant value and typed intermediate value."""
    found = [(i.name, i.data_type) for i in proto.graph.initializer]
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    found.append((n.output[0], a.t.data_type))
    found += [(v.name, v.type.tensor_type.elem_type) for v in proto.graph.value_info]
    return [(name, t) for name, t in found if t in FLOATS]


@pytest.mark.parametrize("fmt", ["onnx", "onnx-trt", "onnx-M2"])
def test_fp16_graph_is_half_inside(exported: dict[str, Any], fmt: str) -> None:
    path, proto = exported[fmt]
    onnx.checker.check_model(proto)
    for v in list(proto.graph.input) + list(proto.graph.output):
        assert v.type.tensor_type.elem_type == TensorProto.FLOAT, f"{v.name} must stay fp32"
    io_names = {v.name for v in list(proto.graph.input) + list(proto.graph.output)}
    floats = [(n, t) for n, t in _float_tensors(proto) if n not in io_names]
    assert floats, "no float tensors found"
    not_half = [n for n, t in floats if t != TensorProto.FLOAT16]
    assert not_half == [], f"fp32 tensors inside the fp16 graph: {not_half[:10]}"
    # every node that reads the values of an input (Shape reads only its shape) is a Cast to fp16
    consumers = [n for n in proto.graph.node if set(n.input) & {"art", "pv", "clinical"} and n.op_type != "Shape"]
    assert consumers and all(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in consumers)
    producers = [n for n in proto.graph.node if set(n.output) & {"logit", "probability", "heatmap"}]
    assert len(producers) == 3 and all(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT
                                       for n in producers)
    big = [i for i in proto.graph.initializer if np.prod(i.dims) > 1000]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)
    sc = read_sidecar(path)
    assert sc["artifact"]["precision"] == "fp16" and sc["inputs"][0]["dtype"] == "float32"
    if fmt == "onnx-trt":
        custom = [n for n in proto.graph.node if n.domain == "trt.plugins"]
        assert len(custom) == 19
        vi = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
        inits = {i.name: i for i in proto.graph.initializer}
        for n in custom:
            for name in n.input:
                t = inits[name].data_type if name in inits else vi[name]
                assert t == TensorProto.FLOAT16, f"{n.op_type} input {name} is not fp16"
        cm = next(n for n in custom if n.op_type == "CMIRCrossModalAttention")
        packed = numpy_helper.to_array(inits[cm.input[2]])
        assert packed.dtype == np.float16


@pytest.mark.parametrize("fmt", ["onnx", "onnx-trt", "onnx-M2"])
def test_fp16_numerics(exported: dict[str, Any], fmt: str) -> None:
    _, proto = exported[fmt]
    runnable = expand_custom_nodes(proto) if fmt == "onnx-trt" else proto
    model = exported["model-M2" if fmt == "onnx-M2" else "model"]
    thr = METADATA["threshold"]
    for batch in (1, 3):
        x = inputs(batch, seed=60 + batch)
        ref = reference(model, x)
        got = run_ort(runnable, x)
        assert all(np.isfinite(g).all() for g in got)
        assert max_abs(got[1], ref[1]) <= 1e-2
        assert max_abs(got[2], ref[2]) <= 5e-2
        assert ((got[1] >= thr) == (ref[1] >= thr)).all(), "fp16 flipped a decision"


def test_fp16_refuses_weights_beyond_half_range(tmp_path) -> None:  # noqa: ANN001
    import torch

    ckpt, model = make_checkpoint(tmp_path, "M1", seed=2)
    with torch.no_grad():
        model.classifier.weight[0, 0] = 1e6
    from cmir_trt.model import save_checkpoint

    save_checkpoint(ckpt, model, METADATA)
    with pytest.raises(ValueError, match="fp16 range"):
        export_model(ckpt, "onnx", tmp_path / "m.onnx", precision="fp16")
    assert not (tmp_path / "m.onnx").exists()

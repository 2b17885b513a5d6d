"""ONNX with TensorRT custom nodes (`--format onnx-trt`) for every variant.

Structure: exactly the expected CMIRInvolution / CMIRCrossModalAttention nodes, with the schema's attributes (read
here straight from export/plugin_schema.json), packed CMAM initializers in the documented layout, onnx.checker.
Numerics: the custom nodes expanded into standard operators (from the schema's op descriptions) and run in ONNX
Runtime match the PyTorch model at batch 1 and 3 (probability <= 1e-5 abs, logit <= 1e-4 rel, heatmap <= 1e-4 abs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from _export_helpers import inputs, make_checkpoint, max_abs, max_rel, reference, run_ort, schema_json
from onnx import AttributeProto, numpy_helper

from cmir_trt.export import export_model, read_sidecar
from cmir_trt.export.trt_graph import CustomGraphError, check_custom_graph, expand_custom_nodes

VARIANTS = ("S1", "M1", "M2", "M3", "full")
# depth 26: blocks (1, 2, 4, 1) + the stem's involution, per phase; the first block of stages 2-4 has stride 2.
INVOLUTIONS_PER_PHASE = 1 + 1 + 2 + 4 + 1


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, Any]]:
    root = tmp_path_factory.mktemp("onnx_trt")
    out = {}
    for v in VARIANTS:
        ckpt, model = make_checkpoint(root, v, seed=11)
        path = export_model(ckpt, "onnx-trt", root / f"{v}.onnx")
        out[v] = (path, onnx.load(str(path)), model)
    return out


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: a for a in node.attribute}


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_nodes_follow_schema(exported: dict[str, tuple[Any, Any, Any]], variant: str) -> None:
    path, proto, model = exported[variant]
    schema = schema_json()
    plugins = {p["name"]: p for p in schema["plugins"]}
    onnx.checker.check_model(proto)
    custom = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    two_phase, inv, cmam = variant != "S1", variant in ("M2", "M3", "full"), variant in ("M3", "full")
    n_inv = (2 if two_phase else 1) * INVOLUTIONS_PER_PHASE if inv else 0
    assert sum(n.op_type == "CMIRInvolution" for n in custom) == n_inv
    assert sum(n.op_type == "CMIRCrossModalAttention" for n in custom) == (1 if cmam else 0)
    assert len(custom) == n_inv + (1 if cmam else 0)
    if custom:
        assert {o.domain: o.version for o in proto.opset_import}.get(schema["onnx_domain"]) is not None
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    kernels, strides = [], []
    for n in custom:
        spec = plugins[n.op_type]
        assert n.domain == schema["onnx_domain"]
        a = _attrs(n)
        assert set(a) == {f["name"] for f in spec["fields"]} | {"plugin_namespace", "plugin_version"}
        assert a["plugin_namespace"].type == AttributeProto.STRING and a["plugin_namespace"].s.decode() == \
            schema["namespace"]
        assert a["plugin_version"].type == AttributeProto.STRING and a["plugin_version"].s.decode() == spec["version"]
        for f in spec["fields"]:
            at = a[f["name"]]
            if f["type"] == "int32":
                assert at.type == AttributeProto.INT and -(2**31) <= at.i < 2**31 and f["min"] <= at.i <= f["max"]
            else:
                assert at.type == AttributeProto.FLOAT and f["min"] <= at.f <= f["max"]
        assert len(n.input) == len(spec["inputs"]) and len(n.output) == len(spec["outputs"])
        if n.op_type == "CMIRInvolution":
            kernels.append(a["kernel_size"].i)
            strides.append(a["stride"].i)
            assert a["group_channels"].i == 16
            assert producers[n.input[1]].op_type == "Conv", "kernel input must be the span 1x1 conv's output"
        else:
            assert (a["heads"].i, a["dim"].i) == (8, 256) and a["eps"].f == pytest.approx(1e-5, rel=1e-6)
            cm = model.cmam
            for wname, att, norm in ((n.input[2], cm.art_from_pv, cm.norm_art), (n.input[3], cm.pv_from_art,
                                                                                  cm.norm_pv)):
                want = np.concatenate([t.detach().reshape(-1).numpy() for t in (
                    att.q.weight, att.q.bias, att.k.weight, att.k.bias, att.v.weight, att.v.bias, att.o.weight,
                    att.o.bias, norm.weight, norm.bias)])
                np.testing.assert_array_equal(numpy_helper.to_array(inits[wname]), want)
    if inv:
        phases = 2 if two_phase else 1
        assert sorted(kernels) == [3] * phases + [7] * (phases * (INVOLUTIONS_PER_PHASE - 1))
        assert strides.count(2) == 3 * phases
    assert read_sidecar(path)["custom_ops"]["counts"] == {k: v for k, v in (
        ("CMIRCrossModalAttention", 1 if cmam else 0), ("CMIRInvolution", n_inv)) if v}


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_graph_computes_the_model(exported: dict[str, tuple[Any, Any, Any]], variant: str) -> None:
    _, proto, model = exported[variant]
    runnable = expand_custom_nodes(proto)
    assert all(n.domain in ("", "ai.onnx") for n in runnable.graph.node)
    for batch in (1, 3):
        x = inputs(batch, seed=40 + batch)
        ref = reference(model, x)
        got = run_ort(runnable, x)
        assert max_abs(got[1], ref[1]) <= 1e-5
        assert max_rel(got[0], ref[0]) <= 1e-4
        assert max_abs(got[2], ref[2]) <= 1e-4


def test_swapped_cmam_weights_are_detected(exported: dict[str, tuple[Any, Any, Any]]) -> None:
    """The expansion really reads the packed weights: swapping the two directions changes the result."""
    _, proto, model = exported["full"]
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    node = next(n for n in bad.graph.node if n.op_type == "CMIRCrossModalAttention")
    node.input[2], node.input[3] = node.input[3], node.input[2]
    x = inputs(2, seed=5)
    ref = reference(model, x)
    got = run_ort(expand_custom_nodes(bad), x)
    assert max_abs(got[2], ref[2]) > 1e-3 or max_abs(got[1], ref[1]) > 1e-5


def test_structure_check_rejects_bad_attributes(exported: dict[str, tuple[Any, Any, Any]]) -> None:
    _, proto, _ = exported["M2"]
    for mutate, match in (
        (lambda n: n.attribute.append(onnx.helper.make_attribute("dilation", 1)), "attributes"),
        (lambda n: [a for a in n.attribute if a.name == "plugin_version"][0].__setattr__("s", b"2"), "plugin_version"),
        (lambda n: [a for a in n.attribute if a.name == "kernel_size"][0].__setattr__("i", 4), "odd"),
        (lambda n: [a for a in n.attribute if a.name == "stride"][0].__setattr__("i", 2**33), "int32"),
    ):
        bad = onnx.ModelProto()
        bad.CopyFrom(proto)
        mutate(next(n for n in bad.graph.node if n.op_type == "CMIRInvolution"))
        with pytest.raises(CustomGraphError, match=match):
            check_custom_graph(bad)
    with pytest.raises(CustomGraphError, match="expected"):
        check_custom_graph(proto, expected_counts={"CMIRInvolution": 17})

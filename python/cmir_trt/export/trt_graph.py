"""The onnx-trt form's custom nodes: structure checks against the plugin schema, and an expansion into standard
operators so ONNX Runtime can execute the graph as a stand-in for TensorRT (numpy + onnx only, no torch).

The expansion is written from the schema's op descriptions alone (not from the exporter's PyTorch code), so running
it checks the custom graph's wiring: input order, attribute values and the packed CMAM weight layout.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from .schema import CMAM_PLUGIN, INT32_MAX, INT32_MIN, INVOLUTION_PLUGIN, PluginSchema, SchemaError, load_schema

RESERVED_ATTRS = ("plugin_namespace", "plugin_version")


class CustomGraphError(ValueError):
    """An onnx-trt graph whose custom nodes do not follow export/plugin_schema.json."""


def custom_nodes(model: Any, schema: PluginSchema | None = None) -> list[Any]:
    schema = schema or load_schema()
    return [n for n in model.graph.node if n.domain == schema.domain or n.op_type in schema.plugins]


def custom_node_counts(model: Any, schema: PluginSchema | None = None) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in custom_nodes(model, schema)).items()))


def _shape_of(model: Any, name: str) -> list[int | str] | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in vi.type.tensor_type.shape.dim]
    return None


def node_attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def check_custom_graph(model: Any, schema: PluginSchema | None = None,
                       expected_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Every custom node follows the schema (op_type, domain, exact attribute set and types/ranges, arity, packed
    weight sizes); the counts match `expected_counts` when given. Returns the counts."""
    from onnx import AttributeProto

    schema = schema or load_schema()
    inits = {i.name: i for i in model.graph.initializer}
    domains = {o.domain: o.version for o in model.opset_import}
    nodes = custom_nodes(model, schema)
    if nodes and schema.domain not in domains:
        raise CustomGraphError(f"custom nodes use domain {schema.domain!r} but the model imports no such opset")
    for n in nodes:
        where = f"custom node {n.name or n.output[0]!r} ({n.op_type})"
        if n.op_type not in schema.plugins:
            raise CustomGraphError(f"{where}: op_type is not a plugin of the schema ({sorted(schema.plugins)})")
        spec = schema[n.op_type]
        if n.domain != schema.domain:
            raise CustomGraphError(f"{where}: domain {n.domain!r}, schema says {schema.domain!r}")
        if len(n.input) != len(spec.inputs) or len(n.output) != len(spec.outputs):
            raise CustomGraphError(f"{where}: {len(n.input)} inputs / {len(n.output)} outputs, schema has "
                                   f"{len(spec.inputs)} / {len(spec.outputs)}")
        attrs = {a.name: a for a in n.attribute}
        want = set(spec.field_names) | set(RESERVED_ATTRS)
        if set(attrs) != want:
            raise CustomGraphError(f"{where}: attributes {sorted(attrs)}, schema fields + plugin_* are {sorted(want)}")
        for key in RESERVED_ATTRS:
            a = attrs[key]
            expected = spec.namespace if key == "plugin_namespace" else spec.version
            if a.type != AttributeProto.STRING or a.s.decode() != expected:
                raise CustomGraphError(f"{where}: {key} must be the string {expected!r}")
        for f in spec.fields:
            a = attrs[f.name]
            if f.type == "int32":
                if a.type != AttributeProto.INT or not INT32_MIN <= a.i <= INT32_MAX:
                    raise CustomGraphError(f"{where}: {f.name} must be an INT within int32")
                value: float = a.i
            else:
                if a.type != AttributeProto.FLOAT or not math.isfinite(a.f):
                    raise CustomGraphError(f"{where}: {f.name} must be a finite FLOAT")
                value = a.f
            try:
                f.check(int(value) if f.type == "int32" else float(value), n.op_type)
            except SchemaError as exc:
                raise CustomGraphError(f"{where}: {exc}") from exc
        if n.op_type == CMAM_PLUGIN:
            shape = _shape_of(model, n.input[0])
            vals = node_attributes(n)
            for wname in n.input[2:4]:
                if wname not in inits:
                    raise CustomGraphError(f"{where}: packed weights {wname!r} must be an initializer")
                if shape is not None and isinstance(shape[1], int):
                    c, d = shape[1], int(vals["dim"])
                    size = int(np.prod(inits[wname].dims))
                    if size != 4 * d * c + 3 * d + 3 * c:
                        raise CustomGraphError(f"{where}: packed weights {wname!r} have {size} elements, the layout "
                                               f"needs 4*dim*C + 3*dim + 3*C = {4 * d * c + 3 * d + 3 * c}")
    counts = custom_node_counts(model, schema)
    if expected_counts is not None:
        want_counts = {k: v for k, v in sorted(expected_counts.items()) if v}
        if counts != want_counts:
            raise CustomGraphError(f"custom nodes {counts}, expected {want_counts}")
    return counts


class _Builder:
    """Collects the standard-op nodes and constants that replace one custom node."""

    def __init__(self, prefix: str, elem_type: int) -> None:
        self.prefix = prefix
        self.elem_type = elem_type
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def name(self, tag: str) -> str:
        self.n += 1
        return f"{self.prefix}/{tag}_{self.n}"

    def const(self, value: np.ndarray, tag: str) -> str:
        from onnx import numpy_helper

        nm = self.name(tag)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), nm))
        return nm

    def ints(self, values: list[int], tag: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), tag)

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> str:
        from onnx import helper

        outs = outputs or [self.name(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0]


def _expand_involution(b: _Builder, node: Any, x_shape: list[Any], np_dtype: Any) -> None:
    a = node_attributes(node)
    k, s, gc = int(a["kernel_size"]), int(a["stride"]), int(a["group_channels"])
    c, h, w = (int(v) for v in x_shape[1:])
    g = c // gc
    ho, wo = -(-h // s), -(-w // s)
    p = (k - 1) // 2
    kk = k * k
    # Zero-pad, then one strided slice per tap (kh, kw): X[n, c, h*s - p + kh, w*s - p + kw].
    xp = b.op("Pad", [node.input[0], b.ints([0, 0, p, p, 0, 0, p + s * ho - h, p + s * wo - w], "pads")])
    taps = []
    for kh in range(k):
        for kw in range(k):
            sl = b.op("Slice", [xp, b.ints([kh, kw], "starts"), b.ints([kh + s * (ho - 1) + 1, kw + s * (wo - 1) + 1],
                                                                           "ends"),
                                b.ints([2, 3], "axes"), b.ints([s, s], "steps")])
            taps.append(b.op("Unsqueeze", [sl, b.ints([2], "axes")]))
    cols = b.op("Concat", taps, axis=2)  # [B, C, K*K, H', W']
    cols = b.op("Reshape", [cols, b.ints([0, g, gc, kk, ho, wo])])
    ker = b.op("Reshape", [node.input[1], b.ints([0, g, 1, kk, ho, wo])])
    prod = b.op("Mul", [cols, ker])
    red = b.op("ReduceSum", [prod, b.ints([3], "axes")], keepdims=0)
    b.op("Reshape", [red, b.ints([0, c, ho, wo])], outputs=[node.output[0]])


def _expand_cmam(b: _Builder, node: Any, x_shape: list[Any], packed: dict[str, np.ndarray], np_dtype: Any) -> None:
    a = node_attributes(node)
    heads, d, eps = int(a["heads"]), int(a["dim"]), float(a["eps"])
    c, h, w = (int(v) for v in x_shape[1:])
    hd = d // heads
    n_tok = h * w

    def unpack(buf: np.ndarray, tag: str) -> dict[str, str]:
        sizes = [("wq", (d, c)), ("bq", (d,)), ("wk", (d, c)), ("bk", (d,)), ("wv", (d, c)), ("bv", (d,)),
                 ("wo", (c, d)), ("bo", (c,)), ("gamma", (c,)), ("beta", (c,))]
        out, off = {}, 0
        for key, shp in sizes:
            size = int(np.prod(shp))
            part = buf[off:off + size].reshape(shp)
            off += size
            if key.startswith("w"):
                part = part.T  # torch.nn.Linear stores [out, in]; MatMul wants [in, out]
            out[key] = b.const(part.astype(np_dtype), f"{tag}_{key}")
        if off != buf.size:
            raise CustomGraphError(f"{node.op_type}: packed weights have {buf.size} elements, layout needs {off}")
        return out

    def tokens(x: str) -> str:  # [B, C, H, W] -> [B, N, C]
        return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, c, n_tok])])], perm=[0, 2, 1])

    def heads_split(t: str) -> str:  # [B, N, d] -> [B, heads, N, hd]
        return b.op("Transpose", [b.op("Reshape", [t, b.ints([0, n_tok, heads, hd])])], perm=[0, 2, 1, 3])

    def linear(t: str, wk: str, bk: str) -> str:
        return b.op("Add", [b.op("MatMul", [t, wk]), bk])

    ta, tp = tokens(node.input[0]), tokens(node.input[1])
    scale = b.const(np.asarray(1.0 / math.sqrt(hd), dtype=np_dtype), "scale")
    for out_name, tq, tkv, wname, tag in ((node.output[0], ta, tp, node.input[2], "art"),
                                          (node.output[1], tp, ta, node.input[3], "pv")):
        p = unpack(packed[wname], tag)
        q = heads_split(linear(tq, p["wq"], p["bq"]))
        k = heads_split(linear(tkv, p["wk"], p["bk"]))
        v = heads_split(linear(tkv, p["wv"], p["bv"]))
        logits = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        att = b.op("Softmax", [logits], axis=-1)
        y = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]),
                             b.ints([0, n_tok, d])])
        res = b.op("Add", [tq, linear(y, p["wo"], p["bo"])])
        ln = b.op("LayerNormalization", [res, p["gamma"], p["beta"]], axis=-1, epsilon=eps)
        b.op("Reshape", [b.op("Transpose", [ln], perm=[0, 2, 1]), b.ints([0, c, h, w])], outputs=[out_name])


def expand_custom_nodes(model: Any, schema: PluginSchema | None = None) -> Any:
    """A copy of an onnx-trt model with each custom node replaced by standard operators (per the schema's op
    descriptions), runnable in ONNX Runtime. Needs the static C/H/W of each custom node's first input."""
    import onnx
    from onnx import numpy_helper

    schema = schema or load_schema()
    check_custom_graph(model, schema)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    new_nodes: list[Any] = []
    used_packed: set[str] = set()
    for idx, node in enumerate(m.graph.node):
        if node.op_type not in (INVOLUTION_PLUGIN, CMAM_PLUGIN) or node.domain != schema.domain:
            new_nodes.append(node)
            continue
        shape = _shape_of(m, node.input[0])
        if shape is None or len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
            raise CustomGraphError(f"{node.op_type} node {node.name!r}: input {node.input[0]!r} needs a known static "
                                   f"[B, C, H, W] shape in value_info, got {shape}")
        elem = None
        for vi in list(m.graph.value_info) + list(m.graph.input):
            if vi.name == node.input[0]:
                elem = vi.type.tensor_type.elem_type
        np_dtype = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
        b = _Builder(f"expanded_{idx}_{node.op_type}", elem or onnx.TensorProto.FLOAT)
        if node.op_type == INVOLUTION_PLUGIN:
            _expand_involution(b, node, shape, np_dtype)
        else:
            packed = {nm: numpy_helper.to_array(inits[nm]).reshape(-1) for nm in node.input[2:4]}
            used_packed.update(node.input[2:4])
            _expand_cmam(b, node, shape, packed, np_dtype)
        new_nodes.extend(b.nodes)
        m.graph.initializer.extend(b.inits)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    still_used = {i for n in new_nodes for i in n.input}
    keep = [i for i in m.graph.initializer if i.name not in used_packed or i.name in still_used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    opsets = [o for o in m.opset_import if o.domain != schema.domain]
    del m.opset_import[:]
    m.opset_import.extend(opsets)
    return m

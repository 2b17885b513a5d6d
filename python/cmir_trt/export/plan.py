"""Plan writer: a CMIR model (or checkpoint) -> the versioned binary plan the native C++ engine loads.

The format is specified in export/plan-format.md; the C++ loader (cpp/src/plan.cpp) is its reader. BatchNorm is
folded into the preceding convolution here (in float64, then rounded once to float32), so the engine sees only
conv+bias(+residual)(+ReLU). The file is written to a temporary name and renamed, so an interrupted export never
leaves a half-written plan.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes

PLAN_MAGIC = b"CMIRPLAN"
PLAN_VERSION = 1
HEADER_SIZE = 80
TRAILER_MAGIC = b"PEND"
GRAPH_MAGIC = b"GRPH"
WEIGHT_ALIGN = 64
NO_TENSOR = 0xFFFFFFFF

# Op codes (export/plan-format.md, section "Ops"); the C++ loader has the same table.
OP_CONV = 1
OP_MAXPOOL = 2
OP_AVGPOOL_CEIL = 3
OP_INVOLUTION = 4
OP_AFFINE = 5
OP_SPATIAL_ATTENTION = 6
OP_CMAM = 7
OP_GAP = 8
OP_LINEAR = 9
OP_CONCAT = 10
OP_PROBABILITY = 11
OP_RESIZE_BILINEAR = 12
OP_MEAN2 = 13
OP_CAM = 14
OP_INVOLUTION_FUSED = 15

OP_NAMES = {
    OP_CONV: "conv", OP_MAXPOOL: "maxpool", OP_AVGPOOL_CEIL: "avgpool_ceil", OP_INVOLUTION: "involution",
    OP_AFFINE: "affine", OP_SPATIAL_ATTENTION: "spatial_attention", OP_CMAM: "cmam", OP_GAP: "gap",
    OP_LINEAR: "linear", OP_CONCAT: "concat", OP_PROBABILITY: "probability", OP_RESIZE_BILINEAR: "resize_bilinear",
    OP_MEAN2: "mean2", OP_CAM: "cam", OP_INVOLUTION_FUSED: "involution_fused",
}


class PlanError(ValueError):
    """A model that cannot be expressed as a plan, or a plan file that is not valid."""


def _f32(a: Any) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64).astype(np.float32)).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise PlanError("model weights contain NaN or infinity; refusing to export")
    return arr


class _GraphBuilder:
    """Collects tensors (per-sample NHWC shapes), ops and 64-byte-aligned float32 weight blobs."""

    def __init__(self) -> None:
        self.tensors: list[tuple[int, int, int]] = []
        self.ops: list[tuple[int, list[int], list[int], list[int], list[float], list[tuple[int, int]]]] = []
        self.blobs: list[np.ndarray] = []
        self.weight_bytes = 0

    def tensor(self, h: int, w: int, c: int) -> int:
        if min(h, w, c) < 1:
            raise PlanError(f"tensor shape [{h}, {w}, {c}] is empty")
        self.tensors.append((h, w, c))
        return len(self.tensors) - 1

    def shape(self, t: int) -> tuple[int, int, int]:
        return self.tensors[t]

    def weight(self, arr: Any) -> tuple[int, int]:
        a = _f32(arr)
        off = self.weight_bytes
        self.blobs.append(a)
        nbytes = a.size * 4
        pad = (-nbytes) % WEIGHT_ALIGN
        if pad:
            self.blobs.append(np.zeros(pad // 4, np.float32))
        self.weight_bytes += nbytes + pad
        return off, a.size

    def op(self, code: int, inputs: list[int], outputs: list[int], ints: list[int] | None = None,
           floats: list[float] | None = None, weights: list[Any] | None = None) -> None:
        refs = [self.weight(w) for w in (weights or [])]
        self.ops.append((code, list(inputs), list(outputs), list(ints or []), list(floats or []), refs))


def _bn_scale_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    g = bn.weight.detach().double().numpy()
    b = bn.bias.detach().double().numpy()
    m = bn.running_mean.detach().double().numpy()
    v = bn.running_var.detach().double().numpy()
    scale = g / np.sqrt(v + bn.eps)
    return scale, b - m * scale


def _conv_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class _Emitter:
    def __init__(self, gb: _GraphBuilder, fuse_involution: bool = True) -> None:
        self.gb = gb
        self.fuse_involution = fuse_involution

    def conv_bn(self, x: int, conv: Any, bn: Any, relu: bool, residual: int | None = None) -> int:
        """conv (no bias) + BN folded; optional residual add before the ReLU."""
        w = conv.weight.detach().double().numpy()
        cout, cin, kh, kw = w.shape
        if kh != kw or conv.padding[0] != conv.padding[1] or conv.stride[0] != conv.stride[1] or conv.groups != 1 \
                or conv.dilation != (1, 1):
            raise PlanError(f"unsupported convolution {conv}")
        scale, shift = _bn_scale_shift(bn)
        if conv.bias is not None:
            shift = shift + conv.bias.detach().double().numpy() * scale
        return self.conv(x, w * scale[:, None, None, None], shift, kh, conv.stride[0], conv.padding[0], relu,
                         residual)

    def conv(self, x: int, w: np.ndarray, b: np.ndarray, k: int, s: int, p: int, relu: bool,
             residual: int | None = None) -> int:
        h, wd, cin = self.gb.shape(x)
        cout = w.shape[0]
        if w.shape[1] != cin:
            raise PlanError(f"conv expects {w.shape[1]} input channels, graph has {cin}")
        y = self.gb.tensor(_conv_size(h, k, s, p), _conv_size(wd, k, s, p), cout)
        ins = [x] if residual is None else [x, residual]
        self.gb.op(OP_CONV, ins, [y], [k, s, p, int(relu)], weights=[w, b])
        return y

    def conv_bn_relu_seq(self, x: int, seq: Any) -> int:
        from torch import nn

        mods = list(seq)
        if isinstance(mods[0], nn.Conv2d):
            return self.conv_bn(x, mods[0], mods[1], relu=len(mods) > 2)
        return self.involution(x, mods[0], mods[1])

    def involution(self, x: int, inv: Any, bn_after: Any) -> int:
        if self.fuse_involution:
            return self.involution_fused(x, inv, bn_after)
        h, w, c = self.gb.shape(x)
        k, s, gc = inv.kernel_size, inv.stride, inv.group_channels
        src = x
        if s > 1:
            src = self.gb.tensor(math.ceil(h / s), math.ceil(w / s), c)
            self.gb.op(OP_AVGPOOL_CEIL, [x], [src], [s])
        t = self.conv_bn(src, inv.reduce, inv.bn, relu=True)
        span_w = inv.span.weight.detach().double().numpy()
        span_b = inv.span.bias.detach().double().numpy()
        kern = self.conv(t, span_w, span_b, 1, 1, 0, relu=False)
        y = self.gb.tensor(math.ceil(h / s), math.ceil(w / s), c)
        scale, shift = _bn_scale_shift(bn_after)
        # Involution -> BN -> ReLU: BN cannot fold into per-group kernels, so the engine applies it as an epilogue.
        self.gb.op(OP_INVOLUTION, [x, kern], [y], [k, s, gc, 1], weights=[scale, shift])
        return y

    def involution_fused(self, x: int, inv: Any, bn_after: Any) -> int:
        """One op: pooling, both generation 1x1 convs (reduce BN folded), aggregation and the BN+ReLU after it.

        The per-pixel kernel tensor (G*K*K floats per pixel, several times the activations) is never materialised.
        Weights are stored transposed ([in, out]) for the kernel's per-tile GEMMs.
        """
        h, w, c = self.gb.shape(x)
        k, s, gc = inv.kernel_size, inv.stride, inv.group_channels
        rw = inv.reduce.weight.detach().double().numpy()[:, :, 0, 0]  # [hidden, C]
        rscale, rshift = _bn_scale_shift(inv.bn)
        hidden = rw.shape[0]
        reduce_wt = np.ascontiguousarray((rw * rscale[:, None]).T)  # [C, hidden]
        span_wt = np.ascontiguousarray(inv.span.weight.detach().double().numpy()[:, :, 0, 0].T)  # [hidden, G*K*K]
        span_b = inv.span.bias.detach().double().numpy()
        scale, shift = _bn_scale_shift(bn_after)
        y = self.gb.tensor(math.ceil(h / s), math.ceil(w / s), c)
        self.gb.op(OP_INVOLUTION_FUSED, [x], [y], [k, s, gc, 1, hidden],
                   weights=[reduce_wt, rshift, span_wt, span_b, scale, shift])
        return y

    def bottleneck(self, x: int, blk: Any) -> int:
        identity = x
        if blk.downsample is not None:
            identity = self.conv_bn_relu_seq(x, blk.downsample)
        y = self.conv_bn_relu_seq(x, blk.conv1)
        y = self.conv_bn_relu_seq(y, blk.conv2)
        return self.conv_bn(y, blk.conv3[0], blk.conv3[1], relu=True, residual=identity)

    def stages(self, net: Any, x: int, start: int, stop: int) -> int:
        if start == 0:
            stem = list(net.stem)
            x = self.conv_bn_relu_seq(x, stem[0])
            x = self.conv_bn_relu_seq(x, stem[1])
            x = self.conv_bn_relu_seq(x, stem[2])
            mp = stem[3]
            h, w, c = self.gb.shape(x)
            y = self.gb.tensor(_conv_size(h, mp.kernel_size, mp.stride, mp.padding),
                               _conv_size(w, mp.kernel_size, mp.stride, mp.padding), c)
            self.gb.op(OP_MAXPOOL, [x], [y], [mp.kernel_size, mp.stride, mp.padding])
            x = y
        for i in range(start, stop):
            for blk in net.stages[i]:
                x = self.bottleneck(x, blk)
        return x

    def spatial_attention(self, sa: Any, a: int, p: int) -> tuple[int, int, int]:
        h, w, c = self.gb.shape(a)
        ao, po, att = self.gb.tensor(h, w, c), self.gb.tensor(h, w, c), self.gb.tensor(h, w, 1)
        k = sa.kernel_size
        self.gb.op(OP_SPATIAL_ATTENTION, [a, p], [ao, po, att], [k],
                   weights=[sa.conv.weight.detach().double().numpy(), sa.conv.bias.detach().double().numpy()])
        return ao, po, att

    def linear(self, x: int, lin: Any, relu: bool) -> int:
        out = self.gb.tensor(1, 1, lin.out_features)
        self.gb.op(OP_LINEAR, [x], [out], [int(relu)],
                   weights=[lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()])
        return out

    def resize(self, x: int, h: int, w: int) -> int:
        c = self.gb.shape(x)[2]
        y = self.gb.tensor(h, w, c)
        self.gb.op(OP_RESIZE_BILINEAR, [x], [y])
        return y


def _cmam_packed(att: Any, norm: Any) -> np.ndarray:
    parts = [att.q.weight, att.q.bias, att.k.weight, att.k.bias, att.v.weight, att.v.bias, att.o.weight, att.o.bias,
             norm.weight, norm.bias]
    return np.concatenate([p.detach().double().numpy().reshape(-1) for p in parts])


def build_graph(model: Any, fuse_involution: bool = True) -> tuple[_GraphBuilder, dict[str, int]]:
    """Translate a CMIR module (eval semantics) into plan tensors/ops; mirrors CMIR.forward step by step.

    fuse_involution: one involution_fused op per involution (kernel generation + aggregation + BN/ReLU, measured
    faster: benchmarks/RESULTS.md) instead of pool, two 1x1 convs and an involution op.
    """
    cfg = model.config
    gb = _GraphBuilder()
    em = _Emitter(gb, fuse_involution)
    s = cfg.image_size
    io = {"art": gb.tensor(s, s, cfg.in_channels), "pv": NO_TENSOR, "clinical": NO_TENSOR}
    if cfg.two_phase:
        io["pv"] = gb.tensor(s, s, cfg.in_channels)
    if cfg.num_clinical > 0:
        io["clinical"] = gb.tensor(1, 1, cfg.num_clinical)

    a = em.stages(model.art_backbone, io["art"], 0, 3)
    p = em.stages(model.pv_backbone, io["pv"], 0, 3) if cfg.two_phase else None
    att3 = att4 = None
    if model.sa3 is not None and p is not None:
        a, p, att3 = em.spatial_attention(model.sa3, a, p)
    a = em.stages(model.art_backbone, a, 3, 4)
    if p is not None:
        p = em.stages(model.pv_backbone, p, 3, 4)
    if model.cmam is not None and p is not None:
        h, w, c = gb.shape(a)
        ao, po = gb.tensor(h, w, c), gb.tensor(h, w, c)
        cm = model.cmam
        gb.op(OP_CMAM, [a, p], [ao, po], [cm.art_from_pv.dim, cm.art_from_pv.heads], [float(cm.norm_art.eps)],
              weights=[_cmam_packed(cm.art_from_pv, cm.norm_art), _cmam_packed(cm.pv_from_art, cm.norm_pv)])
        if cm.norm_art.eps != cm.norm_pv.eps:
            raise PlanError("CMAM LayerNorms with different eps are not supported")
        a, p = ao, po
    if model.sa4 is not None and p is not None:
        a, p, att4 = em.spatial_attention(model.sa4, a, p)

    feats = []
    for t in (a, p):
        if t is None:
            continue
        g = gb.tensor(1, 1, gb.shape(t)[2])
        gb.op(OP_GAP, [t], [g])
        feats.append(g)
    if model.clinical_mlp is not None:
        mlp = list(model.clinical_mlp)
        x = em.linear(io["clinical"], mlp[0], relu=True)
        feats.append(em.linear(x, mlp[2], relu=True))
    total = sum(gb.shape(f)[2] for f in feats)
    z = gb.tensor(1, 1, total)
    gb.op(OP_CONCAT, feats, [z])
    logit = em.linear(z, model.classifier, relu=False)
    prob = gb.tensor(1, 1, cfg.num_classes)
    gb.op(OP_PROBABILITY, [logit], [prob], [0 if cfg.num_classes == 1 else 1])

    if att3 is not None and att4 is not None:
        h3, w3, _ = gb.shape(att3)
        up4 = em.resize(att4, h3, w3)
        small = gb.tensor(h3, w3, 1)
        gb.op(OP_MEAN2, [att3, up4], [small])
    else:
        from ..model.cmir import CAM_EPS

        h4, w4, c4 = gb.shape(a)
        small = gb.tensor(h4, w4, 1)
        nph = 2 if p is not None else 1
        wimg = model.classifier.weight.detach().double().numpy()[:, : nph * c4]
        ins = [a, p, logit] if p is not None else [a, logit]
        gb.op(OP_CAM, ins, [small], [cfg.num_classes, nph], [CAM_EPS], weights=[wimg])
    io["logit"], io["probability"] = logit, prob
    io["heatmap"] = em.resize(small, s, s)
    return gb, io


def _graph_bytes(gb: _GraphBuilder, io: dict[str, int], cfg: Any) -> bytes:
    out = bytearray(GRAPH_MAGIC)
    spec = [cfg.image_size, cfg.in_channels, cfg.num_clinical, cfg.num_classes, int(cfg.two_phase)]
    out += struct.pack("<5I", *spec)
    out += struct.pack("<6I", io["art"], io["pv"], io["clinical"], io["logit"], io["probability"], io["heatmap"])
    out += struct.pack("<2I", len(gb.tensors), len(gb.ops))
    for h, w, c in gb.tensors:
        out += struct.pack("<3I", h, w, c)
    for code, ins, outs, ints, floats, refs in gb.ops:
        out += struct.pack("<6I", code, len(ins), len(outs), len(ints), len(floats), len(refs))
        out += struct.pack(f"<{len(ins)}I", *ins) + struct.pack(f"<{len(outs)}I", *outs)
        out += struct.pack(f"<{len(ints)}i", *ints) + struct.pack(f"<{len(floats)}f", *floats)
        for off, count in refs:
            out += struct.pack("<2Q", off, count)
    return bytes(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and small arrays
        return _jsonable(obj.tolist())
    return str(obj)


def plan_metadata(model: Any, metadata: dict[str, Any] | None = None, checkpoint_sha256: str | None = None,
                  model_id: str | None = None, weights_digest: str | None = None) -> dict[str, Any]:
    """The metadata dict a plan carries (and the torch backend reports): config, input spec, decision threshold,
    synthetic-data flag, checkpoint hash, and the checkpoint's own metadata verbatim (JSON-safe)."""
    from .. import __version__

    cfg = model.config
    meta_in = dict(metadata if metadata is not None else getattr(model, "metadata", None) or {})
    sha = checkpoint_sha256 or getattr(model, "checkpoint_sha256", None)
    if model_id is None:
        tag = sha[:12] if sha else (weights_digest or "untracked")[:12]
        model_id = f"cmir-{cfg.variant}-{tag}"
    training = meta_in.get("training_data") if isinstance(meta_in.get("training_data"), dict) else {}
    threshold = meta_in.get("threshold")
    return {
        "format": "cmir-plan",
        "format_version": PLAN_VERSION,
        "model_id": model_id,
        "config": cfg.to_dict(),
        "input_spec": {
            "art": [cfg.in_channels, cfg.image_size, cfg.image_size],
            "pv": [cfg.in_channels, cfg.image_size, cfg.image_size] if cfg.two_phase else None,
            "clinical": [cfg.num_clinical],
            "layout": "NCHW float32, batch first",
        },
        "outputs": {"logit": [cfg.num_classes], "probability": [cfg.num_classes],
                    "heatmap": [1, cfg.image_size, cfg.image_size]},
        "checkpoint_sha256": sha,
        "synthetic": bool(training.get("synthetic", False)),
        "threshold": float(threshold) if isinstance(threshold, (int, float)) else None,
        "clinical_schema": _jsonable(meta_in.get("clinical_schema")),
        "preprocess": _jsonable(meta_in.get("preprocess")),
        "cmir_trt_version": __version__,
        "checkpoint_metadata": _jsonable(meta_in),
    }


def plan_bytes(model: Any, metadata: dict[str, Any] | None = None, checkpoint_sha256: str | None = None,
               model_id: str | None = None, fuse_involution: bool = True,
               extra_metadata: dict[str, Any] | None = None) -> bytes:
    """The complete plan file for `model` (a CMIR module) as bytes; `extra_metadata`: top-level keys added to the
    metadata (e.g. "precisions", the export-time parity check)."""
    model = model.eval()
    cfg = model.config
    gb, io = build_graph(model, fuse_involution)
    graph = _graph_bytes(gb, io, cfg)
    weights = b"".join(b.tobytes() for b in gb.blobs)
    meta = plan_metadata(model, metadata, checkpoint_sha256, model_id, hashlib.sha256(weights).hexdigest())
    meta.update(_jsonable(extra_metadata or {}))
    meta_b = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")

    meta_off = HEADER_SIZE
    graph_off = meta_off + len(meta_b)
    graph_off += (-graph_off) % 8
    weights_off = graph_off + len(graph)
    weights_off += (-weights_off) % WEIGHT_ALIGN
    file_size = weights_off + len(weights) + 8
    header = PLAN_MAGIC + struct.pack("<2I7Q8x", PLAN_VERSION, HEADER_SIZE, file_size, meta_off, len(meta_b),
                                      graph_off, len(graph), weights_off, len(weights))
    assert len(header) == HEADER_SIZE
    body = bytearray(header)
    body += meta_b
    body += b"\0" * (graph_off - len(body))
    body += graph
    body += b"\0" * (weights_off - len(body))
    body += weights
    crc = zlib.crc32(body) & 0xFFFFFFFF
    body += struct.pack("<I", crc) + TRAILER_MAGIC
    assert len(body) == file_size
    return bytes(body)


def export_plan(model_or_ckpt: Any, out_path: str | os.PathLike[str], metadata: dict[str, Any] | None = None,
                model_id: str | None = None, fuse_involution: bool = True,
                validate_precisions: tuple[str, ...] = ()) -> Path:
    """Write the plan of a CMIR module or checkpoint path to `out_path` (atomically); returns the path.

    validate_precisions (e.g. ("fp32", "bf16"), what `cmir-trt export --format plan` asks for): the native engine runs
    the plan in each precision on seeded random inputs against the PyTorch model before the file is written, and the
    plan's metadata key "precisions" records, per precision, whether it was validated (errors, tolerance, CPU) or why
    not (e.g. bf16 on a CPU without avx512_bf16). A failed check is recorded, not raised: the plan still runs in the
    precisions that passed.
    """
    from ..model.checkpoint import load_checkpoint

    model = model_or_ckpt
    if isinstance(model_or_ckpt, (str, os.PathLike)):
        model = load_checkpoint(model_or_ckpt)
    data = plan_bytes(model, metadata=metadata, model_id=model_id, fuse_involution=fuse_involution)
    if validate_precisions:
        checks = check_plan_precisions(model, data, validate_precisions)
        data = plan_bytes(model, metadata=metadata, model_id=model_id, fuse_involution=fuse_involution,
                          extra_metadata={"precisions": checks})
    return atomic_write_bytes(out_path, data)


# Tolerances of the export-time check, per precision (the same as `cmir-trt validate`'s native rows).
PRECISION_TOLERANCE = {"fp32": {"probability": 1e-5, "heatmap": 1e-4},
                       "bf16": {"probability": 1e-2, "heatmap": 5e-2}}


def check_plan_precisions(model: Any, data: bytes, precisions: tuple[str, ...], seed: int = 0) -> dict[str, Any]:
    """Run the plan bytes in the native engine in each precision on seeded random (synthetic) inputs and compare with
    the PyTorch model in fp32: {precision: {"validated": bool, ...}}."""
    import tempfile
    import time

    from .._machine import cpu_name
    from .validation import decisions, random_inputs, reference_outputs

    unknown = [p for p in precisions if p not in PRECISION_TOLERANCE]
    if unknown:
        raise ValueError(f"cannot validate precision(s) {unknown}; the native engine runs {list(PRECISION_TOLERANCE)}")
    try:
        from .._native import load_core

        core = load_core()
        if not hasattr(core, "NativeEngine"):
            raise ImportError("this build has no native engine")
    except ImportError as exc:
        return {p: {"validated": False, "reason": f"the native engine is not available here ({exc})"}
                for p in precisions}
    cfg = model.config.to_dict()
    inputs = random_inputs(cfg, seed, batch_sizes=(1, 3))
    refs = reference_outputs(model, inputs.batches)
    thr = (getattr(model, "metadata", None) or {}).get("threshold")
    threshold = float(thr) if isinstance(thr, (int, float)) and math.isfinite(thr) else 0.5
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cmir-plan-check-") as tmp:
        path = Path(tmp) / "model.plan"
        path.write_bytes(data)
        for prec in precisions:
            if prec == "bf16":
                ok, why = core.bf16_supported()
                if not ok:
                    out[prec] = {"validated": False, "reason": why, "cpu": cpu_name()}
                    continue
            try:
                eng = core.NativeEngine(str(path), 0, prec)
            except (RuntimeError, ValueError) as exc:
                out[prec] = {"validated": False, "reason": f"the engine refused the plan: {exc}", "cpu": cpu_name()}
                continue
            err = {"probability": 0.0, "heatmap": 0.0, "logit": 0.0}
            flips = 0
            for (art, pv, clin), (r_logit, r_prob, r_heat) in zip(inputs.batches, refs, strict=True):
                prob, logit, heat, _ = eng.predict(art, pv, clin)
                for name, got, ref in (("probability", prob, r_prob), ("heatmap", heat, r_heat),
                                       ("logit", logit, r_logit)):
                    diff = np.abs(np.asarray(got, np.float64) - ref)
                    err[name] = max(err[name], float(np.nan_to_num(diff, nan=np.inf).max()))
                flips += int((decisions(prob, threshold) != decisions(r_prob, threshold)).sum())
            tol = PRECISION_TOLERANCE[prec]
            passed = all(err[k] <= b for k, b in tol.items())
            out[prec] = {"validated": passed, "max_abs": err, "tolerance_abs": tol, "decision_flips": flips,
                         "inputs": f"{inputs.count} seeded N(0,1) cases (synthetic), seed {seed}",
                         "reference": "the PyTorch model, fp32, CPU", "cpu": cpu_name(),
                         "date": time.strftime("%Y-%m-%d", time.gmtime())}
            if not passed:
                out[prec]["reason"] = "errors above the tolerance"
    return out


def read_plan_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The plan's metadata dict, read in pure Python (header bounds and checksum checked; no torch, no _C)."""
    data = Path(path).read_bytes()
    if len(data) < HEADER_SIZE + 8 or data[:8] != PLAN_MAGIC:
        raise PlanError(f"{path}: not a cmir plan (bad magic or too short)")
    version, hsize, fsize, moff, msize = struct.unpack_from("<2I3Q", data, 8)
    if version != PLAN_VERSION:
        raise PlanError(f"{path}: unsupported plan format version {version} (this reader knows {PLAN_VERSION})")
    if fsize != len(data) or hsize != HEADER_SIZE or moff + msize > len(data) - 8:
        raise PlanError(f"{path}: truncated or inconsistent plan header")
    if data[-4:] != TRAILER_MAGIC or struct.unpack_from("<I", data, len(data) - 8)[0] != zlib.crc32(data[:-8]):
        raise PlanError(f"{path}: plan checksum mismatch (file corrupt)")
    try:
        return json.loads(data[moff:moff + msize].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: plan metadata is not valid JSON: {exc}") from exc

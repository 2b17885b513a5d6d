#!/usr/bin/env python3
"""Build a TensorRT engine from cmir_trt's `onnx-trt` export with only TensorRT installed (no cmir_trt, no torch).

    python build_engine.py --onnx model.onnx --plugins libcmir_trt_plugins.so --out model.plan \
        [--min-batch 1] [--opt-batch 4] [--max-batch 8] [--workspace-mib N] [--verbose]

One optimization profile over the batch axis (every other dimension must be static); precision is the graph's own
(strongly typed network: TensorRT 11 always, TensorRT 10 through the STRONGLY_TYPED flag, so the fp16 export builds
in fp16 on both). The engine is written atomically, with OUT.json beside it (the ONNX sidecar's model description,
when present, plus the engine's sha256, TensorRT version and profile). Engines are specific to the TensorRT version
and GPU: build on the machine (or an identical one) that serves them. `cmir-trt build` does the same from the
package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(args: argparse.Namespace) -> Path:
    onnx_path, out, lib = Path(args.onnx), Path(args.out), Path(args.plugins)
    for p, what in ((onnx_path, "ONNX model"), (lib, "plugin library")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
    opt = args.opt_batch if args.opt_batch is not None else max(args.min_batch, min(args.max_batch, 4))
    if not 1 <= args.min_batch <= opt <= args.max_batch:
        raise ValueError(f"need 1 <= min <= opt <= max batch, got {args.min_batch}, {opt}, {args.max_batch}")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(f"TensorRT is not installed: {exc}") from exc
    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    if trt.get_plugin_registry().load_library(str(lib.resolve())) is None:
        raise RuntimeError(f"TensorRT could not load the plugin library {lib}")
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    if args.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise RuntimeError(f"input {t.name!r} has dynamic non-batch dimensions {shape}")
        if shape and shape[0] < 0:
            rest = shape[1:]
            profile.set_shape(t.name, [args.min_batch, *rest], [opt, *rest], [args.max_batch, *rest])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (rerun with --verbose)")
    data = bytes(serialized)
    _write_atomic(out, data)
    sidecar: dict = {}
    onnx_sidecar = Path(str(onnx_path) + ".json")
    if onnx_sidecar.is_file():
        sidecar = json.loads(onnx_sidecar.read_text(encoding="utf-8"))
    sidecar.update({
        "format": "cmir-trt-engine",
        "source_artifact": sidecar.get("artifact"),
        "artifact": {"file": out.name, "format": "tensorrt-engine", "kind": "file", "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "batch": f"{args.min_batch}..{args.max_batch}",
                     "precision": (sidecar.get("artifact") or {}).get("precision")},
        "tensorrt": {"tensorrt_version": trt.__version__,
                     "profile": {"min_batch": args.min_batch, "opt_batch": opt, "max_batch": args.max_batch},
                     "workspace_mib": args.workspace_mib, "plugin_library": lib.name,
                     "source": {"file": onnx_path.name,
                                "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}},
    })
    _write_atomic(Path(str(out) + ".json"), (json.dumps(sidecar, indent=2, default=str) + "\n").encode())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx", required=True, help="the onnx-trt export (cmir-trt export --format onnx-trt)")
    p.add_argument("--plugins", required=True, help="path of libcmir_trt_plugins.so")
    p.add_argument("--out", required=True, help="engine file to write (e.g. model.plan for Triton)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=None, help="default: min(max-batch, 4)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--workspace-mib", type=int, default=None, help="cap on TensorRT's scratch memory (MiB)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        out = build(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"build_engine.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

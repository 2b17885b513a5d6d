"""`cmir-trt export`: a checkpoint to TorchScript, ONNX (standard ops), ONNX with TensorRT custom ops, a native plan
or a Triton model repository, each with a JSON sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a checkpoint to torchscript | onnx | onnx-trt | plan | triton (+ a JSON sidecar)"

FORMATS = ("torchscript", "onnx", "onnx-trt", "plan", "triton")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt) written by cmir-trt train / save_checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="torchscript: torch.jit archive; onnx: standard operators (any runtime); onnx-trt: "
                        "involution/CMAM as TensorRT plugin nodes (export/plugin_schema.json); plan: native "
                        "engine; triton: model repository")
    p.add_argument("--out", required=True, help="output path (the sidecar is written to OUT.json)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size N")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="fp16: weights and activations in half precision, inputs/outputs stay fp32 (ONNX forms)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--verbose", action="store_true", help="show the exporter's own progress and warnings")
    t = p.add_argument_group("triton", "options of --format triton (serve the result with `cmir-trt serve`)")
    t.add_argument("--no-tensorrt", action="store_true",
                   help="leave out the TensorRT-plan model (a CPU-only repository; skips the ONNX export)")
    t.add_argument("--instances", type=int, default=None,
                   help="model instances per model (instance_group count; default 1)")
    t.add_argument("--queue-delay-us", type=int, default=None,
                   help="dynamic batching: longest wait for a fuller batch, in microseconds (default 100)")


def _export_triton(args: argparse.Namespace) -> None:
    """--format triton with its own options: the repository, then its sidecar (as export_model writes it)."""
    from ..export.exporters import parse_batch
    from ..export.sidecar import build_sidecar, sidecar_path, write_json_atomic
    from ..export.triton import export_triton_repository
    from ..model.checkpoint import load_checkpoint

    batch = parse_batch(args.batch)
    out = export_triton_repository(args.model, args.out, batch=batch, precision=args.precision,
                                   instance_count=1 if args.instances is None else args.instances,
                                   max_queue_delay_us=100 if args.queue_delay_us is None else args.queue_delay_us,
                                   tensorrt=not args.no_tensorrt, verbose=args.verbose)
    model = load_checkpoint(args.model)
    write_json_atomic(sidecar_path(out), build_sidecar(
        artifact=out, fmt="triton", config=model.config.to_dict(), metadata=dict(model.metadata or {}),
        checkpoint_sha256=str(getattr(model, "checkpoint_sha256", "")), checkpoint_name=Path(args.model).name,
        batch=batch, precision=args.precision))


def run(args: argparse.Namespace) -> int:

    from ..export.exporters import export_model
    from ..export.sidecar import read_sidecar, sidecar_path

    triton_opts = [o for o, v in (("--no-tensorrt", args.no_tensorrt), ("--instances", args.instances),
                                  ("--queue-delay-us", args.queue_delay_us)) if v not in (None, False)]
    if triton_opts and args.fmt != "triton":
        raise ValueError(f"{', '.join(triton_opts)}: only with --format triton")
    if triton_opts:
        _export_triton(args)
        out = Path(args.out)
    else:
        out = export_model(args.model, args.fmt, args.out, batch=args.batch, precision=args.precision,
                           opset=args.opset, verbose=args.verbose)
    sc = read_sidecar(out)
    art = sc["artifact"]
    syn = sc.get("synthetic_training_data")
    note = {True: " [model trained on SYNTHETIC data]", False: ""}.get(syn, " [training data not recorded]")
    custom = sc.get("custom_ops")
    extra = f", custom nodes {custom['counts']}" if custom else ""
    print(f"wrote {out} ({art['bytes']:,} bytes, {args.fmt}, {art['precision']}, batch {art['batch']}{extra})"
          f"{note}")
    print(f"sidecar {sidecar_path(out)}")
    return 0

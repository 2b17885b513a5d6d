"""`cmir-trt export`: a checkpoint to TorchScript, ONNX (standard ops), ONNX with TensorRT custom ops, a native plan
or a Triton model repository, each with a JSON sidecar."""

from __future__ import annotations

import argparse

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


def run(args: argparse.Namespace) -> int:

    from ..export.exporters import export_model
    from ..export.sidecar import read_sidecar, sidecar_path

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

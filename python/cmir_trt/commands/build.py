"""`cmir-trt build`: a TensorRT engine from the onnx-trt export (needs TensorRT and a GPU)."""

from __future__ import annotations

import argparse

HELP = "build a TensorRT engine from an onnx-trt export (needs TensorRT; the cmir plugins are loaded automatically)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="ONNX graph written by `cmir-trt export --format onnx-trt`")
    p.add_argument("--out", required=True, help="engine file to write (a sidecar goes to OUT.json)")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch of the optimization profile (default 1)")
    p.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for (default min(max, 4))")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimization profile (default 8)")
    p.add_argument("--workspace", type=int, default=None, metavar="MIB",
                   help="cap on TensorRT's scratch memory in MiB (default: TensorRT's)")
    p.add_argument("--plugins", default=None,
                   help="libcmir_trt_plugins.so to load (default: the one built with this package)")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def run(args: argparse.Namespace) -> int:
    from ..tensorrt import TensorRTNotInstalledError, build_engine, engine_sidecar_path

    try:
        out = build_engine(args.onnx, args.out, min_batch=args.min_batch, opt_batch=args.opt_batch,
                           max_batch=args.max_batch, workspace_mib=args.workspace, plugin_library=args.plugins,
                           verbose=args.verbose)
    except TensorRTNotInstalledError as exc:
        raise ValueError(str(exc)) from exc  # printed as one line by the CLI
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
    print(f"wrote {out} ({out.stat().st_size:,} bytes); sidecar {engine_sidecar_path(out)}")
    return 0

"""`cmir-trt info`: what this build contains and what this machine offers."""

from __future__ import annotations

import argparse
import json

HELP = "print the build (CPU, CUDA archs, TensorRT plugins, compilers) and the devices this machine has"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of aligned text")


def run(args: argparse.Namespace) -> int:
    from .. import build_info
    from .._native import cuda_device_count

    info = build_info()
    info["cuda_devices"] = cuda_device_count() if info["cuda"] else 0
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0

"""`cmir-trt info`: what this build contains and what this machine offers."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = ("print the build (CPU, CUDA archs, TensorRT plugins, compilers), the devices this machine has, and "
        "the CPU's bf16 support (avx512_bf16 / AMX) with the native engine's precisions")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of aligned text")


def _cpu_facts() -> dict[str, Any]:
    """The CPU, its bf16-relevant flags, and which precisions the native engine runs here (and why not)."""
    from .._machine import bf16_support, cpu_flags, cpu_name
    from .._native import load_core

    flags = cpu_flags()
    facts: dict[str, Any] = {"cpu_name": cpu_name(), "cpu_flags": ", ".join(f"{k}={'yes' if v else 'no'}"
                                                                        for k, v in flags.items())}
    facts["cpu_bf16"] = bf16_support(flags)[1] if any(flags.values()) else bf16_support()[1]
    try:
        core = load_core()
    except ImportError as exc:
        facts["native_precisions"] = f"none (native core not loadable: {exc})"
        return facts
    if not hasattr(core, "NativeEngine"):
        facts["native_precisions"] = "none (built without oneDNN)"
        return facts
    facts["onednn_isa"] = core.onednn_cpu_isa()
    ok, why = core.bf16_supported()
    facts["native_precisions"] = "fp32, bf16" if ok else f"fp32 (bf16 refused: {why})"
    return facts


def run(args: argparse.Namespace) -> int:
    from .. import build_info
    from .._native import cuda_device_count

    info = build_info()
    info["cuda_devices"] = cuda_device_count() if info["cuda"] else 0
    info.update(_cpu_facts())
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

"""`cmir-trt bench`: every available backend side by side on the same inputs, in each requested precision.

A thin layer over cmir_trt.cpu.bench.run_cpu_benchmarks (the measuring, the failure entries and the reports live
there; see its docstring for how runs are interleaved and what is recorded). `--device cuda` first runs the GPU suite
of cmir_trt.gpu.bench, then the same side-by-side table for the CUDA backends. Inputs are synthetic random arrays;
speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cpu.bench import CPU_BACKENDS, CUDA_BACKENDS

HELP = ("benchmark the backends side by side in fp32/bf16 (latency p50/p90/p99, throughput, peak RSS); "
        "JSON + Markdown + PNG")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint (.pt; all backends) or plan (.plan; native only). "
                                                 "Default: a freshly initialised model of --variant/--width")
    p.add_argument("--variant", default="full", help="model variant when no --model is given (default full)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier when no --model is given")
    p.add_argument("--image-size", type=int, default=128, help="S when no --model is given (default 128)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", default=None,
                   help=f"comma list (cpu: {','.join(CPU_BACKENDS)}; cuda: {','.join(CUDA_BACKENDS)}); default: all "
                        "of the device (one that cannot run here is listed with its reason under 'Not measured')")
    p.add_argument("--precision", default="fp32",
                   help="comma list of precisions, e.g. fp32,bf16 (default fp32). On the CPU: native and openvino "
                        "run fp32 and bf16 (bf16 needs avx512_bf16 or AMX); onnxruntime and torch run fp32 only. "
                        "cuda: torch fp32/fp16/bf16, tensorrt as built")
    p.add_argument("--batch", default="1,8", help="comma list of batch sizes (default 1,8)")
    p.add_argument("--threads", default=None, help="comma list of CPU thread counts (default: all cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per backend and configuration")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per backend and configuration")
    p.add_argument("--out", default="bench-results", help="output folder (results.json, results.md, results.png)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="keep the benchmarked model files (model.pt, model.plan, model.onnx) in DIR "
                        "(default: a temporary folder, removed at the end)")
    p.add_argument("--profile", action="store_true", help="per-op timing of the native engine")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be a comma list of integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"--{what} values must be >= 1, got {text!r}")
    return vals


def _command_line(args: argparse.Namespace) -> str:
    parts = ["cmir-trt bench"]
    if args.model:
        parts += ["--model", str(args.model)]
    else:
        parts += ["--variant", args.variant, "--width", f"{args.width:g}", "--image-size", str(args.image_size)]
    parts += ["--device", args.device, "--precision", str(args.precision), "--batch", str(args.batch),
              "--threads", str(args.threads or os.cpu_count()), "--warmup", str(args.warmup),
              "--repeats", str(args.repeats)]
    if args.backends:
        parts += ["--backends", args.backends]
    if args.profile:
        parts.append("--profile")
    if args.no_rss:
        parts.append("--no-rss")
    return " ".join(parts)


def _run_gpu_suite(args: argparse.Namespace) -> None:
    """--device cuda: our kernels vs PyTorch references and the whole model in every precision, CUDA graphs on/off,
    batch 1/8/64, eager vs torch.compile (cmir_trt.gpu.bench), before the side-by-side backend table."""
    from ..gpu import require_cuda
    from ..gpu.bench import run_gpu_benchmarks

    require_cuda(0)  # a clear RuntimeError on a machine without a usable GPU
    ckpt = args.model if args.model and Path(args.model).suffix == ".pt" else None
    res = run_gpu_benchmarks(args.out, parts=("involution", "cmam", "e2e"), quick=args.repeats < 10, checkpoint=ckpt)
    print(f"bench: GPU suite written to {Path(args.out) / 'gpu_bench.md'} (synthetic inputs)")
    for part, err in res.get("failures", {}).items():
        print(f"bench: GPU suite part {part} failed: {err}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..cpu.bench import run_cpu_benchmarks

    batches = _ints(args.batch, "batch")
    threads = _ints(args.threads, "threads") if args.threads else None
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda":
        _run_gpu_suite(args)
    res = run_cpu_benchmarks(args.out, model=args.model, variant=args.variant, width=args.width,
                             image_size=args.image_size, device=args.device, backends=args.backends,
                             precisions=args.precision, batches=batches, threads=threads, warmup=args.warmup,
                             repeats=args.repeats, profile=args.profile, rss=not args.no_rss,
                             command=_command_line(args), log=print, work_dir=args.work)
    if res["failures"]:
        pairs = sorted({f["label"] for f in res["failures"]})
        print(f"bench: not measured: {', '.join(pairs)} (reasons in results.json 'failures' and results.md)")
    print("wrote " + ", ".join(str(p) for p in res["files"]))
    return 0

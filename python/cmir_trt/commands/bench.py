"""`cmir-trt bench`: every available backend side by side on the same inputs.

Per (threads, batch): each backend is loaded once and warmed up, then the timed runs are interleaved (native, torch,
onnxruntime, native, ...) so that machine noise hits all backends alike. Reported: latency p50/p90/p99, throughput,
and the peak RSS of a fresh process that loads the backend and runs it (measured in a child process, so the backends
do not inflate each other). `--profile` adds the native engine's per-op times. Outputs: JSON, Markdown, a PNG chart.
Inputs are synthetic random arrays; speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, atomic_write_via
from .._machine import cpu_name as _cpu_name

HELP = "benchmark the backends side by side (latency p50/p90/p99, throughput, peak RSS); JSON + Markdown + PNG"
CPU_BACKENDS = ("native", "torch", "onnxruntime")
CUDA_BACKENDS = ("torch", "tensorrt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint (.pt; all backends) or plan (.plan; native only). "
                                                 "Default: a freshly initialised model of --variant/--width")
    p.add_argument("--variant", default="full", help="model variant when no --model is given (default full)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier when no --model is given")
    p.add_argument("--image-size", type=int, default=128, help="S when no --model is given (default 128)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", default=None,
                   help=f"comma list (cpu: {','.join(CPU_BACKENDS)}; cuda: {','.join(CUDA_BACKENDS)}); "
                        "default: all available")
    p.add_argument("--batch", default="1,8", help="comma list of batch sizes (default 1,8)")
    p.add_argument("--threads", default=None, help="comma list of CPU thread counts (default: all cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per backend and configuration")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per backend and configuration")
    p.add_argument("--out", default="bench-results", help="output folder (results.json, results.md, results.png)")
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
    parts += ["--device", args.device, "--batch", str(args.batch), "--threads", str(args.threads or os.cpu_count()),
              "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if args.backends:
        parts += ["--backends", args.backends]
    if args.profile:
        parts.append("--profile")
    return " ".join(parts)


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


class _OrtBackend:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]

    def predict(self, art: Any, pv: Any, clinical: Any) -> Any:
        feeds = dict(zip(("art", "pv", "clinical"), (art, pv, clinical), strict=True))
        return self.sess.run(None, {n: feeds[n] for n in self.names})


def _make_backend(name: str, device: str, paths: dict[str, Path], threads: int) -> Any:
    from ..engine import Engine

    if name == "onnxruntime":
        return _OrtBackend(paths["onnx"], threads)
    if name == "native":
        return Engine(paths["plan"], backend="native", threads=threads)
    if name == "torch":
        return Engine(paths["checkpoint"], device=device, backend="torch", threads=threads if device == "cpu" else None)
    if name == "tensorrt":
        return Engine(paths["engine"], device="cuda", backend="tensorrt")
    raise ValueError(f"unknown backend {name!r}")


def _rss_child(argv: list[str]) -> None:
    """Child process: load one backend, run it, print its peak RSS (MiB) as JSON on stdout.

    VmHWM of /proc/self/status, not getrusage: ru_maxrss survives exec on Linux, so a child forked from a big parent
    would report the parent's size.
    """
    import numpy as np

    name, device, paths_json, threads, batch, size, channels, nclin = argv
    paths = {k: Path(v) for k, v in json.loads(paths_json).items()}
    b, s, c, f = int(batch), int(size), int(channels), int(nclin)
    rng = np.random.default_rng(0)
    art = rng.standard_normal((b, c, s, s), dtype=np.float32)
    pv = rng.standard_normal((b, c, s, s), dtype=np.float32)
    clinical = rng.standard_normal((b, f), dtype=np.float32)
    backend = _make_backend(name, device, paths, int(threads))
    for _ in range(3):
        backend.predict(art, pv, clinical)
    hwm_kib = None
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm_kib = float(line.split()[1])
    if hwm_kib is None:  # not Linux: fall back to getrusage (KiB on Linux/BSD)
        import resource

        hwm_kib = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps({"peak_rss_mib": hwm_kib / 1024.0}))


def _peak_rss(name: str, device: str, paths: dict[str, Path], threads: int, batch: int, spec: dict[str, Any]) -> float:
    import subprocess

    cmd = [sys.executable, "-m", "cmir_trt.commands.bench", "--rss-child", name, device,
           json.dumps({k: str(v) for k, v in paths.items()}), str(threads), str(batch), str(spec["image_size"]),
           str(spec["in_channels"]), str(spec["num_clinical"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"peak-RSS child for {name} failed: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"])


def prepare_artifacts(args: argparse.Namespace, work: Path, backends: list[str]) -> tuple[dict[str, Path],
                                                                                          dict[str, Any], str]:
    """Checkpoint / plan / ONNX for the requested backends; returns (paths, input spec, model description)."""
    paths: dict[str, Path] = {}
    if args.model and Path(args.model).suffix == ".plan":
        from ..export.plan import read_plan_metadata

        paths["plan"] = Path(args.model)
        meta = read_plan_metadata(paths["plan"])
        cfg = meta["config"]
        spec = {"image_size": cfg["image_size"], "in_channels": cfg["in_channels"],
                "num_clinical": cfg["num_clinical"]}
        return paths, spec, f"{meta.get('model_id')} (plan)"
    import torch

    from ..export.plan import export_plan
    from ..model import CMIRConfig, build_model
    from ..model.checkpoint import load_checkpoint, save_checkpoint

    if args.model:
        model = load_checkpoint(args.model)
        paths["checkpoint"] = Path(args.model)
        desc = f"{Path(args.model).name}"
    else:
        torch.manual_seed(0)
        model = build_model(CMIRConfig(variant=args.variant, width=args.width, image_size=args.image_size)).eval()
        paths["checkpoint"] = save_checkpoint(work / "model.pt", model, {"training_data": {"synthetic": False,
                                              "description": "untrained (benchmark)"}})
        desc = f"CMIR {args.variant}, width {args.width:g}, S={args.image_size}, untrained weights"
    cfg = model.config
    if "native" in backends:
        paths["plan"] = export_plan(model, work / "model.plan")
    if "onnxruntime" in backends:
        from ..export.exporters import export_onnx

        paths["onnx"] = export_onnx(model, work / "model.onnx", form="standard", batch="dynamic")
    spec = {"image_size": cfg.image_size, "in_channels": cfg.in_channels, "num_clinical": cfg.num_clinical}
    return paths, spec, desc


def _available(device: str) -> list[str]:
    import importlib.util

    if device == "cuda":
        return list(CUDA_BACKENDS)
    avail = []
    try:
        from .._native import load_core

        if hasattr(load_core(), "NativeEngine"):
            avail.append("native")
    except ImportError:
        pass
    for name, mod in (("torch", "torch"), ("onnxruntime", "onnxruntime")):
        if importlib.util.find_spec(mod) is not None:
            avail.append(name)
    return avail


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"# cmir-trt bench — {res['model']}", "",
             f"- date: {res['date']}; machine: {res['machine']}; device: {res['device']}",
             f"- command: `{res['command']}`",
             f"- load average (1/5/15 min) at start {_fmt_load(res.get('load_average_start'))}, at end "
             f"{_fmt_load(res.get('load_average_end'))} (other processes share this machine)",
             f"- inputs: synthetic random arrays; {res['repeats']} timed runs per row after {res['warmup']} warm-up "
             "runs, backends interleaved with a 50 ms pause before each run", "",
             "| threads | batch | backend | p50 ms | p90 ms | p99 ms | throughput (cases/s) | peak RSS MiB |"
             " vs native p50 |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in res["rows"]:
        rss = f"{row['peak_rss_mib']:.0f}" if row.get("peak_rss_mib") else "-"
        rel = f"{row['p50_vs_native']:.2f}x" if row.get("p50_vs_native") else "-"
        lines.append(f"| {row['threads']} | {row['batch']} | {row['backend']} | {row['p50_ms']:.1f} | "
                     f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['throughput']:.1f} | {rss} | {rel} |")
    for key, prof in res.get("profile", {}).items():
        lines += ["", f"## Native per-op profile ({key}; mean ms per call)", "",
                  "| op type | ms | share |", "|---|---:|---:|"]
        total = sum(prof["by_type"].values()) or 1.0
        for op, ms in sorted(prof["by_type"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {op} | {ms:.2f} | {100 * ms / total:.0f}% |")
        lines += ["", "Slowest single ops:", "", "| op | ms |", "|---|---:|"]
        for op, ms in prof["top"]:
            lines.append(f"| {op} | {ms:.2f} |")
    return "\n".join(lines) + "\n"


def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.1f}" for x in load) if load else "n/a"


def _chart(res: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = res["rows"]
    configs = sorted({(r["threads"], r["batch"]) for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig = Figure(figsize=(max(6, 2 + 1.6 * len(configs)), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(backends))
    for i, be in enumerate(backends):
        xs, ys = [], []
        for j, cfg in enumerate(configs):
            for r in rows:
                if (r["threads"], r["batch"]) == cfg and r["backend"] == be:
                    xs.append(j + i * width)
                    ys.append(r["p50_ms"])
        ax.bar(xs, ys, width, label=be)
    ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(configs))])
    ax.set_xticklabels([f"{t} thr, batch {b}" for t, b in configs])
    ax.set_ylabel("p50 latency (ms, lower is better)")
    ax.set_title(f"cmir-trt bench: {res['model']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")


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
    import platform
    import tempfile

    import numpy as np

    # The same OpenMP wait policy the native backend sets for itself (before any OpenMP runtime is loaded; torch's
    # bundled libgomp reads it too, so both OpenMP users are measured alike).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    batches = _ints(args.batch, "batch")
    threads_list = _ints(args.threads, "threads") if args.threads else [os.cpu_count() or 1]
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda":
        _run_gpu_suite(args)
    avail = _available(args.device)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else avail
    allowed = CPU_BACKENDS if args.device == "cpu" else CUDA_BACKENDS
    bad = [b for b in backends if b not in allowed]
    if bad:
        raise ValueError(f"unknown backend(s) {bad} for --device {args.device} (choose from {allowed})")
    if args.model and Path(args.model).suffix == ".plan":
        backends = [b for b in backends if b == "native"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cmir-bench-"))
    paths, spec, desc = prepare_artifacts(args, work, backends)
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"model": desc, "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime()),
                           "machine": f"{_cpu_name()}, {os.cpu_count()} cores, "
                                      f"{platform.system()} {platform.release()}",
                           "command": _command_line(args),
                           "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                           "warmup": args.warmup, "repeats": args.repeats, "rows": [], "profile": {},
                           "inputs": "synthetic random"}
    print(f"bench: {desc}; backends {backends}; batch {batches}; threads {threads_list} (synthetic inputs)")
    for threads in threads_list:
        loaded = {}
        for name in backends:
            try:
                loaded[name] = _make_backend(name, args.device, paths, threads)
            except Exception as exc:  # noqa: BLE001 - an unavailable backend is reported and skipped
                print(f"  {name}: unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        for batch in batches:
            s, c, f = spec["image_size"], spec["in_channels"], spec["num_clinical"]
            x = (rng.standard_normal((batch, c, s, s), dtype=np.float32),
                 rng.standard_normal((batch, c, s, s), dtype=np.float32),
                 rng.standard_normal((batch, f), dtype=np.float32))
            for be in loaded.values():
                for _ in range(args.warmup):
                    be.predict(*x)
            times: dict[str, list[float]] = {n: [] for n in loaded}
            for _ in range(args.repeats):
                for name, be in loaded.items():
                    # A pause between runs: thread pools that spin after their work (ONNX Runtime's does) would
                    # otherwise steal cores from whichever backend runs next.
                    time.sleep(0.05)
                    t0 = time.perf_counter()
                    be.predict(*x)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            native_p50 = None
            for name in loaded:
                st = _percentiles(times[name])
                row = {"threads": threads, "batch": batch, "backend": name, **st,
                       "throughput": batch * 1e3 / st["mean_ms"]}
                if name == "native":
                    native_p50 = st["p50_ms"]
                if not args.no_rss:
                    try:
                        row["peak_rss_mib"] = _peak_rss(name, args.device, paths, threads, batch, spec)
                    except Exception as exc:  # noqa: BLE001
                        print(f"  peak RSS of {name}: {exc}", file=sys.stderr)
                res["rows"].append(row)
            for row in res["rows"]:
                if row["threads"] == threads and row["batch"] == batch and native_p50:
                    row["p50_vs_native"] = row["p50_ms"] / native_p50
                if row["threads"] == threads and row["batch"] == batch:
                    rss = f", peak RSS {row['peak_rss_mib']:.0f} MiB" if row.get("peak_rss_mib") else ""
                    print(f"  threads {threads} batch {batch} {row['backend']:>12}: p50 {row['p50_ms']:8.1f} ms  "
                          f"p90 {row['p90_ms']:8.1f}  p99 {row['p99_ms']:8.1f}  {row['throughput']:7.1f} cases/s"
                          + rss)
            if args.profile and "native" in loaded:
                n = max(3, args.repeats // 2)
                acc: dict[str, float] = {}
                for _ in range(n):
                    _, prof = loaded["native"]._impl.profile(*x)
                    for i, (op, sec) in enumerate(prof):
                        acc[f"{i:03d} {op}"] = acc.get(f"{i:03d} {op}", 0.0) + sec * 1e3 / n
                by_type: dict[str, float] = {}
                for key, ms in acc.items():
                    t = key.split()[1]
                    by_type[t] = by_type.get(t, 0.0) + ms
                top = sorted(acc.items(), key=lambda kv: -kv[1])[:15]
                res["profile"][f"threads {threads}, batch {batch}"] = {"by_type": by_type, "top": top,
                                                                        "total_ms": sum(acc.values())}
                print("  native per-op (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                          sorted(by_type.items(), key=lambda kv: -kv[1])))
        del loaded
    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    atomic_write_text(out / "results.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "results.md", _markdown(res))
    try:
        _chart(res, out / "results.png")
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2:])

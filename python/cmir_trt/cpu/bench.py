"""The side-by-side backend benchmark behind `cmir-trt bench`: every (backend, precision) pair on the same inputs.

Backends on the CPU: the native engine (fp32, bf16), PyTorch eager (fp32), ONNX Runtime (fp32) and OpenVINO (fp32,
bf16; the same standard-op ONNX file ONNX Runtime runs, compiled for "CPU" with INFERENCE_PRECISION_HINT,
INFERENCE_NUM_THREADS = threads and PERFORMANCE_HINT LATENCY, one static-shape compile per batch size). With
``device="cuda"`` the same loop times PyTorch (fp32/fp16/bf16) and TensorRT after the GPU suite of cmir_trt.gpu.bench.

Per thread count every pair is loaded once; per batch it is warmed up, then the timed runs are interleaved (native
fp32, native bf16, torch fp32, ..., native fp32, ...) with a short pause before each run, so machine noise and
thread pools that spin after their work hit every pair alike. Reported per row: latency p50/p90/p99, throughput, the
peak RSS of a fresh process that loads the pair and runs it (a child process: the backends would otherwise inflate
each other), and the p50 ratios against native fp32 and, for bf16 rows, against OpenVINO bf16, side by side.

Nothing requested goes missing silently: a pair that is not run (a backend that runs fp32 only, a package that is
not installed, a CPU without bf16, a backend that raises while loading or running) becomes an entry of
``results["failures"]`` with its reason, one per (threads, batch), and the run continues. Every result carries the
CPU's name and its bf16-relevant flags. Inputs are synthetic random arrays; speed does not depend on the weights.

    python -m cmir_trt.cpu.bench --rss-child ...   # internal: the peak-RSS child process
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, atomic_write_via
from .._machine import bf16_support, cpu_flags, cpu_name

CPU_BACKENDS = ("native", "torch", "onnxruntime", "openvino")
CUDA_BACKENDS = ("torch", "tensorrt")
# The precisions each backend is run at here. ONNX Runtime and PyTorch stay fp32 on the CPU (ONNX Runtime has no
# bf16 CPU kernels for this graph and PyTorch CPU autocast is not what a deployment would run); TensorRT runs
# whatever precision its .engine was built with, reported as fp32.
BACKEND_PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "cpu": {"native": ("fp32", "bf16"), "torch": ("fp32",), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")},
    "cuda": {"torch": ("fp32", "fp16", "bf16"), "tensorrt": ("fp32",)},
}
DEVICE_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}
# The references of the ratio columns: (column key, backend, precision, which rows get the column).
RATIO_REFS = (("p50_vs_native_fp32", "native", "fp32", None), ("p50_vs_openvino_bf16", "openvino", "bf16", "bf16"))
PAUSE_S = 0.05

Backend = Any
BackendFactory = Callable[[str, str, int], Backend]  # (backend, precision, threads) -> object with predict(art, pv, c)
RssProbe = Callable[[str, str, int, int], float]  # (backend, precision, threads, batch) -> peak RSS MiB


class BackendUnavailable(RuntimeError):
    """A (backend, precision) pair that cannot run here for a known reason (package missing, CPU lacks bf16, no
    checkpoint for it): recorded as an "unavailable" failure, not as an error."""


def label(backend: str, precision: str) -> str:
    """How a row is named in tables and charts: "native fp32", "openvino bf16"."""
    return f"{backend} {precision}"


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation), mean and min of latencies in milliseconds."""
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings to summarise")
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def machine_info() -> dict[str, Any]:
    """The CPU's name, core count, OS and the flags that decide bf16 (recorded with every result)."""
    ok, why = bf16_support()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "flags": cpu_flags(), "bf16": {"supported": ok, "reason": why}}


# ---------------------------------------------------------------------------------------------------- backends
class OrtBackend:
    """ONNX Runtime on the CPU: the standard-op ONNX file, all graph optimisations, intra-op threads = threads."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable("the onnxruntime package is not installed (pip install onnxruntime)")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def predict(self, art: Any, pv: Any, clinical: Any) -> dict[str, Any]:
        feeds = {"art": art, "pv": pv, "clinical": clinical}
        return dict(zip(self.outputs, self.sess.run(None, {n: feeds[n] for n in self.names}), strict=True))


def openvino_bf16_capable() -> tuple[bool, str]:
    """Whether OpenVINO's CPU plugin runs bf16 natively here, from its own OPTIMIZATION_CAPABILITIES ("BF16"): asked
    of OpenVINO, not of /proc/cpuinfo, because without it OpenVINO silently falls back to f32 under a bf16 hint."""
    import openvino as ov

    caps = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" in caps:
        return True, "OpenVINO CPU capabilities include BF16"
    return False, (f"OpenVINO reports no BF16 capability on this CPU ({cpu_name()}; capabilities {caps}): a bf16 "
                   "hint would silently run f32")


class OpenVINOBackend:
    """OpenVINO on the CPU: the same standard-op ONNX file as ONNX Runtime, precision hint f32 or bf16, latency hint,
    INFERENCE_NUM_THREADS = threads. The model is reshaped to the batch's static shape and compiled once per batch
    size (`prepare`), the way OpenVINO is deployed for a fixed batch; only the current batch's compile is kept."""

    HINTS = {"fp32": "f32", "bf16": "bf16"}

    def __init__(self, path: str | os.PathLike[str], threads: int, precision: str = "fp32") -> None:
        if precision not in self.HINTS:
            raise BackendUnavailable(f"OpenVINO is benchmarked at {sorted(self.HINTS)} only, not {precision!r}")
        if importlib.util.find_spec("openvino") is None:
            raise BackendUnavailable("the openvino package is not installed (pip install openvino)")
        if precision == "bf16":
            ok, why = openvino_bf16_capable()
            if not ok:
                raise BackendUnavailable(why)
        import openvino as ov

        self.core = ov.Core()
        self.path = Path(path)
        self.threads = int(threads)
        self.precision = precision
        self.model = self.core.read_model(str(self.path))
        self.names = [p.get_any_name() for p in self.model.inputs]
        self._shape: tuple[Any, ...] | None = None
        self._request: Any = None
        self._outputs: list[str] = []
        self.actual_precision: str | None = None

    def prepare(self, batch: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """Compile for these static input shapes (untimed; the benchmark calls it before the warm-up)."""
        key = tuple(sorted(shapes.items()))
        if key == self._shape:
            return
        self._request = None  # free the previous batch's compiled model before building the next
        model = self.model.clone()
        model.reshape({n: list(shapes[n]) for n in self.names})
        compiled = self.core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": self.HINTS[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        })
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32" / "bf16"
        self.actual_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self._outputs = [o.get_any_name() for o in compiled.outputs]
        self._request = compiled.create_infer_request()
        self._shape = key

    def predict(self, art: Any, pv: Any, clinical: Any) -> dict[str, Any]:
        feeds = {"art": art, "pv": pv, "clinical": clinical}
        self.prepare(int(art.shape[0]), {n: tuple(feeds[n].shape) for n in self.names})
        self._request.infer({n: feeds[n] for n in self.names})
        # Copies, as ONNX Runtime returns fresh arrays: the request's output buffers are reused by the next call.
        return {name: self._request.get_output_tensor(i).data.copy() for i, name in enumerate(self._outputs)}


def make_backend(name: str, precision: str, device: str, paths: dict[str, Path], threads: int) -> Backend:
    """Load one (backend, precision) pair from the artefacts of `prepare_artifacts`. Raises BackendUnavailable for
    the known reasons it cannot run here; whatever else a backend raises (e.g. the engine refusing a precision)
    passes through for the caller to record."""
    if name == "onnxruntime":
        if "onnx" not in paths:
            raise BackendUnavailable("needs a checkpoint to export ONNX from (--model is a plan)")
        return OrtBackend(paths["onnx"], threads)
    if name == "openvino":
        if "onnx" not in paths:
            raise BackendUnavailable("needs a checkpoint to export ONNX from (--model is a plan)")
        return OpenVINOBackend(paths["onnx"], threads, precision)
    from ..engine import Engine

    if name == "native":
        try:
            from .._native import load_core

            core_ok = hasattr(load_core(), "NativeEngine")
        except ImportError as exc:
            raise BackendUnavailable(f"the native engine is not built in this installation ({exc})") from None
        if not core_ok:
            raise BackendUnavailable("the native engine is not built in this installation (no NativeEngine)")
        return Engine(paths["plan"], backend="native", threads=threads, precision=precision)
    if name == "torch":
        if "checkpoint" not in paths:
            raise BackendUnavailable("needs a checkpoint (--model is a plan)")
        if importlib.util.find_spec("torch") is None:
            raise BackendUnavailable("the torch package is not installed")
        return Engine(paths["checkpoint"], device=device, backend="torch",
                      threads=threads if device == "cpu" else None, precision=precision)
    if name == "tensorrt":
        if "engine" not in paths:
            raise BackendUnavailable("needs a TensorRT .engine file (build one with `cmir-trt build`); the benchmark "
                                     "builds none")
        return Engine(paths["engine"], device="cuda", backend="tensorrt")
    raise ValueError(f"unknown backend {name!r}")


# ---------------------------------------------------------------------------------------------------- artefacts
def prepare_artifacts(work: str | os.PathLike[str], backends: Sequence[str], model: str | None = None,
                      variant: str = "full", width: float = 1.0,
                      image_size: int = 128) -> tuple[dict[str, Path], dict[str, Any], str]:
    """Checkpoint / plan / standard-op ONNX for the requested backends, under `work`; returns (paths, input spec,
    model description). A `.plan` model serves the native engine only (the others need the checkpoint)."""
    work = Path(work)
    paths: dict[str, Path] = {}
    if model and Path(model).suffix == ".plan":
        from ..export.plan import read_plan_metadata

        paths["plan"] = Path(model)
        meta = read_plan_metadata(paths["plan"])
        cfg = meta["config"]
        spec = {"image_size": cfg["image_size"], "in_channels": cfg["in_channels"],
                "num_clinical": cfg["num_clinical"]}
        return paths, spec, f"{meta.get('model_id')} (plan)"
    if model and Path(model).suffix.lower() in (".engine", ".trt"):
        raise ValueError("--model: give the checkpoint (.pt) the TensorRT engine was built from; the benchmark does "
                         "not read .engine files")
    import torch

    from ..export.plan import export_plan
    from ..model import CMIRConfig, build_model
    from ..model.checkpoint import load_checkpoint, save_checkpoint

    if model:
        net = load_checkpoint(model)
        paths["checkpoint"] = Path(model)
        desc = Path(model).name
    else:
        torch.manual_seed(0)
        net = build_model(CMIRConfig(variant=variant, width=width, image_size=image_size)).eval()
        paths["checkpoint"] = save_checkpoint(work / "model.pt", net, {"training_data": {
            "synthetic": False, "description": "untrained (benchmark)"}})
        desc = f"CMIR {variant}, width {width:g}, S={image_size}, untrained weights"
    cfg = net.config
    if "native" in backends:
        paths["plan"] = export_plan(net, work / "model.plan")
    if "onnxruntime" in backends or "openvino" in backends:
        from ..export.exporters import export_onnx

        paths["onnx"] = export_onnx(net, work / "model.onnx", form="standard", batch="dynamic")
    spec = {"image_size": cfg.image_size, "in_channels": cfg.in_channels, "num_clinical": cfg.num_clinical}
    return paths, spec, desc


def make_inputs(batch: int, spec: dict[str, Any], seed: int = 0) -> tuple[Any, Any, Any]:
    """Seeded synthetic (art, pv, clinical) float32 arrays of the model's shape."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s, c, f = int(spec["image_size"]), int(spec["in_channels"]), int(spec["num_clinical"])
    return (rng.standard_normal((batch, c, s, s), dtype=np.float32),
            rng.standard_normal((batch, c, s, s), dtype=np.float32),
            rng.standard_normal((batch, f), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- peak RSS
def _rss_child(argv: list[str]) -> None:
    """Child process: load one pair, run it, print its peak RSS (MiB) as JSON on stdout.

    VmHWM of /proc/self/status, not getrusage: ru_maxrss survives exec on Linux, so a child forked from a big parent
    would report the parent's size.
    """
    name, precision, device, paths_json, threads, batch, size, channels, nclin = argv
    paths = {k: Path(v) for k, v in json.loads(paths_json).items()}
    spec = {"image_size": int(size), "in_channels": int(channels), "num_clinical": int(nclin)}
    x = make_inputs(int(batch), spec)
    backend = make_backend(name, precision, device, paths, int(threads))
    _prepare(backend, x)
    for _ in range(3):
        backend.predict(*x)
    hwm_kib = None
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm_kib = float(line.split()[1])
    if hwm_kib is None:  # not Linux: fall back to getrusage (KiB on Linux/BSD)
        import resource

        hwm_kib = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps({"peak_rss_mib": hwm_kib / 1024.0}))


def peak_rss_probe(device: str, paths: dict[str, Path], spec: dict[str, Any]) -> RssProbe:
    """A function (backend, precision, threads, batch) -> peak RSS MiB of a fresh child process running that pair."""
    import subprocess

    def probe(name: str, precision: str, threads: int, batch: int) -> float:
        cmd = [sys.executable, "-m", "cmir_trt.cpu.bench", "--rss-child", name, precision, device,
               json.dumps({k: str(v) for k, v in paths.items()}), str(threads), str(batch),
               str(spec["image_size"]), str(spec["in_channels"]), str(spec["num_clinical"])]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"peak-RSS child for {label(name, precision)} failed: {out.stderr.strip()[-500:]}")
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"])

    return probe


# ---------------------------------------------------------------------------------------------------- measuring
def _prepare(backend: Backend, x: tuple[Any, Any, Any]) -> None:
    # Backends that compile per input shape (OpenVINO) do it here, untimed, even when --warmup is 0.
    prep = getattr(backend, "prepare", None)
    if prep is not None:
        prep(int(x[0].shape[0]), {"art": tuple(x[0].shape), "pv": tuple(x[1].shape), "clinical": tuple(x[2].shape)})


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per (threads, batch): each row's p50 divided by the reference's p50 (native fp32 for every row; OpenVINO bf16
    for bf16 rows), so the figures of one run sit side by side (below 1 = faster than the reference)."""
    for key, ref_be, ref_prec, only in RATIO_REFS:
        refs = {(r["threads"], r["batch"]): r["p50_ms"] for r in rows
                if r["backend"] == ref_be and r["precision"] == ref_prec}
        for r in rows:
            ref = refs.get((r["threads"], r["batch"]))
            if ref and (only is None or r["precision"] == only):
                r[key] = r["p50_ms"] / ref


def bench_matrix(factory: BackendFactory, spec: dict[str, Any], backends: Sequence[str],
                 precisions: Sequence[str], batches: Sequence[int], threads_list: Sequence[int], *,
                 device: str = "cpu", warmup: int = 3, repeats: int = 20, rss: RssProbe | None = None,
                 profile: bool = False, pause_s: float = PAUSE_S, clock: Callable[[], float] = time.perf_counter,
                 log: Callable[[str], None] | None = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Time every (backend, precision) pair per (threads, batch); returns {"rows", "failures", "profile"}.

    `factory(backend, precision, threads)` loads a pair (raising BackendUnavailable or anything else when it cannot);
    `clock` returns seconds (tests pass a fake one). A pair that is not run becomes one failure per (threads, batch)
    with kind "unsupported" (the benchmark does not run that precision on that backend), "unavailable" (a known
    reason it cannot run here) or "error" (it raised while loading or running), and the others carry on.
    `on_update(partial)` is called after every (threads, batch) so a long run can save what it measured.
    """
    say = log or (lambda _msg: None)
    supported = BACKEND_PRECISIONS[device]
    out: dict[str, Any] = {"rows": [], "failures": [], "profile": {}}

    def fail(name: str, prec: str, threads: int, batch_list: Sequence[int], kind: str, stage: str,
             reason: str) -> None:
        for b in batch_list:
            out["failures"].append({"threads": threads, "batch": b, "backend": name, "precision": prec,
                                    "label": label(name, prec), "kind": kind, "stage": stage, "reason": reason})

    for threads in threads_list:
        loaded: dict[tuple[str, str], Backend] = {}
        for name in backends:
            for prec in precisions:
                if prec not in supported.get(name, ()):
                    why = f"{name} runs {'/'.join(supported.get(name, ()))} only in this benchmark"
                    fail(name, prec, threads, batches, "unsupported", "load", why)
                    say(f"  {label(name, prec)}: not run: {why}")
                    continue
                try:
                    loaded[(name, prec)] = factory(name, prec, threads)
                except BackendUnavailable as exc:
                    fail(name, prec, threads, batches, "unavailable", "load", str(exc))
                    say(f"  {label(name, prec)}: unavailable: {exc}")
                except Exception as exc:  # noqa: BLE001 - recorded with its reason; the other pairs still run
                    fail(name, prec, threads, batches, "error", "load", _reason(exc))
                    say(f"  {label(name, prec)}: unavailable: {_reason(exc)}")
        for batch in batches:
            x = make_inputs(batch, spec)
            active = dict(loaded)
            for key in list(active):
                try:
                    _prepare(active[key], x)
                    for _ in range(warmup):
                        active[key].predict(*x)
                except Exception as exc:  # noqa: BLE001
                    fail(*key, threads, [batch], "error", "run", _reason(exc))
                    say(f"  {label(*key)} batch {batch}: failed: {_reason(exc)}")
                    del active[key]
            times: dict[tuple[str, str], list[float]] = {k: [] for k in active}
            for _ in range(repeats):
                for key in list(active):
                    # A pause between runs: thread pools that spin after their work (ONNX Runtime's does) would
                    # otherwise steal cores from whichever pair runs next.
                    if pause_s > 0:
                        time.sleep(pause_s)
                    try:
                        t0 = clock()
                        active[key].predict(*x)
                        times[key].append((clock() - t0) * 1e3)
                    except Exception as exc:  # noqa: BLE001
                        fail(*key, threads, [batch], "error", "run", _reason(exc))
                        say(f"  {label(*key)} batch {batch}: failed: {_reason(exc)}")
                        del active[key], times[key]
            group = []
            for (name, prec), ms in times.items():
                st = percentiles(ms)
                row = {"threads": threads, "batch": batch, "backend": name, "precision": prec,
                       "label": label(name, prec), **st, "throughput": batch * 1e3 / st["mean_ms"],
                       "repeats": len(ms)}
                actual = getattr(active[(name, prec)], "actual_precision", None)
                if actual:  # what OpenVINO says it compiled for, next to what was asked
                    row["runtime_precision"] = actual
                if rss is not None:
                    try:
                        row["peak_rss_mib"] = rss(name, prec, threads, batch)
                    except Exception as exc:  # noqa: BLE001 - the timing row stays; the RSS cell says why
                        row["peak_rss_error"] = _reason(exc)
                        say(f"  peak RSS of {label(name, prec)}: {_reason(exc)}")
                group.append(row)
            add_ratios(group)
            out["rows"] += group
            for row in group:
                rss_txt = f", peak RSS {row['peak_rss_mib']:.0f} MiB" if row.get("peak_rss_mib") else ""
                vs = f", {row['p50_vs_native_fp32']:.2f}x native fp32" if "p50_vs_native_fp32" in row else ""
                say(f"  threads {threads} batch {batch} {row['label']:>16}: p50 {row['p50_ms']:8.1f} ms  "
                    f"p90 {row['p90_ms']:8.1f}  p99 {row['p99_ms']:8.1f}  {row['throughput']:7.1f} cases/s"
                    + rss_txt + vs)
            if profile:
                for (name, prec), be in active.items():
                    if name == "native":
                        _profile_native(out["profile"], f"{label(name, prec)}, threads {threads}, batch {batch}",
                                        be, x, max(3, repeats // 2), say)
            if on_update is not None:
                on_update(out)
        del loaded
    return out


def _profile_native(dest: dict[str, Any], key: str, engine: Any, x: tuple[Any, Any, Any], n: int,
                    say: Callable[[str], None]) -> None:
    impl = getattr(engine, "_impl", None)
    if impl is None or not hasattr(impl, "profile"):
        return
    acc: dict[str, float] = {}
    for _ in range(n):
        _, prof = impl.profile(*x)
        for i, (op, sec) in enumerate(prof):
            acc[f"{i:03d} {op}"] = acc.get(f"{i:03d} {op}", 0.0) + sec * 1e3 / n
    by_type: dict[str, float] = {}
    for k, ms in acc.items():
        t = k.split()[1]
        by_type[t] = by_type.get(t, 0.0) + ms
    top = sorted(acc.items(), key=lambda kv: -kv[1])[:15]
    dest[key] = {"by_type": by_type, "top": top, "total_ms": sum(acc.values())}
    say(f"  {key} per-op (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_type.items(),
                                                                                key=lambda kv: -kv[1])))


# ---------------------------------------------------------------------------------------------------- reports
def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.1f}" for x in load) if load else "n/a"


def _fmt_ratio(v: Any) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else "-"


def to_markdown(res: dict[str, Any]) -> str:
    """The report: machine and CPU flags, one table of every row with both ratio columns, the pairs not measured
    and why, and the native per-op profiles."""
    m = res.get("machine_info", {})
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m.get("flags", {}).items()) or "n/a"
    bf16 = m.get("bf16", {})
    lines = [f"# cmir-trt bench — {res['model']}", "",
             f"- date: {res['date']}; machine: {res['machine']}; device: {res['device']}",
             f"- CPU flags: {flags}; bf16: {'yes' if bf16.get('supported') else 'no'} ({bf16.get('reason', 'n/a')})",
             f"- command: `{res['command']}`",
             f"- load average (1/5/15 min) at start {_fmt_load(res.get('load_average_start'))}, at end "
             f"{_fmt_load(res.get('load_average_end'))} (other processes share this machine)",
             f"- inputs: synthetic random arrays; {res['repeats']} timed runs per row after {res['warmup']} warm-up "
             f"runs, pairs interleaved with a {res.get('pause_ms', PAUSE_S * 1e3):g} ms pause before each run",
             "- ratio columns: this row's p50 divided by the reference's p50 at the same threads and batch "
             "(below 1 = faster than the reference); the OpenVINO-bf16 column is given for bf16 rows", "",
             "| threads | batch | backend | p50 ms | p90 ms | p99 ms | throughput (cases/s) | peak RSS MiB |"
             " vs native fp32 p50 | vs openvino bf16 p50 |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["rows"]:
        rss = f"{row['peak_rss_mib']:.0f}" if row.get("peak_rss_mib") else "-"
        lines.append(f"| {row['threads']} | {row['batch']} | {row['label']} | {row['p50_ms']:.1f} | "
                     f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['throughput']:.1f} | {rss} | "
                     f"{_fmt_ratio(row.get('p50_vs_native_fp32'))} | {_fmt_ratio(row.get('p50_vs_openvino_bf16'))} |")
    if res.get("failures"):
        lines += ["", "## Not measured", "", "| threads | batch | backend | kind | reason |", "|---:|---:|---|---|---|"]
        for f in res["failures"]:
            reason = str(f["reason"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {f['threads']} | {f['batch']} | {f['label']} | {f['kind']} | {reason} |")
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


def write_chart(res: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Bar chart of p50 per (threads, batch) and row label (needs matplotlib), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = res["rows"]
    configs = sorted({(r["threads"], r["batch"]) for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = Figure(figsize=(max(6, 2 + 1.6 * len(configs)), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        xs, ys = [], []
        for j, cfg in enumerate(configs):
            for r in rows:
                if (r["threads"], r["batch"]) == cfg and r["label"] == lab:
                    xs.append(j + i * width)
                    ys.append(r["p50_ms"])
        ax.bar(xs, ys, width, label=lab)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(configs))])
    ax.set_xticklabels([f"{t} thr, batch {b}" for t, b in configs])
    ax.set_ylabel("p50 latency (ms, lower is better)")
    ax.set_title(f"cmir-trt bench: {res['model']}", fontsize=9)
    if labels:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")


def write_results(res: dict[str, Any], out_dir: str | os.PathLike[str], chart: bool = True) -> list[Path]:
    """results.json, results.md and (chart=True) results.png in out_dir, each atomically. A chart that cannot be
    drawn (matplotlib missing or failing) is a note in the results, never a lost run."""
    out = Path(out_dir)
    written = []
    if chart:
        try:
            write_chart(res, out / "results.png")
            written.append(out / "results.png")
        except Exception as exc:  # noqa: BLE001 - the figures matter more than the picture
            res.setdefault("notes", []).append(f"no chart: {_reason(exc)}")
    return [atomic_write_text(out / "results.json", json.dumps(res, indent=2, default=str) + "\n"),
            atomic_write_text(out / "results.md", to_markdown(res)), *written]


def _comma(values: str | Sequence[Any] | None) -> list[str]:
    if values is None:
        return []
    items = values.split(",") if isinstance(values, str) else [str(v) for v in values]
    return [v.strip() for v in items if v.strip()]


def run_cpu_benchmarks(out_dir: str | os.PathLike[str], *, model: str | None = None, variant: str = "full",
                       width: float = 1.0, image_size: int = 128, device: str = "cpu",
                       backends: str | Sequence[str] | None = None, precisions: str | Sequence[str] = ("fp32",),
                       batches: Sequence[int] = (1, 8), threads: Sequence[int] | None = None, warmup: int = 3,
                       repeats: int = 20, profile: bool = False, rss: bool = True, command: str | None = None,
                       log: Callable[[str], None] | None = None, pause_s: float = PAUSE_S,
                       factory: BackendFactory | None = None,
                       work_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Benchmark every requested (backend, precision) pair side by side and write out_dir/results.{json,md,png}.

    backends: default every backend of the device (CPU_BACKENDS / CUDA_BACKENDS); one that cannot run here is a
    failure entry with its reason, not a missing row. precisions: e.g. ("fp32", "bf16"); a pair outside
    BACKEND_PRECISIONS is an "unsupported" failure. threads: default all cores. factory: replaces make_backend (tests).
    work_dir: where the benchmarked model files (model.pt, model.plan, model.onnx) are written and kept; default a
    temporary folder, removed at the end.
    Returns the results dict (what results.json holds: model, machine, machine_info with the CPU name and flags,
    rows, failures, profile) plus "files", the paths written. Raises ValueError for bad arguments only.
    """
    if device not in BACKEND_PRECISIONS:
        raise ValueError(f"device must be one of {sorted(BACKEND_PRECISIONS)}, got {device!r}")
    allowed = tuple(BACKEND_PRECISIONS[device])
    be_list = _comma(backends) or list(allowed)
    bad = [b for b in be_list if b not in allowed]
    if bad:
        raise ValueError(f"unknown backend(s) {bad} for --device {device} (choose from {list(allowed)})")
    prec_list = _comma(precisions)
    bad = [p for p in prec_list if p not in DEVICE_PRECISIONS[device]]
    if bad or not prec_list:
        raise ValueError(f"--precision for --device {device} must be a comma list of "
                         f"{list(DEVICE_PRECISIONS[device])}, got {precisions!r}")
    batches = [int(b) for b in batches]
    threads_list = [int(t) for t in threads] if threads else [os.cpu_count() or 1]
    if not batches or min(batches) < 1 or min(threads_list) < 1:
        raise ValueError("batch sizes and thread counts must be >= 1")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    # The OpenMP wait policy the native backend sets for itself, before any OpenMP runtime is loaded (torch's bundled
    # libgomp reads it too, so every OpenMP user is measured alike).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work: str | os.PathLike[str] = stack.enter_context(tempfile.TemporaryDirectory(prefix="cmir-bench-"))
        else:
            work = Path(work_dir)
            Path(work).mkdir(parents=True, exist_ok=True)
        paths, spec, desc = prepare_artifacts(work, be_list, model=model, variant=variant, width=width,
                                              image_size=image_size)
        res: dict[str, Any] = {
            "model": desc, "device": device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{info['cpu']}, {info['cores']} cores, {info['os']}", "machine_info": info,
            "command": command or f"run_cpu_benchmarks(backends={be_list}, precisions={prec_list})",
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "warmup": warmup, "repeats": repeats, "pause_ms": pause_s * 1e3, "backends": be_list,
            "precisions": prec_list, "batches": batches, "threads": threads_list, "inputs": "synthetic random",
            "input_spec": spec,
            "rows": [], "failures": [], "profile": {}}
        if log:
            log(f"bench: {desc}; backends {be_list}; precision {prec_list}; batch {batches}; threads {threads_list} "
                f"(synthetic inputs); CPU {info['cpu']}, bf16: {info['bf16']['reason']}")

        def update(part: dict[str, Any]) -> None:
            res.update(part)
            write_results(res, out, chart=False)

        fac = factory or (lambda name, prec, t: make_backend(name, prec, device, paths, t))
        measured = bench_matrix(fac, spec, be_list, prec_list, batches, threads_list, device=device, warmup=warmup,
                                repeats=repeats, rss=None if not rss else peak_rss_probe(device, paths, spec),
                                profile=profile, pause_s=pause_s, log=log, on_update=update)
    res.update(measured)
    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    # The paths written go into the returned dict only (results.json does not list itself).
    files = write_results(res, out)
    return {**res, "files": [str(f) for f in files]}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2:])
    else:
        print("internal module: use `cmir-trt bench` (this entry point serves its peak-RSS child processes)",
              file=sys.stderr)
        sys.exit(2)

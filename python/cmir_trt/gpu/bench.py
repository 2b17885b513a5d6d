"""GPU benchmarks (issue 7): involution, CMAM and end-to-end latency. Functions return plain rows (dicts) and
``run_gpu_benchmarks`` writes them as JSON + Markdown; ``cmir-trt bench --device cuda`` and benchmarks/*.py call
these. Timings: CUDA events around each call, median of `iters` after `warmup` calls, all backends of one row timed
in the same process on the same card. Inputs and weights are synthetic (random); no accuracy metric is computed here.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text as _write_atomic

SYNTHETIC_NOTE = "synthetic inputs and random weights (timings only; no accuracy metric)"


def cuda_time_ms(fn: Callable[[], Any], warmup: int = 5, iters: int = 30) -> dict[str, float]:
    """Median/min milliseconds of fn() on the current stream, timed with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def copy_bandwidth_gbs(nbytes: int = 1 << 29) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second, GB/s = 1e9 B/s)."""
    import torch

    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    t = cuda_time_ms(lambda: b.copy_(a), warmup=3, iters=20)["min_ms"]
    return 2 * nbytes / (t * 1e-3) / 1e9


def device_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def _dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _guard(row: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one timing; an error (e.g. out of memory for the unfold reference) is recorded, not raised."""
    import torch

    try:
        return fn()
    except Exception as exc:  # one failing backend must not lose the others' numbers
        row.setdefault("errors", {})[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        torch.cuda.empty_cache()
        return None


def _time(row: dict[str, Any], key: str, fn: Callable[[], Any], warmup: int = 5, iters: int = 30) -> float | None:
    """Median ms of fn() stored as row[key] (None and an entry in row["errors"] when it fails)."""
    t = _guard(row, key, lambda: cuda_time_ms(fn, warmup=warmup, iters=iters))
    if t is None:
        return None
    row[key] = t["median_ms"]
    return t["median_ms"]


# ---------------------------------------------------------------- involution
def _involution_row(n: int, c: int, s: int, prec: str, k: int, iters: int, copy_gbs: float) -> dict[str, Any]:
    import torch

    from .. import ops
    from ..model.involution import Involution2d, involution_aggregate

    dt = _dtype(prec)
    row: dict[str, Any] = {"N": n, "C": c, "H": s, "W": s, "K": k, "precision": prec}
    torch.manual_seed(0)
    inv = Involution2d(c, k, 1).cuda().eval()
    gen = ops.fold_generator(inv)
    inv = inv.to(dt)
    x = torch.randn(n, c, s, s, device="cuda", dtype=dt)
    slow = max(5, iters // 3)  # the unfold reference is slow and memory hungry at N=64
    with torch.inference_mode():
        kern = inv.generate_kernel(x).contiguous()
        ours = _time(row, "ours_ms", lambda: ops.involution(x, kern, k), iters=iters)
        if ours:
            nbytes = (2 * x.numel() + kern.numel()) * x.element_size()  # x and kernel read once, y written once
            row["ours_gbs"] = nbytes / (ours * 1e-3) / 1e9
            row["pct_of_copy_bw"] = 100.0 * row["ours_gbs"] / copy_gbs
        _time(row, "unfold_ms", lambda: involution_aggregate(x, kern, k), warmup=2, iters=slow)
        _time(row, "fused_ms", lambda: ops.involution_fused(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, 1, 16),
              iters=iters)
        # PyTorch generation + our aggregation, and the whole PyTorch module (generation + unfold)
        _time(row, "separate_ms", lambda: ops.involution(x, inv.generate_kernel(x), k), iters=iters)
        _time(row, "pytorch_module_ms", lambda: inv(x), warmup=2, iters=slow)
    if "ours_ms" in row and "unfold_ms" in row:
        row["speedup_vs_unfold"] = row["unfold_ms"] / row["ours_ms"]
    if "fused_ms" in row and "separate_ms" in row:
        row["fused_vs_separate"] = row["separate_ms"] / row["fused_ms"]
    return row


def bench_involution(batches: Sequence[int] = (1, 64), channels: Sequence[int] = (64, 256),
                     sizes: Sequence[int] = (28, 56), precisions: Sequence[str] = ("fp32", "fp16"),
                     kernel_size: int = 7, iters: int = 30, copy_gbs: float | None = None) -> list[dict[str, Any]]:
    """Ours (aggregation; fused generation+aggregation) vs PyTorch (unfold aggregation; the whole Involution2d)."""
    import torch

    copy_gbs = copy_gbs or copy_bandwidth_gbs()
    rows = []
    for n in batches:
        for c in channels:
            for s in sizes:
                for prec in precisions:
                    row = {"N": n, "C": c, "H": s, "precision": prec}
                    got = _guard(row, "row", lambda n=n, c=c, s=s, p=prec: _involution_row(
                        n, c, s, p, kernel_size, iters, copy_gbs))
                    rows.append(got if got is not None else row)
                    torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- CMAM
def _sdpa_cmam(module: Any) -> Any:
    """The reference CMAM's weights in a module built on F.scaled_dot_product_attention (PyTorch's best path)."""
    import torch.nn.functional as F
    from torch import nn

    class SDPACMAM(nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        @staticmethod
        def _direction(att: Any, norm: Any, tq: Any, tkv: Any) -> Any:
            b, nq, _ = tq.shape
            h, hd = att.heads, att.head_dim
            q = att.q(tq).view(b, nq, h, hd).transpose(1, 2)
            k = att.k(tkv).view(b, -1, h, hd).transpose(1, 2)
            v = att.v(tkv).view(b, -1, h, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, nq, att.dim)
            return norm(tq + att.o(y))

        def forward(self, art: Any, pv: Any) -> tuple[Any, Any]:
            b, c, hh, ww = art.shape
            ta, tp = art.flatten(2).transpose(1, 2), pv.flatten(2).transpose(1, 2)
            ya = self._direction(self.m.art_from_pv, self.m.norm_art, ta, tp)
            yp = self._direction(self.m.pv_from_art, self.m.norm_pv, tp, ta)
            return (ya.transpose(1, 2).reshape(b, c, hh, ww), yp.transpose(1, 2).reshape(b, c, hh, ww))

    return SDPACMAM(module).eval()


def _cmam_row(n: int, prec: str, channels: int, size: int, dim: int, heads: int, iters: int) -> dict[str, Any]:
    import torch

    from .. import ops
    from ..model.cmam import CMAM

    dt = _dtype(prec)
    row: dict[str, Any] = {"N": n, "C": channels, "tokens": size * size, "dim": dim, "heads": heads,
                           "precision": prec}
    torch.manual_seed(0)
    ref = CMAM(channels, heads, dim).cuda().eval().to(dt)
    sdpa = _sdpa_cmam(ref)
    wa, wp = (w.to(dt) for w in ops.pack_cmam_module(ref))
    art = torch.randn(n, channels, size, size, device="cuda", dtype=dt)
    pv = torch.randn_like(art)
    with torch.inference_mode():
        _time(row, "ours_ms", lambda: ops.cmam(art, pv, wa, wp, heads, dim), iters=iters)
        _time(row, "sdpa_ms", lambda: sdpa(art, pv), iters=iters)
        _time(row, "reference_ms", lambda: ref(art, pv), iters=iters)
    if "ours_ms" in row and "sdpa_ms" in row:
        row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["ours_ms"]
    return row


def bench_cmam(batches: Sequence[int] = (1, 8, 64), channels: int = 2048, size: int = 4, dim: int = 256,
               heads: int = 8, precisions: Sequence[str] = ("fp32", "fp16"), iters: int = 50) -> list[dict[str, Any]]:
    """Our fused CMAM vs the same weights in an SDPA-based module and in the reference module (16 tokens x 2048)."""
    rows = []
    for n in batches:
        for prec in precisions:
            row = {"N": n, "precision": prec}
            got = _guard(row, "row", lambda n=n, p=prec: _cmam_row(n, p, channels, size, dim, heads, iters))
            rows.append(got if got is not None else row)
    return rows


# ---------------------------------------------------------------- end to end
def _e2e_inputs(n: int, prec: str, cfg: Any) -> tuple[Any, Any, Any]:
    import torch

    dt = _dtype(prec)
    s = cfg.image_size
    art = torch.randn(n, cfg.in_channels, s, s, device="cuda", dtype=dt)
    return art, torch.randn_like(art), torch.randn(n, cfg.num_clinical, device="cuda", dtype=dt)


def _e2e_row(n: int, prec: str, cfg: Any, eager: Any, backends: dict[bool, Any], iters: int) -> dict[str, Any]:
    import torch

    row: dict[str, Any] = {"batch": n, "precision": prec, "variant": cfg.variant, "image_size": cfg.image_size}
    art, pv, clin = _e2e_inputs(n, prec, cfg)
    with torch.inference_mode():
        _time(row, "eager_ms", lambda: eager(art, pv, clin), iters=iters)
    for graph, key in ((False, "ours_ms"), (True, "ours_graph_ms")):
        be = backends.get(graph)
        if be is not None:
            _time(row, key, lambda be=be: be.forward_device(art, pv, clin, check_finite=False), iters=iters)
    if "eager_ms" in row and "ours_graph_ms" in row:
        row["graph_vs_eager"] = row["ours_graph_ms"] / row["eager_ms"]
    return row


def bench_e2e(checkpoint: str | os.PathLike[str] | None = None, batches: Sequence[int] = (1, 8, 64),
              precisions: Sequence[str] = ("fp32", "fp16"), compile_models: bool = True, iters: int = 30,
              budget_s: float | None = None,
              on_update: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """PyTorch eager vs TorchCudaBackend (CUDA graph off/on) vs torch.compile, inputs already on the GPU.

    Without a checkpoint: the default full CMIR (S=128) with random weights. The cheap rows come first; the
    torch.compile column is filled afterwards (one static compile per batch size) while `budget_s` seconds have not
    passed, since compilation dominates a short run. on_update(rows) is called after every measurement (for saving
    partial results)."""
    import torch

    from ..model.checkpoint import load_checkpoint
    from ..model.cmir import build_model
    from .backend import TorchCudaBackend

    t0 = time.monotonic()
    # Same convolution maths as the eager/compiled baselines: PyTorch's default TF32 setting for cuDNN.
    tf32 = bool(torch.backends.cudnn.allow_tf32)
    torch.manual_seed(0)
    base = load_checkpoint(checkpoint) if checkpoint else build_model().eval()
    cfg = base.config
    rows: list[dict[str, Any]] = []

    def update() -> None:
        if on_update is not None:
            on_update(rows)

    for prec in precisions:
        eager = _copy_to(base, _dtype(prec))
        backends = {}
        for graph in (False, True):
            info: dict[str, Any] = {}
            backends[graph] = _guard(info, "backend",
                                     lambda g=graph, p=prec: TorchCudaBackend(base, p, cuda_graph=g,
                                                                              allow_tf32=tf32))
        for n in batches:
            row = {"batch": n, "precision": prec}
            got = _guard(row, "row", lambda n=n, p=prec, e=eager, b=backends: _e2e_row(n, p, cfg, e, b, iters))
            rows.append(got if got is not None else row)
            update()
        del eager, backends
        torch.cuda.empty_cache()
    if compile_models:
        for row in rows:
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                row.setdefault("errors", {})["compile_ms"] = "skipped: time budget spent"
                continue
            n, prec = row["batch"], row["precision"]
            model = _copy_to(base, _dtype(prec))
            compiled = torch.compile(model, dynamic=False)
            art, pv, clin = _e2e_inputs(n, prec, cfg)
            with torch.inference_mode():
                _time(row, "compile_ms", lambda c=compiled, a=art, p=pv, k=clin: c(a, p, k), warmup=3, iters=iters)
            del model, compiled
            update()
    return rows


def _copy_to(model: Any, dtype: Any) -> Any:
    import copy

    return copy.deepcopy(model).to(device="cuda", dtype=dtype).eval()


# ---------------------------------------------------------------- targets, report
TARGETS = {
    "involution_pct_copy_bw": ("involution N=64 C=256 28x28 fp32: % of measured copy bandwidth", ">=", 70.0),
    "involution_speedup_vs_unfold": ("involution N=64 C=256 28x28 fp32: speed-up vs unfold", ">=", 10.0),
    "cmam_speedup_vs_sdpa": ("CMAM batch 1 fp32: speed-up vs SDPA module", ">=", 1.5),
    "e2e_b1_graph_vs_eager": ("end to end batch 1 fp32: our latency / PyTorch eager", "<=", 0.2),
}


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    def find(rows: Iterable[dict[str, Any]], **kv: Any) -> dict[str, Any]:
        for r in rows:
            if all(r.get(k) == v for k, v in kv.items()):
                return r
        return {}

    inv = find(results.get("involution", []), N=64, C=256, H=28, precision="fp32")
    cm = find(results.get("cmam", []), N=1, precision="fp32")
    e2e = find(results.get("e2e", []), batch=1, precision="fp32")
    values = {"involution_pct_copy_bw": inv.get("pct_of_copy_bw"),
              "involution_speedup_vs_unfold": inv.get("speedup_vs_unfold"),
              "cmam_speedup_vs_sdpa": cm.get("speedup_vs_sdpa"), "e2e_b1_graph_vs_eager": e2e.get("graph_vs_eager")}
    out = {}
    for key, (label, op, target) in TARGETS.items():
        v = values[key]
        met = None if v is None else (v >= target if op == ">=" else v <= target)
        out[key] = {"label": label, "value": v, "target": f"{op} {target}", "met": met}
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "—" if v is None else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def to_markdown(results: dict[str, Any]) -> str:
    dev = results.get("device", {})
    parts = [f"# cmir_trt GPU benchmarks — {dev.get('name', '?')}", "",
             f"{results.get('date', '')}; torch {dev.get('torch', '?')}, CUDA {dev.get('cuda', '?')}; "
             f"{SYNTHETIC_NOTE}. Median of CUDA-event timings (ms).", "",
             f"Measured device-to-device copy bandwidth: {_fmt(results.get('copy_bandwidth_gbs'))} GB/s.", ""]
    if results.get("targets"):
        parts += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
        for t in results["targets"].values():
            parts.append(f"| {t['label']} | {_fmt(t['value'])} | {t['target']} | {_fmt(t['met'])} |")
        parts.append("")
    if results.get("involution"):
        parts += ["## Involution (K=7, stride 1)", "", markdown_table(results["involution"], [
            "N", "C", "H", "precision", "ours_ms", "ours_gbs", "pct_of_copy_bw", "unfold_ms", "speedup_vs_unfold",
            "fused_ms", "separate_ms", "fused_vs_separate", "pytorch_module_ms"]), ""]
    if results.get("cmam"):
        parts += ["## CMAM", "", markdown_table(results["cmam"], [
            "N", "C", "tokens", "dim", "heads", "precision", "ours_ms", "sdpa_ms", "reference_ms",
            "speedup_vs_sdpa"]), ""]
    if results.get("e2e"):
        parts += ["## End to end (inputs on the GPU)", "", markdown_table(results["e2e"], [
            "batch", "precision", "eager_ms", "compile_ms", "ours_ms", "ours_graph_ms", "graph_vs_eager"]), ""]
    errors = [(sec, r.get("errors")) for sec in ("involution", "cmam", "e2e") for r in results.get(sec, [])
              if r.get("errors")]
    if errors or results.get("failures"):
        parts += ["## Errors", ""]
        parts += [f"- {sec}: {json.dumps(e)}" for sec, e in errors]
        parts += [f"- {k}: {v}" for k, v in results.get("failures", {}).items()]
    return "\n".join(parts) + "\n"




def run_gpu_benchmarks(out_dir: str | os.PathLike[str] | None = None,
                       parts: Sequence[str] = ("involution", "cmam", "e2e"), quick: bool = False,
                       checkpoint: str | os.PathLike[str] | None = None, budget_s: float | None = None,
                       name: str = "gpu_bench") -> dict[str, Any]:
    """Run the chosen parts, each guarded (a failing part is recorded under "failures"), evaluate the targets and
    write <out_dir>/<name>.json and .md (atomically) when out_dir is given. quick=True: fewer shapes/iterations."""
    import torch

    from . import require_cuda

    require_cuda(0)
    t0 = time.monotonic()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device_info(),
                               "note": SYNTHETIC_NOTE, "quick": quick, "failures": {}}
    results["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
    iters = 10 if quick else 30
    for part in parts:
        try:
            if part == "involution":
                results["involution"] = bench_involution(
                    batches=(1, 64), channels=(64, 256), sizes=(28,) if quick else (28, 56),
                    precisions=("fp32",) if quick else ("fp32", "fp16"), iters=iters,
                    copy_gbs=results["copy_bandwidth_gbs"])
            elif part == "cmam":
                results["cmam"] = bench_cmam(batches=(1, 64) if quick else (1, 8, 64), iters=iters)
            elif part == "e2e":
                left = None if budget_s is None else max(0.0, budget_s - (time.monotonic() - t0))

                def save_rows(rows: list[dict[str, Any]]) -> None:
                    results["e2e"] = rows
                    _save(results, out_dir, name, t0)

                results["e2e"] = bench_e2e(checkpoint, batches=(1, 8) if quick else (1, 8, 64),
                                           precisions=("fp32",) if quick else ("fp32", "fp16"), iters=iters,
                                           budget_s=left, on_update=save_rows)
            else:
                raise ValueError(f"unknown benchmark part {part!r}")
        except Exception as exc:  # record and continue with the next part
            results["failures"][part] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            torch.cuda.empty_cache()
        _save(results, out_dir, name, t0)  # after every part: a run killed by a time limit keeps what it measured
    return results


def _save(results: dict[str, Any], out_dir: str | os.PathLike[str] | None, name: str, t0: float) -> None:
    results["targets"] = evaluate_targets(results)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        _write_atomic(out / f"{name}.json", json.dumps(results, indent=2, default=str))
        _write_atomic(out / f"{name}.md", to_markdown(results))

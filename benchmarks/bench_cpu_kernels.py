"""Per-kernel timings of cmir_trt's own CPU kernels (involution, CMAM, SA) at the model's real shapes, against the
PyTorch reference ops, threads 1 and 2, median of many interleaved runs after warm-up.

Shapes: InvResNet-26 at S=128, width 1.0 (stage outputs 256x32², 512x16², 1024x8², 2048x4²). Involution runs at
mid = C/4 channels of each stage (stride 2 in the first block of stages 2-4) and in the stem (32 ch, 64², K=3).

    .venv/bin/python benchmarks/bench_cpu_kernels.py [--batch 1] [--runs 50] [--out benchmarks/results/cpu_kernels.md]

Timings are wall-clock on whatever else the machine is doing; the Markdown says when, where and with what command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cmir_trt._machine import cpu_name

# (name, channels, H, W, K, stride) of the involutions of InvResNet-26 at S=128
INVOLUTIONS = [
    ("stem inv3x3", 32, 64, 64, 3, 1),
    ("stage1 inv7x7", 64, 32, 32, 7, 1),
    ("stage2.0 inv7x7 s2", 128, 32, 32, 7, 2),
    ("stage2.1 inv7x7", 128, 16, 16, 7, 1),
    ("stage3.0 inv7x7 s2", 256, 16, 16, 7, 2),
    ("stage3.x inv7x7", 256, 8, 8, 7, 1),
    ("stage4.0 inv7x7 s2", 512, 8, 8, 7, 2),
]
CMAM_SHAPE = (16, 2048, 256, 8)  # tokens (4x4), channels, dim, heads
SA_SHAPES = [("SA3 (stage 3)", 1024, 8, 8), ("SA4 (stage 4)", 2048, 4, 4)]


def time_pair(fns: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per call of each function. Rounds interleave the functions so that machine noise hits all
    of them alike; within a round each function runs a block of back-to-back calls (>= ~2 ms) so that one function's
    cache footprint (torch's unfold buffers) does not become the next one's cold start."""
    inner: dict[str, int] = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            f()
        per_call = (time.perf_counter() - t0) / warmup
        inner[k] = max(1, min(200, int(2e-3 / max(per_call, 1e-7))))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            f()  # re-warm this function's working set after the previous one's
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                f()
            samples[k].append((time.perf_counter() - t0) / inner[k])
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


def fold_generation(mod: Any) -> tuple[np.ndarray, ...]:
    """An eval-mode Involution2d's generation weights for kernels.involution_fused (BN folded, 1x1 weights
    transposed)."""
    bn = mod.bn
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    rw = mod.reduce.weight.detach()[:, :, 0, 0] * scale[:, None]
    rb = (bn.bias - bn.running_mean * scale).detach()
    sw = mod.span.weight.detach()[:, :, 0, 0]
    sb = mod.span.bias.detach()
    return tuple(np.ascontiguousarray(t.numpy(), dtype=np.float32) for t in (rw.T, rb, sw.T, sb))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_kernels.md")
    args = ap.parse_args(argv)

    import torch

    from cmir_trt._native import load_core
    from cmir_trt.model import Involution2d, involution_aggregate
    from cmir_trt.model.cmam import CMAM

    kern = load_core().kernels
    load0 = os.getloadavg()
    isas = [i for i in ("avx512", "avx2") if kern.isa_supported(i)]
    rng = np.random.default_rng(0)
    b = args.batch
    # name, shape, threads, {impl: (median s, min s)}; the first impl is the torch reference
    rows: list[tuple[str, str, int, dict[str, tuple[float, float]]]] = []

    def bench(name: str, shape: str, threads: int, ours: dict[str, Callable[[], Any]],
              ref: Callable[[], Any]) -> None:
        fns = {"torch": ref, **ours}
        stats = time_pair(fns, args.runs, args.warmup)
        rows.append((name, shape, threads, stats))
        t_med = stats["torch"][0]
        line = "  ".join(f"{k} {v[0] * 1e3:8.3f} ms ({t_med / v[0]:6.2f}x)" for k, v in stats.items() if k != "torch")
        print(f"t={threads} {name:24s} {shape:24s} torch {t_med * 1e3:8.3f} ms  {line}", flush=True)

    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, c, h, w, k, s in INVOLUTIONS:
            g = c // 16
            ho, wo = -(-h // s), -(-w // s)
            x = rng.standard_normal((b, h, w, c), dtype=np.float32)
            kk = rng.standard_normal((b, ho, wo, g * k * k), dtype=np.float32)
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            kt = torch.from_numpy(kk).view(b, ho, wo, g, k, k).permute(0, 3, 4, 5, 1, 2).contiguous()
            ours = {isa: (lambda isa=isa, x=x, kk=kk, k=k, s=s, t=threads: kern.involution(x, kk, k, s, 16, threads=t,
                                                                                          isa=isa)) for isa in isas}

            def ref(xt=xt, kt=kt, k=k, s=s) -> Any:
                with torch.no_grad():
                    return involution_aggregate(xt, kt, k, s)

            bench(name, f"{c}x{h}x{w} K{k} s{s}", threads, ours, ref)

        # Whole involution (generation + aggregation): torch module (unfold) vs torch's 1x1 convs (oneDNN inside
        # torch) + our aggregation (what an unfused engine does) vs our fused kernel.
        for name, c, h, w, k, s in INVOLUTIONS:
            torch.manual_seed(0)
            mod = Involution2d(c, k, s).eval()
            with torch.no_grad():
                mod.bn.running_var.uniform_(0.5, 2.0)
            xt = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
            x = xt.permute(0, 2, 3, 1).numpy()  # NHWC view of the channels-last tensor, no copy
            gen = fold_generation(mod)
            best = isas[0]

            def unfused(mod=mod, xt=xt, x=x, k=k, s=s, t=threads, isa=best) -> Any:
                with torch.no_grad():  # channels-last 1x1 convs: the span output is already NHWC, as in an engine
                    wgt = mod.span(torch.relu(mod.bn(mod.reduce(mod.pool(xt)))))
                kn = np.ascontiguousarray(wgt.permute(0, 2, 3, 1).numpy())
                return kern.involution(x, kn, k, s, 16, threads=t, isa=isa)

            ours = {f"torch gen + ours ({best})": unfused}
            ours.update({f"fused {isa}": (lambda isa=isa, x=x, gen=gen, k=k, s=s, t=threads:
                                          kern.involution_fused(x, *gen, k, s, 16, threads=t, isa=isa))
                         for isa in isas})

            xt_nchw = xt.contiguous()

            def module(mod=mod, xt=xt_nchw) -> Any:
                with torch.no_grad():
                    return mod(xt)

            bench(name.replace("inv", "Involution2d"), f"{c}x{h}x{w} K{k} s{s}", threads, ours, module)

        n, c, d, heads = CMAM_SHAPE
        mod = CMAM(c, heads, d).eval()
        parts = lambda a, nrm: [a.q.weight, a.q.bias, a.k.weight, a.k.bias, a.v.weight, a.v.bias,  # noqa: E731
                                a.o.weight, a.o.bias, nrm.weight, nrm.bias]
        wa = np.concatenate([t.detach().numpy().ravel() for t in parts(mod.art_from_pv, mod.norm_art)])
        wp = np.concatenate([t.detach().numpy().ravel() for t in parts(mod.pv_from_art, mod.norm_pv)])
        art = rng.standard_normal((b, n, c), dtype=np.float32)
        pv = rng.standard_normal((b, n, c), dtype=np.float32)
        at = torch.from_numpy(art).transpose(1, 2).reshape(b, c, 4, 4).contiguous()
        pt = torch.from_numpy(pv).transpose(1, 2).reshape(b, c, 4, 4).contiguous()
        ours = {isa: (lambda isa=isa, art=art, pv=pv, wa=wa, wp=wp, d=d, h=heads, t=threads:
                      kern.cmam(art, pv, wa, wp, d, h, threads=t, isa=isa)) for isa in isas}

        def cmam_ref(mod=mod, at=at, pt=pt) -> Any:
            with torch.no_grad():
                return mod(at, pt)

        bench("CMAM (both directions)", f"{n} tok x {c}, d{d} h{heads}", threads, ours, cmam_ref)

        for name, c, h, w in SA_SHAPES:
            a = rng.standard_normal((b, h, w, c), dtype=np.float32)
            p = rng.standard_normal((b, h, w, c), dtype=np.float32)
            wt = rng.standard_normal((1, 2, 7, 7), dtype=np.float32)
            conv = torch.nn.Conv2d(2, 1, 7, padding=3)
            a_t = torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
            p_t = torch.from_numpy(p).permute(0, 3, 1, 2).contiguous()
            ours = {isa: (lambda isa=isa, a=a, p=p, wt=wt, t=threads: kern.spatial_attention(a, p, wt, 0.1, threads=t,
                                                                                             isa=isa)) for isa in isas}

            def sa_ref(a_t=a_t, p_t=p_t, conv=conv) -> Any:
                with torch.no_grad():  # SpatialAttention.attention on cat([a, p]) then the two products, as in CMIR
                    x = torch.cat([a_t, p_t], 1)
                    att = torch.sigmoid(conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
                    return a_t * att, p_t * att

            bench(name, f"2x{c}x{h}x{w} K7", threads, ours, sa_ref)

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# CPU kernel timings (cmir_trt own kernels vs PyTorch reference ops)",
        "",
        f"- date: {now}",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs (shared with other jobs: expect noise), "
        f"torch {torch.__version__}",
        f"- command: `{cmd}`",
        f"- load average before / after: {load0[0]:.1f} / {os.getloadavg()[0]:.1f} (1 min)",
        f"- batch {b}; median over {args.runs} interleaved rounds (each a block of back-to-back calls, >= ~2 ms) after "
        f"{args.warmup} warm-up calls; NHWC numpy in/out "
        "for ours (includes the binding's output allocation), NCHW tensors for torch (involution: unfold reference "
        "`involution_aggregate`; CMAM: the `CMAM` module; SA: mean/max/conv/sigmoid + both products).",
        "- 'torch gen + ours': the generation's 1x1 convs in torch (channels-last, oneDNN inside torch; includes "
        "torch's per-op dispatch) + our aggregation, i.e. an unfused engine; 'fused': `involution_fused` "
        "(generation and aggregation tile by tile, the kernel tensor never leaves cache).",
        *([f"- NOTE: the machine was oversubscribed (load {max(load0[0], os.getloadavg()[0]):.1f} on "
           f"{os.cpu_count()} CPUs): a 2-thread parallel region waits whenever the OS parks one of its threads "
           "(~16 ms slices), so 2-thread medians are scheduling noise; the min column is the undisturbed cost."]
          if max(load0[0], os.getloadavg()[0]) > (os.cpu_count() or 1) else []),
        "",
        "| kernel | shape | threads | implementation | median ms | min ms | vs torch (median) | vs torch (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, shape, threads, stats in rows:
        t_med, t_min = stats["torch"]
        for impl, (med, mn) in stats.items():
            speed = "reference | reference" if impl == "torch" else f"{t_med / med:.2f}x | {t_min / mn:.2f}x"
            lines.append(f"| {name} | {shape} | {threads} | {impl} | {med * 1e3:.3f} | {mn * 1e3:.3f} | {speed} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=args.out.parent, delete=False, suffix=".tmp") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(fh.name, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

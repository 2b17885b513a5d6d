"""The "predicted" table of benchmarks/RESULTS.md: for each GPU kernel and shape, the compulsory bytes and FLOPs
(cmir_trt.gpu.bench's cost formulas), the roofline time on H100 SXM and H200, and the time expected for the current
kernels and for the faster designs of issue 13 — written before any lease, so the lease confirms or refutes a model.

    python benchmarks/gpu/predict.py [--markdown]
No GPU needed (the model's shapes come from one CPU forward pass). Every expected time comes from the small
performance model below; its constants are stated here and in RESULTS.md, and each figure is an estimate (about
+-50%), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from cmir_trt.gpu.bench import (
    CARD_SPECS,
    CardSpec,
    cmam_cost,
    involution_cost,
    involution_fused_cost,
    involution_unfused_bytes,
    model_shapes,
    roofline_us,
)

# ---- the performance model's constants (H100 SXM and H200 share the GH100 SM side: 132 SMs)
SMS = 132
CLK = 1.75e9  # sustained SM clock under load (boost is 1.98 GHz)
LAT_US = 0.7  # global-load latency under load (DRAM/L2), one dependent round trip
FLOOR_US = 2.5  # one kernel in a graph: launch, ramp-up, tail
MEM_EFF = 0.8  # fraction of spec DRAM bandwidth a well-fed streaming kernel reaches
FMA_EFF = 0.7  # fraction of the CUDA-core FMA peak a register-tiled SGEMM loop reaches
MMA_EFF = 0.5  # fraction of the tensor-core peak reached at these small GEMM sizes
REGS = 80  # registers per thread of the current involution kernel (issue 13: ~3 blocks/SM)
MIO_PER_CLK = 1.0  # shared-memory / L1 wavefronts per SM per clock (128 B)

CARDS = {spec.label: spec for _, spec in CARD_SPECS if spec.label in ("H100 SXM", "H200 SXM")}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _mio_us(wavefronts: float) -> float:
    return wavefronts / (SMS * CLK * MIO_PER_CLK) * 1e6


def _dram_us(nbytes: float, spec: CardSpec) -> float:
    return nbytes / (MEM_EFF * spec.bw_gbs * 1e9) * 1e6


def current_involution_plan(n: int, c: int, h: int, w: int, k: int, s: int, gc: int) -> dict[str, int]:
    """The launch plan of cuda/involution.cu (launch_typed) as of this prediction: tiles of <= 256 outputs, channel
    slices side by side for small maps, a group's channels split over blocks when there are < 2 blocks per SM."""
    ho, wo = _cdiv(h, s), _cdiv(w, s)
    ntw = _cdiv(wo, 32)
    tile_w = _cdiv(wo, ntw)
    th_max = max(1, min(64, 256 // tile_w))
    nth = _cdiv(ho, th_max)
    tile_h = _cdiv(ho, nth)
    tiles, tile_px = ntw * nth, tile_h * tile_w
    tile_bytes = ((tile_h - 1) * s + k) * ((tile_w - 1) * s + k) * 4
    slices = max(d for d in range(1, gc + 1) if gc % d == 0 and d * tile_px <= 256 and d * tile_bytes <= 48 * 1024)
    base = n * (c // gc) * tiles
    iters = gc // slices
    cchunks = iters
    for d in range(1, iters + 1):
        if iters % d == 0 and base * d >= 2 * SMS:
            cchunks = d
            break
    threads = tile_px * slices
    occ = min(65536 // (_cdiv(threads, 32) * 32 * REGS), 2048 // threads, 32)
    return {"blocks": base * cchunks, "steps": _cdiv(gc // cchunks, slices), "threads": threads, "occupancy": occ}


def involution_expected(n: int, c: int, h: int, w: int, k: int, s: int, gc: int, prec: str,
                        spec: CardSpec) -> dict[str, float]:
    """Expected microseconds: current kernel, the double-buffered design, the official CuPy kernel."""
    cost = involution_cost(n, c, h, w, k, s, gc, prec)
    outputs = cost["outputs"]
    dram = _dram_us(cost["bytes"], spec)
    # Current: each block step stages one channel tile (~1.5 dependent global round trips), then a barrier; only
    # `occupancy` blocks per SM overlap, so bytes in flight are few. Plus one weight-load round trip per block wave.
    p = current_involution_plan(n, c, h, w, k, s, gc)
    waves = p["blocks"] / (SMS * p["occupancy"])
    latency = waves * p["steps"] * (1.5 * LAT_US + 0.05) + math.ceil(waves) * LAT_US
    smem_now = _mio_us(outputs * k * k / 32)  # one 4-byte shared load per tap per output (32 lanes a wavefront)
    current = FLOOR_US + max(latency, smem_now, dram)
    # Faster: cp.async double-buffered staging of several channels (bytes in flight cover the latency), two outputs
    # per thread along W (a row of K+1 staged values feeds both: K*(K+1)/2 shared loads per output).
    smem_fast = _mio_us(outputs * k * (k + 1) / 2 / 32)
    fma = cost["flops"] / (SMS * 128 * 2 * CLK * FMA_EFF) * 1e6
    faster = FLOOR_US + LAT_US + max(dram, smem_fast, fma)
    # Official: one thread per output, two global loads per tap (weight + input, L1 hits; the shifted input rows
    # straddle 128-byte lines: ~2.5 wavefronts per tap per warp) and ~8 instructions per tap.
    l1 = _mio_us(outputs / 32 * k * k * 2.5)
    issue = outputs / 32 * 8 * k * k / (SMS * 4 * CLK) * 1e6
    official = FLOOR_US + max(l1, issue, dram)
    return {"current": current, "faster": faster, "official": official}


def fused_expected(n: int, c: int, h: int, w: int, k: int, s: int, gc: int, prec: str,
                   spec: CardSpec) -> dict[str, float]:
    """Current fused kernel (64-pixel blocks, groups split over blocks when < 2 blocks per SM, each split recomputing
    the hidden layer): the larger of the L1/shared wavefronts of all blocks — hidden layer (x reloaded per block of 8
    hidden units: ~2 wavefronts, 8 warp-uniform w1 loads), the K^2 weights of each group (uniform w2 load + shared
    hidden read per FMA), aggregation (K^2 shared loads per channel) — and one block's instruction stream at 3 cycles
    per instruction (few warps per SM cannot hide the L1 latency).
    Tensor-core generation (not planned in issue 13): the two 1x1 convs as MMAs, then the faster aggregation."""
    cost = involution_fused_cost(n, c, h, w, k, s, gc, precision=prec)
    hidden, g = max(c // 4, 1), c // gc
    ho, wo = _cdiv(h, s), _cdiv(w, s)
    px = n * ho * wo
    ntw = _cdiv(wo, 32)  # plan_tile(g, 64) of cuda/involution.cu
    tiles = n * ntw * _cdiv(ho, max(1, min(64, 64 // _cdiv(wo, ntw))))
    gchunks = g
    for d in range(1, g + 1):
        if g % d == 0 and tiles * d >= 2 * SMS:
            gchunks = d
            break
    groups_pb = g // gchunks
    wavefronts = px / 32 * ((hidden / 8) * c * 10 * gchunks + g * k * k * hidden * 2 + c * k * k)
    inst = (hidden / 8) * c * 17 + groups_pb * k * k * hidden * 3 + groups_pb * gc * k * k * 2
    serial = inst * 3 / CLK * 1e6
    fma = cost["flops"] / (SMS * 128 * 2 * CLK * FMA_EFF) * 1e6
    dram = _dram_us(cost["bytes"], spec)
    current = FLOOR_US + max(_mio_us(wavefronts), serial, fma, dram)
    gen_flops = px * (2 * c * hidden + 2 * hidden * g * k * k)
    rate = (spec.tf32_tflops if prec == "fp32" else spec.fp16_tflops) * 1e12 * MMA_EFF
    outputs = cost["outputs"]
    agg_smem = _mio_us(outputs * k * (k + 1) / 2 / 32)  # the faster aggregation's shared loads
    tc = FLOOR_US + LAT_US + max(dram, agg_smem + gen_flops / rate * 1e6)
    return {"current": current, "tensor_core": tc}


def cmam_expected(n: int, c: int, t: int, d: int, heads: int, prec: str, spec: CardSpec) -> dict[str, float]:
    """Current: four kernels + one memset per split-K output (64x64x16 CUDA-core tiles: 16 tokens fill a quarter of
    a 64-row tile); faster: tensor-core GEMMs with 16-row tiles, no memsets, coalesced LayerNorm, 4 launches."""
    e = 4 if prec == "fp32" else 2
    m = n * t

    def gemm_now(k_dim: int, n_out: int, problems: int) -> tuple[float, int]:
        tiles = _cdiv(m, 64) * _cdiv(n_out, 64) * problems
        splits, max_splits = 1, max(1, k_dim // 64)
        while splits < max_splits and tiles * splits < 2 * SMS:
            splits *= 2
        k_per = _cdiv(_cdiv(k_dim, splits), 16) * 16
        fmas = tiles * splits * 64 * 64 * k_per  # padded rows included
        us = max(fmas / (SMS * 128 * CLK * FMA_EFF) * 1e6, math.ceil(tiles * splits / (4 * SMS)) * k_per / 16 *
                 (LAT_US + 0.05), _dram_us(problems * n_out * k_dim * e, spec))
        return FLOOR_US + us, (problems if splits > 1 else 0)

    proj, ms1 = gemm_now(c, d, 6)
    outp, ms2 = gemm_now(d, c, 2)
    att = FLOOR_US + 0.5 + n * 2 * heads * t * t * (d // heads) * 4 / (SMS * 128 * 2 * CLK * 0.1) * 1e6
    ln_bytes = 2 * m * c * (4 + e)
    ln_now = FLOOR_US + _dram_us(ln_bytes, spec) * 2.5  # strided NCHW writes: ~2.5x the coalesced traffic
    current = proj + outp + att + ln_now + (ms1 + ms2) * 1.0
    rate = (spec.tf32_tflops if prec == "fp32" else spec.fp16_tflops) * 1e12 * MMA_EFF
    cost = cmam_cost(n, c, t, d, heads, prec)
    proj_f = FLOOR_US + max(12 * n * t * c * d / rate * 1e6, _dram_us(6 * d * c * e + 2 * m * c * e, spec))
    out_f = FLOOR_US + max(4 * n * t * d * c / rate * 1e6, _dram_us(2 * c * d * e + 2 * m * c * 4, spec))
    ln_f = FLOOR_US + _dram_us(ln_bytes, spec)
    faster = proj_f + att + out_f + ln_f
    return {"current": current, "faster": faster, "bytes": cost["bytes"], "flops": cost["flops"]}


def rows(config: Any = None) -> list[dict[str, Any]]:
    """One row per (kernel, shape, precision): bytes, FLOPs, roofline and expected microseconds per card; the model
    shapes of `config` (default: the full CMIR at S=128)."""
    shapes = model_shapes(config)
    out: list[dict[str, Any]] = []
    inv = [("target N=64 C=256 28x28 K7", 64, 256, 28, 28, 7, 1, 16)]
    inv += [(f"model {s['name']} x{s['count']}", 1, s["C"], s["H"], s["W"], s["K"], s["stride"], s["group_channels"])
            for s in shapes["involution"]]
    for label, n, c, h, w, k, s, gc in inv:
        for prec in ("fp32", "fp16", "bf16") if n == 64 else ("fp16",):
            cost = involution_cost(n, c, h, w, k, s, gc, prec)
            fcost = involution_fused_cost(n, c, h, w, k, s, gc, precision=prec)
            row = {"kernel": "involution", "shape": label, "precision": prec, "mbytes": cost["bytes"] / 1e6,
                   "gflop": cost["flops"] / 1e9, "fused_mbytes": fcost["bytes"] / 1e6,
                   "fused_gflop": fcost["flops"] / 1e9,
                   "unfused_bytes_per_output": involution_unfused_bytes(n, c, h, w, k, s, gc, precision=prec)
                   / cost["outputs"], "fused_bytes_per_output": fcost["bytes"] / cost["outputs"]}
            for card, spec in CARDS.items():
                tag = card.split()[0]
                row[f"{tag}_roofline_us"] = roofline_us(cost, spec)
                row.update({f"{tag}_{key}_us": v for key, v in
                            involution_expected(n, c, h, w, k, s, gc, prec, spec).items()})
                row[f"{tag}_fused_roofline_us"] = roofline_us(fcost, spec)
                row[f"{tag}_fused_tc_roofline_us"] = roofline_us(
                    fcost, spec, spec.tf32_tflops if prec == "fp32" else spec.fp16_tflops)
                row.update({f"{tag}_fused_{key}_us": v for key, v in
                            fused_expected(n, c, h, w, k, s, gc, prec, spec).items()})
            out.append(row)
    cm = shapes["cmam"]
    for n in (1, 8, 64):
        for prec in ("fp32", "fp16"):
            cost = cmam_cost(n, cm["C"], cm["tokens"], cm["dim"], cm["heads"], prec)
            row = {"kernel": "cmam", "shape": f"batch {n}, {cm['tokens']} tok x {cm['C']}, d{cm['dim']} h{cm['heads']}",
                   "precision": prec, "mbytes": cost["bytes"] / 1e6, "gflop": cost["flops"] / 1e9}
            for card, spec in CARDS.items():
                tag = card.split()[0]
                row[f"{tag}_roofline_us"] = roofline_us(cost, spec)  # fp32 CUDA-core rate: today's kernels
                row[f"{tag}_tc_roofline_us"] = roofline_us(
                    cost, spec, spec.tf32_tflops if prec == "fp32" else spec.fp16_tflops)
                e = cmam_expected(n, cm["C"], cm["tokens"], cm["dim"], cm["heads"], prec, spec)
                row[f"{tag}_current_us"], row[f"{tag}_faster_us"] = e["current"], e["faster"]
            out.append(row)
    return out


# aten ops that launch at least one CUDA kernel (views, allocations and CPU-side bookkeeping launch none)
KERNEL_OPS = {"aten::convolution", "aten::batch_norm", "aten::relu", "aten::relu_", "aten::add", "aten::add_",
              "aten::mul", "aten::sum", "aten::im2col", "aten::avg_pool2d", "aten::max_pool2d", "aten::addmm",
              "aten::mm", "aten::bmm", "aten::_softmax", "aten::layer_norm", "aten::cat", "aten::sigmoid",
              "aten::mean", "aten::amax", "aten::upsample_bilinear2d", "aten::clone", "aten::div_"}
# (relu appears once as aten::relu; its CPU implementation's inner clamp_min is not a second kernel)
HOST_US = {"aten::convolution": 15.0}  # eager host dispatch per op (cuDNN convolutions cost more)
HOST_US_OTHER = 6.0
GRAPH_KERNEL_US = 3.5  # one small kernel inside a CUDA graph at batch 1 (launch gap + a sub-wave of work)


def e2e_estimate(precision: str = "fp16", config: Any = None) -> dict[str, Any]:
    """Batch-1 end to end: weights + activation bytes, FLOPs (convolutions and matmuls counted by torch's
    FlopCounterMode, involution aggregation by formula), the number of kernel-launching ops of PyTorch eager (one CPU
    profile of the same model), ours after folding BN, fusing the involution aggregation with its BN/ReLU and CMAM
    into its own nodes, and the expected times."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cmir_trt.model.cmam import CMAM
    from cmir_trt.model.cmir import CMIRConfig, build_model

    cfg = config or CMIRConfig()
    e = 4 if precision == "fp32" else 2
    model = build_model(cfg).eval()
    s = cfg.image_size
    args = (torch.zeros(1, cfg.in_channels, s, s), torch.zeros(1, cfg.in_channels, s, s),
            torch.zeros(1, cfg.num_clinical))
    act = [0]
    hooks = [m.register_forward_hook(lambda mod, a, out: act.__setitem__(0, act[0] + (
        out.numel() if isinstance(out, torch.Tensor) else 0))) for m in model.modules() if not list(m.children())]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*args)
    for hk in hooks:
        hk.remove()
    shapes = model_shapes(cfg)
    inv_flops = sum(sh["count"] * involution_cost(1, sh["C"], sh["H"], sh["W"], sh["K"], sh["stride"],
                                                  sh["group_channels"])["flops"] for sh in shapes["involution"])
    n_inv = sum(sh["count"] for sh in shapes["involution"])

    def count(module: Any, *inputs: Any) -> dict[str, int]:
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            module(*inputs)
        out: dict[str, int] = {}
        for ev in prof.events():
            if ev.name in KERNEL_OPS:
                out[ev.name] = out.get(ev.name, 0) + 1
        return out

    eager = count(model, *args)
    cm = shapes["cmam"]
    side = int(round(cm["tokens"] ** 0.5))
    cmam_ops = sum(count(CMAM(cm["C"], cm["heads"], cm["dim"]).eval(), torch.zeros(1, cm["C"], side, side),
                         torch.zeros(1, cm["C"], side, side)).values())
    n_eager = sum(eager.values())
    # ours: BN folded (all), each involution's unfold + mul + sum + BN + ReLU -> one aggregation kernel with the
    # epilogue, CMAM's ops -> 4 kernels + 8 split-K memsets (batch 1)
    n_ours = n_eager - eager.get("aten::batch_norm", 0) - n_inv * 4 - cmam_ops + 12
    eager_us = sum(HOST_US.get(k, HOST_US_OTHER) * v for k, v in eager.items())
    params = sum(p.numel() for p in model.parameters())
    nbytes = params * e + 2 * act[0] * e
    return {"params": params, "bytes": float(nbytes), "flops": float(fc.get_total_flops() + inv_flops),
            "eager_ops": n_eager, "ours_kernels": n_ours, "eager_us": eager_us,
            "ours_graph_us": n_ours * GRAPH_KERNEL_US}


def _f(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| involution (aggregation) | prec | MB | GFLOP | roofline H100 / H200 µs | expected now H100 / H200 µs "
             "| expected double-buffered design H100 / H200 µs | official CuPy kernel (expected) H100 / H200 µs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r["kernel"] != "involution":
            continue
        lines.append(f"| {r['shape']} | {r['precision']} | {_f(r['mbytes'])} | {r['gflop']:.3g} | "
                     f"{_f(r['H100_roofline_us'])} / {_f(r['H200_roofline_us'])} | "
                     f"{_f(r['H100_current_us'])} / {_f(r['H200_current_us'])} | "
                     f"{_f(r['H100_faster_us'])} / {_f(r['H200_faster_us'])} | "
                     f"{_f(r['H100_official_us'])} / {_f(r['H200_official_us'])} |")
    lines += ["", "| CMAM (both directions) | prec | MB | GFLOP | roofline CUDA cores H100 / H200 µs | roofline tensor "
              "cores H100 / H200 µs | expected now H100 / H200 µs | expected tensor-core design H100 / H200 µs |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r["kernel"] == "cmam":
            lines.append(f"| {r['shape']} | {r['precision']} | {_f(r['mbytes'])} | {r['gflop']:.3g} | "
                         f"{_f(r['H100_roofline_us'])} / {_f(r['H200_roofline_us'])} | "
                         f"{_f(r['H100_tc_roofline_us'])} / {_f(r['H200_tc_roofline_us'])} | "
                         f"{_f(r['H100_current_us'])} / {_f(r['H200_current_us'])} | "
                         f"{_f(r['H100_faster_us'])} / {_f(r['H200_faster_us'])} |")
    lines += ["", "| fused involution | prec | MB | GFLOP | bytes/output fused vs unfused pair | roofline H100 / H200 "
              "µs | expected now H100 / H200 µs | tensor-core generation H100 / H200 µs |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r["kernel"] == "involution":
            lines.append(f"| {r['shape']} | {r['precision']} | {_f(r['fused_mbytes'])} | {r['fused_gflop']:.3g} | "
                         f"{r['fused_bytes_per_output']:.2f} vs {r['unfused_bytes_per_output']:.2f} | "
                         f"{_f(r['H100_fused_roofline_us'])} / {_f(r['H200_fused_roofline_us'])} | "
                         f"{_f(r['H100_fused_current_us'])} / {_f(r['H200_fused_current_us'])} | "
                         f"{_f(r['H100_fused_tensor_core_us'])} / {_f(r['H200_fused_tensor_core_us'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print the RESULTS.md tables instead of JSON rows")
    args = p.parse_args()
    table = rows()
    e2e = e2e_estimate("fp16")
    if args.markdown:
        print(markdown(table))
        roof = {card: roofline_us({"bytes": e2e["bytes"], "flops": e2e["flops"]}, spec, spec.fp16_tflops)
                for card, spec in CARDS.items()}
        print(f"End to end, batch 1 fp16 (full CMIR S=128): {e2e['params'] / 1e6:.2f} M parameters, "
              f"{e2e['bytes'] / 1e6:.1f} MB (weights + activations written and read once), "
              f"{e2e['flops'] / 1e9:.2f} GFLOP; roofline {_f(roof['H100 SXM'])} µs H100 / {_f(roof['H200 SXM'])} µs "
              f"H200. Kernel-launching ops: PyTorch eager {e2e['eager_ops']}, ours {e2e['ours_kernels']}. Expected: "
              f"eager {e2e['eager_us'] / 1e3:.2f} ms (host-bound), ours with a CUDA graph "
              f"{e2e['ours_graph_us'] / 1e3:.2f} ms (launch-bound): ratio "
              f"{e2e['ours_graph_us'] / e2e['eager_us']:.2f}.")
    else:
        print(json.dumps({"kernels": table, "e2e_fp16_batch1": e2e}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

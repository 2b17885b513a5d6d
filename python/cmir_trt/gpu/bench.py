"""GPU benchmarks: involution, CMAM and end-to-end latency. Functions return plain rows (dicts) and
``run_gpu_benchmarks`` writes them as JSON + Markdown; ``cmir-trt bench --device cuda`` and benchmarks/*.py call
these. Inputs and weights are synthetic (random); no accuracy metric is computed here.

How a cell is timed (``cuda_time_ms``): after warm-up, each sample is ``reps`` back-to-back calls between one pair of
CUDA events (the host enqueues the next call while the GPU runs the previous one, so per-call host dispatch is not
counted as kernel time), or one replay of a CUDA graph holding ``reps`` calls; the figure is the median over samples
of sample / reps. The same statistic (median) is used for every figure, the copy bandwidth included.

Failures: every backend that fails to build or to run leaves its reason in ``row["errors"][key]``. A CUDA error that
leaves the context unusable (illegal address, launch failure: every later call fails) raises ``StickyCudaError``
after the affected row and the rows that can no longer run are recorded with that reason; nothing touches the device
again in that process (benchmarks/gpu/run.sh runs each part in its own process, so the other parts still run).
"""

from __future__ import annotations

import ast
import json
import math
import os
import statistics
import string
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_text as _write_atomic

SYNTHETIC_NOTE = "SYNTHETIC: synthetic inputs and random weights (timings only; no accuracy metric)"

# d-li14/involution, fetched into the git-ignored .deps/ (benchmarks/gpu/README.md); read at run time, never copied.
OFFICIAL_INVOLUTION_DEFAULT = (Path(__file__).resolve().parents[3] / ".deps" / "involution" / "cls" / "mmcls" /
                               "models" / "utils" / "involution_cuda.py")
_OFFICIAL_MAX_BYTES = 1 << 20  # the file is ~10 KB; anything far larger is not that file
_OFFICIAL_THREADS = 1024  # the official launch configuration (CUDA_NUM_THREADS)
# Normwise error of the official kernel vs ours before it is timed (it accumulates in the storage type).
_OFFICIAL_TOL = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 1.5e-1}

Factory = Callable[[], Callable[[], Any]]
# Where the row builders put tensors and modules; the host-side tests run them on "cpu" with fake CUDA events.
_DEVICE = "cuda"


# ---------------------------------------------------------------- card specs and the roofline model
@dataclass(frozen=True)
class CardSpec:
    """Vendor peak figures (dense, boost clock): HBM bandwidth and FLOP rates."""

    label: str
    bw_gbs: float
    fp32_tflops: float  # CUDA cores (the involution kernels)
    tf32_tflops: float  # tensor cores (fp32 CMAM GEMMs: 3xTF32, a third of it)
    fp16_tflops: float  # tensor cores, fp16/bf16 with fp32 accumulation
    smem_tbs: float  # shared-memory bandwidth, all SMs: SMs x 128 B/clk x boost clock


# Matched in order against torch.cuda.get_device_properties().name (first substring match wins).
CARD_SPECS: tuple[tuple[str, CardSpec], ...] = (
    ("H200 NVL", CardSpec("H200 NVL", 4800.0, 60.0, 417.5, 835.5, 132 * 128 * 1.785e9 / 1e12)),
    ("H200", CardSpec("H200 SXM", 4800.0, 66.9, 494.7, 989.4, 132 * 128 * 1.98e9 / 1e12)),
    ("H100 PCIe", CardSpec("H100 PCIe", 2000.0, 51.2, 378.0, 756.0, 114 * 128 * 1.755e9 / 1e12)),
    ("H100 NVL", CardSpec("H100 NVL", 3900.0, 60.0, 417.5, 835.5, 132 * 128 * 1.785e9 / 1e12)),
    ("H100", CardSpec("H100 SXM", 3350.0, 66.9, 494.7, 989.4, 132 * 128 * 1.98e9 / 1e12)),
)


def card_spec(device_name: str) -> CardSpec | None:
    """The spec of a card from its device name (e.g. "NVIDIA H100 80GB HBM3" -> H100 SXM), None when unknown."""
    for key, spec in CARD_SPECS:
        if key.lower() in device_name.lower():
            return spec
    return None


def _elem(precision: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2}[precision]


def involution_cost(n: int, c: int, h: int, w: int, k: int, stride: int = 1, group_channels: int = 16,
                    precision: str = "fp32") -> dict[str, float]:
    """Compulsory DRAM bytes and FLOPs of the aggregation kernel: x read once, the [N,G,K,K,Ho,Wo] kernel tensor
    read once, y written once; one FMA (2 FLOPs) per tap, padding taps included (the kernel computes them)."""
    e = _elem(precision)
    ho, wo = -(-h // stride), -(-w // stride)
    g = c // group_channels
    x, kern, y = n * c * h * w * e, n * g * k * k * ho * wo * e, n * c * ho * wo * e
    return {"bytes": float(x + kern + y), "x_bytes": float(x), "kernel_bytes": float(kern), "y_bytes": float(y),
            "flops": float(2 * k * k * n * c * ho * wo), "outputs": float(n * c * ho * wo)}


def involution_fused_cost(n: int, c: int, h: int, w: int, k: int, stride: int = 1, group_channels: int = 16,
                          reduction: int = 4, precision: str = "fp32") -> dict[str, float]:
    """Fused generation + aggregation: x read once (its second, tile-wise read is meant to hit L2), y written once,
    fp32 generator weights once; FLOPs = per output pixel 2*C*hidden (first 1x1) + 2*hidden*G*K^2 (second 1x1)
    + 2*K^2*C (aggregation)."""
    e = _elem(precision)
    ho, wo = -(-h // stride), -(-w // stride)
    g, hidden = c // group_channels, max(c // reduction, 1)
    weights = 4 * (hidden * c + hidden + g * k * k * hidden + g * k * k)
    px = n * ho * wo
    flops = px * (2 * c * hidden + 2 * hidden * g * k * k + 2 * k * k * c)
    x, y = n * c * h * w * e, n * c * ho * wo * e
    return {"bytes": float(x + y + weights), "x_bytes": float(x), "y_bytes": float(y), "weight_bytes": float(weights),
            "flops": float(flops), "outputs": float(n * c * ho * wo)}


def involution_unfused_bytes(n: int, c: int, h: int, w: int, k: int, stride: int = 1, group_channels: int = 16,
                             reduction: int = 4, precision: str = "fp32") -> float:
    """DRAM bytes of generation (1x1 conv + folded BN + ReLU writing the hidden map, 1x1 conv writing the kernel
    tensor) followed by the aggregation kernel, each intermediate written once and read once (stride 1: the pooled
    input is x itself; stride s: the pooled map is written and read as well), plus both convs' weights once."""
    e = _elem(precision)
    ho, wo = -(-h // stride), -(-w // stride)
    g, hidden = c // group_channels, max(c // reduction, 1)
    x, y = n * c * h * w * e, n * c * ho * wo * e
    pooled = 0 if stride == 1 else 2 * n * c * ho * wo * e
    t = n * hidden * ho * wo * e
    kern = n * g * k * k * ho * wo * e
    weights = (hidden * c + hidden + g * k * k * hidden + g * k * k) * e
    gen = x + pooled + 2 * t + kern + weights  # read x (or pool it), hidden written + read, kernel tensor written
    agg = x + kern + y
    return float(gen + agg)


# The launch plan of cuda/gemm.cuh (plan_splits, wmma_tile) as cuda/cmam.cu calls it, mirrored for the byte count and
# benchmarks/gpu/predict.py; tests/test_gpu_bench_roofline.py reads these constants back from the sources.
CMAM_WMMA_TILE = (16, 128, 32)  # kWM, kWN, kWK: tensor-core GEMM tile (rows x4 when those tiles fill the GPU)
CMAM_WMMA_MF_BIG = 4            # the 64-row tensor-core tile (MF = 4)
CMAM_STAGES = 3                 # kStages: k-steps staged at once (the MMAs of one, the copies of the next two)
CMAM_FP32_MMA_PASSES = 3        # fp32 as 3xTF32: three tf32 MMAs per product (big·big, big·small, small·big)
CMAM_PLAN_SMS = 160             # kPlanSms: the SM count the plans are capped at
CMAM_MIN_KSTEPS = 4             # at least 4 k-steps per split: max_splits = K / (4 * bk)
CMAM_MMA_TILE = (128, 256, 32)  # kMmaBM, kMmaBN, kMmaBK: the mma.sync tile of cuda/gemm_mma.cuh (fp16/bf16)


def cmam_tflops(spec: CardSpec, precision: str) -> float:
    """Tensor-core rate of the CMAM GEMMs as built: fp16/bf16 MMAs, fp32 as 3xTF32 (a third of the TF32 rate)."""
    return spec.tf32_tflops / CMAM_FP32_MMA_PASSES if precision == "fp32" else spec.fp16_tflops


def cmam_gemm_plan(m: int, n_out: int, k: int, problems: int, precision: str, sms: int = 132,
                   max_splits: int | None = None) -> dict[str, int]:
    """One batched GEMM launch of cuda/gemm.cuh (plan_gemm; CMAM's GEMMs, and the 1x1 convolutions with
    max_splits=1): tile rows/cols/k (bm, bn, bk), split-K count and k per split, blocks. Every dtype on tensor cores
    (`precision` kept for the callers: the plan is the same). 64-row tiles when those alone give >= 1 block per SM,
    or when they pad M by at most 1/8 and, split over K, give >= 1 block per 2 SMs; split K (doubling) while there
    are fewer than 2 blocks per SM and >= 4 k-steps per split, at most max_splits."""
    del precision  # the same plan in every dtype
    sms_p = min(sms, CMAM_PLAN_SMS)
    bm, bn, bk = CMAM_WMMA_TILE
    max_splits = min(max(1, k // (CMAM_MIN_KSTEPS * bk)), max_splits or k)
    big = CMAM_WMMA_MF_BIG * bm
    tiles_big = -(-m // big) * -(-n_out // bn) * problems
    if tiles_big >= sms_p or (8 * -(-m // big) * big <= 9 * m and 2 * tiles_big * max_splits >= sms_p):
        bm = big
    tiles = -(-m // bm) * -(-n_out // bn) * problems
    splits = 1
    while splits < max_splits and tiles * splits < 2 * sms_p:
        splits *= 2
    return _plan(bm, bn, bk, k, min(splits, max_splits), tiles, wmma=1)


def _plan(bm: int, bn: int, bk: int, k: int, splits: int, tiles: int, wmma: int) -> dict[str, int]:
    """A launch plan (set_plan of cuda/gemm.cuh): K split `splits` ways in whole k-steps of bk (the count shrinks
    when they round up)."""
    k_split = -(-k // splits)
    k_per = -(-k_split // bk) * bk
    splits = -(-k // k_per)
    return {"bm": bm, "bn": bn, "bk": bk, "wmma": wmma, "mma": 1 - wmma, "splits": splits, "k_per_split": k_per,
            "tiles": tiles, "blocks": tiles * splits}


def _mma_plan(m: int, n_out: int, k: int, problems: int, sms: int, max_splits: int) -> dict[str, int] | None:
    """plan_mma of cuda/gemm_mma.cuh: None unless n_out fills at least half of the tile's 256 columns and its tiles
    alone give >= 1 block per 4 SMs; split K (doubling, >= 4 k-steps each, at most max_splits) while more than ~30%
    of the SMs would idle and the doubled blocks still fit one per SM."""
    bm, bn, bk = CMAM_MMA_TILE
    sms_p = min(sms, CMAM_PLAN_SMS)
    tiles = -(-m // bm) * -(-n_out // bn) * problems
    if 2 * n_out < bn or 4 * tiles < sms_p:
        return None
    cap = max(1, min(max_splits, k // (CMAM_MIN_KSTEPS * bk)))
    splits = 1
    while splits < cap and 10 * tiles * splits < 7 * sms_p and 2 * tiles * splits <= sms_p:
        splits *= 2
    return _plan(bm, bn, bk, k, min(splits, cap), tiles, wmma=0)


def cmam_proj_plan(m: int, n_out: int, k: int, problems: int, precision: str, sms: int = 132,
                   tokens: int = 16) -> dict[str, int]:
    """The Q/K/V projections' launch as cuda/cmam.cu picks it: the mma.sync tile (cuda/gemm_mma.cuh, mma_fits +
    plan_mma: _mma_plan) for fp16/bf16 when the NCHW tokens are whole 16-byte chunks (tokens, K and n_out multiples
    of 8), else cmam_gemm_plan (WMMA). "mma": 1 for the mma.sync tile."""
    fits = precision != "fp32" and tokens % 8 == 0 and k % 8 == 0 and n_out % 8 == 0
    plan = _mma_plan(m, n_out, k, problems, sms, k) if fits else None
    return plan or cmam_gemm_plan(m, n_out, k, problems, precision, sms)


def cmam_out_plan(m: int, channels: int, dim: int, precision: str, sms: int = 132,
                  tokens: int = 16) -> dict[str, int]:
    """The output projections' launch as cuda/cmam.cu picks it (2 problems, K = dim): the mma.sync tile, never split
    (its typed output), where it fits (fp16/bf16, C and dim multiples of 8) and _mma_plan takes it; else
    cmam_gemm_plan (WMMA, fp32 sums, split-K by atomics). "mma": 1 for the mma.sync tile; "ln_fused": 1 where the
    LayerNorm is fused into it (plan_mma_ln: tokens a multiple of 8, one tile per block and at most one block per SM,
    the cooperative launch's bound), so that no pre-norm rows and no LayerNorm launch remain."""
    fits = precision != "fp32" and channels % 8 == 0 and dim % 8 == 0
    plan = _mma_plan(m, channels, dim, 2, sms, 1) if fits else None
    if plan is None:
        return {**cmam_gemm_plan(m, channels, dim, 2, precision, sms), "ln_fused": 0}
    return {**plan, "ln_fused": int(tokens % 8 == 0 and plan["tiles"] <= min(sms, CMAM_PLAN_SMS))}


def cmam_cost(n: int, channels: int, tokens: int, dim: int, heads: int, precision: str = "fp32",
              sms: int = 132) -> dict[str, float]:
    """Both directions. FLOPs: six Q/K/V projections 6*2*N*T*C*d, attention 2 directions x (QK^T + PV) =
    2*2*2*N*T^2*d, two output projections 2*2*N*T*d*C. Bytes: both packed weight buffers (4*d*C + 3*d + 3*C each)
    and the two inputs and two outputs once, plus the fp32 workspace traffic of the kernels as built (cuda/cmam.cu; it
    may stay in L2): the Q/K/V projections' split-K partial sums (s_qkv of them: each written once and read once by
    the attention kernel), the attention output (in the op's dtype) written + read, the fp32 pre-norm sums zeroed by
    the attention kernel when the output projections split K (s_out > 1), stored (or atomically added) once per split
    and read once by the LayerNorm — or, from the mma.sync output projections, the pre-norm rows in the op's dtype
    written and read once — or, with the LayerNorm fused, only the row statistics of each block. s_qkv and s_out
    follow the launch plans on a `sms`-SM card (cmam_proj_plan, cmam_out_plan)."""
    e = _elem(precision)
    t, c, d = tokens, channels, dim
    m = n * t
    s_qkv = cmam_proj_plan(m, d, c, 6, precision, sms, t)["splits"]
    out_plan = cmam_out_plan(m, c, d, precision, sms, t)
    s_out = out_plan["splits"]
    flops = 12 * n * t * c * d + 8 * n * t * t * d + 4 * n * t * d * c
    weights = 2 * (4 * d * c + 3 * d + 3 * c) * e
    io = 4 * n * c * t * e
    partials = 4 * 2 * 6 * s_qkv * m * d
    if out_plan["ln_fused"]:  # no pre-norm rows: each block's (mean, M2) per row, written once, read by every n tile
        n_tiles = -(-c // CMAM_MMA_TILE[1])
        pre = 8 * 2 * n_tiles * m * (1 + n_tiles)
    elif out_plan["mma"]:  # pre-norm rows in the op's dtype: written once, read once
        pre = e * 2 * m * c * 2
    else:
        pre = 4 * 2 * m * c * ((1 if s_out > 1 else 0) + s_out + 1)
    workspace = partials + e * 2 * 2 * m * d + pre
    return {"bytes": float(weights + io + workspace), "weight_bytes": float(weights), "io_bytes": float(io),
            "workspace_bytes": float(workspace), "partial_bytes": float(partials), "flops": float(flops),
            "qkv_splits": float(s_qkv), "out_splits": float(s_out)}


def roofline_us(cost: dict[str, float], spec: CardSpec, tflops: float | None = None) -> float:
    """max(bytes / peak bandwidth, FLOPs / peak FLOP rate) in microseconds (fp32 CUDA-core rate by default)."""
    rate = spec.fp32_tflops if tflops is None else tflops
    return max(cost["bytes"] / (spec.bw_gbs * 1e9), cost["flops"] / (rate * 1e12)) * 1e6


def model_shapes(config: Any = None) -> dict[str, Any]:
    """Involution, CMAM and pointwise-convolution input shapes of the CMIR model (batch 1), found by running it once
    on the CPU with hooks: {"involution": [{"name", "count", "C", "H", "W", "K", "stride", "group_channels"}],
    "cmam": {...} or None, "pointwise": [{"name", "count", "Cin", "Cout", "H", "W", "residual", "shortcut"}],
    "conv2d": [{"name", "count", "Cin", "Cout", "H", "W", "kh", "kw", "stride", "pad"}],
    "spatial_attention": [{"name", "count", "C", "H", "W", "k"}] (C: the two phases' channels together)}.
    "pointwise": the launches of pointwise_conv in the GPU backend: the stride-1 1x1 convolutions (the bottlenecks'
    and the involutions' generation convolutions); a bottleneck's conv3 carries the identity as its residual, or,
    where its downsample is fused (``backend.fusable_shortcut``), that downsample's input channels as "shortcut"
    (the GEMM's K is then Cin + shortcut; the downsample is no launch of its own). "conv2d": the launches of conv2d
    (H, W: its input): the other convolutions except the SA module's (the stems' 3x3, strided downsamples not
    fused) and a strided involution's first generation convolution with its average pool folded in (an s x s
    convolution at stride s of the involution's input, where s divides H and W)."""
    import torch

    from ..model.cmam import CMAM
    from ..model.cmir import CMIRConfig, build_model
    from ..model.involution import Involution2d
    from ..model.resnet import Bottleneck
    from ..model.spatial import SpatialAttention
    from .backend import fusable_shortcut

    cfg = config or CMIRConfig()
    model = build_model(cfg).eval()
    inv: dict[tuple[int, ...], dict[str, Any]] = {}
    cmam: dict[str, Any] = {}
    pw: dict[tuple[int, ...], dict[str, Any]] = {}
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    # conv3 -> the fused downsample's input channels (0: conv3 adds the identity as a residual)
    conv3 = {id(m.conv3[0]): (m.downsample[0].in_channels if fusable_shortcut(m.conv3, m.downsample) else 0)
             for m in blocks}
    fused_ds = {id(m.downsample[0]) for m in blocks if fusable_shortcut(m.conv3, m.downsample)}
    pooled = {id(m.reduce) for m in model.modules() if isinstance(m, Involution2d) and m.stride > 1}
    sa_convs = {id(m.conv) for m in model.modules() if isinstance(m, SpatialAttention)}
    conv: dict[tuple[int, ...], dict[str, Any]] = {}
    sa: dict[tuple[int, ...], dict[str, Any]] = {}
    hooks = []

    def add_conv(name: str, cin: int, cout: int, h: int, w: int, k: int, stride: int, pad: int) -> None:
        conv.setdefault((cin, cout, h, w, k, stride, pad), {
            "name": name, "count": 0, "Cin": cin, "Cout": cout, "H": h, "W": w, "kh": k, "kw": k, "stride": stride,
            "pad": pad})["count"] += 1

    def on_pointwise(name: str, m: Any, x: Any) -> None:
        if id(m) in fused_ds or id(m) in pooled:  # no launch of its own / counted by on_inv
            return
        _, cin, h, w = x.shape
        sc = conv3.get(id(m), 0)
        key = (cin, m.out_channels, h, w, int(id(m) in conv3 and sc == 0), sc)
        pw.setdefault(key, {"name": name, "count": 0, "Cin": cin, "Cout": m.out_channels, "H": h, "W": w,
                            "residual": key[-2], "shortcut": sc})["count"] += 1

    def on_sa(name: str, m: Any, a: Any, p: Any) -> None:
        _, ca, h, w = a.shape
        key = (ca + p.shape[1], h, w, m.kernel_size)
        sa.setdefault(key, {"name": name, "count": 0, "C": key[0], "H": h, "W": w, "k": m.kernel_size})["count"] += 1

    def on_inv(name: str, m: Any, x: Any) -> None:
        _, c, h, w = x.shape
        s = m.stride
        if s > 1 and h % s == 0 and w % s == 0:  # the pooled generation input: one s x s conv2d at stride s
            add_conv(f"{name}.reduce (pool folded)", c, m.reduce.out_channels, h, w, s, s, 0)
        elif s > 1:  # an average pool and a pointwise_conv on the pooled map
            key = (c, m.reduce.out_channels, -(-h // s), -(-w // s), 0, 0)
            pw.setdefault(key, {"name": f"{name}.reduce", "count": 0, "Cin": c, "Cout": m.reduce.out_channels,
                                "H": key[2], "W": key[3], "residual": 0, "shortcut": 0})["count"] += 1
        key = (c, h, w, m.kernel_size, m.stride, m.group_channels)
        entry = inv.setdefault(key, {"name": name, "count": 0, "C": c, "H": h, "W": w, "K": m.kernel_size,
                                     "stride": m.stride, "group_channels": m.group_channels})
        entry["count"] += 1

    for name, m in model.named_modules():
        if isinstance(m, Involution2d):
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: on_inv(name, mod, args[0])))
        elif isinstance(m, SpatialAttention):
            # CMIR calls apply_pair (not forward: no hook fires); this model is ours alone, so wrap the method
            m.apply_pair = lambda a, p, m=m, name=name, call=m.apply_pair: (on_sa(name, m, a, p), call(a, p))[1]
        elif isinstance(m, CMAM):
            hooks.append(m.register_forward_hook(lambda mod, args, out: cmam.update(
                C=args[0].shape[1], tokens=args[0].shape[2] * args[0].shape[3],
                dim=mod.art_from_pv.dim, heads=mod.art_from_pv.heads)))
        elif (isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
              and m.groups == 1):
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: on_pointwise(name, mod, args[0])))
        elif isinstance(m, torch.nn.Conv2d) and id(m) not in fused_ds and id(m) not in sa_convs and m.groups == 1:
            hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: add_conv(
                name, args[0].shape[1], mod.out_channels, args[0].shape[2], args[0].shape[3], mod.kernel_size[0],
                mod.stride[0], mod.padding[0])))
    s = cfg.image_size
    with torch.no_grad():
        model(torch.zeros(1, cfg.in_channels, s, s), torch.zeros(1, cfg.in_channels, s, s),
              torch.zeros(1, cfg.num_clinical))
    for hk in hooks:
        hk.remove()
    return {"involution": list(inv.values()), "cmam": cmam or None, "pointwise": list(pw.values()),
            "conv2d": list(conv.values()), "spatial_attention": list(sa.values())}


# ---------------------------------------------------------------- timing
class StickyCudaError(RuntimeError):
    """The CUDA context is unusable (every later call would fail). ``rows``: what was measured before, plus one row
    per case that can no longer run, each with its reason."""

    def __init__(self, message: str, rows: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows if rows is not None else []


@dataclass(frozen=True)
class Timing:
    warmup: int = 5
    iters: int = 20  # samples; the figure is their median
    reps: int = 10  # back-to-back calls per sample
    graph: bool = False  # replay a CUDA graph of `reps` calls instead of launching them from Python


def cuda_time_ms(fn: Callable[[], Any], warmup: int = 5, iters: int = 20, reps: int = 10,
                 graph: bool = False) -> dict[str, Any]:
    """Median milliseconds per call of fn() on the current stream: `iters` samples of `reps` back-to-back calls
    (or one CUDA-graph replay of `reps` captured calls) between two CUDA events, after `warmup` calls."""
    import torch

    if iters < 1 or reps < 1 or warmup < 0:
        raise ValueError(f"iters and reps must be >= 1 and warmup >= 0, got {iters}, {reps}, {warmup}")
    if graph:
        # Warm up on a side stream before capture (allocator and library handles settle there), as torch asks.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(reps):
                fn()
        run: Callable[[], Any] = g.replay
        run()  # first replay uploads the graph
    else:
        for _ in range(warmup):
            fn()

        def run() -> None:
            for _ in range(reps):
                fn()

    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / reps)
    return {"median_ms": statistics.median(samples), "iters": iters, "reps": reps,
            "mode": "graph" if graph else "stream"}


def copy_bandwidth_gbs(nbytes: int = 1 << 29, timing: Timing | None = None) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second, GB/s = 1e9 B/s), median like
    every other figure."""
    import torch

    t = timing or Timing(warmup=3, iters=15, reps=5)
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=_DEVICE)
    b = torch.empty_like(a)
    ms = cuda_time_ms(lambda: b.copy_(a), warmup=t.warmup, iters=t.iters, reps=t.reps)["median_ms"]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def device_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    spec = card_spec(props.name)
    return {"name": props.name, "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "spec": spec.label if spec else None,
            "spec_bw_gbs": spec.bw_gbs if spec else None}


def _dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _device_error() -> str | None:
    """None while the device still works; else why not (a sticky error makes every later call fail)."""
    import torch

    try:
        torch.cuda.synchronize()
    except Exception as exc:
        return _reason(exc)
    return None


def _fail(row: dict[str, Any], key: str, exc: BaseException) -> None:
    """Record why `key` failed; raise StickyCudaError when the device is no longer usable."""
    row.setdefault("errors", {})[key] = _reason(exc)
    broken = _device_error()
    if broken is not None:
        row["errors"][key] += f" (CUDA context lost: {broken})"
        raise StickyCudaError(f"{key}: {_reason(exc)}; CUDA context lost: {broken}") from exc


def _release() -> None:
    """Free cached blocks between rows (never after a sticky error: empty_cache would raise)."""
    import torch

    try:
        torch.cuda.empty_cache()
    except Exception as exc:
        raise StickyCudaError(f"torch.cuda.empty_cache failed: {_reason(exc)}") from exc


def _measure(row: dict[str, Any], key: str, make: Factory, timing: Timing) -> float | None:
    """Build the callable (compile, check, warm caches: not timed), then time it; the median ms goes to row[key],
    a failure of either step to row["errors"][key]."""
    try:
        fn = make()
        t = cuda_time_ms(fn, warmup=timing.warmup, iters=timing.iters, reps=timing.reps, graph=timing.graph)
    except StickyCudaError:
        raise
    except Exception as exc:
        _fail(row, key, exc)
        return None
    row[key] = t["median_ms"]
    return t["median_ms"]


def _run_cases(cases: Sequence[Any], new_row: Callable[[Any], dict[str, Any]],
               fill: Callable[[dict[str, Any], Any], None],
               on_update: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """One row per case, each filled by fill(row, case); a case that fails outright keeps its row with the reason.
    After a sticky CUDA error the remaining cases become rows saying why they did not run. on_update(rows) after
    every row (a run killed by its time limit keeps what it measured)."""
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        row = new_row(case)
        rows.append(row)
        try:
            try:
                fill(row, case)
            except StickyCudaError:
                raise
            except Exception as exc:
                _fail(row, "row", exc)
            _release()
            if on_update is not None:
                on_update(rows)
        except StickyCudaError as exc:
            for later in cases[i + 1:]:
                skipped = new_row(later)
                skipped["errors"] = {"row": f"not run: {exc}"}
                rows.append(skipped)
            exc.rows = rows
            raise
    return rows


def _ratio(row: dict[str, Any], out: str, num: str, den: str) -> None:
    if row.get(num) and row.get(den):
        row[out] = row[num] / row[den]


# ---------------------------------------------------------------- the official involution kernel (baseline)
def _const_str(node: ast.AST, env: dict[str, str]) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _const_str(node.left, env) + _const_str(node.right, env)
    raise ValueError("not a string expression")


def official_involution_source(path: str | os.PathLike[str] = OFFICIAL_INVOLUTION_DEFAULT) -> str:
    """The forward-kernel template (``kernel_loop + _involution_kernel``) of d-li14/involution's
    involution_cuda.py, read from the file with ``ast`` (never imported or executed: it imports mmcv and cupy)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"official involution kernel not found at {p} (fetch d-li14/involution into "
                                ".deps/involution, see benchmarks/gpu/README.md, or pass --official-involution)")
    if p.stat().st_size > _OFFICIAL_MAX_BYTES:
        raise ValueError(f"{p}: {p.stat().st_size} bytes, not d-li14/involution's involution_cuda.py (~10 KB)")
    try:
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a readable Python file ({_reason(exc)})") from exc
    env: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                env[node.targets[0].id] = _const_str(node.value, env)
            except ValueError:
                continue
    src = env.get("_involution_kernel")
    if src is None or "involution_forward_kernel" not in src:
        raise ValueError(f"{p}: no module-level string _involution_kernel defining involution_forward_kernel "
                         "(is this d-li14/involution's cls/mmcls/models/utils/involution_cuda.py?)")
    return src


_OFFICIAL_CTYPE = {"fp32": ("float", ""), "fp16": ("__half", "#include <cuda_fp16.h>\n"),
                   "bf16": ("__nv_bfloat16", "#include <cuda_bf16.h>\n")}


def render_official_involution(src: str, precision: str, n: int, c: int, h: int, w: int, k: int, stride: int,
                               groups: int) -> tuple[str, int, tuple[int, int]]:
    """CUDA source of the official forward kernel for one shape (its template filled in as its own forward() does;
    fp16/bf16 use the storage type for the accumulator, as the template does for float): (code, outputs, (Ho, Wo))."""
    ctype, include = _OFFICIAL_CTYPE[precision]
    pad = (k - 1) // 2
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    nthreads = n * c * ho * wo
    try:
        code = string.Template(src).substitute(
            Dtype=ctype, nthreads=nthreads, num=n, channels=c, groups=groups, bottom_height=h, bottom_width=w,
            top_height=ho, top_width=wo, kernel_h=k, kernel_w=k, stride_h=stride, stride_w=stride, dilation_h=1,
            dilation_w=1, pad_h=pad, pad_w=pad)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"official involution template has a placeholder this benchmark does not fill: {exc}") \
            from exc
    return include + code, nthreads, (ho, wo)


def _rel_err(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    if not bool(a.isfinite().all()):
        return math.inf
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


class OfficialInvolution:
    """The official CuPy involution kernel as a baseline: source read from `path`, compiled with cupy.RawKernel at
    set-up (warm-up), launched with its own configuration (1024 threads, one output per thread) on torch's current
    stream."""

    def __init__(self, path: str | os.PathLike[str] = OFFICIAL_INVOLUTION_DEFAULT) -> None:
        self.path = Path(path)
        self.source = official_involution_source(self.path)

    def make(self, x: Any, kern: Any, kernel_size: int, stride: int, precision: str,
             expect: Any) -> Callable[[], Any]:
        """A callable running the official kernel on (x, kern); checked against `expect` (our output) first."""
        import cupy
        import numpy as np
        import torch

        n, c, h, w = x.shape
        code, nthreads, out_hw = render_official_involution(self.source, precision, n, c, h, w, kernel_size,
                                                            stride, kern.shape[1])
        if tuple(expect.shape[2:]) != out_hw:
            raise ValueError(f"official kernel output {out_hw} differs from ours {tuple(expect.shape[2:])}")
        kernel = cupy.RawKernel(code, "involution_forward_kernel")
        kernel.compile()  # now, not inside a timed sample or a graph capture
        y = torch.empty_like(expect)
        grid = ((nthreads + _OFFICIAL_THREADS - 1) // _OFFICIAL_THREADS,)
        args = (np.uint64(x.data_ptr()), np.uint64(kern.data_ptr()), np.uint64(y.data_ptr()))

        def run() -> Any:
            with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                kernel(grid, (_OFFICIAL_THREADS,), args)
            return y

        run()
        err = _rel_err(y, expect)
        if not err <= _OFFICIAL_TOL[precision]:
            raise ValueError(f"official kernel output differs from ours: normwise error {err:.3g} > "
                             f"{_OFFICIAL_TOL[precision]} (launch or layout mismatch; not timed)")
        return run


# ---------------------------------------------------------------- involution
TARGET_INVOLUTION = {"label": "target", "N": 64, "C": 256, "H": 28, "W": 28, "K": 7, "stride": 1,
                     "group_channels": 16}


def involution_shapes(config: Any = None, batch: int = 1) -> list[dict[str, Any]]:
    """The issue's target shape (N=64, C=256, 28x28, K=7) and the model's own involutions at `batch`."""
    shapes = [dict(TARGET_INVOLUTION)]
    for s in model_shapes(config)["involution"]:
        shapes.append({"label": f"model {s['name']} (x{s['count']})", "N": batch, "C": s["C"], "H": s["H"],
                       "W": s["W"], "K": s["K"], "stride": s["stride"], "group_channels": s["group_channels"]})
    return shapes


def _involution_derived(row: dict[str, Any], copy_gbs: float | None, spec: CardSpec | None) -> None:
    cost = involution_cost(row["N"], row["C"], row["H"], row["W"], row["K"], row["stride"], row["group_channels"],
                           row["precision"])
    row["mbytes"] = cost["bytes"] / 1e6
    row["gflop"] = cost["flops"] / 1e9
    for who in ("ours", "official"):
        ms = row.get(f"{who}_graph_ms")  # device time
        if not ms:
            continue
        gbs = cost["bytes"] / (ms * 1e-3) / 1e9
        row[f"{who}_gbs"] = gbs
        if copy_gbs:
            row["pct_of_copy_bw" if who == "ours" else "official_pct_of_copy_bw"] = 100.0 * gbs / copy_gbs
        if spec is not None:
            row["pct_of_spec_bw" if who == "ours" else "official_pct_of_spec_bw"] = 100.0 * gbs / spec.bw_gbs
    if spec is not None:
        row["roofline_ms"] = roofline_us(cost, spec) / 1e3
        fused = involution_fused_cost(row["N"], row["C"], row["H"], row["W"], row["K"], row["stride"],
                                      row["group_channels"], precision=row["precision"])
        row["fused_roofline_ms"] = roofline_us(fused, spec) / 1e3
    _ratio(row, "speedup_vs_official", "official_graph_ms", "ours_graph_ms")
    _ratio(row, "speedup_vs_unfold", "unfold_ms", "ours_ms")
    _ratio(row, "fused_vs_separate", "separate_ms", "fused_ms")


def _involution_row(row: dict[str, Any], prec: str, timing: Timing, official: OfficialInvolution | str | None,
                    copy_gbs: float | None, spec: CardSpec | None) -> None:
    import torch

    from .. import ops
    from ..model.involution import Involution2d, involution_aggregate

    n, c, h, w, k, s, gc = (row[key] for key in ("N", "C", "H", "W", "K", "stride", "group_channels"))
    dt = _dtype(prec)
    torch.manual_seed(0)
    inv = Involution2d(c, k, s, gc).to(_DEVICE).eval()
    gen = ops.fold_generator(inv)  # fp32 generator weights, folded before the cast
    inv = inv.to(dt)
    x = torch.randn(n, c, h, w, device=_DEVICE, dtype=dt)
    big = n * c * h * w * k * k > (1 << 26)  # the unfold reference is slow and memory hungry there
    slow = Timing(warmup=1, iters=max(3, timing.iters // 4), reps=1) if big else timing
    graph = Timing(timing.warmup, timing.iters, timing.reps, graph=True)
    with torch.inference_mode():
        kern = inv.generate_kernel(x).contiguous()

        def ours() -> Any:
            return ops.involution(x, kern, k, s)

        def fused() -> Any:
            return ops.involution_fused(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc)

        # Single-kernel ops: launched from Python (what an eager caller sees) and replayed from a CUDA graph
        # (device time: the figure for bandwidth and for ours vs official at small shapes).
        for suffix, t in (("_ms", timing), ("_graph_ms", graph)):
            _measure(row, "ours" + suffix, lambda: ours, t)
            _measure(row, "fused" + suffix, lambda: fused, t)
        made: dict[str, Callable[[], Any]] = {}

        def official_fn() -> Callable[[], Any]:  # compiled and checked once, timed both ways
            if "fn" not in made:
                assert isinstance(official, OfficialInvolution)
                made["fn"] = official.make(x, kern, k, s, prec, ours())
            return made["fn"]

        for key, t in (("official_ms", timing), ("official_graph_ms", graph)):
            if isinstance(official, str):  # the source could not be loaded: same reason in every row
                row.setdefault("errors", {})[key] = official
            elif official is not None:
                _measure(row, key, official_fn, t)
        _measure(row, "unfold_ms", lambda: lambda: involution_aggregate(x, kern, k, s), slow)
        # PyTorch generation + our aggregation, and the whole PyTorch module (generation + unfold)
        _measure(row, "separate_ms", lambda: lambda: ops.involution(x, inv.generate_kernel(x), k, s), timing)
        _measure(row, "pytorch_module_ms", lambda: lambda: inv(x), slow)
    _involution_derived(row, copy_gbs, spec)


def bench_involution(shapes: Sequence[dict[str, Any]] | None = None,
                     precisions: Sequence[str] = ("fp32", "fp16", "bf16"), timing: Timing | None = None,
                     copy_gbs: float | None = None, spec: CardSpec | None = None,
                     official: str | os.PathLike[str] | None = OFFICIAL_INVOLUTION_DEFAULT,
                     on_update: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Ours (aggregation; fused generation+aggregation) vs the official CuPy kernel, PyTorch unfold aggregation and
    the whole PyTorch Involution2d, per shape and precision. official=None leaves the official baseline out."""
    timing = timing or Timing()
    shapes = list(shapes) if shapes is not None else involution_shapes()
    loaded: OfficialInvolution | str | None = None
    if official is not None:
        try:
            loaded = OfficialInvolution(official)
        except (OSError, ValueError) as exc:
            loaded = _reason(exc)
    cases = [(shape, prec) for shape in shapes for prec in precisions]

    def new_row(case: tuple[dict[str, Any], str]) -> dict[str, Any]:
        shape, prec = case
        return {**{k: shape[k] for k in ("N", "C", "H", "W", "K", "stride", "group_channels")},
                "precision": prec, "shape": shape.get("label", "")}

    return _run_cases(cases, new_row, lambda row, case: _involution_row(row, case[1], timing, loaded, copy_gbs, spec),
                      on_update)


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


def _cmam_row(row: dict[str, Any], timing: Timing, spec: CardSpec | None) -> None:
    import torch

    from .. import ops
    from ..model.cmam import CMAM

    n, c, size, dim, heads, prec = row["N"], row["C"], row["size"], row["dim"], row["heads"], row["precision"]
    dt = _dtype(prec)
    torch.manual_seed(0)
    ref = CMAM(c, heads, dim).to(device=_DEVICE, dtype=dt).eval()
    sdpa = _sdpa_cmam(ref)
    wa, wp = (w.to(dt) for w in ops.pack_cmam_module(ref))
    art = torch.randn(n, c, size, size, device=_DEVICE, dtype=dt)
    pv = torch.randn_like(art)
    graph = Timing(timing.warmup, timing.iters, timing.reps, graph=True)
    with torch.inference_mode():
        for suffix, t in (("_ms", timing), ("_graph_ms", graph)):
            _measure(row, "ours" + suffix, lambda: lambda: ops.cmam(art, pv, wa, wp, heads, dim), t)
            _measure(row, "sdpa" + suffix, lambda: lambda: sdpa(art, pv), t)
            _measure(row, "reference" + suffix, lambda: lambda: ref(art, pv), t)
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count \
        if _DEVICE == "cuda" else 132
    _cmam_derived(row, spec, sms)
    # Device time (graph replay) for the target; the stream ratio shows what an eager caller sees.
    _ratio(row, "speedup_vs_sdpa", "sdpa_graph_ms", "ours_graph_ms")
    _ratio(row, "speedup_vs_sdpa_stream", "sdpa_ms", "ours_ms")


def _cmam_derived(row: dict[str, Any], spec: CardSpec | None, sms: int = 132) -> None:
    """Bytes (the split-K partial-sum traffic of the launch plan on `sms` SMs included), FLOPs, the roofline at the
    rate the kernels use (tensor cores: fp16/bf16 MMAs, fp32 as 3xTF32 at a third of the TF32 rate) and our
    bandwidth from the graph time."""
    prec = row["precision"]
    cost = cmam_cost(row["N"], row["C"], row["size"] * row["size"], row["dim"], row["heads"], prec, sms)
    row["mbytes"], row["gflop"] = cost["bytes"] / 1e6, cost["flops"] / 1e9
    row["qkv_splits"], row["out_splits"] = int(cost["qkv_splits"]), int(cost["out_splits"])
    ms = row.get("ours_graph_ms")
    if ms:
        row["ours_gbs"] = cost["bytes"] / (ms * 1e-3) / 1e9
        if spec is not None:
            row["pct_of_spec_bw"] = 100.0 * row["ours_gbs"] / spec.bw_gbs
    if spec is not None:
        row["roofline_ms"] = roofline_us(cost, spec, cmam_tflops(spec, prec)) / 1e3


def bench_cmam(batches: Sequence[int] = (1, 8, 64), channels: int = 2048, size: int = 4, dim: int = 256,
               heads: int = 8, precisions: Sequence[str] = ("fp32", "fp16", "bf16"), timing: Timing | None = None,
               spec: CardSpec | None = None,
               on_update: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Our fused CMAM vs the same weights in an SDPA-based module and in the reference module (16 tokens x 2048),
    each timed launched from Python (stream) and as a CUDA-graph replay (device time)."""
    timing = timing or Timing(reps=20)
    cases = [(n, prec) for n in batches for prec in precisions]

    def new_row(case: tuple[int, str]) -> dict[str, Any]:
        return {"N": case[0], "C": channels, "tokens": size * size, "size": size, "dim": dim, "heads": heads,
                "precision": case[1]}

    return _run_cases(cases, new_row, lambda row, case: _cmam_row(row, timing, spec), on_update)


# ---------------------------------------------------------------- end to end
def _e2e_inputs(n: int, prec: str, cfg: Any) -> tuple[Any, Any, Any]:
    import torch

    dt = _dtype(prec)
    s = cfg.image_size
    art = torch.randn(n, cfg.in_channels, s, s, device=_DEVICE, dtype=dt)
    return art, torch.randn_like(art), torch.randn(n, cfg.num_clinical, device=_DEVICE, dtype=dt)


def _count_kernels(row: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """row[key] = the CUDA kernels one call of fn launches (torch profiler, CUDA activity; copies and memsets not
    counted), to check the launch model of benchmarks/gpu/predict.py (count_kernels) on the card; a profiler that
    records no kernel (no CUPTI, no GPU) or fails leaves a reason instead."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: kernels not counted")
        fn()  # lazy initialisation (cuDNN plans, allocator) outside the profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                and not e.name.startswith(("Memcpy", "Memset")))
        if n == 0:
            raise RuntimeError("the profiler recorded no CUDA kernel (no CUPTI on this machine?)")
        row[key] = n
    except StickyCudaError:
        raise
    except Exception as exc:
        _fail(row, key, exc)


def _copy_to(model: Any, dtype: Any) -> Any:
    import copy

    return copy.deepcopy(model).to(device=_DEVICE, dtype=dtype).eval()


def bench_e2e(checkpoint: str | os.PathLike[str] | None = None, batches: Sequence[int] = (1, 8, 64),
              precisions: Sequence[str] = ("fp32", "fp16", "bf16"), compile_models: bool = True,
              timing: Timing | None = None, budget_s: float | None = None,
              on_update: Callable[[list[dict[str, Any]]], None] | None = None,
              model: Any = None) -> list[dict[str, Any]]:
    """PyTorch eager vs TorchCudaBackend (CUDA graph off/on) vs torch.compile, inputs already on the GPU.

    `model` (a CMIR module) or a checkpoint; neither: the default full CMIR (S=128) with random weights. The cheap
    rows come first; the torch.compile column is filled afterwards (batch 1 fp16 first, one static compile per row)
    while `budget_s` seconds have not passed, since compilation dominates a short run. A backend that cannot be
    built leaves its reason in every row it would have filled. on_update(rows) is called after every row (for saving
    partial results)."""
    import torch

    from ..model.checkpoint import load_checkpoint
    from ..model.cmir import build_model
    from .backend import TorchCudaBackend

    timing = timing or Timing(warmup=3, iters=10, reps=3)
    t0 = time.monotonic()
    # Same convolution maths as the eager/compiled baselines: PyTorch's default TF32 setting for cuDNN.
    tf32 = bool(torch.backends.cudnn.allow_tf32)
    torch.manual_seed(0)
    base = model if model is not None else load_checkpoint(checkpoint) if checkpoint else build_model().eval()
    cfg = base.config
    rows: list[dict[str, Any]] = []

    def update() -> None:
        if on_update is not None:
            on_update(rows)

    def new_row(case: tuple[int, str]) -> dict[str, Any]:
        return {"batch": case[0], "precision": case[1], "variant": cfg.variant, "image_size": cfg.image_size}

    for p_index, prec in enumerate(precisions):
        setup: dict[str, Any] = {}
        built: dict[str, Any] = {}
        for key, make in (("eager_ms", lambda p=prec: _copy_to(base, _dtype(p))),
                          ("ours_ms", lambda p=prec: TorchCudaBackend(base, p, cuda_graph=False, allow_tf32=tf32)),
                          ("ours_graph_ms", lambda p=prec: TorchCudaBackend(base, p, cuda_graph=True,
                                                                           allow_tf32=tf32)),
                          # the same graph with every convolution on cuDNN (bias and ReLU as separate kernels) and
                          # PyTorch's SA: what the pointwise / conv2d / spatial-attention ops save, i.e. the launch
                          # model of RESULTS.md checked on the card
                          ("ours_cudnn_graph_ms", lambda p=prec: TorchCudaBackend(base, p, cuda_graph=True,
                                                                                 allow_tf32=tf32,
                                                                                 pointwise_conv=False))):
            try:
                built[key] = make()
            except Exception as exc:
                try:
                    _fail(setup, key, exc)
                except StickyCudaError as sticky:
                    rows += [{**new_row((n, p)), "errors": {"row": f"not run: {sticky}"}}
                             for p in precisions[p_index:] for n in batches]
                    sticky.rows = rows
                    raise
                setup["errors"][key] = f"set-up failed: {setup['errors'][key]}"

        def fill(row: dict[str, Any], case: tuple[int, str], built: dict[str, Any] = built,
                 setup: dict[str, Any] = setup) -> None:
            if setup.get("errors"):
                row["errors"] = dict(setup["errors"])
            art, pv, clin = _e2e_inputs(case[0], case[1], cfg)
            with torch.inference_mode():
                if "eager_ms" in built:
                    _measure(row, "eager_ms", lambda: lambda: built["eager_ms"](art, pv, clin), timing)
                for key in ("ours_ms", "ours_graph_ms", "ours_cudnn_graph_ms"):
                    if key in built:
                        _measure(row, key, lambda k=key: lambda: built[k].forward_device(art, pv, clin,
                                                                                         check_finite=False), timing)
            _ratio(row, "graph_vs_eager", "ours_graph_ms", "eager_ms")
            _ratio(row, "pointwise_speedup", "ours_cudnn_graph_ms", "ours_graph_ms")
            if case[0] == 1:  # kernels per forward (as many in the graph): predict.count_kernels checked
                with torch.inference_mode():
                    if "eager_ms" in built:
                        _count_kernels(row, "eager_kernels", lambda: built["eager_ms"](art, pv, clin))
                    if "ours_ms" in built:
                        _count_kernels(row, "ours_kernels", lambda: built["ours_ms"].forward_device(
                            art, pv, clin, check_finite=False))

        done = list(rows)
        try:
            rows += _run_cases([(n, prec) for n in batches], new_row, fill,
                               lambda part, done=done: on_update(done + part) if on_update is not None else None)
        except StickyCudaError as exc:
            rows += exc.rows
            rows += [{**new_row((n, p)), "errors": {"row": f"not run: {exc}"}}
                     for p in precisions[p_index + 1:] for n in batches]
            exc.rows = rows
            raise
        built.clear()  # drop this precision's backends (and their CUDA graphs) before the next
        _release()
        update()
    if compile_models:
        # Batch 1 fp16 first: the end-to-end comparison; the rest as far as the budget allows.
        order = sorted(rows, key=lambda r: (r["batch"] != 1, r["precision"] != "fp16", r["batch"]))
        for row in order:
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                row.setdefault("errors", {})["compile_ms"] = "skipped: time budget spent"
                continue
            n, prec = row["batch"], row["precision"]

            def make_compiled(n: int = n, prec: str = prec) -> Callable[[], Any]:
                compiled = torch.compile(_copy_to(base, _dtype(prec)), dynamic=False)
                art, pv, clin = _e2e_inputs(n, prec, cfg)
                return lambda: compiled(art, pv, clin)

            with torch.inference_mode():
                try:
                    _measure(row, "compile_ms", make_compiled, timing)
                except StickyCudaError as exc:
                    exc.rows = rows
                    raise
            _release()
            update()
    return rows


# ---------------------------------------------------------------- targets, report
# key: (label, section, row match, metric, op, goal)
TARGETS: dict[str, tuple[str, str, dict[str, Any], str, str, float]] = {
    "involution_pct_copy_bw": ("involution N=64 C=256 28x28 fp32: % of measured copy bandwidth", "involution",
                               {"N": 64, "C": 256, "H": 28, "precision": "fp32"}, "pct_of_copy_bw", ">=", 70.0),
    "involution_speedup_vs_unfold": ("involution N=64 C=256 28x28 fp32: speed-up vs unfold", "involution",
                                     {"N": 64, "C": 256, "H": 28, "precision": "fp32"}, "speedup_vs_unfold", ">=",
                                     10.0),
    "involution_speedup_vs_official": ("involution N=64 C=256 28x28 fp32: speed-up vs the official kernel",
                                       "involution", {"N": 64, "C": 256, "H": 28, "precision": "fp32"},
                                       "speedup_vs_official", ">=", 2.0),
}
for _p in ("fp16", "bf16"):
    _m = {"N": 64, "C": 256, "H": 28, "precision": _p}
    TARGETS[f"involution_pct_copy_bw_{_p}"] = (f"involution N=64 C=256 28x28 {_p}: % of measured copy bandwidth",
                                               "involution", _m, "pct_of_copy_bw", ">=", 70.0)
    TARGETS[f"involution_speedup_vs_unfold_{_p}"] = (f"involution N=64 C=256 28x28 {_p}: speed-up vs unfold",
                                                     "involution", _m, "speedup_vs_unfold", ">=", 10.0)
    TARGETS[f"involution_speedup_vs_official_{_p}"] = (
        f"involution N=64 C=256 28x28 {_p}: speed-up vs the official kernel", "involution", _m,
        "speedup_vs_official", ">=", 2.0)
TARGETS["cmam_speedup_vs_sdpa"] = ("CMAM batch 1 fp32: speed-up vs SDPA module", "cmam",
                                   {"N": 1, "precision": "fp32"}, "speedup_vs_sdpa", ">=", 1.5)
for _n in (1, 8, 64):
    for _p in ("fp32", "fp16", "bf16"):
        if (_n, _p) != (1, "fp32"):
            TARGETS[f"cmam_b{_n}_{_p}_speedup_vs_sdpa"] = (f"CMAM batch {_n} {_p}: speed-up vs SDPA module", "cmam",
                                                          {"N": _n, "precision": _p}, "speedup_vs_sdpa", ">=", 1.5)
TARGETS["e2e_b1_graph_vs_eager"] = ("end to end batch 1 fp32: our latency / PyTorch eager", "e2e",
                                    {"batch": 1, "precision": "fp32"}, "graph_vs_eager", "<=", 0.2)
TARGETS["e2e_b1_fp16_graph_vs_eager"] = ("end to end batch 1 fp16: our latency / PyTorch eager", "e2e",
                                         {"batch": 1, "precision": "fp16"}, "graph_vs_eager", "<=", 0.2)


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    def find(rows: Iterable[dict[str, Any]], kv: dict[str, Any]) -> dict[str, Any]:
        for r in rows:
            if all(r.get(k) == v for k, v in kv.items()):
                return r
        return {}

    out = {}
    for key, (label, section, match, metric, op, goal) in TARGETS.items():
        v = find(results.get(section, []), match).get(metric)
        met = None if v is None else (v >= goal if op == ">=" else v <= goal)
        out[key] = {"label": label, "value": v, "target": f"{op} {goal}", "met": met}
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


INVOLUTION_COLUMNS = ("N", "C", "H", "precision", "ours_ms", "ours_graph_ms", "official_graph_ms", "unfold_ms",
                      "roofline_ms", "ours_gbs", "pct_of_copy_bw", "pct_of_spec_bw", "speedup_vs_official",
                      "speedup_vs_unfold", "fused_ms", "fused_graph_ms", "fused_roofline_ms", "separate_ms",
                      "fused_vs_separate", "official_ms", "pytorch_module_ms", "K", "stride", "shape")
CMAM_COLUMNS = ("N", "C", "tokens", "dim", "heads", "precision", "ours_graph_ms", "sdpa_graph_ms",
                "reference_graph_ms", "roofline_ms", "ours_gbs", "pct_of_spec_bw", "qkv_splits", "speedup_vs_sdpa",
                "ours_ms", "sdpa_ms", "reference_ms", "speedup_vs_sdpa_stream")
E2E_COLUMNS = ("batch", "precision", "eager_ms", "compile_ms", "ours_ms", "ours_graph_ms", "graph_vs_eager",
               "ours_cudnn_graph_ms", "pointwise_speedup", "eager_kernels", "ours_kernels")


def to_markdown(results: dict[str, Any]) -> str:
    dev = results.get("device", {})
    t = results.get("timing", {})
    spec = f"{dev['spec']} spec {_fmt(dev.get('spec_bw_gbs'))} GB/s" if dev.get("spec") else "spec peak unknown"
    parts = [f"# cmir_trt GPU benchmarks — {dev.get('name', '?')}", "",
             f"{results.get('date', '')}; torch {dev.get('torch', '?')}, CUDA {dev.get('cuda', '?')}; "
             f"{SYNTHETIC_NOTE}.", "",
             f"Timing: median over {t.get('iters', '?')} samples of {t.get('reps', '?')} back-to-back calls per "
             "CUDA-event pair (ms per call = sample / reps), after warm-up; `*_graph_ms`: the same with the calls "
             "captured in one CUDA graph and replayed (device time, no Python dispatch). Involution GB/s, % of "
             "bandwidth and the speed-up vs the official kernel use the graph (device) times; speed-ups vs PyTorch "
             "use the Python-launched times of both. `roofline_ms`: max(bytes / spec bandwidth, FLOPs / peak) with "
             "the compulsory bytes of benchmarks/RESULTS.md (involution: the fp32 CUDA-core peak; CMAM: the "
             "tensor-core rate its GEMMs use, fp32 as 3xTF32 at a third of the TF32 peak).", "",
             f"Measured device-to-device copy bandwidth: {_fmt(results.get('copy_bandwidth_gbs'))} GB/s ({spec}).",
             ""]
    if results.get("targets"):
        parts += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
        for tg in results["targets"].values():
            parts.append(f"| {tg['label']} | {_fmt(tg['value'])} | {tg['target']} | {_fmt(tg['met'])} |")
        parts.append("")
    if results.get("involution"):
        parts += ["## Involution", "", markdown_table(results["involution"], INVOLUTION_COLUMNS), ""]
    if results.get("cmam"):
        parts += ["## CMAM (both directions)", "", markdown_table(results["cmam"], CMAM_COLUMNS), ""]
    if results.get("e2e"):
        parts += ["## End to end (inputs on the GPU)", "", markdown_table(results["e2e"], E2E_COLUMNS), ""]
    errors = [(sec, r.get("errors")) for sec in ("involution", "cmam", "e2e") for r in results.get(sec, [])
              if r.get("errors")]
    if errors or results.get("failures"):
        parts += ["## Errors", ""]
        parts += [f"- {sec}: {json.dumps(e)}" for sec, e in errors]
        parts += [f"- {k}: {v}" for k, v in results.get("failures", {}).items()]
    return "\n".join(parts) + "\n"


PARTS = ("involution", "cmam", "e2e")


def run_gpu_benchmarks(out_dir: str | os.PathLike[str] | None = None, parts: Sequence[str] = PARTS,
                       quick: bool = False, checkpoint: str | os.PathLike[str] | None = None,
                       budget_s: float | None = None, name: str = "gpu_bench",
                       official_involution: str | os.PathLike[str] | None = OFFICIAL_INVOLUTION_DEFAULT
                       ) -> dict[str, Any]:
    """Run the chosen parts, each guarded (a failing part is recorded under "failures"), evaluate the targets and
    write <out_dir>/<name>.json and .md (atomically, after every part) when out_dir is given. quick=True: fewer
    samples per figure; every precision (fp32, fp16, bf16) and shape is always measured."""
    from . import require_cuda

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown benchmark part(s) {unknown}; choose from {list(PARTS)}")
    require_cuda(0)
    t0 = time.monotonic()
    timing = Timing(warmup=3, iters=8, reps=5) if quick else Timing()
    dev = device_info()
    spec = card_spec(dev["name"])
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": dev,
                               "note": SYNTHETIC_NOTE, "quick": quick, "failures": {},
                               "timing": {"iters": timing.iters, "reps": timing.reps, "warmup": timing.warmup,
                                          "statistic": "median"}}
    lost: str | None = None
    if "involution" in parts:
        try:
            results["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
        except Exception as exc:  # the percentages of copy bandwidth stay empty; the timings still run
            results["failures"]["copy_bandwidth"] = _reason(exc)
            lost = _device_error()
    for part in parts:
        if lost is not None:
            results["failures"][part] = f"not run: CUDA context lost ({lost})"
            continue
        def save_rows(rows: list[dict[str, Any]], part: str = part) -> None:
            results[part] = rows
            _save(results, out_dir, name, t0)

        try:
            if part == "involution":
                results["involution"] = bench_involution(timing=timing, copy_gbs=results.get("copy_bandwidth_gbs"),
                                                         spec=spec, official=official_involution,
                                                         on_update=save_rows)
            elif part == "cmam":
                results["cmam"] = bench_cmam(timing=Timing(timing.warmup, timing.iters, 2 * timing.reps), spec=spec,
                                             on_update=save_rows)
            else:
                left = None if budget_s is None else max(0.0, budget_s - (time.monotonic() - t0))
                results["e2e"] = bench_e2e(checkpoint, budget_s=left, on_update=save_rows,
                                           timing=Timing(2, max(5, timing.iters // 2), 3))
        except StickyCudaError as exc:  # keep what was measured; nothing may touch the device any more
            results[part] = exc.rows
            results["failures"][part] = str(exc)
            lost = str(exc)
        except Exception as exc:  # record and continue with the next part
            results["failures"][part] = f"{_reason(exc)}\n{traceback.format_exc(limit=3)}"
            lost = _device_error()
        _save(results, out_dir, name, t0)  # after every part: a run killed by a time limit keeps what it measured
    _save(results, out_dir, name, t0)
    return results


def _save(results: dict[str, Any], out_dir: str | os.PathLike[str] | None, name: str, t0: float) -> None:
    results["targets"] = evaluate_targets(results)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        _write_atomic(out / f"{name}.json", json.dumps(results, indent=2, default=str))
        _write_atomic(out / f"{name}.md", to_markdown(results))

"""The "predicted" table of benchmarks/RESULTS.md: for each GPU kernel and shape, the compulsory bytes and FLOPs
(cmir_trt.gpu.bench's cost formulas), the roofline time on H100 SXM and H200, and the time expected for the kernels
as built in cuda/ (launch plans mirrored from cuda/involution.cu, cuda/cmam.cu and cuda/gemm.cuh;
tests/test_gpu_bench_roofline.py reads their constants back from the sources) — written before any lease, so the lease
confirms or refutes a model.
Designs that were not built appear only in columns named "not built" (tensor-core generation in the fused kernel).

    python benchmarks/gpu/predict.py [--markdown]
No GPU needed (the model's shapes come from one CPU forward pass). Every expected time comes from the small
performance model below; its constants are stated here and in RESULTS.md, and each figure is an estimate (about
+-50%), not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from cmir_trt.gpu.bench import (
    CARD_SPECS,
    CardSpec,
    cmam_cost,
    cmam_gemm_plan,
    cmam_out_plan,
    cmam_proj_plan,
    cmam_tflops,
    involution_cost,
    involution_fused_cost,
    involution_unfused_bytes,
    model_shapes,
    roofline_us,
)

# ---- the performance model's constants (H100 SXM and H200 share the GH100 SM side: 132 SMs)
SMS = 132
CLK = 1.75e9  # sustained SM clock under load (boost is 1.98 GHz)
LAT_US = 0.7  # global-load round trip under load from DRAM
L2_LAT_US = 0.3  # global-load round trip of an L2 hit (data written by the previous kernel)
ILP = 4  # independent loads a thread has in flight in a runtime-count loop (nvcc unrolls such loops by 4)
FLOOR_US = 2.5  # one kernel in a graph: launch, ramp-up, tail
MEM_EFF = 0.8  # fraction of spec DRAM bandwidth a well-fed streaming kernel reaches
FMA_EFF = 0.7  # fraction of the CUDA-core FMA peak a register-tiled loop reaches (the fused kernel's generator)
MMA_EFF = 0.5  # fraction of the tensor-core peak reached at these small GEMM sizes (not-built designs only)
MIO_PER_CLK = 1.0  # L1/shared data-pipe wavefronts per SM per clock (128 B): shared loads/stores and global accesses
ISSUE_PER_CLK = 4  # warp-instructions issued per SM and clock (4 schedulers, 1 each)

# ---- facts of the kernels as built (tests/test_gpu_bench_roofline.py checks each against cuda/*.cu)
INV_MAX_THREADS = 256  # kMaxThreads
INV_ROWS = 2  # kRows: output rows (pixels one above the other) per thread
INV_PACK = 2  # fp16/bf16 channels per 32-bit shared-memory word (Stage<__half>::kCh, Stage<__nv_bfloat16>::kCh)
INV_PREFETCH = 16  # kPrefetch: staged words per thread and step held in registers
INV_MAX_CPS = 4  # kMaxCps: words per slice and pipeline step
INV_MIN_BLOCKS = 1  # kMinBlocks of __launch_bounds__
INV_MAX_TILE_W, INV_MAX_TILE_H = 32, 64  # kMaxTileW, kMaxTileH
INV_SMEM_LIMIT = 48 * 1024  # kSmemLimit
CMAM_LAUNCHES = 4  # kernels per launch_cmam, every batch size, no memset
# registers per thread (nvcc 13.0 -arch=sm_90 -Xptxas -v; RESULTS.md, the predicted section)
INV_REGS = {7: 192, 5: 146, 3: 118, 0: 153}  # the most of fp32/fp16/bf16
# the fp16/bf16 tensor-core aggregation (involution_mma_fwd): kMmaRows, kMmaSegs, kMmaTapSlots, kXBatch, kMmaSmemMax
INV_MMA_ROWS = 14
INV_MMA_SEGS = 4
INV_MMA_TAP_SLOTS = 8
INV_MMA_X_BATCH = 64
INV_MMA_SMEM_MAX = 112 * 1024
INV_MMA_MIN_BLOCKS = 2  # __launch_bounds__(kMmaSegs * 32, 2)
INV_MMA_REGS = {7: 171, 5: 147, 3: 128}  # the most of sm_80 / sm_90 (nvcc 13.0, -Xptxas -v)
MMA_SYNC_EFF = 0.7  # fraction of the dense fp16/bf16 tensor peak one SM's mma.sync m16n8k16 stream reaches
CMAM_OCC = {"wmma1": 3, "wmma4": 2}  # GEMM blocks per SM (registers: 64-72 / 123-128; shared memory allows as many)
CMAM_STAGES = 3  # kStages of cuda/gemm.cuh: loads issued two k-steps before their MMAs
CMAM_MMA_CLK = 1.98e9  # the clock of the vendor's tensor-core peaks (scaled to CLK below)
CMAM_MMA_WARP_TILE = 64  # gemm_mma.cuh: 8 warps of 64 x 64 outputs (2 x 4), one block per SM (launch bounds 256, 1)
CMAM_MMA_OCC = 1
GRID_SYNC_US = 2.0  # one cooperative grid barrier of ~130 blocks (each block's arrival atomic, the poll that sees the
                    # last one, the skew of the slowest block: a few L2 round trips; taken high, not measured)
CMAM_LN_EPI_US = 0.2  # the fused LayerNorm epilogue's 4 block barriers and shared-memory passes (gemm_mma.cuh)
CMAM_LN_UNROLL = 16  # kLoadUnroll: LayerNorm row elements loaded at a time per lane (one L2 round trip)
CMAM_SPLIT_UNROLL = 8  # kSplitUnroll: split-K partials the attention kernel loads at a time when s_qkv > 2
CMAM_ATT_REGS = {1: 40, 8: 80}  # attention_kernel<SU> registers (sm_90): 12 / 6 blocks of 4 warps per SM
SMEM_PER_SM = 228 * 1024

CARDS = {spec.label: spec for _, spec in CARD_SPECS if spec.label in ("H100 SXM", "H200 SXM")}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _mio_us(wavefronts: float) -> float:
    return wavefronts / (SMS * CLK * MIO_PER_CLK) * 1e6


def _dram_us(nbytes: float, spec: CardSpec) -> float:
    return nbytes / (MEM_EFF * spec.bw_gbs * 1e9) * 1e6


def involution_plan(n: int, c: int, h: int, w: int, k: int, s: int, gc: int, prec: str = "fp32",
                    sms: int = SMS) -> dict[str, int]:
    """The launch plan of cuda/involution.cu (plan_tile_rows, plan_smem_layout, plan_steps, launch_typed): two output
    rows per thread, tiles of <= 256 threads (28x28 -> 2 tiles of 28x14), bank-padded shared-memory planes of 32-bit
    words (one fp32 channel, or a packed pair of fp16/bf16 channels), words side by side for small maps, a group's
    words split over blocks when there are < 2 blocks per SM, up to 4 words per slice and step (register prefetch
    when a step's rows fit 16 registers per thread, else direct staging into the other buffer)."""
    kch = 1 if prec == "fp32" else INV_PACK
    ho, wo = _cdiv(h, s), _cdiv(w, s)
    ntw = _cdiv(wo, INV_MAX_TILE_W)
    tile_w = _cdiv(wo, ntw)
    in_w = (tile_w - 1) * s + k
    row_groups = _cdiv(ho, INV_ROWS)
    rg_max = max(1, min(INV_MAX_TILE_H // INV_ROWS, INV_MAX_THREADS // tile_w))
    while True:
        rg = _cdiv(row_groups, _cdiv(row_groups, rg_max))
        tile_h = rg * INV_ROWS
        in_h = (tile_h - 1) * s + k
        if rg == 1 or 2 * in_h * in_w * 4 <= INV_SMEM_LIMIT:
            break
        rg_max = rg - 1
    tiles = ntw * _cdiv(ho, tile_h)
    tpx = tile_w * (tile_h // INV_ROWS)  # threads per slice

    def layout(padded: bool) -> tuple[int, int]:
        even_w = tile_w + (tile_w & 1)
        pitch = in_w + ((even_w // 2 - in_w) % 16 if padded else 0)
        rows_ = in_h * pitch
        return pitch, rows_ + ((s * tpx - rows_) % 32 if padded else 0)

    pitch, plane = layout(True)
    if 2 * plane * 4 > INV_SMEM_LIMIT:
        pitch, plane = layout(False)
    pb = plane * 4
    gw = _cdiv(gc, kch)  # shared-memory words per group
    cands = [d for d in range(1, gw + 1) if gw % d == 0 and d * tpx <= INV_MAX_THREADS and 2 * d * pb <= INV_SMEM_LIMIT]
    slices = max(cands) if cands else 1
    base = n * (c // gc) * tiles
    iters = gw // slices
    cchunks = iters
    for d in range(1, iters + 1):
        if iters % d == 0 and base * d >= 2 * sms:
            cchunks = d
            break
    chunk_words = gw // cchunks
    per_slice = chunk_words // slices
    threads = tpx * slices
    rpp = threads // in_w  # staging threads per column (StageWalk.R)

    def fits(cc: int, regs: bool) -> bool:
        if per_slice % cc or 2 * slices * cc * pb > INV_SMEM_LIMIT:
            return False
        return not regs or (rpp >= 1 and slices * cc * in_h <= INV_PREFETCH * rpp)

    cps, prefetch = 1, 0
    for regs in (True, False):
        cand = [cc for cc in range(min(INV_MAX_CPS, per_slice), 0, -1) if fits(cc, regs)]
        if cand:
            cps, prefetch = cand[0], int(regs)
            break
    smem = 2 * slices * cps * pb
    warps = _cdiv(threads, 32)
    regs_ = INV_REGS.get(k, INV_REGS[0])
    regs_alloc = _cdiv(regs_, 8) * 8  # registers are allocated per warp in units of 256 (8 per thread)
    occ = min(65536 // (warps * 32 * regs_alloc), 2048 // threads, 32, SMEM_PER_SM // (smem + 1024))
    return {"blocks": base * cchunks, "threads": threads, "warps": warps, "tile_h": tile_h, "tile_w": tile_w,
            "in_h": in_h, "in_w": in_w, "pitch": pitch, "plane": plane, "slices": slices, "cchunks": cchunks,
            "kch": kch, "chunk_words": chunk_words, "cps": cps, "prefetch": prefetch,
            "steps": chunk_words // (slices * cps), "smem": smem, "occupancy": occ, "staging_threads_per_col": rpp}


def involution_mma_plan(n: int, c: int, h: int, w: int, k: int, s: int, gc: int) -> dict[str, int] | None:
    """The launch plan of cuda/involution.cu's tensor-core kernel (plan_mma, launch_mma), used for fp16/bf16 at
    stride 1, K 3/5/7 and group_channels a multiple of 16 (None elsewhere): tiles of <= 32 columns (8-column segments,
    one warp each) x the tallest near-equal height <= 14 rows whose staging fits 112 KiB (28x28 -> 2 tiles of 14)."""
    if s != 1 or gc % 16 or k not in (3, 5, 7):
        return None
    tiles_w = _cdiv(w, INV_MMA_SEGS * 8)
    segs = _cdiv(_cdiv(w, tiles_w), 8)
    x_pitch, w_words = segs * 8 + 8, (k + 2) // 2 * INV_MMA_TAP_SLOTS + 4
    for cap in range(INV_MMA_ROWS, 0, -1):
        nth = _cdiv(h, cap)
        tile_h = _cdiv(h, nth)
        in_h = tile_h + k - 1
        x_plane = (in_h * x_pitch // 8 | 1) * 8
        w_half = tile_h * segs * 4 | 1
        smem = gc * x_plane * 2 + (w_half + tile_h * segs * 4) * w_words * 4
        if smem <= INV_MMA_SMEM_MAX:
            break
    else:
        return None
    threads = segs * 32
    regs_alloc = _cdiv(INV_MMA_REGS[k], 8) * 8
    occ = min(65536 // (threads * regs_alloc), 2048 // threads, 32, SMEM_PER_SM // (smem + 1024))
    return {"blocks": n * (c // gc) * tiles_w * nth, "threads": threads, "segs": segs, "tile_h": tile_h,
            "tile_w": segs * 8, "in_h": in_h, "x_pitch": x_pitch, "x_plane": x_plane, "w_words": w_words,
            "w_half": w_half, "smem": smem, "occupancy": occ}


def involution_mma_expected(n: int, c: int, h: int, w: int, k: int, gc: int, spec: CardSpec) -> dict[str, Any]:
    """Expected microseconds of the tensor-core kernel (fp16/bf16), per block (L1/shared wavefronts, 1 per SM and
    clock; warp-level counts):
      x   = E/32 x (1.8 + 1.0)    E = gc x in_h x x_pitch staged halves, 32 consecutive per warp load (a 64-byte
                                  segment, ~1.8 lines: row ends and misalignment) and store (1 wavefront)
      w   = ceil(tile px / 64) x (K^2 x lines + 16 J)   one 32-bit load per tap for a pixel pair (64 pixels per warp:
                                  64/tile_w rows x ~1.3 lines), the words of an even and an odd pixel in 2 x J x 2
                                  conflict-free 16-byte stores (4 wavefronts each); J = (K+2)/2 words per tap row
      B   = gc/16 x segs x tile_h x 8   two 16-byte band loads per lane and output row
      A   = gc/16 x segs x in_h x 4     one ldmatrix.x4 per input row
      y   = gc/16 x (segs x tile_h x 2 + 16 x tile_h x 2.3)   fragments to shared (one 32-bit store per half-tile),
                                  each (channel, row) read back and written as one coalesced row (~1.3 lines)
    instructions ~ E/32 x 12 + w-groups x (3 K^2 + 52 J) + MMAs x 3 + gc/16 x segs x (2 in_h + 6 tile_h) + epilogue;
    tensor pipe: MMAs (gc/16 x segs x tile_h x K per block) at MMA_SYNC_EFF of the dense fp16 peak;
    round trips per block: staging rounds, each with one batch of kXBatch input loads per thread and one weight pass
    (8 tile rows) in flight together: max(ceil(E / (threads x kXBatch)), ceil(tile_h / 8)); nothing else of the
    block overlaps them (a resident slot runs its blocks one after another):
    chain = rounds x (trips x LAT + block wavefronts / clk);
    expected = floor + max(mio + LAT, issue + LAT, tensor + LAT, chain, DRAM + LAT)."""
    p = involution_mma_plan(n, c, h, w, k, 1, gc)
    assert p is not None
    cost = involution_cost(n, c, h, w, k, 1, gc, "fp16")
    segs, tile_h, in_h, tw = p["segs"], p["tile_h"], p["in_h"], p["tile_w"]
    mt, j = gc // 16, (k + 2) // 2
    e = gc * in_h * p["x_pitch"]
    w_groups = _cdiv(tile_h * tw // 2, 32)
    lines = max(1.0, 64 / tw) * 1.3
    wf = {"x": e / 32 * 2.8, "w": w_groups * (k * k * lines + 16 * j), "B": mt * segs * tile_h * 8,
          "A": mt * segs * in_h * 4, "y": mt * (segs * tile_h * 2 + 16 * tile_h * 2.3)}
    block_wf = sum(wf.values())
    mmas = mt * segs * tile_h * k
    block_inst = (e / 32 * 12 + w_groups * (3 * k * k + 52 * j) + mmas * 3 + mt * segs * (2 * in_h + 6 * tile_h)
                  + mt * (segs * tile_h * 24 + 16 * tile_h * 8))
    nb = _cdiv(p["blocks"], SMS)
    r = min(p["occupancy"], nb)
    rounds = _cdiv(nb, r)
    trips = max(_cdiv(e, p["threads"] * INV_MMA_X_BATCH), _cdiv(tile_h, 8))  # rounds of input + weight loads
    mio = nb * block_wf / CLK * 1e6
    issue = nb * block_inst / (ISSUE_PER_CLK * CLK) * 1e6
    peak_per_clk = spec.fp16_tflops * 1e12 / (SMS * CMAM_MMA_CLK)  # FLOP per SM and clock
    tensor = nb * mmas * 4096 / (peak_per_clk * MMA_SYNC_EFF) / CLK * 1e6
    chain = rounds * (trips * LAT_US + block_wf / CLK * 1e6)
    dram = _dram_us(cost["bytes"], spec)
    terms = (("L1/shared pipe", mio + LAT_US), ("issue", issue + LAT_US), ("tensor", tensor + LAT_US),
             ("load chain", chain), ("DRAM", dram + LAT_US))
    bound, worst = max(terms, key=lambda kv: kv[1])
    return {"built": FLOOR_US + worst, "mio": mio, "issue": issue, "tensor": tensor, "chain": chain, "dram": dram,
            "bound": bound, "wavefronts": wf, "trips": trips,
            "wavefronts_per_tap": p["blocks"] * block_wf / (cost["outputs"] * k * k / 32)}


def involution_expected(n: int, c: int, h: int, w: int, k: int, s: int, gc: int, prec: str,
                        spec: CardSpec) -> dict[str, Any]:
    """Expected microseconds of the kernel as built and of the official CuPy kernel.

    As built, per block (wavefronts of the L1/shared data pipe, 1 per SM and clock; words = 32-bit shared-memory
    words, kch = 1 fp32 channel or 2 packed fp16/bf16 channels; each thread owns 2 pixels one above the other and
    chunk_words/slices words):
      taps    = warps * loads * words       loads per word = (K+1)*K at stride 1 (the two pixels share K-1 rows),
                                            2*K^2 otherwise; one conflict-free 32-bit shared load each (1 wavefront)
      staging = steps * stage_warps * ceil(slots*in_h / R) * (kch + 1)   global loads + shared store per word
      weights = warps * 2 * K^2             the two pixels' weights, once per block
      stores  = warps * 2 * words * kch     y
    and instructions (4 warp-instructions issued per SM and clock): per word loads * (1 + 2 widenings for fp16/bf16)
    + 2 * K^2 * kch FMAs.
    per SM: nb = ceil(blocks / SMs) blocks, r = min(occupancy, nb) resident, rounds = ceil(nb / r);
    mio = nb * block_wavefronts / clk; issue = nb * block_instructions / (4 clk);
    chain = rounds * (LAT + steps * max(LAT, r * step_wavefronts / clk)) (a step's loads are in flight during the
    previous step's compute, one barrier per step);
    expected = floor + max(mio + LAT, issue + LAT, chain, DRAM(bytes) + LAT).
    fp16/bf16 where the launcher takes the tensor-core kernel (its plan applies and the grid gives >= 2 blocks per
    SM): `involution_mma_expected` ("cuda_core" keeps the CUDA-core kernel's figure for comparison)."""
    cost = involution_cost(n, c, h, w, k, s, gc, prec)
    p = involution_plan(n, c, h, w, k, s, gc, prec)
    kch = p["kch"]
    slots = p["slices"] * p["cps"]
    words = p["chunk_words"] // p["slices"]  # words per thread
    rpp = max(p["staging_threads_per_col"], 1)
    stage_warps = _cdiv(min(rpp * p["in_w"], p["threads"]), 32)
    stage_iters = _cdiv(slots * p["in_h"], rpp)
    loads = (k + 1) * k if s == 1 else 2 * k * k
    taps = p["warps"] * loads * words
    staging = p["steps"] * stage_warps * stage_iters * (kch + 1)
    block_wf = taps + staging + p["warps"] * INV_ROWS * k * k + p["warps"] * INV_ROWS * words * kch
    widen = 0 if prec == "fp32" else 2
    block_inst = p["warps"] * words * (loads * (1 + widen) + INV_ROWS * k * k * kch)
    step_wf = (taps + staging) / p["steps"]
    nb = _cdiv(p["blocks"], SMS)
    r = min(p["occupancy"], nb)
    rounds = _cdiv(nb, r)
    mio = nb * block_wf / CLK * 1e6
    issue = nb * block_inst / (ISSUE_PER_CLK * CLK) * 1e6
    chain = rounds * (LAT_US + p["steps"] * max(LAT_US, r * step_wf / CLK * 1e6))
    dram = _dram_us(cost["bytes"], spec)
    built = FLOOR_US + max(mio + LAT_US, issue + LAT_US, chain, dram + LAT_US)
    # Official: one thread per output, two global loads per tap (weight + input, L1 hits; the shifted input rows
    # straddle 128-byte lines: ~2.5 wavefronts per tap per warp) and ~8 instructions per tap.
    outputs = cost["outputs"]
    l1 = _mio_us(outputs / 32 * k * k * 2.5)
    official_issue = outputs / 32 * 8 * k * k / (SMS * ISSUE_PER_CLK * CLK) * 1e6
    official = FLOOR_US + max(l1, official_issue, dram)
    bound = max((("L1/shared pipe", mio + LAT_US), ("issue", issue + LAT_US), ("load chain", chain),
                 ("DRAM", dram + LAT_US)), key=lambda kv: kv[1])[0]
    out = {"built": built, "official": official, "mio": mio, "issue": issue, "chain": chain, "dram": dram,
           "bound": bound, "wavefronts_per_tap": p["blocks"] * block_wf / (outputs * k * k / 32), "kernel": "cuda-core"}
    mma_plan = involution_mma_plan(n, c, h, w, k, s, gc) if prec != "fp32" else None
    if mma_plan is not None and mma_plan["blocks"] >= 2 * SMS:  # launch_typed's rule: >= 2 blocks per SM
        out["cuda_core"] = out["built"]  # the CUDA-core kernel's figure, for comparison
        mma = involution_mma_expected(n, c, h, w, k, gc, spec)
        out.update({key: mma[key] for key in ("built", "mio", "issue", "chain", "dram", "bound", "wavefronts_per_tap")})
        out["tensor"], out["kernel"] = mma["tensor"], "tensor-core"
    return out


def fused_expected(n: int, c: int, h: int, w: int, k: int, s: int, gc: int, prec: str,
                   spec: CardSpec) -> dict[str, float]:
    """The fused kernel as built (64-pixel blocks, groups split over blocks when < 2 blocks per SM, each split
    recomputing the hidden layer): the larger of the L1/shared wavefronts of all blocks — hidden layer (x reloaded per
    block of 8 hidden units: ~2 wavefronts, 8 warp-uniform w1 loads), the K^2 weights of each group (uniform w2 load +
    shared hidden read per FMA), aggregation (K^2 shared loads per channel) — and one block's instruction stream at 3
    cycles per instruction (few warps per SM cannot hide the L1 latency).
    Not built: tensor-core generation (the two 1x1 convs as MMAs, then the not-built aggregation)."""
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
    agg_smem = _mio_us(outputs * k * (k + 1) / 2 / 32)  # the aggregation's shared loads ((K+1)K per 2 outputs)
    tc = FLOOR_US + LAT_US + max(dram, agg_smem + gen_flops / rate * 1e6)
    return {"built": current, "tensor_core": tc}


def _gemm_us(m: int, n_out: int, k_dim: int, problems: int, prec: str, a_bytes: float, spec: CardSpec,
             a_async: bool = True, a_lat: float = LAT_US, max_splits: int | None = None,
             out_bytes: float | None = None, typed_split: bool = False, gathered: bool = False) -> dict[str, Any]:
    """One batched GEMM launch of cuda/gemm.cuh as cmam.cu plans it (cmam_gemm_plan), tensor cores in every dtype:
    tile 16*MF x 128 x 32, 8 warps, CMAM_STAGES stages (the MMAs of k-step s read one stage while the copies of
    steps s+1 and s+2 fly). Per block and k-step:
      L1/shared wavefronts: 8 warps x (32 / kMK) x (1 + MF) fragment loads x 4 (a 16x16 fp16/bf16 or 16x8 tf32
        fragment is 512 bytes) — kMK = 16 for fp16/bf16, 8 for fp32 (twice the fragment loads) — plus A and W
        staging: W by 16-byte cp.async (128*32*e/128 x 2), A by 16-byte cp.async when it is the NCHW tokens in the op's
        dtype (16*MF*32*e/128 x 2), else scalar loads and stores (16*MF*32/32 x 2; the fp32 attention output)
      tensor-core time: 2*16*MF*128*32 FLOPs at the card's per-SM peak at CLK (fp16; fp32: a third of TF32's)
    c1 = max(wavefronts / clk, MMA time); per SM: nb = ceil(blocks / SMs), r = min(occupancy, nb), rounds =
    ceil(nb / r); a k-step takes max(r * c1, LAT / (stages - 1), a_lat / lead_A): W and async A were issued two
    steps earlier, A through registers one step earlier (lead_A = 1; its latency a_lat: L2 for the attention output);
    time = rounds * (LAT + ksteps * step) + LAT (the prologue's first round trip, the epilogue's loads);
    floor: DRAM time of W + A + the fp32 outputs (partials included), or `out_bytes` (a typed output: the 1x1
    convolutions).
    gathered: A (some of it) is the gathered segment (conv2d, the pointwise shortcut), through registers: with
    16-row tiles two register sets alternate (loads two steps ahead: lead as cp.async), with 64-row tiles one (lead
    one step); the whole launch is modelled at the gathered steps' lead.
    typed_split: a typed output split over K in the kernel (the pointwise op with its workspace): each split stores
    its fp32 partial tile (L2) and counts in; the last block of a tile adds all partials and stores the output: + one
    fence and one atomic round trip, then bm*128/256 elements x splits L2 loads per thread, 8 elements x 2 splits
    in flight: (2 + elements/8 * ceil(splits / 2)) L2 round trips."""
    p = cmam_gemm_plan(m, n_out, k_dim, problems, prec, SMS, max_splits)
    bm, bn, bk = p["bm"], p["bn"], p["bk"]
    mf = bm // 16
    e = 4 if prec == "fp32" else 2
    mk = 8 if prec == "fp32" else 16
    a_wf = bm * bk * e / 128 * 2 if a_async else bm * bk / 32 * 2
    wf = 8 * (bk // mk) * (1 + mf) * 4 + a_wf + bn * bk * e / 128 * 2
    occ = CMAM_OCC["wmma4" if mf == 4 else "wmma1"]
    mma_flops = 2 * bm * bn * bk  # useful FLOPs: cmam_tflops already counts 3xTF32's three passes
    per_sm_rate = cmam_tflops(spec, prec) * 1e12 / SMS * CLK / CMAM_MMA_CLK
    ksteps = p["k_per_split"] // bk
    nb = _cdiv(p["blocks"], SMS)
    r = min(occ, nb)
    rounds = _cdiv(nb, r)
    c1 = max(wf / CLK, mma_flops / per_sm_rate) * 1e6
    outs = 4 * problems * p["splits"] * m * n_out if out_bytes is None else out_bytes
    dram = _dram_us(problems * n_out * k_dim * e + a_bytes + outs, spec)
    a_lead = CMAM_STAGES - 1 if a_async or (gathered and bm == 16) else 1
    step = max(r * c1, LAT_US / (CMAM_STAGES - 1), a_lat / a_lead)
    t = rounds * (LAT_US + ksteps * step) + LAT_US
    if typed_split and p["splits"] > 1:
        t += L2_LAT_US * (2 + bm * bn // 256 // 8 * _cdiv(p["splits"], 2))
    return {"us": FLOOR_US + max(t, dram), "plan": p, "c1": c1, "step": step}


def _mma_gemm_us(plan: dict[str, int], spec: CardSpec, dram_bytes: float) -> dict[str, Any]:
    """One launch of cuda/gemm_mma.cuh (fp16/bf16; `plan` from cmam_proj_plan / cmam_out_plan): tile 128 x 256 x 32,
    8 warps of 64 x 64, CMAM_STAGES stages, one block per SM. Per block and k-step:
      L1/shared wavefronts: 8 warps x 2 k16 halves x (4 A + 4 B ldmatrix.x4) x 4 = 512, plus the staging by 16-byte
        cp.async (global read and shared write, as _gemm_us counts them): (128 + 256) x 32 x 2 B / 128 x 2 = 384
      tensor cores: 2 x 128 x 256 x 32 FLOPs at MMA_SYNC_EFF of the card's per-SM fp16/bf16 peak at CLK.
    step = max(wavefronts / clk, MMA time, LAT / (stages - 1)); per SM ceil(blocks / SMs) rounds of one block:
    time = rounds * (LAT + ksteps * step) + LAT; floor: DRAM time of dram_bytes."""
    bm, bn, bk = plan["bm"], plan["bn"], plan["bk"]
    warps = (bm // CMAM_MMA_WARP_TILE) * (bn // CMAM_MMA_WARP_TILE)
    frag_wf = warps * (bk // 16) * (2 * CMAM_MMA_WARP_TILE // 16) * 4
    wf = frag_wf + (bm + bn) * bk * 2 / 128 * 2
    per_sm_rate = spec.fp16_tflops * 1e12 / SMS * CLK / CMAM_MMA_CLK * MMA_SYNC_EFF
    c1 = max(wf / CLK, 2 * bm * bn * bk / per_sm_rate) * 1e6
    step = max(c1, LAT_US / (CMAM_STAGES - 1))
    rounds = _cdiv(plan["blocks"], SMS * CMAM_MMA_OCC)
    t = rounds * (LAT_US + plan["k_per_split"] // bk * step) + LAT_US
    return {"us": FLOOR_US + max(t, _dram_us(dram_bytes, spec)), "plan": plan, "c1": c1, "step": step,
            "wavefronts": wf}


def _conv_out(sh: dict[str, Any]) -> tuple[int, int]:
    """Output map (Ho, Wo) of a model_shapes()["conv2d"] entry."""
    from cmir_trt.ops.conv2d import conv2d_output_size

    return (conv2d_output_size(sh["H"], sh["kh"], sh["stride"], sh["pad"]),
            conv2d_output_size(sh["W"], sh["kw"], sh["stride"], sh["pad"]))


def conv2d_us(sh: dict[str, Any], prec: str, spec: CardSpec) -> dict[str, Any]:
    """One launch of cuda/conv2d.cu at batch 1 (model_shapes()["conv2d"] entry): _gemm_us with M = Ho*Wo, K =
    Cin*kh*kw, A the gathered segment (bytes: the input once), the typed output, split-K with the backend's
    workspace."""
    e = 4 if prec == "fp32" else 2
    ho, wo = _conv_out(sh)
    k = sh["Cin"] * sh["kh"] * sh["kw"]
    return _gemm_us(ho * wo, sh["Cout"], k, 1, prec, e * sh["Cin"] * sh["H"] * sh["W"], spec, a_async=False,
                    out_bytes=e * sh["Cout"] * ho * wo, typed_split=True, gathered=True)


def spatial_attention_us(sh: dict[str, Any], prec: str, spec: CardSpec, n: int = 1) -> dict[str, float]:
    """The two launches of cuda/spatial_attention.cu (model_shapes()["spatial_attention"] entry, batch n): 256
    threads a block, blocks = n * ceil(C / 32) channel slices (one round: 32 registers), `subs` = 256 / HW threads
    per pixel.
    1. statistics: each thread ceil(32 / subs) channel loads from DRAM, 4 in flight: ceil(loads / 4) round trips.
    2. apply: the slices' partials (L2), 8 in flight per thread: ceil(slices / subs / 8) L2 round trips; the k x k
       conv (2 k^2 shared-memory FMAs per pixel: ~0.3 us); the slice's 32 * HW products, 4 in flight per thread
       (a and p just read: L2): ceil(32 * HW / 256 / 4) L2 round trips.
    Each launch at least its DRAM time (the maps read once, written once)."""
    e = 4 if prec == "fp32" else 2
    c, hw = sh["C"], sh["H"] * sh["W"]
    slices = _cdiv(c, 32)
    subs = max(1, 256 // hw)
    stats = FLOOR_US + max(_cdiv(_cdiv(32, subs), ILP) * LAT_US, _dram_us(n * c * hw * e, spec))
    apply = FLOOR_US + max(_cdiv(_cdiv(slices, subs), 8) * L2_LAT_US + 0.3
                           + _cdiv(_cdiv(32 * hw, 256), ILP) * L2_LAT_US, _dram_us(n * c * hw * e, spec))
    return {"stats": stats, "apply": apply, "us": stats + apply}


def pointwise_us(cin: int, cout: int, hw: int, residual: bool, prec: str, spec: CardSpec,
                 split: bool = True, shortcut: int = 0) -> dict[str, Any]:
    """One launch of cuda/pointwise.cu at batch 1 (M = H*W): _gemm_us with the typed output's bytes; split=True:
    with the split-K workspace the GPU backend passes (the planner's own split count), else max_splits = 1.
    shortcut: a fused projection shortcut's channels (K = cin + shortcut; its columns are the gathered segment)."""
    e = 4 if prec == "fp32" else 2
    k = cin + shortcut
    return _gemm_us(hw, cout, k, 1, prec, e * k * hw, spec, a_async=shortcut == 0, max_splits=None if split else 1,
                    out_bytes=e * (1 + residual) * cout * hw, typed_split=split, gathered=shortcut > 0)


def cmam_expected(n: int, c: int, t: int, d: int, heads: int, prec: str, spec: CardSpec) -> dict[str, Any]:
    """The four launches of cuda/cmam.cu as built (no memset at any batch size):
    1. Q/K/V projections (6 problems, M = N*T, K = C; split-K partials stored) — _gemm_us, A and W from DRAM; or,
       where cmam_proj_plan takes the mma.sync tile (fp16/bf16, large batch), _mma_gemm_us.
    2. attention: blocks = N * 2 directions * ceil(T/4) query groups * heads, 128 threads; each thread sums the
       s_qkv split-K partials of its Q element and of ceil(T*hd/128) K and V elements (L2 hits). s_qkv > 2 (small
       batch): 8 partials loaded at a time, an element's K and V sums together: chain = ceil(s_qkv/8) *
       (1 + ceil(T*hd/128)) L2 round trips; else the plain loop: (s_qkv + 2*ceil(T*hd/128)*s_qkv) / ILP; + the
       QK^T / PV loops (~hd + T shared loads per warp and key tile) — per SM ceil(blocks / SMs / occupancy) rounds,
       occupancy by registers (40 / 80: 12 / 6 blocks).
    3. output projections (2 problems, K = d; A the attention output in the op's dtype, L2) — _gemm_us; or, where
       cmam_out_plan takes the mma.sync tile, _mma_gemm_us with the pre-norm rows in the op's dtype; or, where it
       fuses the LayerNorm (ln_fused), _mma_gemm_us over the reads (W, attention output, residual) + the grid barrier
       (GRID_SYNC_US) + one L2 round trip for the other blocks' row statistics + the epilogue's shared-memory passes
       (CMAM_LN_EPI_US) + the output's DRAM write time (the stores start only after the barrier), and no launch 4.
    4. LayerNorm: blocks = N * ceil(T/32) * 2 * c_slices (c_slices = min(8, C/32, ceil(2 SMs / tiles)) while the
       2N*ceil(T/32) token tiles are < 2 SMs); each of 8 warps owns ceil(T/8) tokens and reads its row (C values, C/32
       per lane) twice (mean, then variance; the second pass from L1), 16 elements per lane at a time: ceil(T/8) *
       ceil(C/32/16) * (one L2 round trip + one L1 hit of ~0.03 µs), then c_per_slice/32 transposed 32x32 chunks (2
       barriers each, ~0.1 µs); floor: DRAM time of pre read (fp32, or the op's dtype after the mma.sync output
       projections) + out written.
    """
    m = n * t
    e = 4 if prec == "fp32" else 2
    cost = cmam_cost(n, c, t, d, heads, prec, SMS)
    s_qkv = int(cost["qkv_splits"])
    pp, op = cmam_proj_plan(m, d, c, 6, prec, SMS, t), cmam_out_plan(m, c, d, prec, SMS, t)
    if pp["mma"]:  # W, the tokens, the fp32 partials
        proj = _mma_gemm_us(pp, spec, 6 * d * c * e + 2 * m * c * e + 4 * 6 * s_qkv * m * d)
    else:
        proj = _gemm_us(m, d, c, 6, prec, 2 * m * c * e, spec, a_async=t % (16 // e) == 0)
    if op["ln_fused"]:  # before the grid barrier: W, the attention output, the residual; after it: the output
        outp = _mma_gemm_us(op, spec, (2 * c * d + 2 * m * d + 2 * m * c) * e)
        outp = {**outp, "us": outp["us"] + GRID_SYNC_US + L2_LAT_US + CMAM_LN_EPI_US + _dram_us(2 * m * c * e, spec)}
    elif op["mma"]:  # W, the attention output, the residual, the pre-norm rows (all in the op's dtype)
        outp = _mma_gemm_us(op, spec, (2 * c * d + 2 * m * d + 2 * m * c + 2 * m * c) * e)
    else:
        outp = _gemm_us(m, c, d, 2, prec, 2 * m * d * e + 2 * m * c * e, spec, a_async=False, a_lat=L2_LAT_US)
    hd = d // heads
    att_blocks = n * 2 * _cdiv(t, 4) * heads
    su = CMAM_SPLIT_UNROLL if s_qkv > 2 else 1
    if su > 1:
        trips = _cdiv(s_qkv, su) * (1 + _cdiv(t * hd, 128))
    else:
        trips = _cdiv(s_qkv, ILP) + _cdiv(2 * _cdiv(t * hd, 128) * s_qkv, ILP)
    att_block_us = trips * L2_LAT_US + _cdiv(t, 32) * (hd + t) * 4 / CLK * 1e6 + 0.2
    att_occ = min(16, 65536 // (128 * CMAM_ATT_REGS[su]))
    att_rounds = _cdiv(_cdiv(att_blocks, SMS), att_occ)
    att = FLOOR_US + max(att_rounds * att_block_us,
                         _dram_us(4 * 6 * s_qkv * m * d + e * 2 * m * d, spec))
    tok_tiles = _cdiv(t, 32)
    ln_tiles = n * tok_tiles * 2
    c_slices = min(8, _cdiv(c, 32), _cdiv(2 * SMS, ln_tiles)) if ln_tiles < 2 * SMS else 1
    c_per = _cdiv(_cdiv(c, c_slices), 32) * 32
    c_slices = _cdiv(c, c_per)
    ln_blocks = ln_tiles * c_slices
    per_lane = _cdiv(c, 32)
    ln_block_us = _cdiv(min(t, 32), 8) * (_cdiv(per_lane, CMAM_LN_UNROLL) * (L2_LAT_US + 0.03)) + c_per / 32 * 0.1
    ln_rounds = _cdiv(_cdiv(ln_blocks, SMS), 8)
    pre_e = e if op["mma"] else 4  # the pre-norm rows: the op's dtype from the mma.sync output projections
    ln = FLOOR_US + max(ln_rounds * ln_block_us, _dram_us(2 * m * c * pre_e + 2 * m * c * e, spec))
    if op["ln_fused"]:
        ln = 0.0
    total = proj["us"] + att + outp["us"] + ln
    return {"built": total, "proj": proj["us"], "attention": att, "out_proj": outp["us"], "layernorm": ln,
            "qkv_splits": s_qkv, "out_splits": int(cost["out_splits"]), "bytes": cost["bytes"],
            "flops": cost["flops"]}


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
                   "fused_gflop": fcost["flops"] / 1e9, "plan": involution_plan(n, c, h, w, k, s, gc, prec),
                   "unfused_bytes_per_output": involution_unfused_bytes(n, c, h, w, k, s, gc, precision=prec)
                   / cost["outputs"], "fused_bytes_per_output": fcost["bytes"] / cost["outputs"]}
            for card, spec in CARDS.items():
                tag = card.split()[0]
                row[f"{tag}_roofline_us"] = roofline_us(cost, spec)
                ex = involution_expected(n, c, h, w, k, s, gc, prec, spec)
                row[f"{tag}_built_us"], row[f"{tag}_official_us"] = ex["built"], ex["official"]
                row[f"{tag}_mio_us"], row[f"{tag}_dram_us"] = ex["mio"], ex["dram"]
                row[f"{tag}_issue_us"], row[f"{tag}_chain_us"] = ex["issue"], ex["chain"]
                row[f"{tag}_bound"] = ex["bound"]
                row["wavefronts_per_tap"] = ex["wavefronts_per_tap"]
                row["inv_kernel"] = ex["kernel"]
                row[f"{tag}_cuda_core_us"] = ex.get("cuda_core", ex["built"])
                # % of the measured copy bandwidth, the copy taken at 90% of spec (bytes read + written)
                row[f"{tag}_pct_copy"] = 100 * cost["bytes"] / (0.9 * spec.bw_gbs * 1e3) / ex["built"]
                row[f"{tag}_fused_roofline_us"] = roofline_us(fcost, spec)
                row[f"{tag}_fused_tc_roofline_us"] = roofline_us(
                    fcost, spec, spec.tf32_tflops if prec == "fp32" else spec.fp16_tflops)
                row.update({f"{tag}_fused_{key}_us": v for key, v in
                            fused_expected(n, c, h, w, k, s, gc, prec, spec).items()})
            out.append(row)
    cm = shapes["cmam"]
    for n in (1, 8, 64):
        for prec in ("fp32", "fp16"):
            cost = cmam_cost(n, cm["C"], cm["tokens"], cm["dim"], cm["heads"], prec, SMS)
            row = {"kernel": "cmam", "shape": f"batch {n}, {cm['tokens']} tok x {cm['C']}, d{cm['dim']} h{cm['heads']}",
                   "batch": n, "precision": prec, "mbytes": cost["bytes"] / 1e6, "gflop": cost["flops"] / 1e9,
                   "partial_mbytes": cost["partial_bytes"] / 1e6}
            for card, spec in CARDS.items():
                tag = card.split()[0]
                # the rate the built kernels use: tensor cores, fp32 as 3xTF32 (a third of the TF32 rate)
                row[f"{tag}_roofline_us"] = roofline_us(cost, spec, cmam_tflops(spec, prec))
                e = cmam_expected(n, cm["C"], cm["tokens"], cm["dim"], cm["heads"], prec, spec)
                row[f"{tag}_built_us"] = e["built"]
                for part in ("proj", "attention", "out_proj", "layernorm"):
                    row[f"{tag}_{part}_us"] = e[part]
                row["qkv_splits"], row["out_splits"] = e["qkv_splits"], e["out_splits"]
            row["sdpa_hand_us"] = SDPA_US[(n, prec)]
            for card, spec in CARDS.items():
                sd = sdpa_module_expected(n, cm["C"], cm["tokens"], cm["dim"], cm["heads"], prec, spec)
                row[f"{card.split()[0]}_sdpa_us"], row["sdpa_kernels"] = sd["us"], sd["kernels"]
            row["sdpa_us"] = row["H100_sdpa_us"]
            out.append(row)
    for pw in shapes["pointwise"]:
        prec = "fp16"
        e = 2
        cin, cout, hw, sc = pw["Cin"], pw["Cout"], pw["H"] * pw["W"], pw["shortcut"]
        res = pw["residual"]
        k = cin + sc
        # compulsory: x (and the shortcut's strided pixels), W, bias, [residual], y once each; FLOPs 2*HW*K*Cout
        cost = {"bytes": e * (k * hw + cout * k + cout + (1 + res) * cout * hw), "flops": 2 * hw * k * cout}
        row = {"kernel": "pointwise", "shape": f"model {pw['name']} x{pw['count']}", "precision": prec,
               "mbytes": cost["bytes"] / 1e6, "gflop": cost["flops"] / 1e9,
               "shape_desc": f"{cin}{f'+{sc}' if sc else ''}->{cout} {pw['H']}x{pw['W']}" + (" +res" if res else "")
               + (" +shortcut" if sc else "")}
        for card, spec in CARDS.items():
            tag = card.split()[0]
            row[f"{tag}_roofline_us"] = roofline_us(cost, spec, spec.fp16_tflops)
            g = pointwise_us(cin, cout, hw, bool(res), prec, spec, shortcut=sc)
            row[f"{tag}_built_us"] = g["us"]
            row[f"{tag}_unsplit_us"] = pointwise_us(cin, cout, hw, bool(res), prec, spec, split=False,
                                                    shortcut=sc)["us"]
            row["blocks"], row["splits"] = g["plan"]["blocks"], g["plan"]["splits"]
        out.append(row)
    for cv in shapes["conv2d"]:
        prec, e = "fp16", 2
        ho, wo = _conv_out(cv)
        k = cv["Cin"] * cv["kh"] * cv["kw"]
        # compulsory: x, W, bias, y once each; FLOPs 2*Ho*Wo*K*Cout
        cost = {"bytes": e * (cv["Cin"] * cv["H"] * cv["W"] + cv["Cout"] * k + cv["Cout"] + cv["Cout"] * ho * wo),
                "flops": 2 * ho * wo * k * cv["Cout"]}
        row = {"kernel": "conv2d", "shape": f"model {cv['name']} x{cv['count']}", "precision": prec,
               "mbytes": cost["bytes"] / 1e6, "gflop": cost["flops"] / 1e9,
               "shape_desc": f"{cv['Cin']}->{cv['Cout']} {cv['kh']}x{cv['kw']} s{cv['stride']} p{cv['pad']} "
                             f"{cv['H']}x{cv['W']}"}
        for card, spec in CARDS.items():
            tag = card.split()[0]
            row[f"{tag}_roofline_us"] = roofline_us(cost, spec, spec.fp16_tflops)
            g = conv2d_us(cv, prec, spec)
            row[f"{tag}_built_us"] = g["us"]
            row["blocks"], row["splits"] = g["plan"]["blocks"], g["plan"]["splits"]
        out.append(row)
    for sa in shapes["spatial_attention"]:
        prec, e = "fp16", 2
        hw = sa["H"] * sa["W"]
        # compulsory: both maps read and written once, the attention map written; FLOPs: statistics, conv, products
        cost = {"bytes": e * (2 * sa["C"] * hw + hw) + 4 * (2 * sa["k"] ** 2 + 1),
                "flops": 2 * sa["C"] * hw + 4 * sa["k"] ** 2 * hw + sa["C"] * hw}
        row = {"kernel": "spatial_attention", "shape": f"model {sa['name']} x{sa['count']}", "precision": prec,
               "mbytes": cost["bytes"] / 1e6, "gflop": cost["flops"] / 1e9,
               "shape_desc": f"{sa['C']} ch {sa['H']}x{sa['W']} k{sa['k']}", "blocks": -(-sa["C"] // 32)}
        for card, spec in CARDS.items():
            tag = card.split()[0]
            row[f"{tag}_roofline_us"] = roofline_us(cost, spec, spec.fp16_tflops)
            g = spatial_attention_us(sa, prec, spec)
            row[f"{tag}_built_us"] = g["us"]
            row[f"{tag}_stats_us"], row[f"{tag}_apply_us"] = g["stats"], g["apply"]
        out.append(row)
    return out


# The PyTorch SDPA module, graph replay, H100: the hand estimate of the second round (kept for comparison; replaced
# as the bar's prediction by sdpa_module_expected, which charges its kernels as this model charges ours).
SDPA_US = {(1, "fp32"): 55.0, (1, "fp16"): 55.0, (8, "fp32"): 55.0, (8, "fp16"): 55.0, (64, "fp32"): 230.0,
           (64, "fp16"): 60.0}
# GEMM efficiency assumed for cuBLAS in the SDPA module (of the tensor peak in fp16; of the CUDA-core peak in fp32,
# where PyTorch leaves TF32 off for matmuls): as high as our own mma.sync model's, so the bar is not lowered.
CUBLAS_EFF = MMA_SYNC_EFF


def module_kernels(module: Any, *inputs: Any) -> list[tuple[str, list[list[int]]]]:
    """The CUDA kernels one forward pass of `module` launches (count_kernels' rule: the outermost KERNEL_OPS op of each
    call, plus aten::scaled_dot_product_attention), each with its input shapes, from a CPU profile of that pass."""
    events = _outermost_events(module, inputs, KERNEL_OPS | {"aten::scaled_dot_product_attention"})
    return [(ev.name, [list(x) for x in ev.input_shapes or []]) for ev in events]


def _numel(shape: list[int]) -> int:
    out = 1
    for v in shape:
        out *= v
    return out


def kernel_us(name: str, shapes: list[list[int]], prec: str, spec: CardSpec) -> float:
    """One PyTorch kernel inside a CUDA graph, charged as this model charges ours: FLOOR_US + max(DRAM time of its
    compulsory bytes (every input read once, the output written once), FLOPs at CUBLAS_EFF of the peak). Output
    size: mm / addmm [M, N]; sdpa the query's; clone, layer_norm, add, add_ the first input's (add_ writes in place)."""
    e = 4 if prec == "fp32" else 2
    shapes = [sh for sh in shapes if sh]
    flops = 0.0
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        out, flops = m * n, 2.0 * m * n * k
    elif name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        out, flops = m * n, 2.0 * m * n * k
    elif name == "aten::scaled_dot_product_attention":
        (b, h, nq, hd), nk = shapes[0], shapes[1][2]
        out, flops = b * h * nq * hd, 4.0 * b * h * nq * nk * hd
    else:
        out = _numel(shapes[0])
    nbytes = e * (sum(_numel(sh) for sh in shapes) + out)
    rate = (spec.fp32_tflops if prec == "fp32" else spec.fp16_tflops) * 1e12 * CLK / CMAM_MMA_CLK * CUBLAS_EFF
    return FLOOR_US + max(_dram_us(nbytes, spec), flops / rate * 1e6)


@functools.cache
def _sdpa_kernels(n: int, c: int, t: int, d: int, heads: int) -> tuple[tuple[str, list[list[int]]], ...]:
    """module_kernels of bench._sdpa_cmam at these sizes (the same in every dtype and on every card: profiled once)."""
    import torch

    from cmir_trt.gpu.bench import _sdpa_cmam
    from cmir_trt.model.cmam import CMAM

    side = int(round(t ** 0.5))
    if side * side != t:
        raise ValueError(f"tokens {t} is not a square map")
    x = torch.zeros(n, c, side, side)
    return tuple(module_kernels(_sdpa_cmam(CMAM(c, heads, d).eval()), x, x))


def sdpa_module_expected(n: int, c: int, t: int, d: int, heads: int, prec: str, spec: CardSpec) -> dict[str, Any]:
    """The bar of the CMAM target, modelled: bench._sdpa_cmam (the reference weights on F.scaled_dot_product_attention,
    replayed as a CUDA graph) at batch n, its kernels found by profiling it once on the CPU (module_kernels: per
    direction, each of the Q/K/V linears on the transposed token view is a copy (batch > 1) + mm + bias add_, then
    SDPA, the output addmm, the residual add and layer_norm — 26 kernels, 20 at batch 1), each charged by kernel_us."""
    kernels = _sdpa_kernels(n, c, t, d, heads)
    us = [kernel_us(name, shapes, prec, spec) for name, shapes in kernels]
    return {"us": float(sum(us)), "kernels": len(kernels), "floor_us": FLOOR_US * len(kernels)}


# aten ops that launch at least one CUDA kernel (views, allocations and CPU-side bookkeeping launch none). Only the
# outermost such op of a call counts: the CPU's aten::mean calls aten::sum and aten::div_, one reduction on the GPU.
KERNEL_OPS = {"aten::convolution", "aten::batch_norm", "aten::relu", "aten::relu_", "aten::add", "aten::add_",
              "aten::mul", "aten::sum", "aten::im2col", "aten::avg_pool2d", "aten::max_pool2d", "aten::addmm",
              "aten::mm", "aten::bmm", "aten::_softmax", "aten::layer_norm", "aten::cat", "aten::sigmoid",
              "aten::mean", "aten::amax", "aten::upsample_bilinear2d", "aten::clone", "aten::div_", "aten::div",
              "aten::sub"}
# (relu appears once as aten::relu; its CPU implementation's inner clamp_min is not a second kernel)
# PyTorch's cuDNN convolution adds a defined bias in a second kernel (aten/src/ATen/native/Convolution.cpp,
# ConvBackend::Cudnn: cudnn_convolution, then output.add_(bias)), so a biased convolution is two kernels.
CONV_BIAS_ADD = "cudnn bias add"
# cmir_trt's ops (torch.ops.cmir_trt.*, or the profiler ranges of the reference ops standing in for them on the CPU):
# kernels per call; the aten calls nested under them are the reference's own arithmetic, not launches.
CUSTOM_OP_KERNELS = {"cmir_trt::pointwise_conv": 1, "cmir_trt::conv2d": 1, "cmir_trt::involution": 1,
                     "cmir_trt::involution_fused": 1, "cmir_trt::cmam": CMAM_LAUNCHES,
                     "cmir_trt::spatial_attention": 2}
HOST_US = {"aten::convolution": 15.0}  # eager host dispatch per op (cuDNN convolutions cost more; the bias add
HOST_US_OTHER = 6.0                    # is dispatched inside aten::convolution, so its host time is in those 15 us)
GRAPH_KERNEL_US = 3.5  # one small kernel inside a CUDA graph at batch 1 (launch gap + a sub-wave of work)


def _outermost_events(module: Any, inputs: tuple[Any, ...], ops: set[str]) -> list[Any]:
    """The profiler events of one no-grad forward pass of `module` (CPU profile, shapes recorded) whose name is in
    `ops` and that no other such event encloses."""
    import torch

    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 record_shapes=True) as prof:
        module(*inputs)

    def nested(ev: Any) -> bool:
        parent = ev.cpu_parent
        while parent is not None:
            if parent.name in ops:
                return True
            parent = parent.cpu_parent
        return False

    return [ev for ev in prof.events() if ev.name in ops and not nested(ev)]


def count_kernels(module: Any, *inputs: Any) -> dict[str, int]:
    """CUDA kernels one forward pass of `module` launches, by kind, from a CPU profile of that pass: the outermost
    KERNEL_OPS op of each call (one kernel), CONV_BIAS_ADD once per convolution with a bias, CUSTOM_OP_KERNELS per
    cmir_trt op (nothing nested under one counts)."""
    out: dict[str, int] = {}
    for ev in _outermost_events(module, inputs, KERNEL_OPS | set(CUSTOM_OP_KERNELS)):
        out[ev.name] = out.get(ev.name, 0) + CUSTOM_OP_KERNELS.get(ev.name, 1)
        shapes = ev.input_shapes or []
        if ev.name == "aten::convolution" and len(shapes) > 2 and len(shapes[2]) > 0:  # bias: shape [] when None
            out[CONV_BIAS_ADD] = out.get(CONV_BIAS_ADD, 0) + 1
    return out


def e2e_estimate(precision: str = "fp16", config: Any = None) -> dict[str, Any]:
    """Batch-1 end to end: weights + activation bytes, FLOPs (convolutions and matmuls counted by torch's
    FlopCounterMode, involution aggregation by formula), the kernels PyTorch eager launches (``count_kernels`` of
    the model), the kernels our backend launches before the pointwise op (``prepare_model(...,
    pointwise_conv=False)``) and now (``prepare_model``), both counted on the rewritten model itself with the
    reference ops standing in for the CUDA ones, and the expected times."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cmir_trt.gpu.backend import prepare_model
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
    eager = count_kernels(model, *args)
    # The same launches in fp32 on the CPU as in `precision` on the GPU (the rewrite does not depend on the dtype).
    before = count_kernels(prepare_model(model, "fp32", "cpu", impl="reference", pointwise_conv=False), *args)
    after = count_kernels(prepare_model(model, "fp32", "cpu", impl="reference"), *args)
    n_eager, n_before, n_ours = (sum(c.values()) for c in (eager, before, after))
    eager_us = sum(HOST_US.get(k, HOST_US_OTHER) * v for k, v in eager.items() if k != CONV_BIAS_ADD)
    own = own_kernel_us(precision, shapes)
    params = sum(p.numel() for p in model.parameters())
    nbytes = params * e + 2 * act[0] * e
    return {"params": params, "bytes": float(nbytes), "flops": float(fc.get_total_flops() + inv_flops),
            "eager_ops": n_eager, "ours_kernels_before": n_before, "ours_kernels": n_ours,
            "eager_by_kind": eager, "ours_before_by_kind": before, "ours_by_kind": after, "eager_us": eager_us,
            "ours_graph_us_before": graph_us(before, own), "ours_graph_us": graph_us(after, own),
            "own_kernel_us": own}


def own_kernel_us(precision: str, shapes: dict[str, Any], card: str = "H100 SXM") -> dict[str, float]:
    """Expected device time (us, batch 1, on `card`) of all launches of each of cmir_trt's ops in one forward pass,
    from the kernel models above at the model's own shapes (`model_shapes`; each launch at least GRAPH_KERNEL_US):
    the pointwise convolutions (latency-bound at the last stages, where few blocks run long K loops), the involution
    aggregations, CMAM (four launches)."""
    spec = CARDS[card]
    pw = sum(sh["count"] * max(GRAPH_KERNEL_US, pointwise_us(sh["Cin"], sh["Cout"], sh["H"] * sh["W"],
                                                             bool(sh["residual"]), precision, spec,
                                                             shortcut=sh["shortcut"])["us"])
             for sh in shapes["pointwise"])
    conv = sum(sh["count"] * max(GRAPH_KERNEL_US, conv2d_us(sh, precision, spec)["us"]) for sh in shapes["conv2d"])
    inv = sum(sh["count"] * max(GRAPH_KERNEL_US, involution_expected(
        1, sh["C"], sh["H"], sh["W"], sh["K"], sh["stride"], sh["group_channels"], precision, spec)["built"])
        for sh in shapes["involution"])
    cm = shapes["cmam"]
    parts = cmam_expected(1, cm["C"], cm["tokens"], cm["dim"], cm["heads"], precision, spec)
    cmam = sum(max(GRAPH_KERNEL_US, parts[k]) for k in ("proj", "attention", "out_proj", "layernorm"))
    sa = sum(sh["count"] * sum(max(GRAPH_KERNEL_US, v) for k, v in spatial_attention_us(sh, precision, spec).items()
                               if k != "us") for sh in shapes["spatial_attention"])
    return {"cmir_trt::pointwise_conv": pw, "cmir_trt::conv2d": conv, "cmir_trt::involution": inv,
            "cmir_trt::cmam": cmam, "cmir_trt::spatial_attention": sa}


def graph_us(kinds: dict[str, int], own: dict[str, float]) -> float:
    """One CUDA-graph replay: cmir_trt's ops at their expected times (own_kernel_us, for every launch of the op in
    the pass), every other kernel at GRAPH_KERNEL_US."""
    return sum(own[k] if k in own else n * GRAPH_KERNEL_US for k, n in kinds.items())


def _f(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| involution (aggregation) | prec | MB | GFLOP | roofline H100 / H200 µs | DRAM at 80% H100 / H200 µs "
             "| L1/shared pipe / issue / load chain µs | **expected as built** H100 / H200 µs (bound) "
             "| % of copy H100 / H200 | official CuPy kernel (expected) µs | built vs official "
             "| kernel (CUDA-core kernel H100 / H200 µs) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table:
        if r["kernel"] != "involution":
            continue
        which = (f"tensor cores ({_f(r['H100_cuda_core_us'])} / {_f(r['H200_cuda_core_us'])})"
                 if r["inv_kernel"] == "tensor-core" else "CUDA cores")
        lines.append(f"| {r['shape']} | {r['precision']} | {_f(r['mbytes'])} | {r['gflop']:.3g} | "
                     f"{_f(r['H100_roofline_us'])} / {_f(r['H200_roofline_us'])} | "
                     f"{_f(r['H100_dram_us'])} / {_f(r['H200_dram_us'])} | {_f(r['H100_mio_us'])} / "
                     f"{_f(r['H100_issue_us'])} / {_f(r['H100_chain_us'])} | "
                     f"**{_f(r['H100_built_us'])} / {_f(r['H200_built_us'])}** ({r['H100_bound']} / "
                     f"{r['H200_bound']}) | "
                     f"{r['H100_pct_copy']:.0f}% / {r['H200_pct_copy']:.0f}% | {_f(r['H100_official_us'])} | "
                     f"{r['H100_official_us'] / r['H100_built_us']:.2f}× | {which} |")
    lines += ["", "| CMAM (both directions) | prec | split-K Q/K/V / out | MB (partials) | GFLOP "
              "| roofline H100 / H200 µs | projections + attention + out proj + LayerNorm H100 µs "
              "| **expected as built** H100 / H200 µs | SDPA module modelled H100 / H200 µs (kernels) "
              "| built vs SDPA H100 / H200 | hand estimate µs (built vs it) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r["kernel"] == "cmam":
            lines.append(f"| {r['shape']} | {r['precision']} | {r['qkv_splits']} / {r['out_splits']} | "
                         f"{_f(r['mbytes'])} ({_f(r['partial_mbytes'])}) | {r['gflop']:.3g} | "
                         f"{_f(r['H100_roofline_us'])} / {_f(r['H200_roofline_us'])} | "
                         f"{_f(r['H100_proj_us'])} + {_f(r['H100_attention_us'])} + {_f(r['H100_out_proj_us'])} + "
                         f"{_f(r['H100_layernorm_us'])} | **{_f(r['H100_built_us'])} / {_f(r['H200_built_us'])}** | "
                         f"{_f(r['H100_sdpa_us'])} / {_f(r['H200_sdpa_us'])} ({r['sdpa_kernels']}) | "
                         f"{r['H100_sdpa_us'] / r['H100_built_us']:.2f}× / "
                         f"{r['H200_sdpa_us'] / r['H200_built_us']:.2f}× | "
                         f"{_f(r['sdpa_hand_us'])} ({r['sdpa_hand_us'] / r['H100_built_us']:.2f}×) |")
    pw = [r for r in table if r["kernel"] == "pointwise"]
    if pw:
        lines += ["", "| pointwise (1×1) convolution, batch 1 | prec | Cin→Cout, map | MB | GFLOP | blocks (K splits) "
                  "| roofline H100 / H200 µs | without split-K H100 µs | **expected as built** H100 / H200 µs |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in pw:
            lines.append(f"| {r['shape']} | {r['precision']} | {r['shape_desc']} | {_f(r['mbytes'])} | "
                         f"{r['gflop']:.3g} | {r['blocks']} ({r['splits']}) | {_f(r['H100_roofline_us'])} / "
                         f"{_f(r['H200_roofline_us'])} | {_f(r['H100_unsplit_us'])} | "
                         f"**{_f(r['H100_built_us'])} / {_f(r['H200_built_us'])}** |")
    cv = [r for r in table if r["kernel"] == "conv2d"]
    if cv:
        lines += ["", "| conv2d (implicit GEMM), batch 1 | prec | Cin→Cout, kernel, input map | MB | GFLOP "
                  "| blocks (K splits) | roofline H100 / H200 µs | **expected as built** H100 / H200 µs |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in cv:
            lines.append(f"| {r['shape']} | {r['precision']} | {r['shape_desc']} | {_f(r['mbytes'])} | "
                         f"{r['gflop']:.3g} | {r['blocks']} ({r['splits']}) | {_f(r['H100_roofline_us'])} / "
                         f"{_f(r['H200_roofline_us'])} | **{_f(r['H100_built_us'])} / {_f(r['H200_built_us'])}** |")
    sa = [r for r in table if r["kernel"] == "spatial_attention"]
    if sa:
        lines += ["", "| spatial attention (two launches), batch 1 | prec | [a; p] channels, map, kernel | MB "
                  "| blocks per launch | roofline H100 / H200 µs | statistics + apply H100 µs "
                  "| **expected as built** H100 / H200 µs |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in sa:
            lines.append(f"| {r['shape']} | {r['precision']} | {r['shape_desc']} | {_f(r['mbytes'])} | "
                         f"{r['blocks']} | {_f(r['H100_roofline_us'])} / {_f(r['H200_roofline_us'])} | "
                         f"{_f(r['H100_stats_us'])} + {_f(r['H100_apply_us'])} | "
                         f"**{_f(r['H100_built_us'])} / {_f(r['H200_built_us'])}** |")
    lines += ["", "| fused involution | prec | MB | GFLOP | bytes/output fused vs unfused pair | roofline H100 / H200 "
              "µs | expected as built H100 / H200 µs | not built: tensor-core generation H100 / H200 µs |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r["kernel"] == "involution":
            lines.append(f"| {r['shape']} | {r['precision']} | {_f(r['fused_mbytes'])} | {r['fused_gflop']:.3g} | "
                         f"{r['fused_bytes_per_output']:.2f} vs {r['unfused_bytes_per_output']:.2f} | "
                         f"{_f(r['H100_fused_roofline_us'])} / {_f(r['H200_fused_roofline_us'])} | "
                         f"{_f(r['H100_fused_built_us'])} / {_f(r['H200_fused_built_us'])} | "
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
              f"H200. Kernels (cuDNN's bias adds included): PyTorch eager {e2e['eager_ops']}, ours "
              f"{e2e['ours_kernels']} ({e2e['ours_kernels_before']} with every convolution on cuDNN). Expected: "
              f"eager {e2e['eager_us'] / 1e3:.2f} ms (host-bound), ours with a CUDA graph "
              f"{e2e['ours_graph_us'] / 1e3:.2f} ms, of which cmir_trt's kernels (H100) "
              + ", ".join(f"{k.split('::')[1]} {v:.0f} µs" for k, v in e2e["own_kernel_us"].items())
              + f" and {GRAPH_KERNEL_US} µs per other kernel: ratio {e2e['ours_graph_us'] / e2e['eager_us']:.3f} "
              f"({e2e['ours_graph_us_before'] / 1e3:.2f} ms and "
              f"{e2e['ours_graph_us_before'] / e2e['eager_us']:.2f} with every convolution on cuDNN).")
    else:
        print(json.dumps({"kernels": table, "e2e_fp16_batch1": e2e}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

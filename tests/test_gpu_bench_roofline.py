"""The byte and FLOP formulas behind the roofline columns and the predicted table, checked against independent counts:
the sizes of the tensors the reference model really produces, torch's FlopCounterMode on the reference modules, and
the unfold patch count; plus the predicted table's internal consistency and the sanitizer workload's checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cmir_trt import ops
from cmir_trt.gpu import bench
from cmir_trt.model.cmam import CMAM
from cmir_trt.model.involution import Involution2d, involution_aggregate
from cmir_trt.ops import reference as R

ROOT = Path(__file__).resolve().parents[1]
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _load(name: str, rel: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("n", "c", "h", "w", "k", "s", "gc", "prec"),
                         [(2, 48, 13, 11, 7, 2, 16, "fp32"), (1, 32, 9, 9, 3, 1, 8, "fp16"),
                          (3, 16, 7, 10, 5, 1, 16, "bf16")])
def test_involution_bytes_and_flops_match_the_reference_tensors(n: int, c: int, h: int, w: int, k: int, s: int,
                                                                gc: int, prec: str) -> None:
    torch.manual_seed(0)
    m = Involution2d(c, k, s, gc).eval().to(DT[prec])
    x = torch.randn(n, c, h, w).to(DT[prec])
    with torch.no_grad():
        pooled = m.pool(x)
        t = F.relu(m.bn(m.reduce(pooled)))
        kern = m.generate_kernel(x)
        y = involution_aggregate(x, kern, k, s)
        with FlopCounterMode(display=False) as fc:
            m.generate_kernel(x)
    patches = F.unfold(x.float(), k, padding=(k - 1) // 2, stride=s)  # one multiply-add per element
    assert patches.shape[-1] == y.shape[-2] * y.shape[-1]
    cost = bench.involution_cost(n, c, h, w, k, s, gc, prec)
    assert cost["bytes"] == x.nbytes + kern.nbytes + y.nbytes
    assert cost["flops"] == 2 * patches.numel()
    assert cost["outputs"] == y.numel()

    fused = bench.involution_fused_cost(n, c, h, w, k, s, gc, precision=prec)
    gen = ops.fold_generator(Involution2d(c, k, s, gc).eval())
    assert fused["weight_bytes"] == 4 * sum(gen[key].numel() for key in ("w1", "b1", "w2", "b2"))
    assert fused["bytes"] == x.nbytes + y.nbytes + fused["weight_bytes"]
    assert fused["flops"] == fc.get_total_flops() + 2 * patches.numel()

    e = x.element_size()
    pooled_bytes = 0 if s == 1 else 2 * pooled.nbytes
    weights = (m.reduce.weight.numel() + t.shape[1] + m.span.weight.numel() + m.span.bias.numel()) * e
    expected = (x.nbytes + pooled_bytes + 2 * t.nbytes + kern.nbytes + weights) + (x.nbytes + kern.nbytes + y.nbytes)
    assert bench.involution_unfused_bytes(n, c, h, w, k, s, gc, precision=prec) == expected


@pytest.mark.parametrize(("n", "c", "hh", "ww", "d", "heads", "prec"),
                         [(2, 64, 4, 4, 32, 4, "fp32"), (1, 48, 3, 5, 24, 3, "fp16")])
def test_cmam_bytes_and_flops_match_the_reference_module(n: int, c: int, hh: int, ww: int, d: int, heads: int,
                                                         prec: str) -> None:
    torch.manual_seed(0)
    m = CMAM(c, heads, d).eval()
    art, pv = torch.randn(n, c, hh, ww), torch.randn(n, c, hh, ww)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(art, pv)
    cost = bench.cmam_cost(n, c, hh * ww, d, heads, prec)
    assert cost["flops"] == fc.get_total_flops()
    wa, wp = ops.pack_cmam_module(m)
    e = DT[prec].itemsize
    assert cost["weight_bytes"] == (wa.numel() + wp.numel()) * e
    assert cost["io_bytes"] == 4 * art.numel() * e
    tok = n * hh * ww  # fp32 Q/K/V sums, the attention output in the op's dtype, fp32 pre-norm sums (WMMA here)
    assert cost["workspace_bytes"] == 4 * 2 * 6 * tok * d + e * 2 * 2 * tok * d + 4 * 2 * 2 * tok * c


def test_roofline_picks_the_binding_limit() -> None:
    spec = bench.card_spec("NVIDIA H100 80GB HBM3")
    assert bench.roofline_us({"bytes": 3.35e12, "flops": 1.0}, spec) == pytest.approx(1e6)  # 1 s of bandwidth
    assert bench.roofline_us({"bytes": 1.0, "flops": 66.9e12}, spec) == pytest.approx(1e6)  # 1 s of fp32 FMA
    assert bench.roofline_us({"bytes": 1.0, "flops": 989.4e12}, spec, spec.fp16_tflops) == pytest.approx(1e6)


def test_model_shapes_come_from_the_model() -> None:
    from cmir_trt.model.cmir import CMIRConfig

    cfg = CMIRConfig(width=0.25, image_size=64, cmam_dim=32, cmam_heads=4)
    shapes = bench.model_shapes(cfg)
    inv = shapes["involution"]
    assert sum(s["count"] for s in inv) == 18  # stem + 8 bottlenecks (depth 26), per phase
    assert inv[0]["K"] == 3 and inv[0]["H"] == 32 and all(s["K"] == 7 for s in inv[1:])
    assert {s["stride"] for s in inv} == {1, 2}
    assert shapes["cmam"] == {"C": 512, "tokens": 4, "dim": 32, "heads": 4}
    # per phase, of the 8 bottlenecks' conv3: the first of stages 1-3 take their strided downsample as a projection
    # shortcut (mid 32, 64, 128: multiples of 32), the other 5 the identity (or stage 0's stride-1 downsample, mid 16)
    # as their residual; the rest are plain 1x1 convolutions
    pw = shapes["pointwise"]
    assert sum(s["count"] for s in pw if s["residual"]) == 10
    assert sum(s["count"] for s in pw if s["shortcut"]) == 6 and all(s["Cin"] % 32 == 0 for s in pw if s["shortcut"])
    # conv2d launches: the 2 stem 3x3 convolutions and the 3 strided involutions' pool-folded generation convs
    conv = shapes["conv2d"]
    assert sum(s["count"] for s in conv) == 10
    assert sorted((s["kh"], s["stride"], s["pad"]) for s in conv) == [(2, 2, 0)] * 3 + [(3, 1, 1), (3, 2, 1)]


@pytest.fixture(scope="module")
def predicted() -> Any:
    return _load("cmir_predict", "benchmarks/gpu/predict.py")


def test_predicted_table_is_consistent(predicted: Any) -> None:
    from cmir_trt.model.cmir import CMIRConfig

    small = CMIRConfig(width=0.25, image_size=64, cmam_dim=64, cmam_heads=4)  # the target rows do not depend on it
    table = predicted.rows(small)
    assert {r["kernel"] for r in table} == {"involution", "cmam", "pointwise", "conv2d", "spatial_attention"}
    # the pointwise rows are exactly the convolutions the GPU backend runs through the op (count by count)
    from cmir_trt.gpu.backend import prepare_model
    from cmir_trt.model.cmir import build_model

    model = build_model(small).eval()
    args = (torch.zeros(1, small.in_channels, 64, 64), torch.zeros(1, small.in_channels, 64, 64),
            torch.zeros(1, small.num_clinical))
    launched = predicted.count_kernels(prepare_model(model, "fp32", "cpu", impl="reference"), *args)
    shapes = bench.model_shapes(small)
    assert sum(sh["count"] for sh in shapes["pointwise"]) == launched["cmir_trt::pointwise_conv"]
    assert sum(sh["count"] for sh in shapes["conv2d"]) == launched["cmir_trt::conv2d"]
    for r in table:
        for card in ("H100", "H200"):
            keys = [k for k in r if k.startswith(card) and k.endswith("_us") and "roofline" not in k
                    and not k.endswith(("_mio_us", "_dram_us", "_issue_us", "_chain_us"))]  # components
            assert keys
            for key in keys:  # nothing is expected to beat its roofline (at the rate the kernel uses)
                if "_fused_" in key:
                    bound = r[f"{card}_fused_{'tc_' if 'tensor_core' in key else ''}roofline_us"]
                elif r["kernel"] == "cmam" and key != f"{card}_built_us":
                    continue  # the per-launch parts
                else:
                    bound = r[f"{card}_roofline_us"]
                assert r[key] >= bound * 0.999, (r["shape"], key)
            if r["kernel"] == "involution":
                assert r[f"{card}_built_us"] >= max(r[f"{card}_dram_us"], r[f"{card}_mio_us"],
                                                     r[f"{card}_issue_us"], r[f"{card}_chain_us"])
                assert r[f"{card}_bound"] in ("DRAM", "L1/shared pipe", "issue", "load chain")
            elif r["kernel"] == "cmam":
                parts = sum(r[f"{card}_{p}_us"] for p in ("proj", "attention", "out_proj", "layernorm"))
                assert r[f"{card}_built_us"] == pytest.approx(parts)
            elif r["kernel"] == "spatial_attention":  # two launches, each with its floor
                assert r[f"{card}_built_us"] == pytest.approx(r[f"{card}_stats_us"] + r[f"{card}_apply_us"])
                assert min(r[f"{card}_stats_us"], r[f"{card}_apply_us"]) >= predicted.FLOOR_US
            else:  # pointwise / conv2d: one launch, never below the graph-kernel floor of the model
                assert r["blocks"] >= 1 and r[f"{card}_built_us"] >= predicted.FLOOR_US
    target = [r for r in table if r["kernel"] == "involution" and r["shape"].startswith("target")]
    assert [r["precision"] for r in target] == ["fp32", "fp16", "bf16"]
    fp32 = target[0]
    weights = 4 * (64 * 256 + 64 + 16 * 49 * 64 + 16 * 49) / (64 * 256 * 784)  # fp32 generator weights per output
    assert fp32["fused_bytes_per_output"] == pytest.approx(2 * 4 + weights)  # x read + y written
    assert fp32["unfused_bytes_per_output"] == pytest.approx(9.625 * 4 + weights)  # see RESULTS.md
    # two pixels per thread share K-1 of their K rows: (K+1)K shared loads per 2 K^2 taps = 8/14 per tap, x 8/7 for
    # 7 warps of 196 threads, plus staging, weights and y: ~0.83 per warp-tap in fp32; packed fp16/bf16 channel pairs
    # halve the shared loads again (~0.48)
    assert 8 / 14 * 8 / 7 < fp32["wavefronts_per_tap"] < 0.9
    # fp16/bf16 at the target shape: the tensor-core kernel (one ldmatrix per input row for up to K MMAs, one 16-byte
    # band load pair per output row; staging dominates): fewer wavefronts per tap than the packed-pair CUDA-core
    # kernel's ~0.48, and faster than it on the H200 (where the CUDA-core kernel is issue-bound), equal on the H100
    # (both DRAM-bound)
    assert [r["inv_kernel"] for r in target] == ["cuda-core", "tensor-core", "tensor-core"]
    assert 0.2 < target[1]["wavefronts_per_tap"] < 0.48
    assert target[1]["wavefronts_per_tap"] == target[2]["wavefronts_per_tap"]
    assert target[1]["H200_built_us"] < 0.9 * target[1]["H200_cuda_core_us"]
    assert target[1]["H100_built_us"] <= target[1]["H100_cuda_core_us"]
    # batch 1 (the model's own shapes): too few blocks for the tensor-core kernel, the CUDA-core kernel runs
    assert all(r["inv_kernel"] == "cuda-core" for r in table if r["kernel"] == "involution"
               and r["shape"].startswith("model"))
    e2e = predicted.e2e_estimate("fp16", small)
    assert 0 < e2e["ours_kernels"] < e2e["eager_ops"] and e2e["ours_graph_us"] < e2e["eager_us"]


# ---- the model's launch plans against the kernels' sources: a kernel change that moves a constant fails here
INV_CU = (ROOT / "cuda" / "involution.cu").read_text(encoding="utf-8")
CMAM_CU = (ROOT / "cuda" / "cmam.cu").read_text(encoding="utf-8")
GEMM_CUH = (ROOT / "cuda" / "gemm.cuh").read_text(encoding="utf-8")  # the GEMMs cmam.cu launches
GEMM_MMA_CUH = (ROOT / "cuda" / "gemm_mma.cuh").read_text(encoding="utf-8")


def _const(src: str, name: str) -> int:
    import re

    m = re.search(rf"constexpr\s+(?:int|size_t)\s+(?:\w+\s*=\s*[0-9* ]+,\s*)*{name}\s*=\s*([0-9* ]+)[,;]", src)
    assert m is not None, name
    value = 1
    for factor in m.group(1).split("*"):
        value *= int(factor)
    return value


def _function(src: str, signature: str) -> str:
    start = src.index(signature)
    end = src.find("\n}\n", start)
    return src[start:end]


def test_sdpa_module_model_counts_its_kernels(predicted: Any) -> None:
    """The CMAM target's bar (bench._sdpa_cmam, PyTorch on F.scaled_dot_product_attention) as the model charges it:
    its kernels come from a profile of the module itself — per direction the Q/K/V linears on the transposed token
    view are a copy (batch > 1: the view cannot be flattened), an mm and a bias add_ each, then SDPA, the output
    addmm, the residual add and layer_norm — and each kernel costs the floor plus the larger of its DRAM and GEMM
    times, recomputed here by hand for one mm and one add."""
    from cmir_trt.model.cmam import CMAM

    module = bench._sdpa_cmam(CMAM(64, 4, 32).eval())
    for n, want in ((1, 20), (2, 26)):
        x = torch.zeros(n, 64, 4, 4)
        names = [name for name, _ in predicted.module_kernels(module, x, x)]
        assert len(names) == want, names
        assert names.count("aten::clone") == (0 if n == 1 else 6) and names.count("aten::mm") == 6
        assert names.count("aten::scaled_dot_product_attention") == 2 and names.count("aten::layer_norm") == 2
    h100 = predicted.CARDS["H100 SXM"]
    rate = h100.fp16_tflops * 1e12 * predicted.CLK / predicted.CMAM_MMA_CLK * predicted.MMA_SYNC_EFF
    mm_bytes = 2 * (1024 * 2048 + 2048 * 256 + 1024 * 256)
    mm = predicted.FLOOR_US + max(mm_bytes / (predicted.MEM_EFF * h100.bw_gbs * 1e9) * 1e6,
                                  2 * 1024 * 256 * 2048 / rate * 1e6)
    assert predicted.kernel_us("aten::mm", [[1024, 2048], [2048, 256]], "fp16", h100) == pytest.approx(mm)
    add = predicted.FLOOR_US + 3 * 2 * 64 * 16 * 2048 / (predicted.MEM_EFF * h100.bw_gbs * 1e9) * 1e6
    assert predicted.kernel_us("aten::add", [[64, 16, 2048], [64, 16, 2048], []], "fp16", h100) == pytest.approx(add)
    sd = predicted.sdpa_module_expected(64, 2048, 16, 256, 8, "fp16", h100)
    assert sd["kernels"] == 26 and sd["us"] > sd["floor_us"] == 26 * predicted.FLOOR_US


def test_involution_model_constants_are_the_kernels(predicted: Any) -> None:
    for name, value in (("kMaxThreads", predicted.INV_MAX_THREADS), ("kPrefetch", predicted.INV_PREFETCH),
                        ("kRows", predicted.INV_ROWS),
                        ("kMaxCps", predicted.INV_MAX_CPS), ("kMinBlocks", predicted.INV_MIN_BLOCKS),
                        ("kMaxTileW", predicted.INV_MAX_TILE_W), ("kMaxTileH", predicted.INV_MAX_TILE_H),
                        ("kSmemLimit", predicted.INV_SMEM_LIMIT)):
        assert _const(INV_CU, name) == value, name
    assert "__launch_bounds__(kMaxThreads, kMinBlocks)" in INV_CU
    # one barrier per pipeline step (the model's chain: one round trip per step at most)
    body = _function(INV_CU, "involution_fwd(const T* __restrict__ x")
    assert body.count("__syncthreads()") == 1
    # the registers the occupancy comes from: 1 block of 7 warps at 192 (K=7, two pixels' 2 x 49 weights)
    assert 65536 // (7 * 32 * predicted.INV_REGS[7]) == predicted.INV_MIN_BLOCKS
    # fp16/bf16 staged as packed pairs of channels in 32-bit words, fp32 as one channel per word
    import re

    # (the primary template serves both 16-bit types, fp32 is its specialisation)
    packs = re.findall(r"struct Stage(<\w+>)? \{[^\n]*\n\s*using W = (\w+);\s*static constexpr int kCh = (\d+);",
                       INV_CU)
    assert sorted(packs) == sorted([("<float>", "float", "1"), ("", "uint32_t", str(predicted.INV_PACK))])
    assert "template <typename T>\nstruct Stage {  // fp16 / bf16" in INV_CU
    # the second pixel shares the first's rows at stride 1: the K+1 window rows are walked once
    assert "for (int r = 0; r <= KS; ++r)" in body


def test_involution_mma_model_matches_the_kernel(predicted: Any) -> None:
    for name, value in (("kMmaRows", predicted.INV_MMA_ROWS), ("kMmaSegs", predicted.INV_MMA_SEGS),
                        ("kMmaTapSlots", predicted.INV_MMA_TAP_SLOTS), ("kXBatch", predicted.INV_MMA_X_BATCH),
                        ("kMmaSmemMax", predicted.INV_MMA_SMEM_MAX)):
        assert _const(INV_CU, name) == value, name
    assert f"__launch_bounds__(kMmaSegs * 32, {predicted.INV_MMA_MIN_BLOCKS})" in INV_CU
    assert "static_cast<int64_t>(g.B) * g.G * m.tiles >= 2 * static_cast<int64_t>(sms)" in INV_CU  # the dispatch
    plan = _function(INV_CU, "bool plan_mma(")
    assert "g.stride != 1 || g.gc % 16 != 0 || (g.K != 3 && g.K != 5 && g.K != 7)" in plan
    assert "m.x_pitch = m.segs * 8 + 8;" in plan and "m.w_half = m.tile_h * m.segs * 4 | 1;" in plan
    # 28x28: one 32-column tile (4 segments, one warp each) x 2 tiles of 14 rows, 20 staged input rows of 40 halves
    # (plane 808 = 101 16-byte units, odd), 36 words per pixel, 90,512 B of shared memory: 2 blocks per SM
    p = predicted.involution_mma_plan(64, 256, 28, 28, 7, 1, 16)
    assert p == {"blocks": 2048, "threads": 128, "segs": 4, "tile_h": 14, "tile_w": 32, "in_h": 20, "x_pitch": 40,
                 "x_plane": 808, "w_words": 36, "w_half": 225, "smem": 90512, "occupancy": 2}
    # group_channels 64: the tile is lowered until 112 KiB hold it (20 rows -> 3 tiles of 7)
    assert predicted.involution_mma_plan(1, 64, 20, 28, 7, 1, 64)["tile_h"] == 7
    assert predicted.involution_mma_plan(1, 64, 20, 28, 7, 2, 16) is None  # stride 2: the CUDA-core kernel
    assert predicted.involution_mma_plan(1, 64, 20, 28, 9, 1, 16) is None  # K 9


def test_involution_plan_matches_the_launcher(predicted: Any) -> None:
    # 28x28 -> 2 tiles of 28x14 (196 threads of 2 rows), 20x34 halo in rows of 46 words (2 x 46 = 28 mod 32), 4 words
    # per step in two buffers (29,824 B of shared memory), 4 steps of a 16-channel group in fp32, 2 steps of 8 packed
    # channel pairs in fp16/bf16, 1 block of 7 warps per SM (192 registers)
    for prec, words, steps in (("fp32", 16, 4), ("fp16", 8, 2), ("bf16", 8, 2)):
        p = predicted.involution_plan(64, 256, 28, 28, 7, 1, 16, prec)
        assert {k: p[k] for k in ("blocks", "threads", "tile_h", "tile_w", "pitch", "plane", "slices", "cchunks",
                                  "chunk_words", "cps", "prefetch", "steps", "smem", "occupancy")} == {
            "blocks": 2048, "threads": 196, "tile_h": 14, "tile_w": 28, "pitch": 46, "plane": 932, "slices": 1,
            "cchunks": 1, "chunk_words": words, "cps": 4, "prefetch": 1, "steps": steps, "smem": 29824,
            "occupancy": 1}
        assert p["cps"] == predicted.INV_MAX_CPS
    # batch 1, 8x8 map: one 8x8 tile of 32 threads, 8 words side by side (256 threads); fp32 splits the group in 2
    # chunks to cover the GPU, fp16/bf16 (8 words per group) cannot split further
    p = predicted.involution_plan(1, 256, 8, 8, 7, 1, 16)
    assert (p["threads"], p["slices"], p["cchunks"], p["blocks"]) == (256, 8, 2, 16 * 2)
    p = predicted.involution_plan(1, 256, 8, 8, 7, 1, 16, "bf16")
    assert (p["threads"], p["slices"], p["cchunks"], p["blocks"]) == (256, 8, 1, 16)
    # odd group_channels: ceil(gc / 2) words per group in fp16/bf16
    assert predicted.involution_plan(1, 9, 8, 7, 3, 1, 3, "fp16")["chunk_words"] == 2
    # 2x2 outputs, K=7, stride 2: a step's halo exceeds the prefetch registers -> direct staging
    p = predicted.involution_plan(1, 64, 4, 4, 7, 2, 16)
    assert p["prefetch"] == 0


def test_cmam_model_matches_the_launcher(predicted: Any) -> None:
    assert (_const(GEMM_CUH, "kWM"), _const(GEMM_CUH, "kWN"), _const(GEMM_CUH, "kWK")) == bench.CMAM_WMMA_TILE
    assert _const(GEMM_CUH, "kPlanSms") == bench.CMAM_PLAN_SMS
    assert f"gb.K / ({bench.CMAM_MIN_KSTEPS} * bk)" in _function(GEMM_CUH, "inline int split_cap(")
    assert "split_cap(gb, t.bk, max_splits)" in GEMM_CUH and "split_cap(gb, kWK, max_splits)" in GEMM_CUH
    assert f"kWmmaTile4{{{bench.CMAM_WMMA_MF_BIG} * kWM" in GEMM_CUH
    assert "return little_padding && 2 * tiles64 * cap >= sms ? kWmmaTile4 : kWmmaTile;" in GEMM_CUH
    assert "8 * padded <= 9 * static_cast<int64_t>(gb.M)" in GEMM_CUH
    assert "if (tiles64 >= sms) return kWmmaTile4;" in GEMM_CUH
    assert _const(GEMM_CUH, "kStages") == bench.CMAM_STAGES == predicted.CMAM_STAGES
    # every dtype on tensor cores: one kernel template (no CUDA-core GEMM left), planned the same way for all dtypes
    assert "gemm_bias_kernel" not in GEMM_CUH + CMAM_CU and "__global__" not in GEMM_CUH.replace(
        "__global__ void __launch_bounds__(kWmmaThreads, MF == 1 ? 3 : 2) gemm_wmma_kernel", "")
    assert "cmir_gemm::plan_gemm(proj, 6, sms" in CMAM_CU and "cmir_gemm::plan_gemm(outp, 2, sms" in CMAM_CU
    assert {bench.cmam_gemm_plan(1024, 256, 2048, 6, p)["splits"] for p in ("fp32", "fp16", "bf16")} == {2}
    # fp32 as 3xTF32: tf32 m16n16k8 operands, three MMAs per product (the model's third of the TF32 rate)
    assert "using type = nvcuda::wmma::precision::tf32;\n  static constexpr int kK = 8;" in GEMM_CUH
    fp32 = GEMM_CUH[GEMM_CUH.index("if constexpr (std::is_same<T, float>::value) {\n        wmma::fragment<"):]
    fp32 = fp32[:fp32.index("} else {")]
    assert fp32.count("wmma::mma_sync(") == bench.CMAM_FP32_MMA_PASSES == 3 and fp32.count("split_tf32(") == 2
    spec = bench.CARD_SPECS[-1][1]
    assert bench.cmam_tflops(spec, "fp32") == spec.tf32_tflops / 3
    assert bench.cmam_tflops(spec, "bf16") == spec.fp16_tflops


def test_cmam_latency_chain_constants_are_the_kernels(predicted: Any) -> None:
    # the LayerNorm's row scans and the attention's split-K sums load kLoadUnroll / kSplitUnroll values at a time
    assert _const(CMAM_CU, "kLoadUnroll") == predicted.CMAM_LN_UNROLL
    assert _const(CMAM_CU, "kSplitUnroll") == predicted.CMAM_SPLIT_UNROLL
    assert "strided_sum<kLoadUnroll>(row + lane, 32, cnt)" in CMAM_CU
    assert "aa.splits > 2 ? attention_kernel<kSplitUnroll, T> : attention_kernel<1, T>" in CMAM_CU
    assert sorted(predicted.CMAM_ATT_REGS) == [1, predicted.CMAM_SPLIT_UNROLL]
    # the tensor-core GEMM's kStages stages (the model's pipelined k-loop): W and NCHW A by cp.async issued
    # kStages - 1 k-steps ahead (a wait for all but the newest kStages - 2 groups), one barrier per k-step; A through
    # registers one step ahead (stored after the step's MMAs)
    body = _function(GEMM_CUH, "gemm_wmma_kernel(GemmBatch gb) {")
    assert body.count("__pipeline_memcpy_async(dst") == 1 and "__pipeline_wait_prior(0)" in body  # A; W below
    assert "stage_w_async<T, kWN, kWK, kWmmaThreads>(Ws[stage]" in body
    assert "__pipeline_memcpy_async(dst" in _function(GEMM_CUH, "__device__ __forceinline__ void stage_w_async(")
    loop = body[body.index("auto k_step = [&]"):body.index("__pipeline_wait_prior(0);  // only empty groups")]
    assert loop.count("__syncthreads()") == 1 and "__pipeline_wait_prior(kStages - 2)" in loop
    assert "const int k_ahead = k0 + (kStages - 1) * kWK;" in loop and "issue(ahead, k_ahead, load_regs)" in loop
    assert "if (k_ahead < k_end && !a_by_async(k_ahead)) store_a(ahead, load_regs);" in loop
    # two register sets for the gathered 16-row variants: the next step's A stored, loaded one step earlier
    assert "constexpr bool kLead2 = kGather && MF == 1;" in body
    assert "if (k_next < k_end && !a_by_async(k_next)) store_a(next, store_regs);" in loop
    # ... and the gathered segment (conv2d, the pointwise shortcut) always through registers
    assert "return gb.a_async != 0 && !gathered(k0);" in body
    # the occupancy the model assumes: __launch_bounds__ minimum blocks, and shared memory that allows them
    assert "__launch_bounds__(kWmmaThreads, MF == 1 ? 3 : 2)" in GEMM_CUH
    assert (predicted.CMAM_OCC["wmma1"], predicted.CMAM_OCC["wmma4"]) == (3, 2)
    tile_m, tile_n, tile_k = bench.CMAM_WMMA_TILE
    for e in (2, 4):
        for mf, occ in ((1, 3), (4, 2)):
            stages = bench.CMAM_STAGES * e * (tile_k * (tile_m * mf + 8) + tile_n * (tile_k + 8))
            c_tile = 4 * max(tile_m * mf * (tile_n + 4), tile_n * (tile_m * mf + 4))
            assert occ * (max(stages, c_tile) + 32 + 1024) <= predicted.SMEM_PER_SM, (e, mf)


def test_cmam_mma_model_matches_the_kernel(predicted: Any) -> None:
    """Issue 13, sixth round: the mma.sync tile the model and the Python plans assume is the kernel's — tile, stages,
    warp grid, one block per SM (launch bounds, registers) with shared memory to spare, the planner's rules (the
    same numbers in cuda/gemm_mma.cuh and cmam_proj_plan / cmam_out_plan), the dispatch in cmam.cu; and the model's
    per-k-step wavefronts and the plan at the issue's shape."""
    bm, bn, bk = bench.CMAM_MMA_TILE
    assert tuple(_const(GEMM_MMA_CUH, name) for name in ("kMmaBM", "kMmaBN", "kMmaBK")) == (bm, bn, bk)
    assert _const(GEMM_MMA_CUH, "kMmaStages") == bench.CMAM_STAGES == predicted.CMAM_STAGES
    assert _const(GEMM_MMA_CUH, "kMmaThreads") == 32 * (bm // 64) * (bn // 64)
    assert _const(GEMM_MMA_CUH, "kMmaWarpsN") * predicted.CMAM_MMA_WARP_TILE == bn
    assert "__launch_bounds__(kMmaThreads, 1)" in GEMM_MMA_CUH and predicted.CMAM_MMA_OCC == 1
    for a_stage in (bk * (bm + 8), bm * (bk + 8)):  # A [k][m] (NCHW tokens) or [m][k] (row-major)
        assert 3 * 2 * (a_stage + bn * (bk + 8)) + 1024 <= predicted.SMEM_PER_SM
    kernel = _function(GEMM_MMA_CUH, "gemm_mma_kernel(GemmBatch gb, MmaLn ln) {")  # one barrier per k-step
    assert kernel.count("__syncthreads()") == 1 and "__pipeline_wait_prior(kMmaStages - 2)" in kernel
    assert "__pipeline_memcpy_async(dst" in kernel and "stage_w_async<T, kMmaBN, kMmaBK, kMmaThreads>" in kernel
    body = _function(GEMM_MMA_CUH, "inline bool plan_mma(")
    for rule in ("if (2 * gb.n_out < kMmaBN || 4 * tiles < sms) return false;",
                 "10 * tiles * splits < 7 * static_cast<int64_t>(sms) && 2 * tiles * splits <= sms",
                 "split_cap(gb, kMmaBK, max_splits)"):
        assert rule in body, rule
    assert "cmir_gemm::mma_fits<T>(proj, 6, false) && cmir_gemm::plan_mma(proj, 6, sms, INT32_MAX)" in CMAM_CU
    assert "cmir_gemm::mma_fits<T>(outp, 2, false) && cmir_gemm::plan_mma(outp, 2, sms, 1)" in CMAM_CU
    # the shape on 132 SMs: Q/K/V 48 tiles split in 2 (96 blocks), output projections 128 tiles unsplit
    proj = bench.cmam_proj_plan(1024, 256, 2048, 6, "fp16")
    out = bench.cmam_out_plan(1024, 2048, 256, "fp16")
    assert (proj["mma"], proj["tiles"], proj["splits"]) == (1, 48, 2)
    assert (out["mma"], out["tiles"], out["splits"]) == (1, 128, 1)
    # seventh round: the LayerNorm fused into them there (128 blocks <= 132 SMs, all resident: one grid barrier)
    assert out["ln_fused"] == 1 and bench.cmam_out_plan(1024, 2048, 256, "fp16", sms=108)["ln_fused"] == 0
    assert "const bool try_fused = cmir_gemm::plan_mma_ln<T>(fused, 2, ln, sms);" in CMAM_CU
    ln_plan = _function(GEMM_MMA_CUH, "bool plan_mma_ln(")
    assert "tile_count(gb, problems, kMmaBM, kMmaBN) > std::min(sms, kPlanSms)" in ln_plan
    assert "!plan_mma(gb, problems, sms, 1)" in ln_plan and "gb.rows % 8 != 0" in ln_plan
    epilogue = _function(GEMM_MMA_CUH, "void mma_ln_epilogue(")
    assert epilogue.count("CMIR_GRID_SYNC();") == 1 and "launch_cooperative(gemm_mma_kernel<T," in GEMM_MMA_CUH
    assert predicted._mma_gemm_us(proj, predicted.CARDS["H100 SXM"], 0.0)["wavefronts"] == 896
    # not for fp32, 4-token images (chunks of 8 tokens), or n_out below half the tile
    assert bench.cmam_proj_plan(1024, 256, 2048, 6, "fp32")["mma"] == 0
    assert bench.cmam_proj_plan(1020, 256, 2048, 6, "fp16", tokens=4)["mma"] == 0
    assert bench.cmam_proj_plan(4096, 120, 2048, 6, "fp16")["mma"] == 0


def test_cmam_launch_count(predicted: Any) -> None:
    body = _function(CMAM_CU, "cudaError_t launch_typed(cudaStream_t stream, const T* art")
    launches = (body.count("cmir_cuda::launch(") + body.count("cmir_cuda::launch_opt_in(")
                + body.count("cmir_gemm::launch_gemm<T>(stream"))
    assert launches == predicted.CMAM_LAUNCHES == 4
    # the fused LayerNorm (large batch, fp16/bf16) replaces the last two: three launches, no fourth on success
    assert body.count("cmir_gemm::launch_mma_ln<T>(stream") == 1
    assert "if (e != cudaErrorCooperativeLaunchTooLarge) return e;" in body
    assert "cudaMemsetAsync" not in CMAM_CU and "cudaMemset(" not in CMAM_CU


@pytest.mark.parametrize(("n", "prec", "qkv", "out"),
                         [(1, "fp32", 16, 2), (1, "fp16", 16, 2), (8, "fp32", 16, 2), (8, "fp16", 16, 2),
                          (64, "fp32", 2, 1), (64, "fp16", 2, 1)])
def test_cmam_split_k_plan_and_partial_bytes(n: int, prec: str, qkv: int, out: int) -> None:
    """The model's shape (16 tokens x 2048 channels, d 256) on 132 SMs: split-K counts of the two GEMM launches and the
    fp32 workspace traffic they imply. 16-row tiles at batch 1 (a 64-row tile would be 3/4 padding), 64-row tiles from
    batch 4 (split over K they give >= 1 block per 2 SMs) — the same plan in every dtype."""
    m, c, d = 16 * n, 2048, 256
    assert bench.cmam_gemm_plan(m, d, c, 6, prec)["bm"] == (16 if n == 1 else 64)
    assert bench.cmam_gemm_plan(m, c, d, 2, prec)["bm"] == (16 if n == 1 else 64)
    assert bench.cmam_gemm_plan(64, d, c, 6, prec)["bm"] == 64 and bench.cmam_gemm_plan(64, c, d, 2, prec)["bm"] == 16
    assert bench.cmam_gemm_plan(m, d, c, 6, prec)["splits"] == qkv
    assert bench.cmam_gemm_plan(m, c, d, 2, prec)["splits"] == out
    # fp16/bf16 at batch 64: both GEMMs on the mma.sync tile (Q/K/V split in 2, the output projections unsplit)
    mma = n == 64 and prec != "fp32"
    assert bench.cmam_proj_plan(m, d, c, 6, prec)["mma"] == bench.cmam_out_plan(m, c, d, prec)["mma"] == mma
    assert bench.cmam_proj_plan(m, d, c, 6, prec)["splits"] == qkv
    cost = bench.cmam_cost(n, c, 16, d, 8, prec)
    assert (cost["qkv_splits"], cost["out_splits"]) == (qkv, out)
    e = 4 if prec == "fp32" else 2
    if mma:  # the LayerNorm fused: each of the 8 n tiles' row statistics, written once, read by all 8
        assert bench.cmam_out_plan(m, c, d, prec)["ln_fused"] == 1
        pre = 8 * 2 * 8 * m * (1 + 8)
    else:  # fp32: zeroed, stored/added per split, read by LayerNorm
        pre = 4 * 2 * m * c * ((1 if out > 1 else 0) + out + 1)
    assert cost["workspace_bytes"] == 4 * 2 * 6 * qkv * m * d + e * 2 * 2 * m * d + pre
    assert cost["partial_bytes"] == 4 * 2 * 6 * qkv * m * d


def _reference_ops(monkeypatch: pytest.MonkeyPatch, broken: bool = False) -> None:
    def inv(x: Any, kern: Any, k: int, s: int = 1, scale: Any = None, shift: Any = None, relu: bool = False) -> Any:
        y = R.involution_ref(x.double(), kern.double(), k, s, None if scale is None else scale.double(),
                             None if shift is None else shift.double(), relu)
        return (y.flip(-1) if broken else y).to(x.dtype)

    def fused(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, k: int, s: int, gc: int) -> Any:
        return R.involution_fused_ref(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), k, s,
                                      gc).to(x.dtype)

    def cmam(art: Any, pv: Any, wa: Any, wp: Any, heads: int) -> Any:
        a, p = R.cmam_ref(art.double(), pv.double(), wa.double(), wp.double(), heads)
        return a.to(art.dtype), p.to(pv.dtype)

    def pointwise(x: Any, w: Any, b: Any, res: Any = None, relu: bool = False, workspace: Any = None,
                  shortcut: Any = None, shortcut_stride: int = 1) -> Any:
        return R.pointwise_conv_ref(x.double(), w.double(), b.double(), None if res is None else res.double(),
                                    relu, None if shortcut is None else shortcut.double(),
                                    shortcut_stride).to(x.dtype)

    monkeypatch.setattr(ops, "involution", inv)
    monkeypatch.setattr(ops, "involution_fused", fused)
    monkeypatch.setattr(ops, "cmam", cmam)
    def conv2d(x: Any, w: Any, b: Any, res: Any = None, relu: bool = False, stride: int = 1, padding: int = 0,
               workspace: Any = None) -> Any:
        return R.conv2d_ref(x.double(), w.double(), b.double(), None if res is None else res.double(), relu, stride,
                            padding).to(x.dtype)

    def spatial_attention(a: Any, p: Any, w: Any, b: Any) -> Any:
        ya, yp, att = R.spatial_attention_ref(a, p, w, b)
        return ya.to(a.dtype), yp.to(p.dtype), att.to(a.dtype)

    monkeypatch.setattr(ops, "pointwise_conv", pointwise)
    monkeypatch.setattr(ops, "conv2d", conv2d)
    monkeypatch.setattr(ops, "spatial_attention", spatial_attention)


@pytest.mark.parametrize("broken", [False, True])
def test_sanitizer_workload_checks_every_op(broken: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workload's own checks on the CPU, ops replaced by the float64 references rounded once (all pass: one
    rounding fits every tolerance) or by a wrong involution (its checks fail, the others still pass)."""
    mod = _load("cmir_sanitize_ops", "benchmarks/gpu/sanitize_ops.py")
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    _reference_ops(monkeypatch, broken)
    checks = mod.run()
    names = {r["check"].split()[0] for r in checks}
    assert names == {"involution", "involution+bn+relu", "involution_fused", "cmam", "pointwise_conv", "conv2d",
                     "spatial_attention"}
    assert {r["check"].split()[-1] for r in checks} == {"fp32", "fp16", "bf16"}
    bad = {r["check"].split()[0] for r in checks if not r["ok"]}
    assert bad == ({"involution", "involution+bn+relu"} if broken else set())

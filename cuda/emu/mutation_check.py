"""Mutation check of the cuda_emu tests: break the kernels on purpose, one way at a time, and see a test fail.

    .venv/bin/python cuda/emu/mutation_check.py [--only SUBSTRING]

Each mutant is a copy of cuda/ (in a temporary folder, the tree is never touched) with one change: one
__syncthreads() or __syncwarp() of cuda/involution.cu, cuda/cmam.cu, cuda/gemm.cuh or cuda/pointwise.cu removed, a
halo index shifted by one, the attention kernel's shared-memory opt-in dropped, the GEMM's pipeline, 3xTF32 or
typed epilogue or typed split-K (counter, last block, summation order) broken, the pointwise convolution's
residual / ReLU / strides wrong, or the tensor-core involution's fragments (band register pair, ldmatrix matrix
order), staging (halo, walk, parity slots, unaligned pairs) or output (columns, row ends) broken (`--only MMA`), or
the mma.sync projection tile's fragments, pipeline, epilogue, plan or fused LayerNorm broken (`--only gemm_mma`).
The emulator tests of that file (TESTS) then run on it (CMIR_EMU_CUDA_DIR) and must fail; the first failing test is
reported. Exit status 1 if any mutant survives. Takes a few minutes (one emulator build per mutant); not part of
`make test`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mutants(cuda: Path) -> list[tuple[str, str, str, str]]:
    """(name, file, original text or "@offset:text", replacement) for the kernels in `cuda`."""
    out = []
    for fname in ("involution.cu", "cmam.cu", "gemm.cuh", "gemm_mma.cuh", "pointwise.cu", "conv2d.cu",
                  "spatial_attention.cu"):
        src = (cuda / fname).read_text(encoding="utf-8")
        for call in ("__syncthreads()", "__syncwarp()"):
            for i, m in enumerate(re.finditer(re.escape(call), src)):
                line = src.count("\n", 0, m.start()) + 1
                if "not observable in the emulator" in src[m.start():src.find("\n", m.start())]:
                    # Blocks run one after another there, so a barrier that orders other blocks' reads after this
                    # block's writes cannot be missed: its removal is an equivalent mutant (racecheck on a GPU).
                    print(f"n/a       {fname}:{line} {call} #{i + 1}: orders blocks, not observable", flush=True)
                    continue
                out.append((f"{fname}:{line} remove {call} #{i + 1}", fname, f"@{m.start()}:{call}", "(void)0"))
    out += [
        ("involution.cu halo column +1 (load_tile)", "involution.cu", "iw = iw0 + q;", "iw = iw0 + q + 1;"),
        ("involution.cu halo row +1 (load_tile)", "involution.cu", "const int ih = ih0 + r,",
         "const int ih = ih0 + r + 1,"),
        ("involution.cu one staging buffer instead of two (WAR race)", "involution.cu",
         "W* buf = smem + (st & 1) * buf_elems;", "W* buf = smem;"),
        ("involution.cu halo origin -1 (fused kernel)", "involution.cu",
         "const int pad = (KS - 1) / 2;", "const int pad = (KS - 1) / 2 + 1;"),
        ("involution.cu MMA band words always in b[0] (the second Band row pair ignored)", "involution.cu",
         "const uint32_t b[2] = {second ? 0u : bw[o][r], second ? bw[o][r] : 0u};",
         "const uint32_t b[2] = {bw[o][r], 0u};"),
        ("involution.cu MMA ldmatrix matrices 1 and 2 swapped (channels <-> columns)", "involution.cu",
         "(lane & 7) + 8 * (mi & 1)) * m.x_plane + seg * 8 +\n                           8 * (mi >> 1);",
         "(lane & 7) + 8 * (mi >> 1)) * m.x_plane + seg * 8 +\n                           8 * (mi & 1);"),
        ("involution.cu MMA input halo column +1", "involution.cu", "const int ih = ih0 + pos.ir, iw = iw0 + pos.col;",
         "const int ih = ih0 + pos.ir, iw = iw0 + pos.col + 1;"),
        ("involution.cu MMA input stores one element behind their loads", "involution.cu", "Walk st = first;",
         "Walk st = first;\n      advance(st);"),
        ("involution.cu MMA band words of the row above", "involution.cu",
         "lo = *reinterpret_cast<const uint4*>(wlane + static_cast<size_t>(ir) * (tw / 2)",
         "lo = *reinterpret_cast<const uint4*>(wlane + static_cast<size_t>(ir > 0 ? ir - 1 : 0) * (tw / 2)"),
        ("involution.cu MMA second 16-channel tile reads the first's channels", "involution.cu",
         "xs + static_cast<size_t>(mt * 16 + (lane & 7)", "xs + static_cast<size_t>(0 * mt + (lane & 7)"),
        ("involution.cu MMA epilogue: the odd column gets the even column's sum", "involution.cu",
         "v1 = epilogue<T>(acc[o][2 * hh + 1], g, c);", "v1 = epilogue<T>(acc[o][2 * hh], g, c);"),
        ("involution.cu MMA staged output: columns of lanes t interleaved", "involution.cu",
         "o * tw + seg * 8 + 2 * t) =", "o * tw + seg * 8 + 2 * (t ^ 1)) ="),
        ("involution.cu MMA output rows written past the map's last column", "involution.cu",
         "const int cols = min(tw, g.Wo - ow0);", "const int cols = tw;"),
        ("involution.cu MMA weights: odd columns take the even column's taps", "involution.cu",
         "wo[j][u] = r < KS ? (v[r][2 * j] >> 16) | (v[r][2 * j + 1] & 0xffff0000u) : 0u;",
         "wo[j][u] = r < KS ? (v[r][2 * j] & 0xffffu) | (v[r][2 * j + 1] << 16) : 0u;"),
        ("involution.cu MMA band loads of odd columns from the even slots", "involution.cu",
         "(grp_l & 1) * m.w_half) * m.w_words", "(grp_l & 1) * 0) * m.w_words"),
        ("involution.cu MMA unaligned weight pairs: the odd pixel's half dropped", "involution.cu",
         "(in1 ? static_cast<uint32_t>(to_bits(__ldg(q + 1))) << 16 : 0u)", "(in1 ? 0u : 0u)"),
        ("cmam.cu split-K partials of Q/K/V not summed (attention)", "cmam.cu",
         "for (int s = 1; s < a.splits; ++s)", "for (int s = 1; s < 1; ++s)"),
        ("cmam.cu folded memset dropped (output projections' split-K sums)", "cmam.cu",
         "aa.zero = !mma_out && outp.splits > 1 ? pre : nullptr;", "aa.zero = nullptr;"),
        ("involution.cu halo column +1 (stage_direct)", "involution.cu", "const int iw = iw0 + q, ih = ih0 + r;",
         "const int iw = iw0 + q + 1, ih = ih0 + r;"),
        ("involution.cu halo row +1 (stage_load)", "involution.cu", "    const int ih = ih0 + r;\n",
         "    const int ih = ih0 + r + 1;\n"),
        ("common.cuh no shared-memory opt-in (launch_opt_in: CMAM head_dim > 177, the involution's large tiles)",
         "common.cuh", "if (smem > kDefaultSmemBytes) {", "if (false) {"),
        ("gemm.cuh plain TF32 (3xTF32's small terms dropped)", "gemm.cuh",
         "wmma::mma_sync(acc[i], fa_small, fb, acc[i]);", "(void)0;"),
        ("gemm_mma.cuh ldmatrix.trans A: k and m halves swapped", "gemm_mma.cuh",
         "const int a_k = kAK ? 8 * (lmat >> 1) : lrow + 8 * (lmat >> 1);",
         "const int a_k = kAK ? 8 * (lmat >> 1) : lrow + 8 * (lmat & 1);"),
        ("gemm_mma.cuh ldmatrix A (row-major, output projections): k and m halves swapped", "gemm_mma.cuh",
         "const int a_k = kAK ? 8 * (lmat >> 1) : lrow", "const int a_k = kAK ? 8 * (lmat & 1) : lrow"),
        ("gemm_mma.cuh ldmatrix W: n and k halves swapped", "gemm_mma.cuh",
         "const int w_n = wn * 64 + lrow + 8 * (lmat >> 1), w_k = 8 * (lmat & 1);",
         "const int w_n = wn * 64 + lrow + 8 * (lmat & 1), w_k = 8 * (lmat >> 1);"),
        ("gemm_mma.cuh B fragment of the odd 8-column tile from the even tile's k 8..15", "gemm_mma.cuh",
         "bf[2 * j + 1][0] = r[2];", "bf[2 * j + 1][0] = r[1];"),
        ("gemm_mma.cuh cp.async wait one k-step too lax", "gemm_mma.cuh",
         "__pipeline_wait_prior(kMmaStages - 2);", "__pipeline_wait_prior(kMmaStages - 1);"),
        ("gemm_mma.cuh refill the stage being multiplied", "gemm_mma.cuh",
         "const int ahead = stage == 0 ? kMmaStages - 1 : stage - 1;", "const int ahead = stage;"),
        ("gemm_mma.cuh bias added by every K split", "gemm_mma.cuh",
         "bias[j][e] = first && bias_t", "bias[j][e] = bias_t"),
        ("gemm_mma.cuh residual: the pair's second element from the first's channel", "gemm_mma.cuh",
         "v1 += ldg_f32(rp + p.r_ns);", "v1 += ldg_f32(rp);"),
        ("gemm_mma.cuh typed output: the pair's halves swapped", "gemm_mma.cuh",
         "(static_cast<uint32_t>(cmir_cuda::to_bits(from_f32<T>(v1))) << 16)",
         "(static_cast<uint32_t>(cmir_cuda::to_bits(from_f32<T>(v1))) << 0)"),
        ("gemm_mma.cuh K splits store over one another", "gemm_mma.cuh",
         "(gb.splits > 1 ? static_cast<int64_t>(split) * gb.M * gb.n_out : 0)", "(gb.splits > 1 ? 0 * split : 0)"),
        ("gemm_mma.cuh epilogue rows g and g + 8 swapped", "gemm_mma.cuh",
         "const int m = m0 + wm * 64 + 16 * i + g + 8 * h;", "const int m = m0 + wm * 64 + 16 * i + g + 8 * (1 - h);"),
        ("gemm_mma.cuh A tokens (NCHW) stored 8 tokens off in the stage", "gemm_mma.cuh",
         "(kAK ? mm * kMmaLdW + kk : kk * kMmaLdA + mm)",
         "(kAK ? mm * kMmaLdW + kk : kk * kMmaLdA + (mm + 8) % kMmaBM)"),
        ("gemm_mma.cuh A rows (row-major) stored 8 channels off in the stage", "gemm_mma.cuh",
         "(kAK ? mm * kMmaLdW + kk : kk * kMmaLdA + mm)",
         "(kAK ? mm * kMmaLdW + (kk + 8) % kMmaBK : kk * kMmaLdA + mm)"),
        ("cmam.cu the workspace's alignment unchecked before choosing the mma.sync tile", "cmam.cu",
         "p.out = qkv;  // offset per problem", "p.out = nullptr;  // offset per problem"),
        ("cmam.cu LayerNorm reads the pre-norm rows as fp32 after the mma.sync output projections", "cmam.cu",
         "mma_out ? layernorm_nchw_kernel<T, T> :", "mma_out ? layernorm_nchw_kernel<T, float> :"),
        ("gemm_mma.cuh planner: one split fewer than the rule", "gemm_mma.cuh",
         "10 * tiles * splits < 7 * static_cast<int64_t>(sms)", "20 * tiles * splits < 7 * static_cast<int64_t>(sms)"),
        ("gemm_mma.cuh planner: more blocks than SMs allowed", "gemm_mma.cuh",
         "2 * tiles * splits <= sms", "tiles * splits <= sms"),
        ("gemm_mma.cuh fused LayerNorm: the grid barrier removed", "gemm_mma.cuh",
         "  CMIR_GRID_SYNC();", "  (void)0;"),
        ("gemm_mma.cuh fused LayerNorm: Chan's between-tile term dropped", "gemm_mma.cuh",
         "m2 += part.y + static_cast<float>(min(kMmaBN, gb.n_out - y * kMmaBN)) * d * d;",
         "m2 += part.y + 0.f * d;"),
        ("gemm_mma.cuh fused LayerNorm: a partial n tile's mean over 256 columns", "gemm_mma.cuh",
         "const int cols = min(kMmaBN, gb.n_out - n0);", "const int cols = kMmaBN;"),
        ("gemm_mma.cuh fused LayerNorm: every tile weighted 256 in the mean", "gemm_mma.cuh",
         "mean += static_cast<float>(min(kMmaBN, gb.n_out - y * kMmaBN)) * part.x;",
         "mean += static_cast<float>(kMmaBN) * part.x;"),
        ("gemm_mma.cuh fused LayerNorm: the pair's channels swapped in the output tile", "gemm_mma.cuh",
         "tile[nl + e][lr] = from_f32<T>(", "tile[nl + 1 - e][lr] = from_f32<T>("),
        ("gemm_mma.cuh fused LayerNorm: planned beyond one block per SM", "gemm_mma.cuh",
         "tile_count(gb, problems, kMmaBM, kMmaBN) > std::min(sms, kPlanSms)",
         "tile_count(gb, problems, kMmaBM, kMmaBN) > 4 * std::min(sms, kPlanSms)"),
        ("gemm.cuh cp.async wait one k-step too lax", "gemm.cuh", "__pipeline_wait_prior(kStages - 2);",
         "__pipeline_wait_prior(kStages - 1);"),
        ("gemm.cuh refill the stage being multiplied (WAR race)", "gemm.cuh",
         "const int ahead = stage == 0 ? kStages - 1 : stage - 1;", "const int ahead = stage;"),
        ("gemm.cuh NCHW output tile stored [m][n] but read [n][m] (typed epilogue)", "gemm.cuh",
         "acc[i], kLdCm, wmma::mem_col_major);", "acc[i], kLdCm, wmma::mem_row_major);"),
        ("gemm.cuh split-K: a tile's counter never re-zeroed", "gemm.cuh",
         "if (tid == 0) gb.counters[tile] = 0;", "if (tid == 0) gb.counters[tile] += 0;"),
        ("gemm.cuh split-K: the next-to-last block sums (one partial missing)", "gemm.cuh",
         "== static_cast<unsigned>(gb.splits - 1)", "== static_cast<unsigned>(gb.splits - 2)"),
        ("gemm.cuh split-K: partials summed from the last block's own split on (order depends on timing)",
         "gemm.cuh", "v[u] += __ldcg(tp + s * kTile +", "v[u] += __ldcg(tp + ((s + split) % gb.splits) * kTile +"),
        ("gemm.cuh gathered segment: column index off by one", "gemm.cuh",
         "const int iy = iy0 + ky, ix = ix0 + kx;", "const int iy = iy0 + ky, ix = ix0 + kx + 1;"),
        ("gemm.cuh gathered segment starts one k-step late (x read past Cin)", "gemm.cuh",
         "return kGather && k0 >= gb.k_seg;", "return kGather && k0 > gb.k_seg;"),
        ("pointwise.cu shortcut rows split at the input's width", "pointwise.cu", "gb.g_ow = width;",
         "gb.g_ow = s.width + 0 * width;"),
        ("gemm.cuh gathered segment: taps read transposed (ky <-> kx)", "gemm.cuh",
         "const int iy = iy0 + ky, ix = ix0 + kx;", "const int iy = iy0 + kx, ix = ix0 + ky;"),
        ("gemm.cuh gathered segment: left padding read from memory, not zero", "gemm.cuh",
         "if (iy >= 0 && iy < gb.g_h && ix >= 0 && ix < gb.g_w) {",
         "if (iy >= 0 && iy < gb.g_h && ix >= -1 && ix < gb.g_w) {"),
        ("conv2d.cu output width taken from the input", "conv2d.cu", "gb.g_ow = wo;", "gb.g_ow = width;"),
        ("gemm.cuh two register sets: the next step's A stored into the stage just read", "gemm.cuh",
         "if (k_next < k_end && !a_by_async(k_next)) store_a(next, store_regs);",
         "if (k_next < k_end && !a_by_async(k_next)) store_a(stage + 0 * next, store_regs);"),
        ("gemm.cuh two register sets: the second step loads into the set it stores", "gemm.cuh",
         "k_step(k0, stage, areg2, areg);", "k_step(k0, stage, areg, areg);"),
        ("spatial_attention.cu mean over the slice, not over all channels", "spatial_attention.cu",
         "smem[q] = sum / static_cast<float>(channels);", "smem[q] = sum / static_cast<float>(kSlice + 0 * channels);"),
        ("spatial_attention.cu conv taps mirrored (correlation turned into convolution)", "spatial_attention.cu",
         "__ldg(s.w + (c * s.k + ky) * s.k + kx)", "__ldg(s.w + (c * s.k + (s.k - 1 - ky)) * s.k + kx)"),
        ("spatial_attention.cu p's channels read from a", "spatial_attention.cu",
         ": static_cast<const T*>(s.p) + (static_cast<int64_t>(b) * s.cp + (c - s.ca)) * s.hw;",
         ": static_cast<const T*>(s.a) + (static_cast<int64_t>(b) * s.cp + (c - s.ca)) * s.hw;"),
        # (the parameters stay used: an unused one would not build under -Werror)
        ("pointwise.cu residual dropped", "pointwise.cu", "(stream, gb, x, nullptr, w, bias, residual, y,",
         "(stream, gb, x, nullptr, w, bias, nullptr, y,"),
        ("pointwise.cu ReLU never applied", "pointwise.cu", "gb.relu = relu;", "gb.relu = relu * 0;"),
        ("pointwise.cu residual read with the input's batch stride", "pointwise.cu",
         "cmir_gemm::nchw_output(p, cout, hw);",
         "cmir_gemm::nchw_output(p, cout, hw);\n  p.r_bs = static_cast<int64_t>(cin) * hw;"),
    ]
    # Text patterns follow the kernels as they are written; one that no longer occurs is left out (and listed).
    kept = []
    for m in out:
        if m[2].startswith("@") or m[2] in (cuda / m[1]).read_text(encoding="utf-8"):
            kept.append(m)
        else:
            print(f"n/a       {m[0]}: the pattern no longer occurs in {m[1]}", flush=True)
    return kept


def apply(tree: Path, fname: str, old: str, new: str) -> None:
    path = tree / fname
    src = path.read_text(encoding="utf-8")
    if old.startswith("@"):  # "@offset:text": that occurrence only
        pos, text = old[1:].split(":", 1)
        start = int(pos)
        assert src[start:start + len(text)] == text
        src = src[:start] + new + src[start + len(text):]
    else:
        assert src.count(old) >= 1, f"{old!r} not in {fname}"
        src = src.replace(old, new, 1)
    path.write_text(src, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run only the mutants whose name contains this")
    args = ap.parse_args()
    survivors = 0
    with tempfile.TemporaryDirectory(prefix="cmir_mutants_") as snap_dir:
        # One snapshot of cuda/ for the whole run, so that edits made meanwhile cannot mix into the mutants.
        snapshot = Path(snap_dir) / "cuda"
        shutil.copytree(ROOT / "cuda", snapshot, ignore=shutil.ignore_patterns("__pycache__"))
        for name, fname, old, new in mutants(snapshot):
            if args.only in name:
                survivors += run_mutant(snapshot, name, fname, old, new)
    return 1 if survivors else 0


# The emulator tests that exercise each kernel file (the GEMM serves CMAM and the pointwise convolution).
TESTS = {
    "involution.cu": ["tests/test_cuda_emu.py", "-k", "involution"],
    "cmam.cu": ["tests/test_cuda_emu.py", "-k", "cmam"],
    "gemm.cuh": ["tests/test_cuda_emu.py", "tests/test_cuda_emu_pointwise.py", "tests/test_cuda_emu_conv2d.py", "-k",
                 "cmam or pointwise or conv2d"],
    "gemm_mma.cuh": ["tests/test_cuda_emu.py", "-k", "mma_projections or four_launches or fused_layernorm"],
    "pointwise.cu": ["tests/test_cuda_emu_pointwise.py"],
    "conv2d.cu": ["tests/test_cuda_emu_conv2d.py"],
    "spatial_attention.cu": ["tests/test_cuda_emu_spatial_attention.py"],
    "common.cuh": ["tests/test_cuda_emu.py", "-k", "cmam or involution"],
}


def run_mutant(snapshot: Path, name: str, fname: str, old: str, new: str) -> int:
    """Build and test one mutant of `snapshot`; 1 if it survives (or does not build), else 0."""
    with tempfile.TemporaryDirectory(prefix="cmir_mutant_") as tmp:
        tree = Path(tmp) / "cuda"
        shutil.copytree(snapshot, tree)
        apply(tree, fname, old, new)
        env = {**os.environ, "CMIR_EMU_CUDA_DIR": str(tree), "CMIR_EMU_BUILD_DIR": str(Path(tmp) / "build")}
        proc = subprocess.run([sys.executable, "-m", "pytest", *TESTS[fname], "-x", "-q", "-p", "no:cacheprovider"],
                              cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    why = re.findall(r"^E\s+(.+)$", proc.stdout, re.M)  # the assertion (or build error) behind it
    if proc.returncode == 0:
        print(f"SURVIVED  {name}", flush=True)
        return 1
    if any("emulator build failed" in w for w in why):
        print(f"BROKEN    {name}: the mutant does not build", flush=True)  # proves nothing about the tests
        return 1
    print(f"caught    {name}: {failed[0] if failed else '?'} ({why[0][:110] if why else ''})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Would TF32 tensor cores keep CMAM within its fp32 tolerance? (issue 13; decides cuda/gemm.cuh's fp32 GEMM path)

    .venv/bin/python benchmarks/cmam_tf32_error.py

The fp32 CMAM kernel must stay within a normwise relative error of 1e-4 of float64 (tests/test_gpu_kernels.py,
tests/test_cuda_emu.py). TF32 tensor cores round both operands of every GEMM to a 10-bit mantissa (round to
nearest) and accumulate in fp32. This script computes CMAM in float64 with exactly that operand rounding on the
eight projections (everything else exact) and prints the normwise error against plain float64, on the test suite's
seeded weights and inputs and on the model's shape (16 tokens x 2048 channels, d 256, 8 heads); likewise for
error-compensated 3xTF32 as the kernels use it (operands split into big = tf32(a) and small = tf32(a - big), products
big*big + big*small + small*big). Runs on the CPU.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from cmir_trt import ops  # noqa: E402
from cmir_trt.model.cmam import CMAM  # noqa: E402
from cmir_trt.ops.reference import unpack_cmam_weights  # noqa: E402

TOLERANCE = 1e-4
CASES = [(1, 64, 4, 4, 32, 4), (3, 48, 3, 5, 24, 3), (2, 40, 8, 9, 64, 2), (1, 256, 2, 3, 64, 4),
         (1, 2048, 4, 4, 256, 8)]


def tf32(t: torch.Tensor) -> torch.Tensor:
    """Round to TF32 (10 explicit mantissa bits, nearest, ties away as cvt.rna.tf32.f32), returned as float64."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).double()


def mm_exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w.T


def mm_tf32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return tf32(x) @ tf32(w).T


def mm_3xtf32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    bx, bw = tf32(x), tf32(w)
    sx, sw = tf32(x.double() - bx), tf32(w.double() - bw)
    return sx @ bw.T + bx @ sw.T + bx @ bw.T


def cmam64(art: torch.Tensor, pv: torch.Tensor, wa: torch.Tensor, wp: torch.Tensor, heads: int, dim: int,
           mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both CMAM directions in float64, the eight projections' products by `mm` (exact, TF32 or 3xTF32)."""
    b, c, h, w = art.shape
    hd = dim // heads
    ta, tp = (x.double().flatten(2).transpose(1, 2) for x in (art, pv))

    def direction(tq: torch.Tensor, tkv: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        p = {k: v.double() for k, v in unpack_cmam_weights(packed, c, dim).items()}

        def proj(x: torch.Tensor, name: str) -> torch.Tensor:
            return (mm(x, p["w" + name]) + p["b" + name]).view(b, -1, heads, hd).transpose(1, 2)

        q, k, v = proj(tq, "q"), proj(tkv, "k"), proj(tkv, "v")
        att = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd), dim=-1)
        y = torch.einsum("bhqk,bhkd->bhqd", att, v).transpose(1, 2).reshape(b, -1, dim)
        z = tq + mm(y, p["wo"]) + p["bo"]
        mean = z.mean(dim=-1, keepdim=True)
        var = ((z - mean) ** 2).mean(dim=-1, keepdim=True)
        out = (z - mean) / torch.sqrt(var + 1e-5) * p["gamma"] + p["beta"]
        return out.transpose(1, 2).reshape(b, c, h, w)

    return direction(ta, tp, wa), direction(tp, ta, wp)


def main() -> int:
    worst, worst3 = 0.0, 0.0
    for case in CASES:
        b, c, h, w, d, heads = case
        m = CMAM(c, heads, d).eval()
        g = torch.Generator().manual_seed(30)  # the seeds of tests/test_cuda_emu.py::_cmam_setup
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
            art = torch.randn(b, c, h, w, generator=g)
            pv = torch.randn(b, c, h, w, generator=g)
            wa, wp = ops.pack_cmam_module(m)
            exact = cmam64(art, pv, wa, wp, heads, d, mm_exact)
            rounded = cmam64(art, pv, wa, wp, heads, d, mm_tf32)
            split = cmam64(art, pv, wa, wp, heads, d, mm_3xtf32)
        err = max(float((rounded[i] - exact[i]).norm() / exact[i].norm()) for i in range(2))
        err3 = max(float((split[i] - exact[i]).norm() / exact[i].norm()) for i in range(2))
        worst, worst3 = max(worst, err), max(worst3, err3)
        print(f"B={b} C={c} {h}x{w} d={d} heads={heads}: normwise error TF32 {err:.2e}, 3xTF32 {err3:.2e} "
              f"(bound {TOLERANCE:.0e})")
    print(f"worst {worst:.2e}: TF32 {'fits' if worst <= TOLERANCE else 'exceeds'} the fp32 tolerance")
    print(f"worst {worst3:.2e}: 3xTF32 {'fits' if worst3 <= TOLERANCE else 'exceeds'} the fp32 tolerance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

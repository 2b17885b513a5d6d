"""`cuda_emu` marker: the implicit-GEMM convolution launcher (cuda/conv2d.cu: the input gathered per output pixel and
tap as the A operand of the shared GEMM of cuda/gemm.cuh) executed on the CPU by the emulator, against the float64
reference ``conv2d_ref`` (F.conv2d in float64):

- fp32 (3xTF32 tensor-core MMAs): normwise error vs float64 <= 1e-5;
- fp16/bf16: max error vs float64 on the same rounded inputs <= 2x the error of PyTorch's own conv2d + bias
  [+ residual] [+ ReLU] at that precision (on the CPU), plus one ulp of the output's largest magnitude.

The output starts as NaN (0xff bytes), so an element the kernel fails to write shows; every run is one launch and no
memset. Shapes: the model's stem convolutions (3x3 stride 2 and 1, padding 1), 2x2 stride 2 (a 2x2 average pool
folded into a 1x1 convolution), 7x7 padding 3, odd maps where the kernel overhangs the edge, a 1x1 strided
convolution, K over several k-steps, split-K with a workspace (blocks in a shuffled order), batch 2, both tile
heights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _cuda_emu_helpers import CODES, ORDERS, failure_text, run_op
from _cuda_emu_helpers import bits_tensor as _tensor
from _cuda_emu_helpers import tensor_bits as _bits
from _gpu_helpers import LOW_PRECISION, SEED, assert_low_precision_bound, assert_no_nan, generator, max_err, rel_err

from cmir_trt.ops import reference as R
from cmir_trt.ops.conv2d import conv2d_output_size

pytestmark = pytest.mark.cuda_emu

DTYPES = {"fp32": torch.float32, **LOW_PRECISION}
FP32_TOL = 1e-5

# (B, Cin, Cout, H, W, kh, kw, stride, pad, residual, relu, workspace, SMs)
CASES = [
    (1, 3, 32, 17, 15, 3, 3, 2, 1, False, True, 0, 132),    # the stem's first conv (odd map: 9x8 out), K 27
    (1, 32, 20, 9, 9, 3, 3, 1, 1, True, True, 0, 132),      # the stem's second conv shape (K 288), + residual
    (2, 16, 24, 8, 6, 2, 2, 2, 0, False, False, 0, 1),      # 2x2 stride 2 (pooled 1x1), batch 2, 64-row tiles
    (1, 2, 1, 8, 8, 7, 7, 1, 3, False, False, 0, 132),      # the SA 7x7 (Cout 1, K 98)
    (1, 24, 9, 7, 11, 1, 1, 2, 0, False, True, 0, 132),     # strided 1x1
    (1, 64, 40, 6, 6, 3, 3, 1, 1, False, True, 1, 132),     # K 576 split over blocks with a workspace
]


def _ids(cases: list[tuple[object, ...]]) -> list[str]:
    return ["x".join(str(int(v)) for v in c) for c in cases]


def _inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> dict[str, torch.Tensor]:
    b, cin, cout, h, w, kh, kw, s, p, residual, *_ = case
    g = generator(offset)
    t = {"x": torch.randn(b, cin, h, w, generator=g),
         "w": torch.randn(cout, cin, kh, kw, generator=g) / (cin * kh * kw) ** 0.5,
         "bias": torch.randn(cout, generator=g) * 0.5}
    if residual:
        t["residual"] = torch.randn(b, cout, conv2d_output_size(h, kh, s, p), conv2d_output_size(w, kw, s, p),
                                    generator=g)
    return {k: v.to(dtype) for k, v in t.items()}


def _run(case: tuple[int, ...], prec: str, t: dict[str, torch.Tensor], order: str, seed: int = 0
         ) -> tuple[torch.Tensor, str]:
    b, cin, cout, h, w, kh, kw, s, p, _, relu, use_ws, sms = case
    res = run_op("conv2d", [CODES[prec], b, cin, cout, h, w, kh, kw, s, p, int(relu), use_ws],
                 {k: _bits(v) for k, v in t.items()}, ["y"], order=order, seed=seed, sms=sms)
    assert res.returncode == 0, f"conv2d {case} {prec} ({order}): {failure_text(res)}"
    assert "launches=1 memsets=0" in res.stdout and "counters_zero=1" in res.stdout, res.stdout
    shape = (b, cout, conv2d_output_size(h, kh, s, p), conv2d_output_size(w, kw, s, p))
    return _tensor(res.outputs["y"], DTYPES[prec], shape), res.stdout


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_conv2d(case: tuple[int, ...], prec: str) -> None:
    dtype = DTYPES[prec]
    i = CASES.index(case)
    t = _inputs(case, dtype, 100 + i)
    y, out = _run(case, prec, t, ORDERS[(i + list(DTYPES).index(prec)) % 3], seed=i)
    if case[11]:
        assert "workspace=0 " not in out, "the case must split K"
    assert_no_nan(y, f"conv2d {case} {prec}")
    _, _, _, _, _, _, _, s, p, _, relu, *_ = case
    ref = R.conv2d_ref(t["x"], t["w"], t["bias"], t.get("residual"), bool(relu), s, p)
    if prec == "fp32":
        assert rel_err(y, ref) <= FP32_TOL, (case, rel_err(y, ref), SEED)
    else:
        theirs = F.conv2d(t["x"], t["w"], t["bias"], stride=s, padding=p)
        theirs = theirs + t["residual"] if "residual" in t else theirs
        theirs = torch.relu(theirs) if relu else theirs
        floor = float(torch.finfo(dtype).eps) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"conv2d {prec} {case}", floor)


@pytest.mark.parametrize("sizes", [(1, 3, 8, 8, 8, 3, 3, 1, 3), (1, 3, 8, 2, 2, 5, 5, 1, 1),
                                   (1, 3, 8, 8, 8, 3, 3, 0, 1), (0, 3, 8, 8, 8, 3, 3, 1, 1),
                                   (1, 3, 65535 * 128 + 1, 1, 1, 1, 1, 1, 0)],
                         ids=["pad_ge_kernel", "kernel_too_big", "stride0", "batch0", "cout_over_grid"])
def test_conv2d_bad_sizes_are_refused(sizes: tuple[int, ...]) -> None:
    """The launcher refuses them before any launch (cudaErrorInvalidValue) and sizes no workspace for them."""
    b, cin, cout, h, w, kh, kw, s, p = sizes
    res = run_op("conv2d", [0, b, cin, cout, h, w, kh, kw, s, p, 0, 0], {}, ["y"])
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_python_limits_are_the_kernels() -> None:
    """The op's MAX_ROWS / MAX_K (checked before any launch) are cuda/conv2d.cuh's."""
    import re
    from pathlib import Path

    from cmir_trt.ops.conv2d import MAX_K, MAX_ROWS

    header = (Path(__file__).resolve().parents[1] / "cuda" / "conv2d.cuh").read_text(encoding="utf-8")
    rows = re.search(r"kConv2dMaxRows = 1LL << (\d+);", header)
    k = re.search(r"kConv2dMaxK = 1LL << (\d+);", header)
    assert rows is not None and 2 ** int(rows.group(1)) == MAX_ROWS
    assert k is not None and 2 ** int(k.group(1)) == MAX_K

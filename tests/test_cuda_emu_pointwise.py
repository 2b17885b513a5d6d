"""`cuda_emu` marker: the pointwise (1x1) convolution launcher (cuda/pointwise.cu on the shared GEMM of
cuda/gemm.cuh) executed on the CPU by the emulator, against the float64 reference ``pointwise_conv_ref``:

- fp32 (3xTF32 tensor-core MMAs): normwise error vs float64 <= 1e-5;
- fp16/bf16: max error vs float64 on the same rounded inputs <= 2x the error of PyTorch's own 1x1 convolution + bias
  [+ residual] [+ ReLU] at that precision (on the CPU), plus one ulp of the output's largest magnitude.

The output starts as NaN (0xff bytes), so an element the kernel fails to write shows. Every run must be exactly one
kernel launch and no memset (the launcher's contract: one graph node, nothing to zero). Shapes cover Cin/Cout that
are not multiples of 8/16 (W staged without cp.async), H*W not a multiple of 16 (A staged through registers), the
aligned case (A and W by cp.async), Cout over one 128-wide tile, K over several pipeline stages, 1x1 maps, batch 1
and 3; each run takes one of the emulator's thread orders and 132 SMs or one SM (16- or 64-row tiles).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _cuda_emu_helpers import CODES, ORDERS, failure_text, run_op
from _cuda_emu_helpers import bits_tensor as _tensor
from _cuda_emu_helpers import tensor_bits as _bits
from _gpu_helpers import LOW_PRECISION, SEED, assert_low_precision_bound, assert_no_nan, generator, max_err, rel_err

from cmir_trt.ops import reference as R
from cmir_trt.ops.pointwise import MAX_COUT, MAX_ROWS

pytestmark = pytest.mark.cuda_emu

DTYPES = {"fp32": torch.float32, **LOW_PRECISION}
FP32_TOL = 1e-5

# (B, Cin, Cout, H, W, residual, relu)
CASES = [
    (1, 13, 7, 5, 3, True, True),      # everything odd: H*W = 15, K 13 (one partial k-step)
    (3, 20, 37, 3, 7, False, True),    # batch 3, H*W = 21 (rows of a tile span images)
    (1, 64, 130, 4, 4, True, False),   # Cout over one 128-wide tile; H*W = 16, K 64 (cp.async-eligible)
    (2, 48, 24, 8, 8, True, True),     # aligned: A and W staged by cp.async; 64-row tiles on one SM
    (1, 40, 16, 9, 9, False, False),   # K 40: a full and a partial k-step; H*W = 81
    (2, 70, 33, 1, 1, True, True),     # 1x1 maps: one row per image
    (1, 100, 9, 12, 12, True, True),   # K 100: more k-steps than pipeline stages; H*W = 144
]


def _ids(cases: list[tuple[object, ...]]) -> list[str]:
    return ["x".join(str(int(v)) for v in c) for c in cases]


def _inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> dict[str, torch.Tensor]:
    b, cin, cout, h, w, residual, _ = case
    g = generator(offset)
    t = {"x": torch.randn(b, cin, h, w, generator=g), "w": torch.randn(cout, cin, generator=g) / cin ** 0.5,
         "bias": torch.randn(cout, generator=g) * 0.5}
    if residual:
        t["residual"] = torch.randn(b, cout, h, w, generator=g)
    return {k: v.to(dtype) for k, v in t.items()}


def _run(case: tuple[int, ...], prec: str, t: dict[str, torch.Tensor], variant: int) -> torch.Tensor:
    b, cin, cout, h, w, _, relu = case
    order, sms = ORDERS[variant % 3], (132, 1)[variant % 2]
    res = run_op("pointwise", [CODES[prec], b, cin, cout, h, w, int(relu), 0], {k: _bits(v) for k, v in t.items()},
                 ["y"], order=order, sms=sms)
    assert res.returncode == 0, f"pointwise {case} {prec} ({order}, {sms} SMs): {failure_text(res)}"
    # One graph node: a single kernel, nothing zeroed beforehand (no split-K partial sums).
    assert "launches=1 memsets=0" in res.stdout, res.stdout
    return _tensor(res.outputs["y"], DTYPES[prec], (b, cout, h, w))


def _torch_at_precision(t: dict[str, torch.Tensor], relu: bool) -> torch.Tensor:
    """PyTorch's own 1x1 convolution + bias [+ residual] [+ ReLU] in the inputs' dtype (each step rounded)."""
    y = F.conv2d(t["x"], t["w"][:, :, None, None], t["bias"])
    if "residual" in t:
        y = y + t["residual"]
    return torch.relu(y) if relu else y


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pointwise(case: tuple[int, ...], prec: str) -> None:
    dtype = DTYPES[prec]
    variant = CASES.index(case) + list(DTYPES).index(prec)
    t = _inputs(case, dtype, 50 + CASES.index(case))
    y = _run(case, prec, t, variant)
    assert_no_nan(y, f"pointwise {case} {prec}")
    ref = R.pointwise_conv_ref(t["x"], t["w"], t["bias"], t.get("residual"), bool(case[6]))  # float64
    if prec == "fp32":
        assert rel_err(y, ref) <= FP32_TOL, (case, variant, rel_err(y, ref), SEED)
    else:
        theirs = _torch_at_precision(t, bool(case[6]))
        floor = float(torch.finfo(dtype).eps) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"pointwise {prec} {case} {variant}",
                                   floor)


# Split-K cases (B, Cin, Cout, H, W, residual, relu): few output tiles and a long K, so the plan splits K over blocks
# (cmir_trt.gpu.bench.cmam_gemm_plan, the same planner in Python, says how many splits; checked below).
SPLIT_CASES = [
    (1, 1030, 40, 3, 5, True, True),    # K 1030: 7 splits of 160, the last partial; one 16-row tile, odd everything
    (1, 256, 130, 4, 4, True, False),   # 2 splits, two 128-wide column tiles (two counters), aligned cp.async
    (2, 512, 64, 8, 8, False, True),    # batch 2, 8 row tiles x 4 splits, A and W by cp.async
]


def _split_run(case: tuple[int, ...], prec: str, t: dict[str, torch.Tensor], order: str,
               seed: int = 0) -> tuple[torch.Tensor, str]:
    b, cin, cout, h, w, _, relu = case
    res = run_op("pointwise", [CODES[prec], b, cin, cout, h, w, int(relu), 1], {k: _bits(v) for k, v in t.items()},
                 ["y"], order=order, seed=seed, sms=132)
    assert res.returncode == 0, f"pointwise split {case} {prec} ({order}): {failure_text(res)}"
    return _tensor(res.outputs["y"], DTYPES[prec], (b, cout, h, w)), res.stdout


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=_ids(SPLIT_CASES))
def test_pointwise_split_k(case: tuple[int, ...], prec: str) -> None:
    """K split over blocks through a workspace: still one launch and no memset; the same bits whichever block of a
    tile finishes last (blocks in reverse, forward and two shuffled orders: a different block sums each time) and on
    a second launch on the same workspace (its counters left zero, partials not re-poisoned); within the tolerance
    of the float64 reference as without the split."""
    from cmir_trt.gpu.bench import cmam_gemm_plan

    b, cin, cout, h, w, _, relu = case
    assert cmam_gemm_plan(b * h * w, cout, cin, 1, prec)["splits"] > 1, "the case must split K"
    dtype = DTYPES[prec]
    t = _inputs(case, dtype, 70 + SPLIT_CASES.index(case))
    runs = [_split_run(case, prec, t, order, seed) for order, seed in
            (("reverse", 0), ("forward", 0), ("random", 1), ("random", 2))]
    y, out = runs[0]
    for _, o in runs:
        assert "launches=1 memsets=0" in o and "counters_zero=1,1 repeat_identical=1" in o, o
    for other, _ in runs[1:]:
        assert np.array_equal(_bits(other).view(np.uint8), _bits(y).view(np.uint8)), \
            f"{case} {prec}: the result depends on block order"
    assert_no_nan(y, f"pointwise split {case} {prec}")
    ref = R.pointwise_conv_ref(t["x"], t["w"], t["bias"], t.get("residual"), bool(relu))
    if prec == "fp32":
        assert rel_err(y, ref) <= FP32_TOL, (case, rel_err(y, ref), SEED)
    else:
        theirs = _torch_at_precision(t, bool(relu))
        floor = float(torch.finfo(dtype).eps) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"pointwise split {prec} {case}", floor)


def test_pointwise_short_workspace_is_refused() -> None:
    """A workspace too small for the split plan (the counters and one float): cudaErrorInvalidValue, nothing
    launched."""
    case = SPLIT_CASES[0]
    b, cin, cout, h, w, _, relu = case
    t = _inputs(case, torch.float32, 76)
    res = run_op("pointwise", [0, b, cin, cout, h, w, int(relu), 2], {k: _bits(v) for k, v in t.items()}, ["y"])
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_pointwise_workspace_unused_when_no_split() -> None:
    """Sizes whose tiles fill the GPU never split: the workspace size is 0 and the run equals the plain one."""
    case = (2, 48, 24, 8, 8, True, True)
    t = _inputs(case, torch.float16, 75)
    y_ws, out = _split_run(case, "fp16", t, "reverse")
    assert "workspace=0 " in out, out
    assert np.array_equal(_bits(y_ws), _bits(_run(case, "fp16", t, 0)))


# Projection shortcut in the same GEMM (B, Cin, Cout, H, W, Cs, Hs, Ws, stride, residual, relu, workspace, SMs):
# the shortcut's columns are a gathered A segment after x's Cin (a multiple of 32).
SHORTCUT_CASES = [
    (1, 64, 130, 4, 4, 48, 8, 8, 2, False, True, 0, 132),      # a ResNet downsample block's conv3 at batch 1
    (2, 32, 40, 3, 5, 20, 5, 9, 2, False, True, 0, 132),       # odd shortcut map (ceil 5/2, 9/2), odd Cs, batch 2
    (1, 224, 64, 8, 8, 512, 16, 16, 2, False, True, 1, 132),   # split-K, 5 splits of 160: one reads both segments
    (1, 32, 24, 6, 6, 16, 6, 6, 1, True, False, 0, 132),       # stride-1 shortcut plus a residual, no ReLU
    (2, 64, 24, 8, 8, 24, 15, 15, 2, False, True, 0, 1),       # 64-row tiles (one SM), odd 15x15 shortcut
]


def _shortcut_inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> dict[str, torch.Tensor]:
    b, cin, cout, h, w, cs, hs, ws, _, residual, *_ = case
    g = generator(offset)
    t = {"x": torch.randn(b, cin, h, w, generator=g), "w": torch.randn(cout, cin + cs, generator=g) / (cin + cs) ** 0.5,
         "bias": torch.randn(cout, generator=g) * 0.5, "shortcut": torch.randn(b, cs, hs, ws, generator=g)}
    if residual:
        t["residual"] = torch.randn(b, cout, h, w, generator=g)
    return {k: v.to(dtype) for k, v in t.items()}


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", SHORTCUT_CASES, ids=_ids(SHORTCUT_CASES))
def test_pointwise_shortcut(case: tuple[int, ...], prec: str) -> None:
    """conv3 + the strided 1x1 projection shortcut + bias [+ residual] [+ ReLU] as one GEMM launch vs float64; fp16/
    bf16 within 2x PyTorch's own conv2d + strided conv2d + add [+ relu] error in that dtype."""
    b, cin, cout, h, w, cs, hs, ws, stride, _, relu, use_ws, sms = case
    dtype = DTYPES[prec]
    t = _shortcut_inputs(case, dtype, 80 + SHORTCUT_CASES.index(case))
    order = ORDERS[SHORTCUT_CASES.index(case) % 3]
    res = run_op("pointwise", [CODES[prec], b, cin, cout, h, w, int(relu), use_ws, cs, hs, ws, stride],
                 {k: _bits(v) for k, v in t.items()}, ["y"], order=order, sms=sms)
    assert res.returncode == 0, f"pointwise shortcut {case} {prec}: {failure_text(res)}"
    assert "launches=1 memsets=0" in res.stdout, res.stdout
    if use_ws:
        assert "counters_zero=1,1 repeat_identical=1" in res.stdout and "workspace=0 " not in res.stdout, res.stdout
    y = _tensor(res.outputs["y"], dtype, (b, cout, h, w))
    assert_no_nan(y, f"pointwise shortcut {case} {prec}")
    ref = R.pointwise_conv_ref(t["x"], t["w"], t["bias"], t.get("residual"), bool(relu), t["shortcut"], stride)
    if prec == "fp32":
        assert rel_err(y, ref) <= FP32_TOL, (case, rel_err(y, ref), SEED)
    else:
        theirs = F.conv2d(t["x"], t["w"][:, :cin, None, None], t["bias"]) + F.conv2d(
            t["shortcut"], t["w"][:, cin:, None, None], stride=stride)
        theirs = theirs + t["residual"] if "residual" in t else theirs
        theirs = torch.relu(theirs) if relu else theirs
        floor = float(torch.finfo(dtype).eps) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"pointwise shortcut {prec} {case}", floor)


@pytest.mark.parametrize("shape", [(1, 40, 8, 4, 4, 16, 8, 8, 2), (1, 32, 8, 4, 4, 16, 9, 8, 2),
                                   (1, 32, 8, 4, 4, 16, 8, 8, 3), (1, 32, 8, 4, 4, 0, 8, 8, 2)],
                         ids=["cin_not_32", "rows_mismatch", "stride_mismatch", "no_channels"])
def test_pointwise_bad_shortcut_is_refused(shape: tuple[int, ...]) -> None:
    """Cin not a multiple of 32, a strided map other than the output's, an empty shortcut: cudaErrorInvalidValue."""
    b, cin, cout, h, w, cs, hs, ws, stride = shape
    case = (b, cin, cout, h, w, max(cs, 1), hs, ws, stride, False, False, 0, 132)
    t = _shortcut_inputs(case, torch.float32, 90)
    if cs == 0:
        t["w"] = t["w"][:, :cin].contiguous()
        t["shortcut"] = t["shortcut"][:, :0].contiguous()
    res = run_op("pointwise", [0, b, cin, cout, h, w, 0, 0, cs, hs, ws, stride], {k: _bits(v) for k, v in t.items()},
                 ["y"])
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_pointwise_relu_clamps_and_residual_counts() -> None:
    """The epilogue's parts are each visible: with a residual of -1e3 everywhere and ReLU, every output is exactly 0;
    without the ReLU the outputs are the conv + bias shifted by exactly -1e3 (fp32)."""
    case = (1, 16, 8, 4, 5, True, True)
    t = _inputs(case, torch.float32, 60)
    t["residual"] = torch.full_like(t["residual"], -1e3)
    y = _run(case, "fp32", t, 0)
    assert float(y.abs().max()) == 0.0
    y = _run((*case[:6], False), "fp32", t, 1)
    plain = R.pointwise_conv_ref(t["x"], t["w"], t["bias"])
    assert float((y.double() - (plain - 1e3)).abs().max()) <= 1e3 * 2 ** -23 * 4


@pytest.mark.parametrize("sizes", [(0, 8, 8, 4, 4), (1, 0, 8, 4, 4), (1, 8, 0, 4, 4), (1, 8, 8, 0, 4),
                                   (1, 8, 8, 4, -1), (2, 8, 8, 2**15, 2**14 + 1),
                                   (1, 8, MAX_COUT + 1, 1, 1)],
                         ids=["batch0", "cin0", "cout0", "h0", "w_neg", "rows_over_2^30", "cout_over_grid"])
def test_pointwise_bad_sizes_are_refused(sizes: tuple[int, ...]) -> None:
    """The launcher refuses them before any launch (cudaErrorInvalidValue); the limits are the Python op's."""
    b, cin, cout, h, w = sizes
    assert b * h * w > MAX_ROWS or cout > MAX_COUT or min(sizes) < 1
    # The driver passes small non-null buffers for sizes it sees are unsupported, so only the sizes can be refused.
    res = run_op("pointwise", [0, b, cin, cout, h, w, 0, 0], {}, ["y"])
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_pointwise_bad_flags_are_refused() -> None:
    """relu must be 0/1 and the dtype code one of CmirDType's."""
    case = (1, 8, 8, 2, 2, False, False)
    for dtype, relu, prec in ((0, 2, "fp32"), (7, 0, "fp16")):  # code 7: sized as a 16-bit type by the driver
        t = _inputs(case, DTYPES[prec], 61)
        res = run_op("pointwise", [dtype, 1, 8, 8, 2, 2, relu, 0], {k: _bits(v) for k, v in t.items()}, ["y"])
        assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_python_limits_are_the_kernels() -> None:
    """The op's MAX_ROWS / MAX_COUT (checked before any launch) are cuda/pointwise.cuh's."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "cuda" / "pointwise.cuh").read_text(encoding="utf-8")
    rows = re.search(r"kPointwiseMaxRows = 1LL << (\d+);", header)
    cout = re.search(r"kPointwiseMaxCout = (\d+)LL \* (\d+);", header)
    assert rows is not None and 2 ** int(rows.group(1)) == MAX_ROWS
    assert cout is not None and int(cout.group(1)) * int(cout.group(2)) == MAX_COUT

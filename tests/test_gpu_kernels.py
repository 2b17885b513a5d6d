"""Tier 1 (DESIGN.md §4), `gpu` marker: the CUDA kernels vs float64 references on fresh random inputs.

- Outputs (and the CMAM workspace) are filled with NaN before each launch, so any element a kernel fails to write is
  caught.
- fp32: normwise error vs float64 <= 2e-5 (involution, K*K-term sums) / 1e-4 (fused generation and CMAM: sums over
  C channels, softmax and LayerNorm).
- fp16/bf16: max error vs the float64 result on the same (rounded) inputs <= 2x the error of the same computation
  done by PyTorch at that precision (flash-attention style), plus a floor of one ulp (eps of the dtype) at the
  output's largest magnitude.
"""

from __future__ import annotations

import pytest
import torch
from _gpu_helpers import LOW_PRECISION, SEED, assert_low_precision_bound, assert_no_nan, generator, max_err, rel_err

from cmir_trt import ops
from cmir_trt.model.cmam import CMAM
from cmir_trt.model.involution import Involution2d, involution_aggregate
from cmir_trt.ops import reference as R

pytestmark = pytest.mark.gpu

DEV = "cuda"
DTYPES = {"fp32": torch.float32, **LOW_PRECISION}

# (B, C, H, W, K, stride, group_channels): odd sizes, both strides, K 3/7 (register paths), 5, 9 and 1 (generic
# path), maps wider than one 32-pixel tile, tiny maps (channel slices), batch 1 (channel chunks over blocks).
INV_CASES = [
    (1, 16, 7, 7, 3, 1, 16),
    (2, 48, 13, 13, 7, 2, 16),
    (3, 64, 28, 28, 7, 1, 16),
    (2, 32, 9, 10, 3, 2, 8),
    (1, 256, 14, 14, 7, 1, 16),
    (2, 24, 6, 5, 5, 1, 4),
    (1, 32, 11, 11, 9, 1, 16),
    (1, 32, 8, 8, 1, 2, 16),
    (2, 16, 57, 33, 7, 2, 16),
    (1, 16, 70, 3, 3, 1, 16),
    (4, 128, 4, 4, 7, 1, 16),
    # two output rows per thread and fp16/bf16 staged as packed channel pairs: odd group_channels (a group's last
    # word holds one channel), odd Ho (a thread's second row outside the image), the generic path at stride 2
    (1, 9, 8, 7, 3, 1, 3),
    (1, 10, 9, 9, 3, 1, 5),
    (2, 6, 11, 6, 9, 2, 3),
]
PAIR_CASES = INV_CASES[-3:]
# fp16/bf16 tensor-core kernel (stride 1, K 3/5/7, group_channels a multiple of 16): two 16-channel MMA tiles per
# group, several tile columns with partial segments, the shared-memory opt-in above 48 KiB, the target shape
MMA_CASES = [(1, 64, 9, 12, 5, 1, 32), (2, 16, 17, 40, 3, 1, 16), (1, 32, 8, 32, 7, 1, 32), (64, 256, 28, 28, 7, 1, 16)]


def _ids(cases: list[tuple[int, ...]]) -> list[str]:
    return ["x".join(map(str, c)) for c in cases]


def _inv_inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w, k, s, gc = case
    g = generator(offset, DEV)
    ho, wo = -(-h // s), -(-w // s)
    x = torch.randn(b, c, h, w, generator=g, device=DEV).to(dtype)
    kern = (torch.randn(b, c // gc, k, k, ho, wo, generator=g, device=DEV) / k).to(dtype)
    return x, kern


def _scale(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


# ---------------------------------------------------------------- involution
@pytest.mark.parametrize("case", INV_CASES, ids=_ids(INV_CASES))
def test_involution_fp32_poisoned_launch(case: tuple[int, ...]) -> None:
    from cmir_trt._native import load_cuda

    mod = load_cuda()
    b, c, h, w, k, s, gc = case
    x, kern = _inv_inputs(case, torch.float32, 10)
    y = torch.full((b, c, -(-h // s), -(-w // s)), float("nan"), device=DEV)
    mod.involution(mod.DTYPE_FLOAT32, x.data_ptr(), kern.data_ptr(), y.data_ptr(), b, c, h, w, k, s, gc,
                   stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert_no_nan(y, f"involution {case}")
    ref = R.involution_ref(x, kern, k, s)
    assert rel_err(y, ref) <= 2e-5, (case, SEED)
    # The public op (custom op path) gives the same numbers.
    assert torch.equal(ops.involution(x, kern, k, s), y)


@pytest.mark.parametrize("case", INV_CASES[:6], ids=_ids(INV_CASES[:6]))
def test_involution_epilogue(case: tuple[int, ...]) -> None:
    b, c, h, w, k, s, gc = case
    x, kern = _inv_inputs(case, torch.float32, 11)
    g = generator(12, DEV)
    scale = torch.rand(c, generator=g, device=DEV) + 0.5
    shift = torch.randn(c, generator=g, device=DEV)
    y = ops.involution(x, kern, k, s, scale, shift, True)
    assert_no_nan(y, "epilogue")
    assert rel_err(y, R.involution_ref(x, kern, k, s, scale, shift, True)) <= 2e-5
    y2 = ops.involution(x, kern, k, s, None, shift, False)
    assert rel_err(y2, R.involution_ref(x, kern, k, s, None, shift, False)) <= 2e-5


LOW_CASES = INV_CASES[:5] + PAIR_CASES + MMA_CASES


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize("case", LOW_CASES, ids=_ids(LOW_CASES))
def test_involution_low_precision_vs_pytorch(case: tuple[int, ...], prec: str) -> None:
    dtype = LOW_PRECISION[prec]
    b, c, h, w, k, s, gc = case
    x, kern = _inv_inputs(case, dtype, 13)
    ref = R.involution_ref(x, kern, k, s)  # float64 on the rounded inputs
    ours = ops.involution(x, kern, k, s)
    assert ours.dtype == dtype
    assert_no_nan(ours, "low precision involution")
    theirs = involution_aggregate(x, kern, k, s)  # PyTorch's unfold reference at this precision
    floor = _scale(dtype) * float(ref.abs().max())
    assert_low_precision_bound(max_err(ours, ref), max_err(theirs, ref), f"involution {prec} {case}", floor)


# ---------------------------------------------------------------- fused generation + aggregation
FUSED_CASES = [c for c in INV_CASES if c[4] in (1, 3, 5, 7)][:7]


def _generator_module(c: int, k: int, s: int, gc: int, offset: int) -> Involution2d:
    m = Involution2d(c, k, s, gc, 4).to(DEV).eval()
    g = generator(offset, DEV)
    with torch.no_grad():
        m.reduce.weight.copy_(torch.randn(m.reduce.weight.shape, generator=g, device=DEV) / c**0.5)
        m.span.weight.copy_(torch.randn(m.span.weight.shape, generator=g, device=DEV) / m.span.in_channels**0.5 / k)
        m.span.bias.copy_(torch.randn(m.span.bias.shape, generator=g, device=DEV) * 0.01)
        n = m.bn.num_features
        m.bn.running_mean.copy_(torch.randn(n, generator=g, device=DEV) * 0.1)
        m.bn.running_var.copy_(torch.rand(n, generator=g, device=DEV) + 0.5)
    return m


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=_ids(FUSED_CASES))
def test_involution_fused(case: tuple[int, ...], prec: str) -> None:
    from cmir_trt._native import load_cuda

    dtype = DTYPES[prec]
    b, c, h, w, k, s, gc = case
    m = _generator_module(c, k, s, gc, 20)
    gen = ops.fold_generator(m)
    x = torch.randn(b, c, h, w, generator=generator(21, DEV), device=DEV).to(dtype)
    # poisoned direct launch
    mod = load_cuda()
    y = torch.full((b, c, -(-h // s), -(-w // s)), float("nan"), device=DEV, dtype=dtype)
    code = {"fp32": mod.DTYPE_FLOAT32, "fp16": mod.DTYPE_FLOAT16, "bf16": mod.DTYPE_BFLOAT16}[prec]
    mod.involution_fused(code, x.data_ptr(), gen["w1"].data_ptr(), gen["b1"].data_ptr(), gen["w2"].data_ptr(),
                         gen["b2"].data_ptr(), y.data_ptr(), b, c, h, w, k, s, gc, gen["w1"].shape[0],
                         stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert_no_nan(y, f"fused {case} {prec}")
    with torch.no_grad():
        ref = R.involution_fused_ref(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc)
        if prec == "fp32":
            assert rel_err(y, ref) <= 1e-4, (case, SEED)
        else:
            theirs = m.to(dtype)(x)  # the whole Involution2d in PyTorch at this precision
            floor = _scale(dtype) * float(ref.abs().max())
            assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"fused {prec} {case}", floor)
        assert torch.equal(ops.involution_fused(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc), y)


# ---------------------------------------------------------------- CMAM
# (B, C, H, W, dim, heads): the model's 16 tokens x 2048 channels, odd token counts, more than one key tile (N=72),
# a single token, head_dim 8..64 and 256 (the largest the API takes: above 48 KiB of shared memory, needs the opt-in).
CMAM_CASES = [
    (1, 64, 4, 4, 32, 4),
    (1, 48, 3, 3, 256, 1),
    (3, 48, 3, 5, 24, 3),
    (2, 2048, 4, 4, 256, 8),
    (2, 96, 8, 9, 64, 2),
    (1, 32, 1, 1, 16, 1),
    (5, 80, 2, 7, 40, 5),
    # fp16/bf16 on the mma.sync tiles (cuda/gemm_mma.cuh) on a 132-SM card: the batch 64 (Q/K/V split over 2,
    # output projections unsplit), and 768 tokens of C = 520, d = 136 (K split 2 ways, partial n tiles, k-steps of 8)
    (64, 2048, 4, 4, 256, 8),
    (96, 520, 2, 4, 136, 4),
]


def _cmam_setup(case: tuple[int, ...], dtype: torch.dtype, offset: int):  # noqa: ANN202
    b, c, h, w, d, heads = case
    m = CMAM(c, heads, d).to(DEV).eval()
    g = generator(offset, DEV)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device=DEV) / max(p.shape[-1], 1) ** 0.5)
        art = torch.randn(b, c, h, w, generator=g, device=DEV)
        pv = torch.randn(b, c, h, w, generator=g, device=DEV)
    wa, wp = ops.pack_cmam_module(m)
    return m, art.to(dtype), pv.to(dtype), wa.to(dtype), wp.to(dtype)


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CMAM_CASES, ids=_ids(CMAM_CASES))
def test_cmam(case: tuple[int, ...], prec: str) -> None:
    from cmir_trt._native import load_cuda

    dtype = DTYPES[prec]
    b, c, h, w, d, heads = case
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 30)
    mod = load_cuda()
    code = {"fp32": mod.DTYPE_FLOAT32, "fp16": mod.DTYPE_FLOAT16, "bf16": mod.DTYPE_BFLOAT16}[prec]
    out_a = torch.full_like(art, float("nan"))
    out_p = torch.full_like(pv, float("nan"))
    nbytes = mod.cmam_workspace_size(code, b, c, h, w, d, heads)
    ws = torch.full((nbytes // 4,), float("nan"), device=DEV)  # poisoned workspace: split-K must zero its sums
    mod.cmam(code, art.data_ptr(), pv.data_ptr(), wa.data_ptr(), wp.data_ptr(), out_a.data_ptr(), out_p.data_ptr(),
             ws.data_ptr(), nbytes, b, c, h, w, d, heads, 1e-5, stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert_no_nan(out_a, f"cmam art {case}")
    assert_no_nan(out_p, f"cmam pv {case}")
    with torch.no_grad():
        ra, rp = R.cmam_ref(art, pv, wa, wp, heads, d, 1e-5)
        if prec == "fp32":
            assert rel_err(out_a, ra) <= 1e-4 and rel_err(out_p, rp) <= 1e-4, (case, SEED)
        else:
            # PyTorch's own CMAM at this precision, with the same rounded weights
            mh = CMAM(c, heads, d).to(DEV)
            mh.load_state_dict(m.state_dict())
            mh = mh.to(dtype).eval()
            ta, tp = mh(art, pv)
            floor = _scale(dtype) * float(max(ra.abs().max(), rp.abs().max()))
            assert_low_precision_bound(max_err(out_a, ra), max_err(ta, ra), f"cmam art {prec} {case}", floor)
            assert_low_precision_bound(max_err(out_p, rp), max_err(tp, rp), f"cmam pv {prec} {case}", floor)
        oa, op = ops.cmam(art, pv, wa, wp, heads)
    # The op path equals the direct launch up to the order of split-K atomic sums (one rounding of the output).
    tol = 1e-5 if prec == "fp32" else 4 * _scale(dtype)
    assert rel_err(oa, out_a) <= tol and rel_err(op, out_p) <= tol


# ---------------------------------------------------------------- pointwise (1x1) convolution
POINTWISE_CASES = [  # B, Cin, Cout, H, W, residual, relu
    (1, 64, 256, 32, 32, False, True),    # a model conv1x1 + BN + ReLU at batch 1
    (2, 20, 36, 5, 7, True, True),        # odd Cin/Cout (W not 16-byte aligned), H*W = 35, residual + ReLU
    (3, 17, 130, 3, 3, True, False),      # Cout beyond one 128-wide tile, 27 rows over three images
    (1, 512, 2048, 4, 4, True, True),     # the last stage's conv3 + identity + ReLU (16 tokens, K = 512)
    (1, 1024, 256, 8, 8, False, True),    # stage 3's conv1 at batch 1: K split 8 ways with a workspace
    (1, 1030, 40, 3, 5, True, True),      # 7 splits, the last one partial; odd sizes
]


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=_ids(POINTWISE_CASES))
def test_pointwise_conv(case: tuple[int, ...], prec: str) -> None:
    """The fused 1x1 convolution (bias, residual, ReLU in one kernel) vs float64; fp16/bf16 within 2x the error of
    PyTorch's own conv2d + add + relu in that dtype (+ one ulp of the output scale)."""
    import torch.nn.functional as F

    dtype = DTYPES[prec]
    b, cin, cout, h, w, res, relu = case
    g = generator(40 + POINTWISE_CASES.index(case))
    x = torch.randn(b, cin, h, w, generator=g).to(DEV, dtype)
    wt = (torch.randn(cout, cin, generator=g) / cin ** 0.5).to(DEV, dtype)
    bias = torch.randn(cout, generator=g).to(DEV, dtype)
    r = torch.randn(b, cout, h, w, generator=g).to(DEV, dtype) if res else None
    ws = ops.pointwise_workspace(x, wt)
    y = ops.pointwise_conv(x, wt, bias, r, relu, workspace=ws)
    torch.cuda.synchronize()
    assert_no_nan(y, f"pointwise {case}")
    if ws is not None:  # split-K: the counters are back at zero, the result repeats bit for bit, and matches the
        # unsplit launch up to the order of the fp32 sums (one rounding of the output)
        assert int(ws[:4096].count_nonzero()) == 0
        assert torch.equal(ops.pointwise_conv(x, wt, bias, r, relu, workspace=ws), y)
        plain = ops.pointwise_conv(x, wt, bias, r, relu)
        assert rel_err(plain, y) <= (1e-5 if prec == "fp32" else 4 * _scale(dtype)), (case, prec)
    ref = R.pointwise_conv_ref(x.double(), wt.double(), bias.double(), None if r is None else r.double(), relu)
    if prec == "fp32":
        assert rel_err(y, ref) <= 1e-5, (case, SEED)
    else:
        t = F.conv2d(x, wt[:, :, None, None], bias)
        t = t + r if r is not None else t
        t = torch.relu(t) if relu else t
        floor = _scale(dtype) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(t, ref), f"pointwise {prec} {case}", floor)


SHORTCUT_CASES = [  # B, Cin, Cout, H, W, Cs, Hs, Ws, stride
    (1, 128, 512, 16, 16, 256, 32, 32, 2),   # a stage-2 downsample block's conv3 + projection shortcut at batch 1
    (2, 64, 40, 5, 7, 20, 9, 13, 2),         # odd shortcut map and channels
    (1, 512, 2048, 4, 4, 1024, 8, 8, 2),     # the last stage's: K = 1536 split over blocks
]


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", SHORTCUT_CASES, ids=_ids(SHORTCUT_CASES))
def test_pointwise_conv_shortcut(case: tuple[int, ...], prec: str) -> None:
    """conv3 + strided 1x1 projection shortcut + bias + ReLU in one launch (with a split-K workspace where the plan
    splits) vs float64; fp16/bf16 within 2x PyTorch's own conv2d + strided conv2d + add + relu error."""
    import torch.nn.functional as F

    dtype = DTYPES[prec]
    b, cin, cout, h, w, cs, hs, ws_, stride = case
    g = generator(60 + SHORTCUT_CASES.index(case))
    x = torch.randn(b, cin, h, w, generator=g).to(DEV, dtype)
    sc = torch.randn(b, cs, hs, ws_, generator=g).to(DEV, dtype)
    wt = (torch.randn(cout, cin + cs, generator=g) / (cin + cs) ** 0.5).to(DEV, dtype)
    bias = torch.randn(cout, generator=g).to(DEV, dtype)
    ws = ops.pointwise_workspace(x, wt)
    y = ops.pointwise_conv(x, wt, bias, None, True, workspace=ws, shortcut=sc, shortcut_stride=stride)
    torch.cuda.synchronize()
    assert_no_nan(y, f"pointwise shortcut {case}")
    ref = R.pointwise_conv_ref(x.double(), wt.double(), bias.double(), None, True, sc.double(), stride)
    if prec == "fp32":
        assert rel_err(y, ref) <= 1e-5, (case, SEED)
    else:
        t = torch.relu(F.conv2d(x, wt[:, :cin, None, None], bias) + F.conv2d(sc, wt[:, cin:, None, None],
                                                                            stride=stride))
        floor = _scale(dtype) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(t, ref), f"pointwise shortcut {prec} {case}", floor)


CONV2D_CASES = [  # B, Cin, Cout, H, W, k, stride, pad
    (1, 3, 32, 128, 128, 3, 2, 1),    # the stem's first conv at S = 128
    (1, 32, 64, 64, 64, 3, 1, 1),     # the stem's second conv
    (1, 512, 128, 8, 8, 2, 2, 0),     # the last strided involution's pooled generation conv (K 2048, split-K)
    (2, 5, 7, 9, 11, 7, 1, 3),        # odd everything, 7x7
]


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CONV2D_CASES, ids=_ids(CONV2D_CASES))
def test_conv2d(case: tuple[int, ...], prec: str) -> None:
    """The implicit-GEMM convolution + bias + ReLU (split-K workspace where the plan splits) vs float64; fp16/bf16
    within 2x the error of PyTorch's own conv2d + relu in that dtype."""
    import torch.nn.functional as F

    dtype = DTYPES[prec]
    b, cin, cout, h, w, k, s, p = case
    g = generator(70 + CONV2D_CASES.index(case))
    x = torch.randn(b, cin, h, w, generator=g).to(DEV, dtype)
    wt = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).to(DEV, dtype)
    bias = torch.randn(cout, generator=g).to(DEV, dtype)
    ws = ops.conv2d_workspace(x, wt, s, p)
    y = ops.conv2d(x, wt, bias, None, True, s, p, workspace=ws)
    torch.cuda.synchronize()
    assert_no_nan(y, f"conv2d {case}")
    ref = R.conv2d_ref(x.double(), wt.double(), bias.double(), None, True, s, p)
    if prec == "fp32":
        assert rel_err(y, ref) <= 1e-5, (case, SEED)
    else:
        t = torch.relu(F.conv2d(x, wt, bias, stride=s, padding=p))
        floor = _scale(dtype) * float(ref.abs().max())
        assert_low_precision_bound(max_err(y, ref), max_err(t, ref), f"conv2d {prec} {case}", floor)
    if ws is not None:
        assert int(ws[:4096].count_nonzero()) == 0
        assert torch.equal(ops.conv2d(x, wt, bias, None, True, s, p, workspace=ws), y)


SA_CASES = [  # B, Ca, Cp, H, W, k
    (1, 1024, 1024, 8, 8, 7),   # CMIR's sa3 at S = 128
    (1, 2048, 2048, 4, 4, 7),   # sa4
    (3, 40, 24, 17, 19, 3),     # odd, batch 3, more pixels than threads
    (2, 48, 0, 6, 5, 5),        # one map
]


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", SA_CASES, ids=_ids(SA_CASES))
def test_spatial_attention(case: tuple[int, ...], prec: str) -> None:
    """Both attended maps and the attention map vs float64; fp16/bf16 within 2x the error of PyTorch's own SA
    (cat, mean, amax, cat, conv2d, sigmoid, multiplies) in that dtype."""
    import torch.nn.functional as F

    dtype = DTYPES[prec]
    b, ca, cp, h, w, k = case
    g = generator(90 + SA_CASES.index(case))
    a = torch.randn(b, ca, h, w, generator=g).to(DEV, dtype)
    p = torch.randn(b, cp, h, w, generator=g).to(DEV, dtype) if cp else None
    wt = (torch.randn(1, 2, k, k, generator=g) / k).to(DEV)
    bias = (torch.randn(1, generator=g) * 0.3).to(DEV)
    got = ops.spatial_attention(a, p, wt, bias)
    torch.cuda.synchronize()
    refs = R.spatial_attention_ref(a.double(), None if p is None else p.double(), wt.double(), bias.double())
    x = a if p is None else torch.cat([a, p], dim=1)
    stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    att = torch.sigmoid(F.conv2d(stats, wt.to(dtype), bias.to(dtype), padding=(k - 1) // 2))
    theirs = (a * att, None if p is None else p * att, att)
    for name, y, ref, t in zip(("a", "p", "att"), got, refs, theirs, strict=True):
        if ref is None:
            assert y is None
            continue
        assert_no_nan(y, f"sa {case} {name}")
        if prec == "fp32":
            assert rel_err(y, ref) <= 1e-5, (case, name, SEED)
        else:
            floor = _scale(dtype) * float(ref.abs().max())
            assert_low_precision_bound(max_err(y, ref), max_err(t, ref), f"sa {prec} {case} {name}", floor)


# ---------------------------------------------------------------- streams, graphs, cupy, torch.compile
def test_ops_run_on_the_callers_stream_and_in_cuda_graphs() -> None:
    case = (2, 48, 13, 13, 7, 2, 16)
    x, kern = _inv_inputs(case, torch.float32, 40)
    m, art, pv, wa, wp = _cmam_setup((2, 64, 4, 4, 32, 4), torch.float32, 41)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = ops.involution(x, kern, 7, 2)
        oa, _ = ops.cmam(art, pv, wa, wp, 4)
    torch.cuda.current_stream().wait_stream(side)
    assert rel_err(y, R.involution_ref(x, kern, 7, 2)) <= 2e-5
    assert rel_err(oa, R.cmam_ref(art, pv, wa, wp, 4)[0]) <= 1e-4

    graph = torch.cuda.CUDAGraph()
    sx, sk, sa, sp = x.clone(), kern.clone(), art.clone(), pv.clone()
    with torch.cuda.stream(side):  # warm-up before capture
        ops.involution(sx, sk, 7, 2)
        ops.cmam(sa, sp, wa, wp, 4)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        gy = ops.involution(sx, sk, 7, 2)
        ga, gp = ops.cmam(sa, sp, wa, wp, 4)
    x2, k2 = _inv_inputs(case, torch.float32, 42)
    sx.copy_(x2)
    sk.copy_(k2)
    sa.copy_(pv)
    sp.copy_(art)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(gy, R.involution_ref(x2, k2, 7, 2)) <= 2e-5
    ra, rp = R.cmam_ref(pv, art, wa, wp, 4)
    assert rel_err(ga, ra) <= 1e-4 and rel_err(gp, rp) <= 1e-4


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    case = (2, 32, 9, 10, 3, 2, 8)
    x, kern = _inv_inputs(case, torch.float32, 50)
    cx, ck = cupy.from_dlpack(x), cupy.from_dlpack(kern)
    y = ops.involution(cx, ck, 3, 2)
    assert isinstance(y, cupy.ndarray)
    cupy.cuda.get_current_stream().synchronize()
    assert rel_err(torch.from_dlpack(y), R.involution_ref(x, kern, 3, 2)) <= 2e-5
    m, art, pv, wa, wp = _cmam_setup((3, 48, 3, 5, 24, 3), torch.float16, 51)
    oa, op = ops.cmam(cupy.from_dlpack(art), cupy.from_dlpack(pv), cupy.from_dlpack(wa), cupy.from_dlpack(wp), 3)
    cupy.cuda.get_current_stream().synchronize()
    ta, tp = ops.cmam(art, pv, wa, wp, 3)
    torch.cuda.synchronize()
    assert rel_err(torch.from_dlpack(oa), ta) < 2e-3 and rel_err(torch.from_dlpack(op), tp) < 2e-3
    gen = ops.fold_generator(_generator_module(32, 3, 2, 8, 52))
    cg = [cupy.from_dlpack(gen[n]) for n in ("w1", "b1", "w2", "b2")]
    yf = ops.involution_fused(cx, *cg, 3, 2, 8)
    cupy.cuda.get_current_stream().synchronize()
    ref = R.involution_fused_ref(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], 3, 2, 8)
    assert rel_err(torch.from_dlpack(yf), ref) <= 1e-4


def test_torch_compile_sees_the_custom_ops() -> None:
    ops.register_torch_ops()
    case = (1, 32, 9, 10, 3, 1, 16)
    x, kern = _inv_inputs(case, torch.float32, 60)

    def f(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.relu(ops.involution(a, k, 3, 1)) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    assert rel_err(compiled(x, kern), 2.0 * torch.relu(R.involution_ref(x, kern, 3, 1))) <= 2e-5


def test_gpu_argument_errors() -> None:
    x, kern = _inv_inputs((1, 16, 7, 7, 3, 1, 16), torch.float32, 70)
    with pytest.raises(ValueError, match="CUDA device"):
        ops.involution(x, kern.cpu(), 3, 1)
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="one CUDA device"):
            ops.involution(x, kern.to("cuda:1"), 3, 1)
    with pytest.raises(ValueError, match="contiguous"):
        ops.involution(x.transpose(2, 3), kern, 3, 1)

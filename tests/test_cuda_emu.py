"""`cuda_emu` marker: the CUDA kernels and their launchers executed on the CPU by the emulator (cuda/emu), built with
AddressSanitizer + UBSan, against the float64 references of tests/test_gpu_kernels.py with its tolerances:

- fp32: normwise error vs float64 <= 2e-5 (involution) / 1e-4 (fused generation, CMAM);
- fp16/bf16: max error vs float64 on the same rounded inputs <= 2x the error of the same computation done by PyTorch
  at that precision (here on the CPU), plus one ulp of the output's largest magnitude.

Outputs and the CMAM workspace start as NaN (0xff bytes), shared memory too, so an unwritten element or a read
before a barrier shows. Each run uses one of the emulator's thread orders (reverse, forward, shuffled) and emulates
either 132 SMs (an H200) or one SM, which makes the launchers plan differently (channel splits and split-K, or whole
channel groups per block); the run's index picks both (`_variant`), so every kernel meets every order and both plans.
test_cuda_emu_semantics.py checks the orders themselves.
Shapes are small (emulation is slow) but cover odd C and H/W, stride 1/2, K 1/3/5/7/9, group_channels 3/4/5/8/16 (odd:
a half-empty packed fp16/bf16 channel pair), Ho 1 and odd Ho (a thread's second output row outside the image), batch 1
(channel split over blocks), several tiles per map, channel slices, several key tiles, head_dim up to 256, model
widths that are not multiples of 8 (the GEMM's W staged without cp.async), C = 2080 (split-K sums and LayerNorm rows
longer than one batch of loads). No grid
dimension grows with the batch except grid x (limit 2^31 - 1): the one that did, CMAM attention's grid z (65535,
i.e. batch 32767), was folded into grid x in issue 12, so no batch boundary is left to cross (a batch that large is
also far too slow to emulate).
"""

from __future__ import annotations

import re

import pytest
import torch
from _cuda_emu_helpers import CODES, ORDERS, EmuResult, failure_text, run_op
from _cuda_emu_helpers import bits_tensor as _tensor
from _cuda_emu_helpers import tensor_bits as _bits
from _gpu_helpers import LOW_PRECISION, SEED, assert_low_precision_bound, assert_no_nan, generator, max_err, rel_err

from cmir_trt import ops
from cmir_trt.gpu import bench
from cmir_trt.model.cmam import CMAM
from cmir_trt.model.involution import Involution2d, involution_aggregate
from cmir_trt.ops import reference as R
from cmir_trt.ops.cmam import MAX_HEAD_DIM

pytestmark = pytest.mark.cuda_emu

DTYPES = {"fp32": torch.float32, **LOW_PRECISION}

# (B, C, H, W, K, stride, group_channels)
INV_CASES = [
    (1, 16, 7, 7, 3, 1, 16),     # batch 1: a group's channels split over blocks
    (2, 48, 13, 13, 7, 2, 16),   # odd sizes, K 7, stride 2
    (2, 32, 9, 10, 3, 2, 8),     # group_channels 8, odd/even map
    (1, 24, 6, 5, 5, 1, 4),      # K 5, tiny odd map
    (1, 32, 11, 11, 9, 1, 16),   # generic path (K 9)
    (1, 16, 37, 45, 7, 1, 16),   # several output tiles in both directions, ragged
    (3, 32, 4, 4, 7, 1, 16),     # tiny map: several channels side by side in one block
    (1, 16, 15, 11, 3, 2, 16),   # odd map, stride 2, batch 1
    (1, 16, 3, 3, 7, 2, 16),     # 2x2 outputs, 9x9 halo: more staged elements than prefetch registers (direct staging)
    # two output rows per thread, fp16/bf16 staged as packed channel pairs (issue 13, second round):
    (1, 32, 28, 28, 7, 1, 16),   # the target map: 2 tiles of 28x14, several prefetch steps of 4 words (one-SM plan)
    (1, 9, 8, 7, 3, 1, 3),       # odd group_channels: each group's last fp16/bf16 word holds one channel
    (1, 10, 9, 9, 3, 1, 5),      # odd Ho (a thread's second row outside the image), gc 5 split over blocks: a
                                 # chunk of one half-empty word
    (2, 6, 11, 6, 9, 2, 3),      # generic K (9), stride 2, odd group_channels: the generic path's second pixel
    (1, 16, 5, 33, 5, 2, 16),    # K 5, stride 2, Ho 3 (the last row pair's second row outside), 17 columns
    (1, 16, 2, 9, 3, 2, 16),     # Ho 1: every thread's second row outside the image
    (2, 10, 2, 9, 1, 2, 5),      # K 1 (generic path), Ho 1, odd group_channels
    # the tensor-core kernel (fp16/bf16, stride 1, K 3/5/7, group_channels a multiple of 16; issue 13, fifth round);
    # fp32 and the other shapes keep the CUDA-core kernel:
    (1, 64, 9, 12, 5, 1, 32),    # group_channels 32: two 16-channel MMA tiles share each lane's band words
    (2, 16, 17, 40, 3, 1, 16),   # K 3, 40 columns -> 2 tile columns of 3 segments, 17 rows -> 3 tiles of 6
    (1, 32, 8, 32, 7, 1, 32),    # 73 KB of shared memory: the launcher's opt-in above 48 KiB
    (1, 64, 20, 28, 7, 1, 64),   # group_channels 64: tiles lowered to 7 rows to fit 112 KiB, four MMA channel tiles
    (1, 24, 12, 10, 7, 1, 8),    # group_channels 8: fp16/bf16 K 7 on the CUDA-core two-row path
]


def _ids(cases: list[tuple[int, ...]]) -> list[str]:
    return ["x".join(map(str, c)) for c in cases]


def _variant(i: int) -> tuple[str, int]:
    """Thread order and emulated SM count of the i-th run: the orders rotate, and every other run emulates a
    one-SM GPU, so the launchers also plan whole channel groups per block (several channels through one block's
    shared memory: the write-after-read barriers matter) and GEMMs without split-K."""
    return ORDERS[i % 3], (132, 1)[i % 2]


def _floor(dtype: torch.dtype, ref: torch.Tensor) -> float:
    return float(torch.finfo(dtype).eps) * float(ref.abs().max())


def _inv_inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w, k, s, gc = case
    g = generator(offset)
    ho, wo = -(-h // s), -(-w // s)
    x = torch.randn(b, c, h, w, generator=g).to(dtype)
    kern = (torch.randn(b, c // gc, k, k, ho, wo, generator=g) / k).to(dtype)
    return x, kern


def _run_involution(case: tuple[int, ...], prec: str, x: torch.Tensor, kern: torch.Tensor,
                    scale: torch.Tensor | None, shift: torch.Tensor | None, relu: bool, variant: int) -> torch.Tensor:
    b, c, h, w, k, s, gc = case
    inputs = {"x": _bits(x), "kernel": _bits(kern)}
    if scale is not None:
        inputs["scale"] = scale.numpy()
    if shift is not None:
        inputs["shift"] = shift.numpy()
    order, sms = _variant(variant)
    res = run_op("involution", [CODES[prec], b, c, h, w, k, s, gc, int(relu)], inputs, ["y"], order=order, sms=sms)
    assert res.returncode == 0, f"involution {case} {prec} ({order}, {sms} SMs): {failure_text(res)}"
    return _tensor(res.outputs["y"], DTYPES[prec], (b, c, -(-h // s), -(-w // s)))


# ---------------------------------------------------------------- involution
@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", INV_CASES, ids=_ids(INV_CASES))
def test_involution(case: tuple[int, ...], prec: str) -> None:
    dtype = DTYPES[prec]
    variant = INV_CASES.index(case) + list(DTYPES).index(prec)
    x, kern = _inv_inputs(case, dtype, 10)
    k, s = case[4], case[5]
    y = _run_involution(case, prec, x, kern, None, None, False, variant)
    assert_no_nan(y, f"involution {case} {prec}")
    ref = R.involution_ref(x, kern, k, s)  # float64 on the rounded inputs
    if prec == "fp32":
        assert rel_err(y, ref) <= 2e-5, (case, _variant(variant), SEED)
    else:
        theirs = involution_aggregate(x, kern, k, s)  # PyTorch's unfold at this precision
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"involution {prec} {case} {variant}",
                                   _floor(dtype, ref))


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", INV_CASES[:4], ids=_ids(INV_CASES[:4]))
def test_involution_epilogue(case: tuple[int, ...], prec: str) -> None:
    """The folded BN + ReLU epilogue (scale, shift, relu) and a shift-only epilogue without ReLU."""
    dtype = DTYPES[prec]
    c = case[1]
    k, s = case[4], case[5]
    x, kern = _inv_inputs(case, dtype, 11)
    g = generator(12)
    scale = torch.rand(c, generator=g) + 0.5
    shift = torch.randn(c, generator=g)
    for sc, relu in ((scale, True), (None, False)):
        y = _run_involution(case, prec, x, kern, sc, shift, relu, INV_CASES.index(case) + list(DTYPES).index(prec)
                            + int(relu))
        assert_no_nan(y, f"epilogue {case} {prec}")
        ref = R.involution_ref(x, kern, k, s, sc, shift, relu)
        if prec == "fp32":
            assert rel_err(y, ref) <= 2e-5, (case, relu, SEED)
        else:
            agg = involution_aggregate(x, kern, k, s)
            theirs = agg * sc.to(dtype)[None, :, None, None] if sc is not None else agg
            theirs = theirs + shift.to(dtype)[None, :, None, None]
            theirs = torch.relu(theirs) if relu else theirs
            assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"epilogue {prec} {case}",
                                       _floor(dtype, ref))


# The tensor-core kernel (fp16/bf16, stride 1, K 3/5/7, group_channels a multiple of 16) runs when the grid has at
# least 2 blocks per SM, else the CUDA-core kernel does (the runs above alternate 132 and 1 emulated SMs, so they see
# both): on one emulated SM every one of these launches takes it, in both precisions, plain and with the epilogue.
MMA_CASES = [c for c in INV_CASES if c[5] == 1 and c[6] % 16 == 0 and c[4] in (3, 5, 7)]


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize("case", MMA_CASES, ids=_ids(MMA_CASES))
def test_involution_tensor_core(case: tuple[int, ...], prec: str) -> None:
    dtype = DTYPES[prec]
    c, k, s = case[1], case[4], case[5]
    x, kern = _inv_inputs(case, dtype, 14)
    g = generator(15)
    scale = torch.rand(c, generator=g) + 0.5
    shift = torch.randn(c, generator=g)
    for i, (sc, sh, relu) in enumerate(((None, None, False), (scale, shift, True))):
        y = _run_involution(case, prec, x, kern, sc, sh, relu, 2 * (MMA_CASES.index(case) + i) + 1)  # odd: 1 SM
        assert_no_nan(y, f"tensor-core involution {case} {prec}")
        ref = R.involution_ref(x, kern, k, s, sc, sh, relu)
        theirs = involution_aggregate(x, kern, k, s)
        if sc is not None:
            theirs = torch.relu(theirs * sc.to(dtype)[None, :, None, None] + sh.to(dtype)[None, :, None, None])
        assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"tensor-core {prec} {case} {relu}",
                                   _floor(dtype, ref))


# ---------------------------------------------------------------- fused generation + aggregation
FUSED_CASES = [c for c in INV_CASES if c[4] in (1, 3, 5, 7)][:5]


def _generator_module(c: int, k: int, s: int, gc: int, offset: int) -> Involution2d:
    m = Involution2d(c, k, s, gc, 4).eval()
    g = generator(offset)
    with torch.no_grad():
        m.reduce.weight.copy_(torch.randn(m.reduce.weight.shape, generator=g) / c**0.5)
        m.span.weight.copy_(torch.randn(m.span.weight.shape, generator=g) / m.span.in_channels**0.5 / k)
        m.span.bias.copy_(torch.randn(m.span.bias.shape, generator=g) * 0.01)
        n = m.bn.num_features
        m.bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return m


@pytest.mark.parametrize("epilogue", [False, True], ids=["plain", "bn_relu"])
@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=_ids(FUSED_CASES))
def test_involution_fused(case: tuple[int, ...], prec: str, epilogue: bool) -> None:
    dtype = DTYPES[prec]
    b, c, h, w, k, s, gc = case
    order, sms = _variant(FUSED_CASES.index(case) + list(DTYPES).index(prec) + int(epilogue))
    m = _generator_module(c, k, s, gc, 20)
    gen = ops.fold_generator(m)
    x = torch.randn(b, c, h, w, generator=generator(21)).to(dtype)
    g = generator(22)
    scale = torch.rand(c, generator=g) + 0.5 if epilogue else None
    shift = torch.randn(c, generator=g) if epilogue else None
    inputs = {"x": _bits(x), **{n: gen[n].numpy() for n in ("w1", "b1", "w2", "b2")}}
    if epilogue:
        inputs["scale"], inputs["shift"] = scale.numpy(), shift.numpy()
    hidden = gen["w1"].shape[0]
    res = run_op("fused", [CODES[prec], b, c, h, w, k, s, gc, hidden, int(epilogue)], inputs, ["y"], order=order,
                 sms=sms)
    assert res.returncode == 0, f"fused {case} {prec} ({order}, {sms} SMs): {failure_text(res)}"
    y = _tensor(res.outputs["y"], dtype, (b, c, -(-h // s), -(-w // s)))
    assert_no_nan(y, f"fused {case} {prec}")
    with torch.no_grad():
        ref = R.involution_fused_ref(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc, scale, shift, epilogue)
        if prec == "fp32":
            assert rel_err(y, ref) <= 1e-4, (case, order, sms, SEED)
        else:
            theirs = m.to(dtype)(x)  # the whole Involution2d in PyTorch at this precision
            if epilogue:
                bn = (scale.to(dtype)[None, :, None, None], shift.to(dtype)[None, :, None, None])
                theirs = torch.relu(theirs * bn[0] + bn[1])
            assert_low_precision_bound(max_err(y, ref), max_err(theirs, ref), f"fused {prec} {case} {order}",
                                       _floor(dtype, ref))


# ---------------------------------------------------------------- CMAM
# (B, C, H, W, dim, heads): odd token counts, more than two key tiles (N = 72), a single token, odd batch, head_dim
# 8..64 and the largest the API advertises (256, above the 48 KiB default shared memory: needs the opt-in).
CMAM_CASES = [
    (1, 64, 4, 4, 32, 4),
    (3, 48, 3, 5, 24, 3),
    (2, 40, 8, 9, 64, 2),
    (1, 32, 1, 1, 16, 1),
    (5, 24, 2, 7, 40, 5),
    (1, 48, 3, 3, MAX_HEAD_DIM, 1),
    (2, 16, 2, 3, 512, 2),       # two heads of 256
    (1, 256, 2, 3, 64, 4),       # C = 256: the Q/K/V projections split K over blocks (atomics) on 132 SMs
    (1, 2080, 2, 2, 32, 2),      # C = 65 x 32: on 132 SMs 13 split-K partials (every dtype), summed 8 at a time
                                 # (several chunks, the last partial); LayerNorm rows of 65 per lane, 16 at a time
    (1, 20, 3, 3, 12, 3),        # K = C = 20 and K = d = 12 (not multiples of 8): the tensor-core GEMM stages W
                                 # with plain loads instead of cp.async
    (2, 16, 3, 3, 12, 3),        # K = 16 but Wk starts 408 bytes into the packed weights (not 16-byte aligned): the
                                 # same fallback; cp.async everywhere else
]


def _cmam_setup(case: tuple[int, ...], dtype: torch.dtype, offset: int):  # noqa: ANN202
    b, c, h, w, d, heads = case
    m = CMAM(c, heads, d).eval()
    g = generator(offset)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
        art = torch.randn(b, c, h, w, generator=g)
        pv = torch.randn(b, c, h, w, generator=g)
    wa, wp = ops.pack_cmam_module(m)
    return m, art.to(dtype), pv.to(dtype), wa.to(dtype), wp.to(dtype)


def run_cmam(case: tuple[int, ...], prec: str, art: torch.Tensor, pv: torch.Tensor, wa: torch.Tensor,
             wp: torch.Tensor, variant: int, eps: float = 1e-5):  # noqa: ANN201
    b, c, h, w, d, heads = case
    order, sms = _variant(variant)
    return run_op("cmam", [CODES[prec], b, c, h, w, d, heads, repr(eps)],
                  {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                  order=order, sms=sms)


def assert_cmam_outputs(res: EmuResult, case: tuple[int, ...], prec: str, m: torch.nn.Module, art: torch.Tensor,
                        pv: torch.Tensor, wa: torch.Tensor, wp: torch.Tensor, what: str) -> None:
    """Both outputs of a driver run against the float64 reference: within 1e-4 relative in fp32; in fp16/bf16 within
    2x the error of PyTorch's own module (m's weights in that dtype) on the same inputs."""
    _, c, _, _, d, heads = case
    dtype = DTYPES[prec]
    out_a = _tensor(res.outputs["art_out"], dtype, tuple(art.shape))
    out_p = _tensor(res.outputs["pv_out"], dtype, tuple(pv.shape))
    with torch.no_grad():
        ra, rp = R.cmam_ref(art, pv, wa, wp, heads, d, 1e-5)
        if prec == "fp32":
            assert rel_err(out_a, ra) <= 1e-4 and rel_err(out_p, rp) <= 1e-4, what
            return
        mh = CMAM(c, heads, d)
        mh.load_state_dict(m.state_dict())
        ta, tp = mh.to(dtype).eval()(art, pv)
    assert_low_precision_bound(max_err(out_a, ra), max_err(ta, ra), f"{what} art", _floor(dtype, ra))
    assert_low_precision_bound(max_err(out_p, rp), max_err(tp, rp), f"{what} pv", _floor(dtype, rp))


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CMAM_CASES, ids=_ids(CMAM_CASES))
def test_cmam(case: tuple[int, ...], prec: str) -> None:
    dtype = DTYPES[prec]
    b, c, h, w, d, heads = case
    variant = CMAM_CASES.index(case) + list(DTYPES).index(prec)
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 30)
    res = run_cmam(case, prec, art, pv, wa, wp, variant)
    assert res.returncode == 0, f"cmam {case} {prec} {_variant(variant)}: {failure_text(res)}"
    out_a = _tensor(res.outputs["art_out"], dtype, tuple(art.shape))
    out_p = _tensor(res.outputs["pv_out"], dtype, tuple(pv.shape))
    assert_no_nan(out_a, f"cmam art {case}")
    assert_no_nan(out_p, f"cmam pv {case}")
    with torch.no_grad():
        ra, rp = R.cmam_ref(art, pv, wa, wp, heads, d, 1e-5)
        if prec == "fp32":
            assert rel_err(out_a, ra) <= 1e-4 and rel_err(out_p, rp) <= 1e-4, (case, _variant(variant), SEED)
        else:
            mh = CMAM(c, heads, d)
            mh.load_state_dict(m.state_dict())
            mh = mh.to(dtype).eval()
            ta, tp = mh(art, pv)
            floor = float(torch.finfo(dtype).eps) * float(max(ra.abs().max(), rp.abs().max()))
            assert_low_precision_bound(max_err(out_a, ra), max_err(ta, ra), f"cmam art {prec} {case}", floor)
            assert_low_precision_bound(max_err(out_p, rp), max_err(tp, rp), f"cmam pv {prec} {case}", floor)


@pytest.mark.parametrize("prec", ["fp32", "fp16"])
@pytest.mark.parametrize("sms", [132, 1], ids=["split_k", "no_split"])
def test_cmam_is_four_launches_without_memset(prec: str, sms: int) -> None:
    """Issue 13: one short graph-capturable sequence at every batch size — four kernels, no memset — also at batch 1
    on 132 SMs, where both GEMMs split K (the projections' partial sums are added by the attention kernel, which also
    zeroes the output projections' atomic sums). The result is checked too, so the folding cannot drop work."""
    case = (1, 256, 4, 4, 256, 4)  # K = 256 in both GEMMs: split-K in both on 132 SMs, in fp32 and fp16 alike
    dtype = DTYPES[prec]
    b, c, h, w, d, heads = case
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 32)
    res = run_op("cmam", [CODES[prec], b, c, h, w, d, heads, "1e-05"],
                 {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                 sms=sms)
    assert res.returncode == 0, failure_text(res)
    assert "launches=4 memsets=0" in res.stdout, res.stdout
    out_a = _tensor(res.outputs["art_out"], dtype, tuple(art.shape))
    ra, _ = R.cmam_ref(art, pv, wa, wp, heads, d, 1e-5)
    if prec == "fp32":
        assert rel_err(out_a, ra) <= 1e-4
    else:
        mh = CMAM(c, heads, d)
        mh.load_state_dict(m.state_dict())
        with torch.no_grad():
            ta, _ = mh.to(dtype).eval()(art, pv)
        assert_low_precision_bound(max_err(out_a, ra), max_err(ta, ra), f"cmam {prec} {case}",
                                   _floor(dtype, ra))


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
def test_cmam_64_row_tiles_with_split_k(prec: str) -> None:
    """Batch 4 of 16 tokens on 16 SMs: both GEMMs take 64-row tiles *and* split K (the planner's choice from batch 4
    on an H100 too: taller tiles stage W once per 64 tokens), the projections storing partial sums, the output
    projections adding atomically; the 3xTF32 (fp32) and fp16/bf16 MMAs of the 64-row kernel against float64."""
    case = (4, 256, 4, 4, 256, 4)
    for n_out, k, problems in ((256, 256, 6), (256, 256, 2)):  # d = C = 256: (6 projections, 2 output projections)
        plan = bench.cmam_gemm_plan(64, n_out, k, problems, prec, 16)
        assert (plan["bm"], plan["splits"]) == (64, 2), plan
    dtype = DTYPES[prec]
    b, c, h, w, d, heads = case
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 33)
    res = run_op("cmam", [CODES[prec], b, c, h, w, d, heads, "1e-05"],
                 {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                 order="random", sms=16)
    assert res.returncode == 0, failure_text(res)
    assert_cmam_outputs(res, case, prec, m, art, pv, wa, wp, f"cmam {prec} {case}")


# The mma.sync tile (cuda/gemm_mma.cuh; fp16/bf16, 8-element chunks): (B, C, H, W, dim, heads), emulated SMs, and
# the launches the planner must choose — the Q/K/V projections' grid (M tiles of 128, n tiles of 256, 6 problems x K
# splits), and the output projections' (2 problems, never split; None: the WMMA kernel, fp32 pre-norm sums):
MMA_PROJ_CASES = [
    ((3, 264, 4, 4, 256, 8), 1, (1, 1, 6), (1, 2, 2)),     # M = 48 of a 128-row tile, K = C = 264: a k-step of 8
    ((8, 256, 2, 4, 192, 3), 16, (1, 1, 12), None),        # 8 tokens, n_out 192 of 256 columns, 2 K splits
    ((2, 520, 8, 8, 136, 4), 20, (1, 1, 12), (1, 3, 2)),   # 2 K splits (288, 232: a k-step of 8), not 4: 24 blocks
                                                           # would exceed the 20 SMs; C = 520: 3 n tiles
    ((9, 64, 4, 4, 512, 2), 1, (2, 2, 6), None),           # two M tiles (the second 16 rows), K = 64: 2 k-steps
]


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize(("case", "sms", "grid", "out_grid"), MMA_PROJ_CASES,
                         ids=_ids([c for c, _, _, _ in MMA_PROJ_CASES]))
def test_cmam_mma_projections(case: tuple[int, ...], sms: int, grid: tuple[int, int, int],
                              out_grid: tuple[int, int, int] | None, prec: str) -> None:
    """Issue 13 (sixth round): the projections on the 128 x 256 mma.sync tile — Q/K/V with ldmatrix.trans of the
    NCHW tokens, the output projections with ldmatrix of the row-major attention output, bias + residual and the
    pre-norm rows rounded to the op's dtype; the launches have the tile's shape (256 threads, 87,552 / 92,160 bytes of
    shared memory) and the grids of the Python mirrors (cmam_proj_plan, cmam_out_plan); both outputs within 2x
    PyTorch's own fp16/bf16 error of float64."""
    b, c, h, w, d, heads = case
    plan = bench.cmam_proj_plan(b * h * w, d, c, 6, prec, sms, h * w)
    assert plan["mma"] == 1 and (-(-b * h * w // 128), -(-d // 256), 6 * plan["splits"]) == grid, plan
    oplan = bench.cmam_out_plan(b * h * w, c, d, prec, sms)
    assert oplan["mma"] == (out_grid is not None), oplan
    if out_grid is not None:
        assert (-(-b * h * w // 128), -(-c // 256), 2) == out_grid and oplan["splits"] == 1, oplan
    dtype = DTYPES[prec]
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 34)
    res = run_op("cmam", [CODES[prec], b, c, h, w, d, heads, "1e-05"],
                 {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                 order="random", sms=sms)
    assert res.returncode == 0, failure_text(res)
    assert f"launches={3 if oplan['ln_fused'] else 4} memsets=0" in res.stdout, res.stdout  # LayerNorm fused or not
    assert f"launch 0: grid={grid[0]},{grid[1]},{grid[2]} threads=256 smem=87552" in res.stdout, res.stdout
    out_launch = re.search(r"^launch 2: grid=(\d+),(\d+),(\d+) threads=256 smem=(\d+)$", res.stdout, re.M)
    assert out_launch is not None, res.stdout
    if out_grid is None:
        assert int(out_launch.group(4)) != 92160, res.stdout
    else:
        assert out_launch.groups() == (*map(str, out_grid), "92160"), res.stdout
    assert_cmam_outputs(res, case, prec, m, art, pv, wa, wp, f"cmam {prec} {case}")


# The LayerNorm fused into the mma.sync output projections (plan_mma_ln; cooperative launch, one grid barrier):
# (B, C, H, W, dim, heads), emulated SMs, the fused launch's grid (M tiles, n tiles, 2 directions).
LN_FUSED_CASES = [
    ((2, 520, 8, 8, 136, 4), 20, (1, 3, 2)),   # C = 520: 3 n tiles, the last of 8 columns (Chan's weights differ)
    ((9, 136, 4, 4, 32, 2), 8, (2, 1, 2)),     # two M tiles (the second 16 rows), one partial n tile of 136; K =
                                               # d = 32: one k-step, ending on stage 0, where the epilogue's sums go
    ((8, 512, 4, 4, 256, 8), 16, (1, 2, 2)),   # the batch-64 target's structure: 16 tokens, d 256, Q/K/V on mma.sync
]


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
@pytest.mark.parametrize(("case", "sms", "grid"), LN_FUSED_CASES, ids=_ids([c for c, _, _ in LN_FUSED_CASES]))
def test_cmam_fused_layernorm(case: tuple[int, ...], sms: int, grid: tuple[int, int, int], prec: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 (seventh round): where every output-projection block is resident at once, the LayerNorm runs in
    their epilogue — three launches, the third cooperative with the grid of the Python mirror (cmam_out_plan's
    ln_fused) — and both outputs are within 2x PyTorch's own fp16/bf16 error of float64 (the pre-norm rows never
    rounded). A device that refuses the cooperative grid (CMIR_EMU_COOP_BLOCKS=1, as a GPU shared with other work)
    gets the unfused launches instead: the refused launch, then the output projections and the LayerNorm kernel,
    with a result as good."""
    b, c, h, w, d, heads = case
    oplan = bench.cmam_out_plan(b * h * w, c, d, prec, sms, h * w)
    assert oplan["mma"] == 1 and oplan["ln_fused"] == 1 and oplan["tiles"] == grid[0] * grid[1] * grid[2], oplan
    dtype = DTYPES[prec]
    m, art, pv, wa, wp = _cmam_setup(case, dtype, 36)
    for refused in (False, True):
        if refused:
            monkeypatch.setenv("CMIR_EMU_COOP_BLOCKS", "1")
        res = run_op("cmam", [CODES[prec], b, c, h, w, d, heads, "1e-05"],
                     {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                     order="random", sms=sms)
        assert res.returncode == 0, failure_text(res)
        assert f"launches={5 if refused else 3} memsets=0" in res.stdout, res.stdout
        assert f"launch 2: grid={grid[0]},{grid[1]},{grid[2]} threads=256 smem=92160" in res.stdout, res.stdout
        what = f"cmam {prec} {case} {'unfused fallback' if refused else 'fused'}"
        assert_cmam_outputs(res, case, prec, m, art, pv, wa, wp, what)


@pytest.mark.parametrize(("ws_off", "mma"), [(0, True), (4, False)], ids=["aligned", "offset_4"])
def test_cmam_misaligned_workspace_falls_back(ws_off: int, mma: bool) -> None:
    """A caller's workspace pointer 4 bytes into its buffer: the mma.sync tile's float2 partial stores and 16-byte
    cp.async of the attention output cannot use it, so both projections take the WMMA kernel (scalar stores and
    register loads) instead of failing; the result is still right. Aligned, the same shape takes the mma.sync tile."""
    case = (1, 256, 4, 4, 256, 4)
    b, c, h, w, d, heads = case
    m, art, pv, wa, wp = _cmam_setup(case, torch.float16, 35)
    res = run_op("cmam", [CODES["fp16"], b, c, h, w, d, heads, "1e-05", ws_off],
                 {"art": _bits(art), "pv": _bits(pv), "wa": _bits(wa), "wp": _bits(wp)}, ["art_out", "pv_out"],
                 order="random", sms=1)
    assert res.returncode == 0, failure_text(res)
    smem = [int(x) for x in re.findall(r"^launch [02]: grid=\S+ threads=\d+ smem=(\d+)$", res.stdout, re.M)]
    assert (smem == [87552, 92160]) == mma and (87552 not in smem and 92160 not in smem) != mma, res.stdout
    out_a = _tensor(res.outputs["art_out"], torch.float16, tuple(art.shape))
    with torch.no_grad():
        ra, _ = R.cmam_ref(art, pv, wa, wp, heads, d, 1e-5)
        mh = CMAM(c, heads, d)
        mh.load_state_dict(m.state_dict())
        ta, _ = mh.to(torch.float16).eval()(art, pv)
    assert_low_precision_bound(max_err(out_a, ra), max_err(ta, ra), f"cmam fp16 ws+{ws_off}", _floor(torch.float16, ra))


def test_cmam_head_dim_above_the_limit_is_refused() -> None:
    """head_dim 257 > 256: the launcher refuses it before any launch (cudaErrorInvalidValue), no partial output."""
    case = (1, 16, 2, 2, 257, 1)
    _, art, pv, wa, wp = _cmam_setup(case, torch.float32, 31)
    res = run_cmam(case, "fp32", art, pv, wa, wp, 0)
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_involution_bad_sizes_are_refused() -> None:
    """The launcher's own checks run under the emulator too: an even K, C not divisible by group_channels."""
    for b, c, h, w, k, s, gc in ((1, 16, 5, 5, 4, 1, 16), (1, 16, 5, 5, 3, 1, 12)):
        x = torch.randn(b, c, h, w, generator=generator(40))
        kern = torch.randn(b * (c // gc) * k * k * h * w, generator=generator(41))
        res = run_op("involution", [0, b, c, h, w, k, s, gc, 0], {"x": _bits(x), "kernel": _bits(kern)}, ["y"])
        assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)


def test_python_head_dim_limit_is_the_kernels() -> None:
    """The ops' MAX_HEAD_DIM (checked before any launch) is the kernel's kCmamMaxHeadDim (cuda/cmam.cuh)."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "cuda" / "cmam.cuh").read_text(encoding="utf-8")
    m = re.search(r"constexpr int kCmamMaxHeadDim = (\d+);", header)
    assert m is not None and int(m.group(1)) == MAX_HEAD_DIM

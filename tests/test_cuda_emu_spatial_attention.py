"""`cuda_emu` marker: the spatial-attention launcher (cuda/spatial_attention.cu: partial channel statistics per
32-channel slice, then per slice the image's statistics, the k x k conv, the sigmoid and the multiply) executed on the
CPU by the emulator, against the float64 reference ``spatial_attention_ref`` (CMIR's SpatialAttention on the
concatenation [a; p]):

- fp32: normwise error of each output vs float64 <= 1e-5;
- fp16/bf16: max error vs float64 on the same rounded inputs <= 2x the error of PyTorch's own cat / mean / amax /
  cat / conv2d / sigmoid / multiply at that precision (on the CPU), plus one ulp of the output's largest magnitude.

Outputs and the workspace start as NaN (0xff bytes); every run is exactly two launches and no memset. Shapes: the
model's sa3 / sa4 maps (8x8 and 4x4 at S = 128, channel counts over several slices with the a/p boundary inside a
slice), one map alone (Cp = 0), odd maps, batch 3, H*W over the 256 threads (one pixel per thread, no channel
split), kernel 3 and 7 with the kernel wider than the map.
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
from cmir_trt.ops.spatial_attention import MAX_PIXELS

pytestmark = pytest.mark.cuda_emu

DTYPES = {"fp32": torch.float32, **LOW_PRECISION}
FP32_TOL = 1e-5

# (B, Ca, Cp, H, W, k)
CASES = [
    (1, 48, 48, 8, 8, 7),      # sa3-like: 96 channels = 3 slices, the a/p boundary inside slice 1
    (1, 64, 80, 4, 4, 7),      # sa4-like: 7x7 kernel wider than the 4x4 map
    (3, 20, 0, 5, 7, 3),       # one map, batch 3, odd map
    (1, 8, 40, 17, 19, 3),     # 323 pixels > 256 threads: one pixel per thread
]


def _ids(cases: list[tuple[object, ...]]) -> list[str]:
    return ["x".join(str(int(v)) for v in c) for c in cases]


def _inputs(case: tuple[int, ...], dtype: torch.dtype, offset: int) -> dict[str, torch.Tensor]:
    b, ca, cp, h, w, k = case
    g = generator(offset)
    t = {"a": torch.randn(b, ca, h, w, generator=g).to(dtype),
         "w": (torch.randn(1, 2, k, k, generator=g) / k), "bias": torch.randn(1, generator=g) * 0.3}
    if cp:
        t["p"] = torch.randn(b, cp, h, w, generator=g).to(dtype)
    return t


def _torch_at_precision(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    x = torch.cat([t["a"], t["p"]], dim=1) if "p" in t else t["a"]
    stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    k = t["w"].shape[-1]
    att = torch.sigmoid(F.conv2d(stats, t["w"].to(x.dtype), t["bias"].to(x.dtype), padding=(k - 1) // 2))
    return t["a"] * att, (t["p"] * att if "p" in t else None), att


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_spatial_attention(case: tuple[int, ...], prec: str) -> None:
    b, ca, cp, h, w, k = case
    dtype = DTYPES[prec]
    i = CASES.index(case)
    t = _inputs(case, dtype, 120 + i)
    outs = ["ya", "att"] + (["yp"] if cp else [])
    res = run_op("sa", [CODES[prec], b, ca, cp, h, w, k], {n: _bits(v) for n, v in t.items()}, outs,
                 order=ORDERS[(i + list(DTYPES).index(prec)) % 3], seed=i)
    assert res.returncode == 0, f"sa {case} {prec}: {failure_text(res)}"
    assert "launches=2 memsets=0" in res.stdout, res.stdout
    got = {"ya": _tensor(res.outputs["ya"], dtype, (b, ca, h, w)), "att": _tensor(res.outputs["att"], dtype,
                                                                                   (b, 1, h, w))}
    if cp:
        got["yp"] = _tensor(res.outputs["yp"], dtype, (b, cp, h, w))
    ref_ya, ref_yp, ref_att = R.spatial_attention_ref(t["a"], t.get("p"), t["w"], t["bias"])
    refs = {"ya": ref_ya, "att": ref_att, "yp": ref_yp}
    theirs = dict(zip(("ya", "yp", "att"), _torch_at_precision(t), strict=True))
    for name, y in got.items():
        assert_no_nan(y, f"sa {case} {prec} {name}")
        if prec == "fp32":
            assert rel_err(y, refs[name]) <= FP32_TOL, (case, name, rel_err(y, refs[name]), SEED)
        else:
            floor = float(torch.finfo(dtype).eps) * float(refs[name].abs().max())
            assert_low_precision_bound(max_err(y, refs[name]), max_err(theirs[name], refs[name]),
                                       f"sa {prec} {case} {name}", floor)


@pytest.mark.parametrize("sizes", [(1, 8, 8, 4, 4, 4), (1, 8, 8, 4, 4, 17), (1, 8, 8, 64, 33, 3),
                                   (0, 8, 8, 4, 4, 3), (1, 0, 8, 4, 4, 3)],
                         ids=["even_k", "k_over_15", "pixels_over_limit", "batch0", "ca0"])
def test_spatial_attention_bad_sizes_are_refused(sizes: tuple[int, ...]) -> None:
    b, ca, cp, h, w, k = sizes
    assert h * w > MAX_PIXELS or k % 2 == 0 or k > 15 or min(b, ca) < 1
    res = run_op("sa", [0, b, ca, cp, h, w, k], {}, ["ya"])
    assert res.returncode == 3 and "cudaErrorInvalidValue" in res.stdout, failure_text(res)

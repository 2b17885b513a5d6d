"""CUDA ops, host side (no GPU needed): the build contains the kernels for sm_80/sm_90, the launchers and the
Python ops reject bad arguments before touching a device, the custom ops' fake implementations give the right
shapes, the float64 references of the ops agree with the model's independent loops, and the GPU model rewrite
(conv+BN folding, involution epilogue, fused generation, packed CMAM weights) reproduces the CPU reference model when
the float64 reference ops stand in for the kernels.

Tolerances: references vs the naive loops / nn modules in float64: 1e-10 normwise; the rewritten float32 model vs
the reference float32 model: 1e-4 absolute on probabilities/logits/heatmaps (folding reorders float32 rounding).
"""

from __future__ import annotations

import copy
import glob
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _gpu_helpers import SEED, generator, rel_err

import cmir_trt
from cmir_trt import ops
from cmir_trt.model.cmam import CMAM
from cmir_trt.model.cmir import CMIRConfig, build_model
from cmir_trt.model.involution import Involution2d, involution_aggregate
from cmir_trt.ops import reference as R

from _reference import involution_loop


def _cuda_module():
    info = cmir_trt.build_info()
    if not info["cuda"]:
        pytest.skip("this build has no CUDA part")
    import cmir_trt._cuda as m

    return m


# ---------------------------------------------------------------- build
def test_build_reports_cuda_archs() -> None:
    info = cmir_trt.build_info()
    if not info["cuda"]:
        pytest.skip("built without nvcc")
    assert {"sm_80", "sm_90"} <= set(info["cuda_archs"])
    m = _cuda_module()
    assert set(m.KERNELS) == {"involution", "involution_fused", "cmam", "pointwise_conv"}


def test_cuda_module_embeds_sm80_and_sm90_kernels() -> None:
    m = _cuda_module()
    data = open(m.__file__, "rb").read()
    archs = set()
    i = data.find(b"\x7fELF", 1)
    while i >= 0:
        if data[i + 4] == 2 and struct.unpack_from("<H", data, i + 18)[0] == 190:  # 64-bit ELF, EM_CUDA
            archs.add((struct.unpack_from("<I", data, i + 48)[0] >> 8) & 0xFF)
        i = data.find(b"\x7fELF", i + 4)
    if not archs:
        pytest.skip("the fatbin is compressed: its cubins cannot be inspected without cuobjdump")
    assert {80, 90} <= archs
    for name in (b"involution_fwd", b"involution_fused_fwd", b"attention_kernel", b"gemm_wmma_kernel",
                 b"layernorm_nchw_kernel"):
        assert name in data, name


def test_import_of_ops_and_gpu_needs_no_torch() -> None:
    code = "import sys, cmir_trt.ops, cmir_trt.gpu; print(int('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0"


# ---------------------------------------------------------------- launchers reject bad sizes before any CUDA call
def test_launchers_reject_bad_arguments() -> None:
    m = _cuda_module()
    fake = 1 << 20  # never dereferenced: validation fails first
    f32 = m.DTYPE_FLOAT32
    bad = [
        dict(x=0),                        # null pointer
        dict(channels=24),                # not divisible by group_channels
        dict(kernel_size=4),              # even K
        dict(kernel_size=17),             # K too large
        dict(stride=5),
        dict(batch=0),
        dict(dtype=7),
    ]
    for override in bad:
        args = dict(dtype=f32, x=fake, kernel=fake, y=fake, batch=1, channels=32, height=9, width=9, kernel_size=7,
                    stride=1, group_channels=16)
        args.update(override)
        with pytest.raises(ValueError, match="cudaErrorInvalidValue"):
            m.involution(**args)
    with pytest.raises(ValueError):
        m.involution_fused(f32, fake, fake, fake, 0, fake, fake, 1, 32, 9, 9, 7, 1, 16, 8)  # b2 null
    with pytest.raises(ValueError):
        m.cmam(f32, fake, fake, fake, fake, fake, fake, fake, 0, 1, 64, 2, 2, 32, 4, 1e-5)  # workspace too small
    with pytest.raises(ValueError):
        m.cmam(f32, fake, fake, fake, fake, fake, fake, fake, 1 << 30, 1, 64, 2, 2, 30, 4, 1e-5)  # dim % heads
    far = 1 << 40  # pointwise: distinct fake buffers far apart, so only the overridden argument is wrong
    for override in (dict(bias=0), dict(cin=0), dict(dtype=7), dict(y=fake), dict(residual=far + 64)):
        args = dict(dtype=f32, x=fake, w=2 * far, bias=3 * far, residual=0, y=far, batch=1, cin=8, cout=8, height=4,
                    width=4)
        args.update(override)
        with pytest.raises(ValueError, match="cudaErrorInvalidValue"):
            m.pointwise_conv(**args)
    for override in (dict(workspace=fake + 64, workspace_bytes=1 << 20),  # overlaps x
                     dict(workspace=far - 4096, workspace_bytes=8192)):    # overlaps y
        args = dict(dtype=f32, x=fake, w=2 * far, bias=3 * far, residual=0, y=far, batch=1, cin=8, cout=8, height=4,
                    width=4)
        args.update(override)
        with pytest.raises(ValueError, match="cudaErrorInvalidValue"):
            m.pointwise_conv(**args)
    assert m.pointwise_conv_unsupported(1, 8, 8, 4, 4) is None
    assert "2^30" in m.pointwise_conv_unsupported(2, 8, 8, 2**15, 2**14 + 1)


def _split_workspace_bound(b: int, cin: int, cout: int, h: int, w: int) -> int:
    """cuda/gemm.cuh's workspace bound written out: for 16- and 64-row tiles at 160 SMs, double the K splits while
    tiles * splits < 320 and each split keeps >= 4 k-steps of 32; 4096 counter bytes + fp32 partial tiles."""
    most = 0
    for bm in (16, 64):
        tiles = -(-b * h * w // bm) * -(-cout // 128)
        cap = max(1, cin // 128)
        splits = 1
        while splits < cap and tiles * splits < 320:
            splits *= 2
        splits = min(splits, cap)
        k_split = -(-cin // splits)
        k_per = -(-k_split // 32) * 32
        splits = -(-cin // k_per)
        if splits > 1:
            most = max(most, 4096 + tiles * splits * bm * 128 * 4)
    return most


@pytest.mark.parametrize("sizes", [(1, 1024, 256, 8, 8), (1, 512, 2048, 4, 4), (1, 1030, 40, 3, 5),
                                   (1, 64, 64, 32, 32), (64, 1024, 256, 8, 8), (2, 127, 9, 1, 1)])
def test_pointwise_workspace_size(sizes: tuple[int, ...]) -> None:
    """The launcher's split-K workspace size is the bound over both tile heights at 160 SMs (0 where no plan splits);
    the Python helper returns the same."""
    m = _cuda_module()
    assert m.pointwise_conv_workspace_size(*sizes) == _split_workspace_bound(*sizes) == \
        ops.pointwise_workspace_size(*sizes)
    assert m.pointwise_conv_workspace_size(0, 8, 8, 4, 4) == 0  # unsupported sizes: no workspace


def test_pointwise_workspace_argument_checks() -> None:
    from cmir_trt.ops._arrays import ArrayInfo
    from cmir_trt.ops.pointwise import check_workspace

    def ws(n: int, dtype: str = "uint8", device: str = "cuda:0", contiguous: bool = True) -> ArrayInfo:
        return ArrayInfo("torch", (n,), dtype, device, contiguous)

    assert check_workspace(ws(5000), "cuda:0", 4100) == 5000
    with pytest.raises(TypeError, match="1-D uint8"):
        check_workspace(ws(5000, "float32"), "cuda:0", 4100)
    with pytest.raises(ValueError, match="5000 bytes, these sizes need 6000"):
        check_workspace(ws(5000), "cuda:0", 6000)
    with pytest.raises(ValueError, match="on cuda:0"):
        check_workspace(ws(5000, device="cuda:1"), "cuda:0", 10)
    with pytest.raises(ValueError, match="contiguous"):
        check_workspace(ws(5000, contiguous=False), "cuda:0", 10)


def test_cmam_workspace_and_packed_sizes() -> None:
    m = _cuda_module()
    b, c, h, w, d = 3, 48, 3, 5, 24
    mrows = b * h * w
    need = (6 * mrows * d + 2 * mrows * d + 2 * mrows * c) * 4
    got = m.cmam_workspace_size(m.DTYPE_FLOAT16, b, c, h, w, d, 4)
    assert need <= got <= need + 3 * 256
    assert m.cmam_packed_weights_size(c, d) == ops.packed_weights_size(c, d) == 4 * d * c + 3 * d + 3 * c
    mod = CMAM(c, heads=4, dim=d)
    wa, wp = ops.pack_cmam_module(mod)
    assert wa.shape == wp.shape == (ops.packed_weights_size(c, d),)


# ---------------------------------------------------------------- Python argument checks (host side)
def _inv_inputs(b=2, c=32, h=9, w=11, k=7, s=2, gc=16, dtype=torch.float32):
    ho, wo = -(-h // s), -(-w // s)
    return torch.randn(b, c, h, w, dtype=dtype), torch.randn(b, c // gc, k, k, ho, wo, dtype=dtype)


@pytest.mark.parametrize("case, exc, match", [
    ("x3d", ValueError, r"x must be \[B, C, H, W\]"),
    ("kernel_shape", ValueError, "does not match"),
    ("groups", ValueError, "divisible"),
    ("even_k", ValueError, "odd"),
    ("stride", ValueError, "stride"),
    ("dtype", TypeError, "dtype"),
    ("mixed_dtype", TypeError, "one dtype"),
    ("noncontig", ValueError, "contiguous"),
    ("cpu", ValueError, "CUDA device"),
    ("numpy", TypeError, "CUDA tensor"),
    ("scale_shape", ValueError, "scale"),
])
def test_involution_argument_checks(case: str, exc: type, match: str) -> None:
    x, kern = _inv_inputs()
    k, s = 7, 2
    kwargs = {}
    if case == "x3d":
        x = x[0]
    elif case == "kernel_shape":
        kern = kern[..., :-1]
    elif case == "groups":
        x, kern = torch.randn(2, 30, 9, 11), torch.randn(2, 4, 7, 7, 5, 6)
    elif case == "even_k":
        k = 6
    elif case == "stride":
        s = 0
    elif case == "dtype":
        x, kern = x.double(), kern.double()
    elif case == "mixed_dtype":
        kern = kern.half()
    elif case == "noncontig":
        x = torch.randn(2, 32, 11, 9).transpose(2, 3)
    elif case == "numpy":
        x = x.numpy()
    elif case == "scale_shape":
        kwargs["scale"] = torch.ones(31)
    with pytest.raises(exc, match=match):
        ops.involution(x, kern, k, s, **kwargs)


def test_fused_and_cmam_argument_checks() -> None:
    x = torch.randn(1, 32, 7, 7)
    gen = ops.fold_generator(Involution2d(32, 3, 1, 16, 4).eval())
    args = [gen["w1"], gen["b1"], gen["w2"], gen["b2"]]
    with pytest.raises(ValueError, match="CUDA device"):
        ops.involution_fused(x, *args, 3, 1, 16)
    with pytest.raises(ValueError, match="w2 must have shape"):
        ops.involution_fused(x, args[0], args[1], args[2][:-1], args[3], 3, 1, 16)
    with pytest.raises(TypeError, match="float32"):
        ops.involution_fused(x, args[0].half(), *args[1:], 3, 1, 16)
    with pytest.raises(ValueError, match="kernel_size 1, 3, 5, 7"):
        ops.involution_fused(x, *args, 9, 1, 16)
    art = torch.randn(2, 64, 3, 5)
    wa, wp = ops.pack_cmam_module(CMAM(64, heads=4, dim=32))
    with pytest.raises(ValueError, match="CUDA device"):
        ops.cmam(art, art.clone(), wa, wp, 4)
    with pytest.raises(ValueError, match="one shape"):
        ops.cmam(art, art[:1], wa, wp, 4)
    with pytest.raises(ValueError, match="no integer dim"):
        ops.cmam(art, art.clone(), wa[:-1], wp, 4)
    with pytest.raises(ValueError, match="multiple of heads"):
        ops.cmam(art, art.clone(), wa, wp, 5)
    with pytest.raises(TypeError, match="one dtype"):
        ops.cmam(art, art.clone(), wa.half(), wp, 4)


def test_pointwise_argument_checks() -> None:
    x = torch.randn(2, 24, 5, 7)
    w, b = torch.randn(40, 24), torch.randn(40)
    r = torch.randn(2, 40, 5, 7)
    with pytest.raises(ValueError, match="CUDA device"):
        ops.pointwise_conv(x, w, b, r, True)
    with pytest.raises(ValueError, match="CUDA device"):
        ops.pointwise_conv(x, w[:, :, None, None], b)  # a 1x1 conv weight is taken as is
    with pytest.raises(ValueError, match=r"weight must be \[Cout, Cin=24\]"):
        ops.pointwise_conv(x, w[:, :23], b)
    with pytest.raises(ValueError, match="1x1 kernel"):
        ops.pointwise_conv(x, torch.randn(40, 24, 3, 3), b)
    with pytest.raises(ValueError, match=r"bias must have shape \(40,\)"):
        ops.pointwise_conv(x, w, b[:-1])
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        ops.pointwise_conv(x, w, b, r[:, :-1])
    with pytest.raises(TypeError, match="one dtype"):
        ops.pointwise_conv(x, w.half(), b)
    with pytest.raises(ValueError, match="contiguous"):
        ops.pointwise_conv(x.transpose(2, 3), w[:, :], b)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        ops.pointwise_conv(x, w, b, r.numpy())
    with pytest.raises(TypeError, match="CUDA tensor"):
        ops.pointwise_conv(x.numpy(), w.numpy(), b.numpy())


def test_pointwise_shortcut_argument_checks() -> None:
    x = torch.randn(2, 32, 4, 5)
    w, b, sc = torch.randn(40, 48), torch.randn(40), torch.randn(2, 16, 8, 9)
    with pytest.raises(ValueError, match="CUDA device"):  # well-formed: only the device is wrong
        ops.pointwise_conv(x, w, b, shortcut=sc, shortcut_stride=2)
    with pytest.raises(ValueError, match=r"weight must be \[Cout, Cin \+ Cs = 32 \+ 16\]"):
        ops.pointwise_conv(x, w[:, :32], b, shortcut=sc, shortcut_stride=2)
    with pytest.raises(ValueError, match="gives 3x3, not the output's 4x5"):
        ops.pointwise_conv(x, w, b, shortcut=sc, shortcut_stride=3)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.pointwise_conv(torch.randn(2, 24, 4, 5), torch.randn(40, 40), b, shortcut=sc, shortcut_stride=2)
    with pytest.raises(ValueError, match="shortcut_stride must be an int"):
        ops.pointwise_conv(x, w, b, shortcut=sc, shortcut_stride=0)
    with pytest.raises(ValueError, match=r"\[B=2, Cs, Hs, Ws\]"):
        ops.pointwise_conv(x, w, b, shortcut=sc[:1], shortcut_stride=2)
    with pytest.raises(TypeError, match="one dtype"):
        ops.pointwise_conv(x, w, b, shortcut=sc.half(), shortcut_stride=2)
    with pytest.raises(TypeError, match="shortcut must be a torch.Tensor"):
        ops.pointwise_conv(x, w, b, shortcut=sc.numpy(), shortcut_stride=2)
    # The launcher's own check agrees with the Python one (cuda/pointwise.cuh).
    m = _cuda_module()
    assert m.pointwise_shortcut_unsupported(32, 4, 5, 16, 8, 9, 2) is None
    assert "multiple of 32" in m.pointwise_shortcut_unsupported(24, 4, 5, 16, 8, 9, 2)
    assert "map" in m.pointwise_shortcut_unsupported(32, 4, 5, 16, 8, 9, 3)
    assert "positive" in m.pointwise_shortcut_unsupported(32, 4, 5, 0, 8, 9, 2)


def test_conv2d_argument_checks() -> None:
    x = torch.randn(2, 6, 9, 11)
    w, b = torch.randn(8, 6, 3, 3), torch.randn(8)
    r = torch.randn(2, 8, 5, 6)
    with pytest.raises(ValueError, match="CUDA device"):  # well-formed: only the device is wrong
        ops.conv2d(x, w, b, r, True, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"weight must be \[Cout, Cin=6, kh, kw\]"):
        ops.conv2d(x, w[:, :5], b)
    with pytest.raises(ValueError, match="padding 3 must be smaller than the 3x3 kernel"):
        ops.conv2d(x, w, b, padding=3)
    with pytest.raises(ValueError, match="does not fit"):
        ops.conv2d(torch.randn(1, 6, 2, 2), w, b)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        ops.conv2d(x, w, b, stride=0)
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(2, 8, 5, 6\)"):
        ops.conv2d(x, w, b, r[:, :, :4], stride=2, padding=1)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        ops.conv2d(x, w, b[:3])
    with pytest.raises(TypeError, match="one dtype"):
        ops.conv2d(x, w.half(), b)
    m = _cuda_module()
    assert m.conv2d_unsupported(2, 6, 8, 9, 11, 3, 3, 2, 1) is None
    assert "padding" in m.conv2d_unsupported(2, 6, 8, 9, 11, 3, 3, 2, 3)
    assert "does not fit" in m.conv2d_unsupported(1, 6, 8, 2, 2, 3, 3, 1, 0)
    # the workspace bound is the pointwise one at K = Cin*kh*kw over the output map
    assert m.conv2d_workspace_size(1, 512, 128, 8, 8, 2, 2, 2, 0) == m.pointwise_conv_workspace_size(1, 2048, 128,
                                                                                                     4, 4) > 0
    assert m.conv2d_workspace_size(1, 3, 32, 128, 128, 3, 3, 2, 1) == 0  # K 27: never split


def test_conv2d_reference_and_pool_fold() -> None:
    """conv2d_ref is F.conv2d + residual + ReLU in float64; a 2x2 average pool followed by a 1x1 conv is the 2x2
    stride-2 conv with w/4 at each tap (the GPU backend's fold of a strided involution's generation input)."""
    g = generator(61)
    x = torch.randn(2, 6, 8, 10, generator=g, dtype=torch.float64)
    w = torch.randn(5, 6, 3, 3, generator=g, dtype=torch.float64)
    b, r = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, 5, generator=g, dtype=torch.float64)
    want = torch.relu(torch.nn.functional.conv2d(x, w, b, stride=2, padding=1) + r)
    assert rel_err(R.conv2d_ref(x, w, b, r, True, 2, 1), want) < 1e-12
    w1 = torch.randn(5, 6, generator=g, dtype=torch.float64)
    pooled = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True), w1[:, :, None, None])
    folded = R.conv2d_ref(x, (w1 / 4)[:, :, None, None].expand(-1, -1, 2, 2), None, None, False, 2, 0)
    assert rel_err(folded, pooled) < 1e-12


def test_spatial_attention_argument_checks_and_reference() -> None:
    """Argument checks before any launch; the float64 reference is the model's SpatialAttention.apply_pair."""
    from cmir_trt.model.spatial import SpatialAttention

    a, p = torch.randn(2, 6, 5, 7), torch.randn(2, 10, 5, 7)
    w, b = torch.randn(1, 2, 7, 7), torch.randn(1)
    with pytest.raises(ValueError, match="CUDA device"):  # well-formed: only the device is wrong
        ops.spatial_attention(a, p, w, b)
    with pytest.raises(ValueError, match=r"p must be \[B=2, Cp, 5, 7\]"):
        ops.spatial_attention(a, p[:, :, :4], w, b)
    with pytest.raises(ValueError, match=r"weight must be the SA conv's \[1, 2, k, k\]"):
        ops.spatial_attention(a, p, w[:, :1], b)
    with pytest.raises(ValueError, match="odd"):
        ops.spatial_attention(a, p, torch.randn(1, 2, 4, 4), b)
    with pytest.raises(ValueError, match="H\\*W = 2304 exceeds"):
        ops.spatial_attention(torch.randn(1, 2, 48, 48), None, w, b)
    with pytest.raises(TypeError, match="float32"):
        ops.spatial_attention(a, p, w.half(), b)
    with pytest.raises(TypeError, match="one dtype"):
        ops.spatial_attention(a, p.half(), w, b)
    m = _cuda_module()
    assert m.spatial_attention_unsupported(2, 6, 10, 5, 7, 7) is None
    assert "2048" in m.spatial_attention_unsupported(1, 2, 0, 48, 48, 7)
    assert m.spatial_attention_workspace_size(2, 6, 10, 5, 7) == 4 * 2 * 1 * 2 * 35  # one 32-channel slice
    sa = SpatialAttention(7).double().eval()
    g = generator(62)
    a64, p64 = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 10, 5, 7, generator=g,
                                                                                    dtype=torch.float64)
    with torch.no_grad():
        want = sa.apply_pair(a64, p64)
    got = R.spatial_attention_ref(a64, p64, sa.conv.weight.detach(), sa.conv.bias.detach())
    for x, y in zip(got, want, strict=True):
        assert rel_err(x, y) < 1e-12


def test_backend_spatial_attention_falls_back_over_the_pixel_limit() -> None:
    """The backend's SA module: the op (here its float64 stand-in) up to MAX_PIXELS, the original module beyond —
    the same function either way."""
    from cmir_trt.gpu.backend import _build_wrappers
    from cmir_trt.model.spatial import SpatialAttention
    from cmir_trt.ops.spatial_attention import MAX_PIXELS

    sa = SpatialAttention(7).eval()
    cuda_sa = _build_wrappers("reference")["CudaSpatialAttention"](sa, "cpu")
    g = generator(63)
    for side in (8, 48):  # 64 and 2304 pixels
        assert (side * side > MAX_PIXELS) == (side == 48)
        a, p = torch.randn(1, 6, side, side, generator=g), torch.randn(1, 10, side, side, generator=g)
        with torch.no_grad():
            got, want = cuda_sa.apply_pair(a, p), sa.apply_pair(a, p)
            assert rel_err(cuda_sa.attention(a), sa.attention(a)) < 1e-5
        for x, y in zip(got, want, strict=True):
            assert rel_err(x, y) < 1e-5


def test_pointwise_reference_matches_conv2d() -> None:
    g = generator(6)
    x = torch.randn(3, 24, 5, 7, generator=g, dtype=torch.float64)
    w = torch.randn(40, 24, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    r = torch.randn(3, 40, 5, 7, generator=g, dtype=torch.float64)
    want = torch.relu(torch.nn.functional.conv2d(x, w, b) + r)
    assert rel_err(R.pointwise_conv_ref(x, w, b, r, True), want) < 1e-12
    assert rel_err(R.pointwise_conv_ref(x, w[:, :, 0, 0], b), torch.nn.functional.conv2d(x, w, b)) < 1e-12
    # with a projection shortcut: conv1x1(x) + conv1x1 at stride 2 of the shortcut (odd 9x13 -> 5x7)
    sc = torch.randn(3, 6, 9, 13, generator=g, dtype=torch.float64)
    ws = torch.randn(40, 6, 1, 1, generator=g, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w, b) + torch.nn.functional.conv2d(sc, ws, stride=2)
    got = R.pointwise_conv_ref(x, torch.cat([w, ws], dim=1), b, None, False, sc, 2)
    assert rel_err(got, want) < 1e-12


def test_fake_impls_give_output_shapes() -> None:
    ops.register_torch_ops()
    x = torch.empty(2, 48, 13, 13, device="meta")
    kern = torch.empty(2, 3, 7, 7, 7, 7, device="meta")
    y = torch.ops.cmir_trt.involution(x, kern, 7, 2, None, None, True)
    assert y.shape == (2, 48, 7, 7) and y.device.type == "meta"
    w1, b1 = torch.empty(12, 48, device="meta"), torch.empty(12, device="meta")
    w2, b2 = torch.empty(3 * 9, 12, device="meta"), torch.empty(27, device="meta")
    y = torch.ops.cmir_trt.involution_fused(x, w1, b1, w2, b2, 3, 1, 16, None, None, False)
    assert y.shape == (2, 48, 13, 13)
    a = torch.empty(1, 64, 3, 5, device="meta", dtype=torch.float16)
    w = torch.empty(ops.packed_weights_size(64, 32), device="meta", dtype=torch.float16)
    oa, op = torch.ops.cmir_trt.cmam(a, a, w, w, 4, 32, 1e-5)
    assert oa.shape == op.shape == a.shape and oa.dtype == torch.float16
    pw, pb = torch.empty(40, 64, device="meta", dtype=torch.float16), torch.empty(40, device="meta",
                                                                                  dtype=torch.float16)
    y = torch.ops.cmir_trt.pointwise_conv(a, pw, pb, None, True)
    assert y.shape == (1, 40, 3, 5) and y.dtype == torch.float16
    ya, yp, att = torch.ops.cmir_trt.spatial_attention(a, a, torch.empty(1, 2, 7, 7, device="meta"),
                                                       torch.empty(1, device="meta"))
    assert ya.shape == yp.shape == a.shape and att.shape == (1, 1, 3, 5) and att.dtype == torch.float16
    cw = torch.empty(40, 64, 3, 3, device="meta", dtype=torch.float16)
    y = torch.ops.cmir_trt.conv2d(a, cw, pb, None, True, 2, 1)
    assert y.shape == (1, 40, 2, 3) and y.dtype == torch.float16


# ---------------------------------------------------------------- the float64 references used by the GPU tests
@pytest.mark.parametrize("c, h, w, k, s, gc", [(48, 13, 13, 7, 2, 16), (32, 9, 10, 3, 1, 8), (16, 5, 7, 7, 1, 16),
                                               (24, 6, 5, 3, 2, 4)])
def test_involution_reference_matches_loop(c: int, h: int, w: int, k: int, s: int, gc: int) -> None:
    g = generator(1)
    ho, wo = -(-h // s), -(-w // s)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    kern = torch.randn(2, c // gc, k, k, ho, wo, generator=g, dtype=torch.float64)
    loop = torch.from_numpy(involution_loop(x.numpy(), kern.numpy(), k, s))
    assert rel_err(R.involution_ref(x, kern, k, s), loop) < 1e-10
    assert rel_err(involution_aggregate(x, kern, k, s), loop) < 1e-10
    scale, shift = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    ep = R.involution_ref(x, kern, k, s, scale, shift, True)
    want = (loop * scale.double()[None, :, None, None] + shift.double()[None, :, None, None]).clamp_min(0)
    assert rel_err(ep, want) < 1e-10


@pytest.mark.parametrize("c, h, w, k, s", [(32, 9, 11, 7, 2), (48, 7, 7, 3, 1)])
def test_fused_reference_matches_module(c: int, h: int, w: int, k: int, s: int) -> None:
    g = generator(2)
    m = Involution2d(c, k, s, 16, 4).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        m.bn.running_mean.copy_(torch.randn(m.bn.num_features, generator=g) * 0.1)
        m.bn.running_var.copy_(torch.rand(m.bn.num_features, generator=g) + 0.5)
        x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
        want = m(x)
        gen = ops.fold_generator(m)
        got = R.involution_fused_ref(x, gen["w1"].double(), gen["b1"].double(), gen["w2"].double(),
                                     gen["b2"].double(), k, s, 16)
    # fold_generator returns float32 weights: float32-level agreement
    assert rel_err(got, want) < 1e-5


def test_cmam_reference_matches_module() -> None:
    g = generator(3)
    m = CMAM(48, heads=4, dim=32).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.2)
        art = torch.randn(2, 48, 3, 5, generator=g, dtype=torch.float64)
        pv = torch.randn(2, 48, 3, 5, generator=g, dtype=torch.float64)
        wa, wp = ops.pack_cmam_module(m)
        ra, rp = m(art, pv)
        oa, op = R.cmam_ref(art, pv, wa.double(), wp.double(), 4, 32, m.norm_art.eps)
    assert rel_err(oa, ra) < 1e-5 and rel_err(op, rp) < 1e-5  # packed weights are float32


# ---------------------------------------------------------------- the GPU model rewrite, checked on the CPU
def _random_bn(model: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


@pytest.mark.parametrize("fused", [False, True])
def test_gpu_model_rewrite_matches_reference_on_cpu(fused: bool) -> None:
    from cmir_trt.gpu.backend import prepare_model

    torch.manual_seed(SEED)
    model = build_model(CMIRConfig(width=0.25, image_size=32, cmam_dim=32, cmam_heads=4)).eval()
    _random_bn(model, generator(4))
    g = generator(5)
    art, pv = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    clin = torch.randn(2, 8, generator=g)
    with torch.no_grad():
        want = model(art, pv, clin)
        rewritten = prepare_model(model, "fp32", "cpu", fused_involution=fused, impl="reference")
        got = rewritten(art, pv, clin)
    kinds = {type(m).__name__ for m in rewritten.modules()}
    assert {"CudaInvolution", "CudaCMAM"} <= kinds and "BatchNorm2d" not in kinds
    for name, a, b in zip(("logit", "probability", "heatmap"), got, want, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-4, (name, SEED)
    # The source model is left untouched.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("variant", ["S1", "M1", "M2", "full"])
def test_gpu_model_rewrite_is_the_same_function_in_float64(variant: str) -> None:
    """Issue 13, third round: every stride-1 1x1 conv on pointwise_conv (its ReLU fused), each bottleneck's conv3 with
    the residual add and the final ReLU in that one call, the involution generation's two 1x1 convs too; fourth
    round: a strided 1x1 downsample joins its conv3's call as the projection shortcut (mid channels a multiple of 32:
    stages 1-3 at width 0.25); 3x3 convs stay on cuDNN. Checked in float64 against the untouched model (the only
    difference left is the float32 rounding of the folded weights), for plain (S1/M1) and involution (M2/full)
    backbones, with and without the fused involution (M2)."""
    from cmir_trt.gpu.backend import prepare_model

    torch.manual_seed(SEED + 7)
    model = build_model(CMIRConfig(variant=variant, width=0.25, image_size=32, cmam_dim=32, cmam_heads=4)).eval()
    _random_bn(model, generator(8))
    g = generator(9)
    art, pv = (torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2))
    clin = torch.randn(3, 8, generator=g, dtype=torch.float64)
    for fused in (False, True) if variant == "M2" else (False,):
        with torch.no_grad():
            rewritten = prepare_model(model, "fp32", "cpu", fused_involution=fused, impl="reference").double()
            got = rewritten(art, pv, clin)
            want = copy.deepcopy(model).double()(art, pv, clin)
        kinds = [type(m).__name__ for m in rewritten.modules()]
        assert kinds.count("CudaBottleneck") == 8 * (2 if variant != "S1" else 1) and "BatchNorm2d" not in kinds
        phases = 2 if variant != "S1" else 1
        assert sum(getattr(m, "shortcut_stride", 0) == 2 for m in rewritten.modules()) == 3 * phases
        for m in rewritten.modules():  # no 1x1 conv left to cuDNN, strided or not
            if isinstance(m, torch.nn.Conv2d):
                assert m.kernel_size != (1, 1), m
        for name, a, b in zip(("logit", "probability", "heatmap"), got, want, strict=True):
            assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(b.abs().max())), (variant, fused, name, SEED)


def test_backend_without_gpu_is_a_clear_runtime_error(tmp_path: os.PathLike) -> None:
    from cmir_trt._native import cuda_device_count

    if cuda_device_count() > 0 and torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU error path cannot be exercised")
    from cmir_trt.gpu import TorchCudaBackend

    with pytest.raises(RuntimeError, match="cuda|CUDA"):
        TorchCudaBackend(build_model(CMIRConfig(width=0.25, image_size=32)))
    with pytest.raises(ValueError, match="precision"):
        TorchCudaBackend("missing.pt", precision="int8")
    # The Engine facade's cuda/torch route ends in the same clear error.
    from cmir_trt.model.checkpoint import save_checkpoint

    path = save_checkpoint(Path(tmp_path) / "m.pt", build_model(CMIRConfig(width=0.25, image_size=32)))
    with pytest.raises(RuntimeError, match="cuda|CUDA"):
        cmir_trt.Engine(path, device="cuda", backend="torch", precision="fp16")


def test_cupy_free_paths_are_type_errors() -> None:
    arr = np.zeros((1, 16, 4, 4), np.float32)
    with pytest.raises(TypeError, match="CUDA tensor"):
        ops.cmam(arr, arr, arr.ravel(), arr.ravel(), 1)
    with pytest.raises(TypeError, match="CUDA tensor"):
        ops.involution_fused(arr, arr, arr, arr, arr, 3)


def test_torch_ops_registered_names() -> None:
    ops.register_torch_ops()
    for name in ("involution", "involution_fused", "cmam", "pointwise_conv"):
        assert hasattr(torch.ops.cmir_trt, name)
    assert glob.glob(os.path.join(os.path.dirname(cmir_trt.__file__), "*")), "package files"


def test_argument_checks_trace_under_torch_compile_fullgraph() -> None:
    """The ops' host-side checks (describe + shape/dtype checks, run before the custom op) must be traceable by
    Dynamo with fullgraph=True, or torch.compile of any model using the ops fails (issue 12: they read
    ``data_ptr()``, which Dynamo refuses). Traced here on CPU tensors with the eager backend (no GPU, no inductor);
    check_cuda is left out because these tensors are deliberately not on a GPU."""
    from cmir_trt.ops._arrays import check_contiguous, check_float, check_same_dtype, describe

    def f(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        infos = {"x": describe(x, "x"), "kernel": describe(k, "kernel")}
        for n, i in infos.items():
            check_float(i, n)
        check_same_dtype(infos)
        check_contiguous(infos)
        return x * infos["x"].shape[1] + infos["kernel"].shape[2]

    x, k = torch.randn(1, 16, 5, 5), torch.randn(1, 1, 3, 3, 5, 5)
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="eager")(x, k)
    assert torch.equal(out, x * 16 + 3)

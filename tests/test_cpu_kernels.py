"""The native CPU kernels (involution, CMAM, SA; cpp/src/kernels) against their scalar C++ references, independent
float64 numpy references and the PyTorch reference modules, on odd shapes, every vector ISA of this CPU, 1 and 2
threads, plus bit-identity run to run and the bindings' input checks.

Tolerances (float32 kernels vs float64 truth):
- involution: |y - y64| <= 2e-6 * sum|k*x| per element (the scale of a float32 sum's rounding error), + 1e-7.
- CMAM (LayerNorm outputs, O(1)): max |y - y64| <= 1e-5; vs the torch module 5e-5.
- SA: att and a*att within 2e-6 abs (+1e-5 rel for a*att).
- scalar C++ references (float64 accumulation, rounded once) vs numpy float64: 1 float32 ulp-level (<= 1e-6 rel).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _cpu_kernels_helpers import (
    cmam_direction64,
    fold_involution_generation,
    involution_abs_sum,
    involution_nhwc64,
    kernels_module,
    pack_cmam_direction,
    spatial_attention64,
    vector_isas,
)

K = kernels_module()
ISAS = vector_isas()
THREADS = (1, 2)


@pytest.fixture(autouse=True, scope="module")
def _split_every_layer() -> Iterator[None]:
    # The kernels skip extra threads for small layers; the test shapes are small, so make every layer split across
    # its threads here, or "1 vs 2 threads" would compare two single-threaded runs.
    previous = K.set_parallel_grain(0)
    yield
    K.set_parallel_grain(previous)


def rng_for(*key: object) -> np.random.Generator:
    # seeded from the test's parameters (not hash(), which is salted per process)
    return np.random.default_rng([ord(ch) for ch in repr(key)])


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def test_this_cpu_runs_a_vector_path() -> None:
    # CI machines have AVX-512; the AVX2 path is forced on them too. Without either the vector tests would be empty.
    assert ISAS, "no vector ISA supported: the fast kernels would only run their scalar fallback"
    assert K.resolve_isa("scalar") == "scalar"


# ---------------------------------------------------------------- involution
# (batch, H, W, C, K, stride, group_channels)
INV_SHAPES = [
    (1, 13, 13, 48, 3, 1, 16),
    (3, 13, 13, 48, 7, 2, 16),
    (1, 15, 17, 48, 7, 1, 16),
    (3, 15, 17, 48, 3, 2, 16),
    (1, 9, 11, 64, 5, 2, 32),   # two vectors per group
    (2, 7, 5, 48, 3, 1, 8),     # group smaller than a zmm: AVX-512 generic loop, AVX2 vector path
    (1, 6, 7, 12, 3, 2, 4),     # group smaller than any vector: generic loop everywhere
    (1, 4, 3, 16, 7, 1, 16),    # kernel wider than the image: every tap clipped somewhere
    (1, 5, 5, 224, 3, 1, 16),   # 14 vectors: a full AVX-512 block of 8 + a tail of 6
]


def involution_case(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    b, h, w, c, k, s, gc = shape
    rng = rng_for("inv", shape)
    ho, wo = -(-h // s), -(-w // s)
    x = f32(rng.standard_normal((b, h, w, c)))
    kern = f32(rng.standard_normal((b, ho, wo, (c // gc) * k * k)))
    return x, kern, (k, s, gc)


@pytest.mark.parametrize("shape", INV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_involution_against_float64_and_reference(shape: tuple[int, ...]) -> None:
    x, kern, (k, s, gc) = involution_case(shape)
    y64 = involution_nhwc64(x, kern, k, s, gc)
    bound = 2e-6 * involution_abs_sum(x, kern, k, s, gc) + 1e-7
    ref = K.involution_ref(x, kern, k, s, gc)
    np.testing.assert_allclose(ref, y64, rtol=1e-6, atol=1e-7)
    for isa in ISAS + ["scalar"]:
        results = {}
        for threads in THREADS:
            y = K.involution(x, kern, k, s, gc, threads=threads, isa=isa)
            assert y.shape == y64.shape and y.dtype == np.float32
            err = np.abs(y - y64)
            assert np.all(err <= bound), f"{isa} t={threads}: max err {err.max():.3g}, worst/bound " \
                                         f"{(err / bound).max():.3g}"
            again = K.involution(x, kern, k, s, gc, threads=threads, isa=isa)
            assert np.array_equal(y, again), f"{isa} t={threads}: not bit-identical run to run"
            results[threads] = y
        # Each output is computed by the same instruction sequence whatever the split: identical across threads.
        assert np.array_equal(results[1], results[2]), f"{isa}: results differ between 1 and 2 threads"


def test_involution_six_dim_kernel_and_epilogue() -> None:
    shape = (3, 13, 13, 48, 7, 2, 16)
    x, kern, (k, s, gc) = involution_case(shape)
    b, ho, wo = kern.shape[:3]
    rng = rng_for("epi")
    scale = f32(rng.uniform(0.5, 2.0, 48))
    shift = f32(rng.standard_normal(48))
    y64 = np.maximum(involution_nhwc64(x, kern, k, s, gc) * scale + shift, 0.0)
    bound = 1e-5 * involution_abs_sum(x, kern, k, s, gc) * scale + 1e-6
    k6 = kern.reshape(b, ho, wo, 48 // gc, k, k)
    ref = K.involution_ref(x, k6, k, s, gc, scale=scale, shift=shift, relu=True)
    np.testing.assert_allclose(ref, y64, rtol=1e-6, atol=1e-6)
    for isa in ISAS:
        y = K.involution(x, k6, k, s, gc, threads=2, isa=isa, scale=scale, shift=shift, relu=True)
        assert np.all(np.abs(y - y64) <= bound), isa
        assert (y >= 0).all()
        # epilogue fused == epilogue applied afterwards (up to the rounding of one fma vs mul+add)
        plain = K.involution(x, kern, k, s, gc, threads=1, isa=isa)
        np.testing.assert_allclose(y, np.maximum(plain * scale + shift, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stride,kernel_size,batch,hw", [(1, 7, 1, (13, 13)), (2, 7, 3, (15, 17)),
                                                         (2, 3, 3, (13, 13))])
def test_involution_against_torch_module(stride: int, kernel_size: int, batch: int, hw: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    from cmir_trt.model import Involution2d, involution_aggregate

    torch.manual_seed(1000 * stride + kernel_size)
    mod = Involution2d(48, kernel_size, stride).eval()
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mod.bn.running_mean.normal_()
        mod.bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(batch, 48, *hw)
        want = mod(x)  # the reference: generate_kernel + involution_aggregate (unfold)
        kern = mod.generate_kernel(x)  # [B, G, K, K, Ho, Wo]
        assert torch.equal(involution_aggregate(x, kern, kernel_size, stride), want)
    x_nhwc = f32(x.permute(0, 2, 3, 1).numpy())
    k_nhwc = f32(kern.permute(0, 4, 5, 1, 2, 3).numpy())  # [B, Ho, Wo, G, K, K]
    scale = involution_abs_sum(x_nhwc, k_nhwc.reshape(*k_nhwc.shape[:3], -1), kernel_size, stride, 16)
    want_nhwc = want.permute(0, 2, 3, 1).numpy()
    for isa in ISAS:
        for threads in THREADS:
            y = K.involution(x_nhwc, k_nhwc, kernel_size, stride, 16, threads=threads, isa=isa)
            err = np.abs(y - want_nhwc)
            assert np.all(err <= 2e-5 * scale + 1e-6), f"{isa} t={threads}: max err {err.max():.3g}"


# (batch, H, W, C, K, stride, group_channels)
FUSED_SHAPES = [
    (1, 13, 13, 48, 7, 1, 16),
    (3, 15, 17, 48, 7, 2, 16),
    (3, 13, 13, 48, 3, 2, 16),
    (1, 15, 17, 48, 3, 1, 8),
    (2, 9, 7, 32, 3, 3, 16),  # stride 3: border blocks of 3x3, 3x1 ... averaged over their valid pixels
]


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_involution_against_torch_module_and_reference(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    from cmir_trt.model import Involution2d

    b, h, w, c, k, s, gc = shape
    torch.manual_seed(sum(shape))
    mod = Involution2d(c, k, s, gc).eval()
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
        mod.bn.running_mean.normal_()
        mod.bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(b, c, h, w)
        want = mod(x).permute(0, 2, 3, 1).numpy()
        kern = mod.generate_kernel(x).permute(0, 4, 5, 1, 2, 3).reshape(b, want.shape[1], want.shape[2], -1).numpy()
    x_nhwc = f32(x.permute(0, 2, 3, 1).numpy())
    gen = fold_involution_generation(mod)
    # error scale: sum |k x| of the aggregation, k the (torch-generated) kernels
    bound = 2e-5 * involution_abs_sum(x_nhwc, f32(kern), k, s, gc) + 1e-5
    ref = K.involution_fused_ref(x_nhwc, *gen, k, s, gc)
    assert np.all(np.abs(ref - want) <= bound), f"ref vs torch: max err {np.abs(ref - want).max():.3g}"
    for isa in ISAS + ["scalar"]:
        results = {}
        for threads in THREADS:
            y = K.involution_fused(x_nhwc, *gen, k, s, gc, threads=threads, isa=isa)
            err = np.abs(y - want)
            assert np.all(err <= bound), f"{isa} t={threads}: max err {err.max():.3g}"
            assert np.all(np.abs(y - ref) <= bound), f"{isa} t={threads}: vs ref {np.abs(y - ref).max():.3g}"
            assert np.array_equal(y, K.involution_fused(x_nhwc, *gen, k, s, gc, threads=threads, isa=isa))
            results[threads] = y
        assert np.array_equal(results[1], results[2]), f"{isa}: fused differs between 1 and 2 threads"
        # the epilogue (the model's BN + ReLU after the involution) inside the fused kernel
        sc, sh = f32(np.linspace(0.5, 1.5, c)), f32(np.linspace(-1, 1, c))
        ye = K.involution_fused(x_nhwc, *gen, k, s, gc, threads=2, isa=isa, scale=sc, shift=sh, relu=True)
        np.testing.assert_allclose(ye, np.maximum(results[2] * sc + sh, 0), rtol=1e-6, atol=1e-6, err_msg=isa)


def test_fused_involution_rejects_bad_weights() -> None:
    x = f32(np.ones((1, 5, 5, 32)))
    rw, rb = f32(np.ones((32, 8))), f32(np.ones(8))
    sw, sb = f32(np.ones((8, 2 * 9))), f32(np.ones(2 * 9))
    assert K.involution_fused(x, rw, rb, sw, sb, 3).shape == (1, 5, 5, 32)
    with pytest.raises(ValueError, match="reduce_wt must have shape"):
        K.involution_fused(x, f32(np.ones((31, 8))), rb, sw, sb, 3)
    with pytest.raises(ValueError, match="span_wt must have shape"):
        K.involution_fused(x, rw, rb, sw, sb, 5)  # a 5x5 kernel needs G*25 span outputs
    with pytest.raises(ValueError, match="reduce_b must have shape"):
        K.involution_fused(x, rw, f32(np.ones(9)), sw, sb, 3)
    with pytest.raises(TypeError, match="span_b must be a float32"):
        K.involution_fused(x, rw, rb, sw, sb.astype(np.float64), 3)


# ---------------------------------------------------------------- CMAM
# (batch, tokens, channels, dim, heads)
CMAM_SHAPES = [
    (1, 16, 48, 32, 4),
    (3, 49, 48, 32, 4),
    (3, 16, 40, 24, 3),   # channels and head_dim not multiples of the vector width: masked tails
    (1, 49, 96, 64, 8),
    (2, 7, 17, 6, 2),     # everything odd and tiny
]


def cmam_case(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    b, n, c, d, _ = shape
    rng = rng_for("cmam", shape)
    art = f32(rng.standard_normal((b, n, c)))
    pv = f32(rng.standard_normal((b, n, c)))
    wlen = 4 * d * c + 3 * d + 3 * c
    assert K.cmam_weight_floats(c, d) == wlen

    def weights() -> np.ndarray:
        w = rng.standard_normal(wlen) / np.sqrt(c)
        w[-2 * c:-c] = rng.uniform(0.5, 1.5, c)  # LayerNorm gamma
        return f32(w)

    return art, pv, weights(), weights()


@pytest.mark.parametrize("shape", CMAM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cmam_against_float64_and_reference(shape: tuple[int, ...]) -> None:
    b, n, c, d, heads = shape
    art, pv, wa, wp = cmam_case(shape)
    ya64 = cmam_direction64(art, pv, wa, c, d, heads, 1e-5)
    yp64 = cmam_direction64(pv, art, wp, c, d, heads, 1e-5)
    ra, rp = K.cmam_ref(art, pv, wa, wp, d, heads)
    np.testing.assert_allclose(ra, ya64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rp, yp64, rtol=1e-6, atol=1e-6)
    for isa in ISAS + ["scalar"]:
        results = {}
        for threads in THREADS:
            ya, yp = K.cmam(art, pv, wa, wp, d, heads, threads=threads, isa=isa)
            assert ya.shape == art.shape and yp.shape == pv.shape
            assert np.abs(ya - ya64).max() <= 1e-5, f"{isa} t={threads}: art err {np.abs(ya - ya64).max():.3g}"
            assert np.abs(yp - yp64).max() <= 1e-5, f"{isa} t={threads}: pv err {np.abs(yp - yp64).max():.3g}"
            again = K.cmam(art, pv, wa, wp, d, heads, threads=threads, isa=isa)
            assert np.array_equal(ya, again[0]) and np.array_equal(yp, again[1]), f"{isa}: not bit-identical"
            results[threads] = (ya, yp)
        assert all(np.array_equal(u, v) for u, v in zip(results[1], results[2], strict=True)), isa
        # outputs written over the inputs (art_out == art, pv_out == pv) give the same result
        ia, ip = K.cmam(art, pv, wa, wp, d, heads, threads=2, isa=isa, in_place=True)
        assert np.array_equal(ia, results[2][0]) and np.array_equal(ip, results[2][1]), f"{isa}: in place"


@pytest.mark.parametrize("batch,hw", [(1, (4, 4)), (3, (7, 7))])
def test_cmam_against_torch_module(batch: int, hw: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    from cmir_trt.model.cmam import CMAM

    torch.manual_seed(7 * batch)
    c, d, heads = 48, 32, 4
    mod = CMAM(c, heads, d).eval()
    with torch.no_grad():
        for norm in (mod.norm_art, mod.norm_pv):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        art = torch.randn(batch, c, *hw)
        pv = torch.randn(batch, c, *hw)
        want_a, want_p = mod(art, pv)
    wa = pack_cmam_direction(mod.art_from_pv, mod.norm_art)
    wp = pack_cmam_direction(mod.pv_from_art, mod.norm_pv)
    assert wa.size == K.cmam_weight_floats(c, d)

    def tokens(t: object) -> np.ndarray:  # NCHW -> [B, H*W, C] (= NHWC memory)
        return f32(t.flatten(2).transpose(1, 2).numpy())

    for isa in ISAS:
        for threads in THREADS:
            ya, yp = K.cmam(tokens(art), tokens(pv), wa, wp, d, heads, eps=mod.norm_art.eps, threads=threads, isa=isa)
            np.testing.assert_allclose(ya, tokens(want_a), rtol=0, atol=5e-5, err_msg=f"{isa} t={threads}")
            np.testing.assert_allclose(yp, tokens(want_p), rtol=0, atol=5e-5, err_msg=f"{isa} t={threads}")


# ---------------------------------------------------------------- spatial attention
# (batch, H, W, C, K, two phases)
SA_SHAPES = [
    (1, 13, 13, 48, 7, True),
    (3, 15, 17, 48, 7, True),
    (3, 13, 13, 48, 3, True),
    (1, 4, 4, 40, 7, True),     # 4x4 map under a 7x7 kernel; C with a masked tail
    (2, 15, 17, 48, 7, False),  # single phase
]


def sa_case(shape: tuple) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    b, h, w, c, k, two = shape
    rng = rng_for("sa", shape)
    a = f32(rng.standard_normal((b, h, w, c)))
    p = f32(rng.standard_normal((b, h, w, c))) if two else None
    weight = f32(rng.standard_normal((1, 2, k, k)) * 0.3)
    return a, p, weight, float(rng.standard_normal())


@pytest.mark.parametrize("shape", SA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spatial_attention_against_float64_and_reference(shape: tuple) -> None:
    a, p, weight, bias = sa_case(shape)
    bias = float(np.float32(bias))
    att64, a64, p64 = spatial_attention64(a, p, weight, bias)
    r_att, r_a, r_p = K.spatial_attention_ref(a, p, weight, bias)
    np.testing.assert_allclose(r_att, att64, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r_a, a64, rtol=2e-6, atol=1e-7)
    assert (r_p is None) == (p is None)
    for isa in ISAS + ["scalar"]:
        results = {}
        for threads in THREADS:
            att, ya, yp = K.spatial_attention(a, p, weight, bias, threads=threads, isa=isa)
            np.testing.assert_allclose(att, att64, rtol=0, atol=2e-6, err_msg=f"{isa} t={threads}")
            np.testing.assert_allclose(ya, a64, rtol=1e-5, atol=2e-6, err_msg=f"{isa} t={threads}")
            if p is None:
                assert yp is None
            else:
                np.testing.assert_allclose(yp, p64, rtol=1e-5, atol=2e-6, err_msg=f"{isa} t={threads}")
            again = K.spatial_attention(a, p, weight, bias, threads=threads, isa=isa)
            assert all(u is None and v is None or np.array_equal(u, v) for u, v in
                       zip((att, ya, yp), again, strict=True)), f"{isa} t={threads}: not bit-identical"
            results[threads] = (att, ya, yp)
        assert all(u is None and v is None or np.array_equal(u, v)
                   for u, v in zip(results[1], results[2], strict=True)), isa
        inplace = K.spatial_attention(a, p, weight, bias, threads=2, isa=isa, in_place=True)
        assert all(u is None and v is None or np.array_equal(u, v)
                   for u, v in zip(inplace, results[2], strict=True)), f"{isa}: in place"


@pytest.mark.parametrize("batch,hw,kernel_size", [(1, (13, 13), 7), (3, (15, 17), 3)])
def test_spatial_attention_against_torch_module(batch: int, hw: tuple[int, int], kernel_size: int) -> None:
    torch = pytest.importorskip("torch")
    from cmir_trt.model.spatial import SpatialAttention

    torch.manual_seed(kernel_size)
    mod = SpatialAttention(kernel_size).eval()
    with torch.no_grad():
        mod.conv.weight.normal_(0, 0.3)
        mod.conv.bias.normal_()
        a = torch.randn(batch, 48, *hw)
        p = torch.randn(batch, 48, *hw)
        att = mod.attention(torch.cat([a, p], dim=1))  # as CMIR.forward uses it
        want_a, want_p = a * att, p * att
    weight = f32(mod.conv.weight.detach().numpy())
    bias = float(mod.conv.bias.item())

    def nhwc(t: object) -> np.ndarray:
        return f32(t.permute(0, 2, 3, 1).numpy())

    for isa in ISAS:
        for threads in THREADS:
            got_att, ya, yp = K.spatial_attention(nhwc(a), nhwc(p), weight, bias, threads=threads, isa=isa)
            np.testing.assert_allclose(got_att, att[:, 0].numpy(), rtol=0, atol=2e-6, err_msg=isa)
            np.testing.assert_allclose(ya, nhwc(want_a), rtol=1e-5, atol=2e-6, err_msg=isa)
            np.testing.assert_allclose(yp, nhwc(want_p), rtol=1e-5, atol=2e-6, err_msg=isa)


def test_default_and_oversubscribed_thread_counts_give_identical_results() -> None:
    # threads <= 0 means all cores; more threads than work items leaves some idle. The split never changes a value.
    x, kern, (k, s, gc) = involution_case((3, 15, 17, 48, 7, 2, 16))
    art, pv, wa, wp = cmam_case((2, 7, 17, 6, 2))
    a, p, weight, bias = sa_case((1, 4, 4, 40, 7, True))
    for isa in ISAS:
        ys = [K.involution(x, kern, k, s, gc, threads=t, isa=isa) for t in (1, 0, 3, 64)]
        assert all(np.array_equal(ys[0], y) for y in ys[1:]), isa
        cs = [K.cmam(art, pv, wa, wp, 6, 2, threads=t, isa=isa) for t in (1, 0, 3, 64)]
        assert all(np.array_equal(cs[0][i], c[i]) for c in cs[1:] for i in (0, 1)), isa
        ss = [K.spatial_attention(a, p, weight, bias, threads=t, isa=isa) for t in (1, 0, 3, 64)]
        assert all(np.array_equal(ss[0][i], r[i]) for r in ss[1:] for i in (0, 1, 2)), isa


def test_parallel_grain_changes_speed_only() -> None:
    x, kern, (k, s, gc) = involution_case((3, 15, 17, 48, 7, 2, 16))
    a, p, weight, bias = sa_case((1, 13, 13, 48, 7, True))
    base = K.involution(x, kern, k, s, gc, threads=2)
    base_sa = K.spatial_attention(a, p, weight, bias, threads=2)
    previous = K.set_parallel_grain(1e12)  # everything single-threaded
    try:
        assert np.array_equal(K.involution(x, kern, k, s, gc, threads=2), base)
        assert all(np.array_equal(u, v) for u, v in zip(K.spatial_attention(a, p, weight, bias, threads=2), base_sa,
                                                         strict=True))
        with pytest.raises(ValueError, match="grain"):
            K.set_parallel_grain(-1.0)
    finally:
        K.set_parallel_grain(previous)


def test_concurrent_calls_from_python_threads_match_sequential() -> None:
    # The bindings release the GIL; kernels keep no shared mutable state, so calls from several threads at once (the
    # engine's concurrent predict) give the sequential results bit for bit.
    from concurrent.futures import ThreadPoolExecutor

    x, kern, (k, s, gc) = involution_case((3, 15, 17, 48, 7, 2, 16))
    art, pv, wa, wp = cmam_case((3, 16, 40, 24, 3))
    a, p, weight, bias = sa_case((3, 15, 17, 48, 7, True))
    jobs = [
        lambda: (K.involution(x, kern, k, s, gc, threads=2),),
        lambda: K.cmam(art, pv, wa, wp, 24, 3, threads=2),
        lambda: K.spatial_attention(a, p, weight, bias, threads=2),
    ]
    want = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [(i % 3, pool.submit(jobs[i % 3])) for i in range(36)]
        for which, fut in futures:
            assert all(np.array_equal(u, v) for u, v in zip(fut.result(), want[which], strict=True)), which


# ---------------------------------------------------------------- bindings reject bad input
def test_bindings_reject_wrong_dtype_layout_and_shape() -> None:
    x, kern, (k, s, gc) = involution_case((1, 13, 13, 48, 3, 1, 16))
    with pytest.raises(TypeError, match="x must be a float32 array"):
        K.involution(x.astype(np.float64), kern, k, s, gc)
    with pytest.raises(TypeError, match="kernel must be a float32"):
        K.involution(x, kern.astype(np.float16), k, s, gc)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.involution(np.asfortranarray(x), kern, k, s, gc)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.involution(x[:, ::-1], kern, k, s, gc)
    with pytest.raises(ValueError, match="4 dimensions"):
        K.involution(x[0], kern, k, s, gc)
    with pytest.raises(ValueError, match="kernel must have shape"):
        K.involution(x, f32(kern[:, :-1]), k, s, gc)
    with pytest.raises(ValueError, match="kernel must have shape"):
        K.involution(x, kern, k, 2, gc)  # stride 2 needs a 7x7 kernel map
    with pytest.raises(ValueError, match="multiple of group_channels"):
        K.involution(x, kern, k, s, 32)
    with pytest.raises(ValueError, match="odd"):
        K.involution(x, kern, 4, s, gc)
    with pytest.raises(ValueError, match="scale must have shape"):
        K.involution(x, kern, k, s, gc, scale=np.ones(47, np.float32))
    with pytest.raises(ValueError, match="isa must be one of"):
        K.involution(x, kern, k, s, gc, isa="sse9")

    art, pv, wa, wp = cmam_case((1, 16, 48, 32, 4))
    with pytest.raises(ValueError, match="weights_art must have shape"):
        K.cmam(art, pv, wa[:-1], wp, 32, 4)
    with pytest.raises(ValueError, match="pv must have shape"):
        K.cmam(art, f32(pv[:, :15]), wa, wp, 32, 4)
    with pytest.raises(ValueError, match="multiple of heads"):
        K.cmam(art, pv, wa, wp, 32, 5)
    with pytest.raises(TypeError, match="art must be a float32"):
        K.cmam(art.astype(np.float64), pv, wa, wp, 32, 4)
    with pytest.raises(ValueError, match="eps"):
        K.cmam(art, pv, wa, wp, 32, 4, eps=float("nan"))

    a, p, weight, bias = sa_case((1, 13, 13, 48, 7, True))
    with pytest.raises(ValueError, match="p must have shape"):
        K.spatial_attention(a, f32(p[:, :, :12]), weight, bias)
    with pytest.raises(ValueError, match="weight must"):
        K.spatial_attention(a, p, weight[:, :1], bias)
    with pytest.raises(ValueError, match="weight must"):
        K.spatial_attention(a, p, f32(np.zeros((1, 2, 4, 4))), bias)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.spatial_attention(a, np.transpose(p, (0, 2, 1, 3)), weight, bias)


def test_nan_propagates_instead_of_vanishing() -> None:
    x, kern, (k, s, gc) = involution_case((1, 13, 13, 48, 3, 1, 16))
    x[0, 6, 6, 5] = np.nan
    for isa in ISAS:
        y = K.involution(x, kern, k, s, gc, isa=isa, relu=True)
        assert np.isnan(y[0, 6, 6, 5]) and np.isnan(y[0, 5, 5, 5])  # the pixel and a neighbour that sees it
        assert np.isfinite(y[..., 6]).all()  # other channels untouched
    a, p, weight, bias = sa_case((1, 13, 13, 48, 7, True))
    a[0, 0, 0, 0] = np.nan
    for isa in ISAS:
        att, _, _ = K.spatial_attention(a, p, weight, bias, isa=isa)
        assert np.isnan(att[0, 0, 0]) and np.isfinite(att[0, 12, 12])


@pytest.mark.parametrize("value,expect", [("avx2", "avx2"), ("scalar", "scalar"), ("bogus", "error")])
def test_isa_environment_variable(value: str, expect: str) -> None:
    if value == "avx2" and "avx2" not in ISAS:
        pytest.skip("this CPU has no AVX2")
    code = ("from cmir_trt._native import load_core\nk = load_core().kernels\n"
            "try:\n    print(k.resolve_isa('auto'))\nexcept ValueError as e:\n    print('error', e)\n")
    env = dict(os.environ, CMIR_CPU_ISA=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == expect, out.stdout


def test_cpp_unit_test_binary() -> None:
    """tests/cpp/test_cpu_kernels.cpp (the C++ entry points the bindings do not reach), when CMake built it."""
    root = Path(__file__).resolve().parents[1]
    found = sorted(root.glob("build/*/cmir_test_cpu_kernels"))
    if not found:
        pytest.skip("cmir_test_cpu_kernels is not built (target from tests/cpp/test_cpu_kernels.cpp)")
    for isa in ["auto", *ISAS]:
        env = dict(os.environ, CMIR_CPU_ISA=isa)
        out = subprocess.run([str(found[-1])], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"CMIR_CPU_ISA={isa}: {out.stdout}{out.stderr}"

"""Tier 2 (DESIGN.md section 4): the C++ plugin harness run on the built libcmir_trt_plugins.so.

The harness (tests/trt_harness/harness.cpp) creates both plugins from their creators, round-trips their fields,
queries every build-phase method (formats, types, symbolic shapes through its own IExprBuilder) and, with a GPU,
runs enqueue against float64 loops. Here it is only run, and must also fail on a library that is not ours."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _trt_helpers import find_harness

pytestmark = pytest.mark.trt


def _harness() -> Path:
    h = find_harness()
    if h is None:
        pytest.skip("the plugin harness was not built (build/<tag>/cmir_trt_plugin_harness; set CMIR_TRT_HARNESS)")
    return h


def _library() -> Path:
    from cmir_trt.tensorrt import find_plugin_library

    try:
        return find_plugin_library()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_harness_passes_on_plugin_library() -> None:
    proc = subprocess.run([str(_harness()), str(_library())], capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout
    assert "FAIL" not in proc.stdout


def test_harness_fails_on_a_library_without_creators() -> None:
    # libm loads anywhere and has no plugin entry points
    proc = subprocess.run([str(_harness()), "libm.so.6", "--no-gpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAIL: library exports getCreators" in proc.stdout


def test_harness_fails_on_a_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([str(_harness()), str(tmp_path / "nope.so")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAIL: dlopen" in proc.stdout


def test_harness_usage() -> None:
    proc = subprocess.run([str(_harness())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_harness_references_match_the_model(tmp_path: Path) -> None:
    """The float64 loops the GPU checks compare against agree with tests/_reference.py (involution) and the
    PyTorch CMAM module in float64, on the harness's own random cases (odd sizes, K = 3/5/7, stride 1/2)."""
    import numpy as np

    from _reference import involution_loop

    proc = subprocess.run([str(_harness()), "--dump-references", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    cases = [ln.split() for ln in (tmp_path / "cases.txt").read_text(encoding="utf-8").splitlines()]
    assert [c[0] for c in cases] == ["involution0", "involution1", "involution2", "cmam0", "cmam1"]

    def load(name: str, dtype: type) -> np.ndarray:
        return np.fromfile(tmp_path / name, dtype=dtype)

    for name, *dims in (c for c in cases if c[0].startswith("involution")):
        b, c, h, w, k, s, gc = map(int, dims)
        ho, wo = -(-h // s), -(-w // s)
        x = load(f"{name}_x.f32", np.float32).reshape(b, c, h, w)
        kern = load(f"{name}_kernel.f32", np.float32).reshape(b, c // gc, k, k, ho, wo)
        want = involution_loop(x, kern, k, s)
        got = load(f"{name}_y.f64", np.float64).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    torch = pytest.importorskip("torch")
    from cmir_trt.model.cmam import CMAM

    for name, *dims in (c for c in cases if c[0].startswith("cmam")):
        b, c, h, w, dim, heads = map(int, dims[:6])
        eps = float(dims[6])
        art = torch.from_numpy(load(f"{name}_art.f32", np.float32).reshape(b, c, h, w)).double()
        pv = torch.from_numpy(load(f"{name}_pv.f32", np.float32).reshape(b, c, h, w)).double()
        m = CMAM(c, heads, dim).double().eval()
        for att, norm, packed in ((m.art_from_pv, m.norm_art, load(f"{name}_weights_art.f32", np.float32)),
                                  (m.pv_from_art, m.norm_pv, load(f"{name}_weights_pv.f32", np.float32))):
            # packed: Wq[dim,C], bq, Wk, bk, Wv, bv, Wo[C,dim], bo[C], ln_gamma[C], ln_beta[C]
            sizes = [dim * c, dim, dim * c, dim, dim * c, dim, c * dim, c, c, c]
            assert packed.size == sum(sizes)
            parts = np.split(packed.astype(np.float64), np.cumsum(sizes)[:-1])
            targets = [att.q.weight, att.q.bias, att.k.weight, att.k.bias, att.v.weight, att.v.bias, att.o.weight,
                       att.o.bias, norm.weight, norm.bias]
            with torch.no_grad():
                for t, p in zip(targets, parts, strict=True):
                    t.copy_(torch.from_numpy(p).reshape(t.shape))
            norm.eps = eps
        with torch.no_grad():
            ya, yp = m(art, pv)
        np.testing.assert_allclose(load(f"{name}_art_out.f64", np.float64).reshape(ya.shape), ya.numpy(),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(load(f"{name}_pv_out.f64", np.float64).reshape(yp.shape), yp.numpy(),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind, expected", [("match", 2), ("mismatch", 0)])
def test_autoregistration_with_loaded_tensorrt(kind: str, expected: int) -> None:
    """CMIR_TRT_PLUGINS_AUTOREGISTER=1 (Triton's plugins= only dlopens): with a stand-in libnvinfer of the same
    major version already loaded, both creators are registered in namespace cmir; with another major, none."""
    fake = _harness().parent / "trt_harness_fakes" / f"libcmir_trt_fake_nvinfer_{kind}.so"
    if not fake.is_file():
        pytest.skip(f"{fake} was not built")
    proc = subprocess.run([str(_harness()), "--check-autoregister", str(_library()), str(fake), str(expected)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if kind == "mismatch":
        assert "not the TensorRT major version" in proc.stderr


def test_autoregistration_without_tensorrt_is_harmless() -> None:
    env = {**os.environ, "CMIR_TRT_PLUGINS_AUTOREGISTER": "1"}
    proc = subprocess.run([str(_harness()), str(_library()), "--no-gpu"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout
    assert "no libnvinfer of this major version is loaded" in proc.stderr

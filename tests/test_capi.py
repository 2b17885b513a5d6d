"""The C API (cpp/include/cmir.h, libcmir.so) through ctypes, and the C++ example program cmir_predict."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _engine_helpers import assert_parity, export, inputs, native_core, reference, small_model

from cmir_trt.prediction import Prediction


class Spec(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("image_size", "in_channels", "num_clinical", "num_classes", "two_phase")]


@pytest.fixture(scope="module")
def lib():
    core = native_core()
    path = Path(core.__file__).parent / "libcmir.so"
    if not path.is_file():
        pytest.fail(f"native engine built but libcmir.so missing next to {core.__file__}")
    lib = ctypes.CDLL(str(path))
    fp = ctypes.POINTER(ctypes.c_float)
    lib.cmir_engine_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.cmir_engine_create_precision.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                                 ctypes.POINTER(ctypes.c_void_p)]
    lib.cmir_engine_destroy.argtypes = [ctypes.c_void_p]
    lib.cmir_engine_input_spec.argtypes = [ctypes.c_void_p, ctypes.POINTER(Spec)]
    lib.cmir_engine_metadata_json.argtypes = [ctypes.c_void_p]
    lib.cmir_engine_metadata_json.restype = ctypes.c_char_p
    lib.cmir_engine_predict.argtypes = [ctypes.c_void_p, fp, fp, fp, ctypes.c_int, fp, fp, fp]
    lib.cmir_last_error.restype = ctypes.c_char_p
    return lib


def _p(a):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def test_c_api_round_trip(lib, tmp_path):
    model = small_model("M3", image_size=40, width=0.125, seed=4, num_classes=3)
    plan = export(model, tmp_path / "m.plan")
    h = ctypes.c_void_p()
    assert lib.cmir_engine_create(str(plan).encode(), 1, ctypes.byref(h)) == 0, lib.cmir_last_error()
    try:
        spec = Spec()
        assert lib.cmir_engine_input_spec(h, ctypes.byref(spec)) == 0
        assert (spec.image_size, spec.in_channels, spec.num_clinical, spec.num_classes, spec.two_phase) == \
            (40, 3, 8, 3, 1)
        assert json.loads(lib.cmir_engine_metadata_json(h))["config"]["variant"] == "M3"
        art, pv, clinical = inputs(model, 3, seed=8)
        logit = np.zeros((3, 3), np.float32)
        prob = np.zeros((3, 3), np.float32)
        heat = np.zeros((3, 1, 40, 40), np.float32)
        rc = lib.cmir_engine_predict(h, _p(art), _p(pv), _p(clinical), 3, _p(logit), _p(prob), _p(heat))
        assert rc == 0, lib.cmir_last_error()
        assert_parity(Prediction(prob, logit, heat), reference(model, art, pv, clinical))
        # errors: status code + message, no crash
        art[0, 0, 0, 0] = np.inf
        assert lib.cmir_engine_predict(h, _p(art), _p(pv), _p(clinical), 3, _p(logit), _p(prob), _p(heat)) == 1
        assert b"NaN or infinity" in lib.cmir_last_error()
        assert lib.cmir_engine_predict(h, _p(art), None, _p(clinical), 3, _p(logit), _p(prob), _p(heat)) == 1
        assert b"pv input is missing" in lib.cmir_last_error()
        assert lib.cmir_engine_predict(h, _p(art), _p(pv), _p(clinical), 0, _p(logit), _p(prob), _p(heat)) == 1
    finally:
        lib.cmir_engine_destroy(h)
    bad = tmp_path / "bad.plan"
    bad.write_bytes(plan.read_bytes()[:500])
    h2 = ctypes.c_void_p()
    assert lib.cmir_engine_create(str(bad).encode(), 1, ctypes.byref(h2)) == 2
    assert b"invalid plan" in lib.cmir_last_error() and not h2.value
    assert lib.cmir_engine_create(b"/nonexistent.plan", 1, ctypes.byref(h2)) == 2
    assert b"cannot open" in lib.cmir_last_error()


def test_c_api_precision(lib, tmp_path):
    """bf16 through the C API: the same answer as the Python bf16 engine (same code, same rounding) where the CPU
    has bf16, status 1 with the reason elsewhere; an unknown precision is status 1."""
    import cmir_trt

    model = small_model("full", image_size=32, width=0.25, seed=3)
    plan = export(model, tmp_path / "m.plan")
    h = ctypes.c_void_p()
    assert lib.cmir_engine_create_precision(str(plan).encode(), 1, b"fp16", ctypes.byref(h)) == 1
    assert b'precision must be "fp32" or "bf16"' in lib.cmir_last_error() and not h.value
    ok, why = native_core().bf16_supported()
    rc = lib.cmir_engine_create_precision(str(plan).encode(), 1, b"bf16", ctypes.byref(h))
    if not ok:
        assert rc == 1 and b"avx512_bf16" in lib.cmir_last_error() and not h.value
        return
    assert rc == 0, lib.cmir_last_error()
    try:
        art, pv, clinical = inputs(model, 2, seed=1)
        logit, prob = np.zeros((2, 1), np.float32), np.zeros((2, 1), np.float32)
        heat = np.zeros((2, 1, 32, 32), np.float32)
        assert lib.cmir_engine_predict(h, _p(art), _p(pv), _p(clinical), 2, _p(logit), _p(prob), _p(heat)) == 0
        want = cmir_trt.Engine(plan, threads=1, precision="bf16").predict(art, pv, clinical)
        assert np.array_equal(prob, want.probability) and np.array_equal(heat, want.heatmap)
    finally:
        lib.cmir_engine_destroy(h)


def test_example_program(lib, tmp_path):
    exe = Path(native_core().__file__).parent / "bin" / "cmir_predict"
    if not exe.is_file():
        pytest.fail(f"cmir_predict example missing: {exe}")
    model = small_model("full", image_size=40, width=0.125, seed=6)
    plan = export(model, tmp_path / "m.plan")
    art, pv, clinical = inputs(model, 1, seed=2)
    for name, a in (("art", art), ("pv", pv), ("clin", clinical)):
        a.tofile(tmp_path / f"{name}.f32")
    out = subprocess.run([str(exe), str(plan), str(tmp_path / "art.f32"), str(tmp_path / "pv.f32"),
                          str(tmp_path / "clin.f32"), "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    prob = float(out.stdout.split("probability ")[1].split()[0])
    ref_prob = reference(model, art, pv, clinical)[0][0, 0]
    assert abs(prob - ref_prob) < 1e-5
    bad = subprocess.run([str(exe), str(tmp_path / "nope.plan")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "cannot open plan file" in bad.stderr

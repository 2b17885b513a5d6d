"""Tier-0 parity: the native engine (plan -> C++ / oneDNN / own kernels) vs the PyTorch model in eval mode.

Every variant, batch 1, 3 and 8, seeded random inputs; odd feature-map sizes (S = 72 gives 36, 18, 9, 5, 3); the
3-class head; no clinical features; and real preprocessed inputs from a synthetic cohort. Tolerances: probability
1e-5 abs, logit 1e-4 rel, heatmap 1e-4 abs (tests/_engine_helpers.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from _engine_helpers import assert_parity, export, inputs, native_core, reference, small_model

from cmir_trt import Engine

VARIANTS = ("S1", "M1", "M2", "M3", "full")


@pytest.fixture(scope="module")
def core():
    return native_core()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_batch_1_3_8(core, tmp_path, variant):
    model = small_model(variant, image_size=48, seed=VARIANTS.index(variant))
    plan = export(model, tmp_path / f"{variant}.plan")
    eng = Engine(plan, threads=2)
    assert eng.backend == "native"
    for batch in (1, 3, 8):
        art, pv, clinical = inputs(model, batch, seed=batch)
        ref = reference(model, art, pv, clinical)
        assert_parity(eng.predict(art, pv, clinical), ref)
        # the heatmap is not trivially constant (a broken CAM/SA path would give all zeros)
        assert np.ptp(ref[2]) > 1e-3


@pytest.mark.parametrize("variant", ["M2", "full"])
def test_unfused_involution_plan(core, tmp_path, variant):
    # The writer fuses each involution (generation + aggregation + BN/ReLU) by default; the unfused form (pooling,
    # two 1x1 convs through oneDNN, aggregation) stays a valid plan and must agree too. S=72 gives odd maps.
    model = small_model(variant, image_size=72, seed=3)
    fused = Engine(export(model, tmp_path / "f.plan"), threads=2)
    unfused = Engine(export(model, tmp_path / "u.plan", fuse_involution=False), threads=2)
    art, pv, clinical = inputs(model, 3, seed=5)
    ref = reference(model, art, pv, clinical)
    assert_parity(fused.predict(art, pv, clinical), ref)
    assert_parity(unfused.predict(art, pv, clinical), ref)


@pytest.mark.parametrize("variant,kw", [
    ("full", {"image_size": 72}),                  # odd maps: 9 -> 5 -> 3, stride-2 involution in ceil mode
    ("M2", {"image_size": 40, "num_classes": 3}),  # softmax head; CAM of the argmax class
    ("full", {"image_size": 64, "num_classes": 3, "num_clinical": 0}),
    ("M3", {"image_size": 64, "depth": 38, "width": 0.125}),
])
def test_odd_configurations(core, tmp_path, variant, kw):
    model = small_model(variant, seed=7, **kw)
    plan = export(model, tmp_path / "m.plan")
    eng = Engine(plan, threads=1)
    art, pv, clinical = inputs(model, 3, seed=11)
    assert_parity(eng.predict(art, pv, clinical), reference(model, art, pv, clinical))


def _sphere_case(rng: np.random.Generator, n: int = 40, nz: int = 12) -> tuple:
    """A small ART/PV/mask volume triple: a bright noisy sphere in a noisy liver-like background."""
    sitk = pytest.importorskip("SimpleITK")
    zz, yy, xx = np.mgrid[:nz, :n, :n]
    c = rng.uniform(15, 25, size=3)
    r = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + ((zz - nz / 2) * 3) ** 2) ** 0.5
    mask = (r < rng.uniform(5, 8)).astype(np.uint8)
    imgs = []
    for gain in (1.6, 1.2):
        vol = 100 + 20 * rng.standard_normal((nz, n, n)) + gain * 80 * mask
        img = sitk.GetImageFromArray(vol.astype(np.float32))
        img.SetSpacing((1.0, 1.0, 3.0))
        imgs.append(img)
    m = sitk.GetImageFromArray(mask)
    m.SetSpacing((1.0, 1.0, 3.0))
    return imgs[0], imgs[1], m


def test_real_preprocessed_inputs(core, tmp_path):
    """Inputs prepared by cmir_trt.data (crop, resample, z-score) exactly as `predict` does, through both paths."""
    data = pytest.importorskip("cmir_trt.data")
    rng = np.random.default_rng(3)
    params = data.PreprocessParams(image_size=64)
    prepared = [data.prepare_images(f"case{i}", *_sphere_case(rng), params) for i in range(3)]
    model = small_model("full", image_size=64, seed=5)
    art = np.stack([p.art for p in prepared]).astype(np.float32)
    pv = np.stack([p.pv for p in prepared]).astype(np.float32)
    clinical = rng.standard_normal((len(prepared), 8)).astype(np.float32)
    eng = Engine(export(model, tmp_path / "m.plan"), threads=2)
    assert_parity(eng.predict(art, pv, clinical), reference(model, art, pv, clinical))


def test_deterministic_run_to_run(core, tmp_path):
    model = small_model("full", seed=2)
    eng = Engine(export(model, tmp_path / "m.plan"), threads=2)
    art, pv, clinical = inputs(model, 3, seed=4)
    first = eng.predict(art, pv, clinical)
    for _ in range(3):
        again = eng.predict(art, pv, clinical)
        for a, b in zip(first, again, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.slow
def test_default_full_model(core, tmp_path):
    """The default configuration (full, width 1.0, S = 128, 2048-channel CMAM at dim 256) at batch 2."""
    model = small_model("full", image_size=128, width=1.0, seed=13, cmam_dim=256, cmam_heads=8)
    eng = Engine(export(model, tmp_path / "m.plan"), threads=2)
    art, pv, clinical = inputs(model, 2, seed=1)
    assert_parity(eng.predict(art, pv, clinical), reference(model, art, pv, clinical))

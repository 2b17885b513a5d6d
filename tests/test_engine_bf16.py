"""bf16 native engine (issue 18): the bf16 involution-generation kernel against a float64 reference that rounds at the
same points, the engine against the PyTorch model (fp32) within the bf16 bounds and within 2x PyTorch's own bf16
error (autocast) on the same inputs, no decision flip on the tiny SYNTHETIC cohort, the plan's record of validated
precisions, and the refusal on CPUs without avx512_bf16/AMX (checked here by capping oneDNN's ISA).

Skipped with the reason on a CPU without bf16 (except the refusal tests, which run everywhere)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cpu_kernels_helpers import cmam_direction64, involution_nhwc64, kernels_module
from _engine_helpers import export, inputs, native_core, reference, small_model

ROOT = Path(__file__).resolve().parents[1]
# The bounds for bf16 (probability / heatmap max abs error vs the fp32 PyTorch model), and the flash-attention
# rule: our error <= 2x PyTorch's own bf16 (autocast) error on the same inputs, plus a floor for outputs whose error
# is at the rounding level of both.
PROB_ATOL, HEAT_ATOL = 1e-2, 5e-2
REL_FACTOR, REL_FLOOR = 2.0, 1e-4


def _bf16_or_skip() -> None:
    core = native_core()
    ok, why = core.bf16_supported()
    if not ok:
        pytest.skip(f"no bf16 on this CPU: {why}")


def _bf16(a: np.ndarray) -> np.ndarray:
    """float64 values of a rounded to bf16 by torch (round to nearest even): an independent rounding."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16).to(torch.float64).numpy()


# ------------------------------------------------------------------------------------------------------ kernel
def test_bf16_round_matches_torch() -> None:
    import torch

    K = kernels_module()
    rng = np.random.default_rng(3)
    v = np.concatenate([(rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)).astype(np.float32),
                        # exact ties (bit 15 set, lower bits zero): both even and odd upper halves
                        (np.arange(64, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40], np.float32)])
    got = K.bf16_round(v)
    want = torch.from_numpy(v).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, want)
    nan = K.bf16_round(np.array([np.nan], np.float32))[0]
    assert (nan & 0x7F80) == 0x7F80 and (nan & 0x7F) != 0  # still a NaN


@pytest.mark.parametrize("shape", [(2, 9, 7, 32, 3, 1, 8), (1, 13, 11, 48, 7, 2, 13), (3, 5, 6, 64, 7, 1, 16),
                                   (1, 8, 8, 256, 7, 2, 64), (2, 6, 5, 32, 7, 1, 7)])
def test_fused_involution_bf16_against_float64(shape: tuple[int, ...]) -> None:
    """The bf16 kernel = float64 maths with the generation input and the hidden map rounded to bf16 (the weights too),
    aggregation in full precision: only the fp32 summation order differs (bound 2e-6 of the output's scale)."""
    _bf16_or_skip()
    K = kernels_module()
    b, h, w, c, k, s, hid = shape
    gc, rng = 16, np.random.default_rng(sum(shape))
    g = c // gc
    x = rng.standard_normal((b, h, w, c), dtype=np.float32)
    rw = (rng.standard_normal((c, hid)) / np.sqrt(c)).astype(np.float32)
    rb = (rng.standard_normal(hid) * 0.1).astype(np.float32)
    sw = (rng.standard_normal((hid, g * k * k)) / np.sqrt(hid)).astype(np.float32)
    sb = (rng.standard_normal(g * k * k) * 0.1).astype(np.float32)
    sc = (rng.random(c) + 0.5).astype(np.float32)
    sh = (rng.standard_normal(c) * 0.1).astype(np.float32)
    ho, wo = -(-h // s), -(-w // s)
    if s > 1:  # the kernel's ceil-mode average pool (fp32), rounded to bf16 afterwards
        gin = np.zeros((b, ho, wo, c), np.float32)
        for i in range(ho):
            for j in range(wo):
                gin[:, i, j] = x[:, i * s:i * s + s, j * s:j * s + s].mean(axis=(1, 2), dtype=np.float32)
    else:
        gin = x
    hidden = np.maximum(_bf16(gin) @ _bf16(rw) + rb, 0.0)
    kern = _bf16(hidden.astype(np.float32)) @ _bf16(sw) + sb
    ref = involution_nhwc64(x, kern, k, s, gc) * sc + sh
    ref = np.maximum(ref, 0.0)
    y1 = K.involution_fused(x, rw, rb, sw, sb, k, s, gc, threads=1, precision="bf16", scale=sc, shift=sh, relu=True)
    y2 = K.involution_fused(x, rw, rb, sw, sb, k, s, gc, threads=2, precision="bf16", scale=sc, shift=sh, relu=True)
    scale = np.abs(ref).max()
    assert np.abs(y1 - ref).max() <= 2e-6 * scale, np.abs(y1 - ref).max() / scale
    assert np.array_equal(y1, y2), "bf16 fused involution differs between 1 and 2 threads"
    # ... and it really is bf16: the fp32 kernel differs by the bf16 rounding (~1e-3 of the scale), not 0
    y32 = K.involution_fused(x, rw, rb, sw, sb, k, s, gc, threads=1, scale=sc, shift=sh, relu=True)
    assert np.abs(y32 - y1).max() > 1e-4 * scale


@pytest.mark.parametrize("shape", [(2, 16, 96, 32, 4), (1, 9, 50, 24, 3), (2, 4, 64, 33, 3), (3, 16, 2048, 256, 8)])
def test_cmam_bf16_against_float64(shape: tuple[int, ...]) -> None:
    """CMAM with bf16 projections = float64 maths with the projection inputs, the attention output and the four
    weight matrices rounded to bf16; attention, softmax and LayerNorm in full precision (bound 2e-5 absolute on
    LayerNorm outputs of order 1; the unrounded float64 CMAM is ~1e-4..1e-3 away)."""
    _bf16_or_skip()
    K = kernels_module()
    b, n, c, d, h = shape
    rng = np.random.default_rng(sum(shape))
    wl = 4 * d * c + 3 * d + 3 * c
    wa = (rng.standard_normal(wl) / np.sqrt(c)).astype(np.float32)
    wp = (rng.standard_normal(wl) / np.sqrt(c)).astype(np.float32)
    a = rng.standard_normal((b, n, c), dtype=np.float32)
    p = rng.standard_normal((b, n, c), dtype=np.float32)
    ya, yp = K.cmam(a, p, wa, wp, d, h, threads=1, precision="bf16")
    ra = cmam_direction64(a, p, wa, c, d, h, 1e-5, rnd=_bf16)
    rp = cmam_direction64(p, a, wp, c, d, h, 1e-5, rnd=_bf16)
    assert np.abs(ya - ra).max() <= 2e-5 and np.abs(yp - rp).max() <= 2e-5
    ya2, yp2 = K.cmam(a, p, wa, wp, d, h, threads=2, precision="bf16", in_place=True)
    assert np.array_equal(ya, ya2) and np.array_equal(yp, yp2), "threads/in-place change the bf16 result"
    r32 = cmam_direction64(a, p, wa, c, d, h, 1e-5)
    assert np.abs(ya - r32).max() > 5e-5  # it really rounded


def test_bf16_object_code_only_in_bf16_functions() -> None:
    """kernels_avx512.cpp is built with -mavx512bf16: bf16 instructions must appear only in the *bf16* functions, so
    the fp32 AVX-512 kernels still run on AVX-512 CPUs without bf16 (Skylake, Zen 3 has no AVX-512 at all)."""
    objs = glob.glob(str(ROOT / "build" / "*" / "CMakeFiles" / "cmir_core.dir" / "cpp" / "src" / "kernels" /
                         "kernels_avx512.cpp.o"))
    if not objs or shutil.which("objdump") is None:
        pytest.skip("no build tree object of kernels_avx512.cpp (or no objdump) to inspect")
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", objs[0]], capture_output=True, text=True,
                          check=True).stdout
    fn, users = "", set()
    for line in text.splitlines():
        if line.endswith(">:") and "<" in line:
            fn = line[line.index("<") + 1:-2]
        elif any(op in line for op in ("vdpbf16ps", "vcvtne2ps2bf16", "vcvtneps2bf16")):
            users.add(fn)
    assert users, "no bf16 instruction at all: the bf16 kernels were not built"
    assert all("bf16" in f.lower() for f in users), [f for f in users if "bf16" not in f.lower()]


# ------------------------------------------------------------------------------------------------------ engine
def _autocast_bf16(model: object, art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> tuple[np.ndarray, ...]:
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))  # type: ignore[operator]
    return out.probability.float().numpy(), out.logit.float().numpy(), out.heatmap.float().numpy()


@pytest.mark.parametrize(("variant", "size", "width", "batch"), [("full", 64, 0.25, 3), ("full", 48, 0.5, 1),
                                                                 ("M3", 64, 0.25, 2), ("S1", 40, 0.25, 2)])
def test_engine_bf16_parity(tmp_path: Path, variant: str, size: int, width: float, batch: int) -> None:
    _bf16_or_skip()
    import cmir_trt

    model = small_model(variant, image_size=size, width=width, seed=7)
    plan = export(model, tmp_path / "m.plan")
    eng = cmir_trt.Engine(plan, threads=2, precision="bf16")
    assert eng.precision == "bf16" and eng._impl.precision == "bf16"
    assert eng._impl._engine.num_bf16_tensors > 0, "bf16 requested but no activation is stored in bf16"
    x = inputs(model, batch, seed=11)
    if variant == "S1":
        x = (x[0], None, x[2])
    got = eng.predict(*x)
    fp32 = cmir_trt.Engine(plan, threads=2).predict(*x)
    ref = reference(model, x[0], x[1] if x[1] is not None else x[0], x[2])
    torch16 = _autocast_bf16(model, x[0], x[1] if x[1] is not None else x[0], x[2])
    err = {"probability": np.abs(got.probability - ref[0]).max(), "heatmap": np.abs(got.heatmap - ref[2]).max()}
    err_torch = {"probability": np.abs(torch16[0] - ref[0]).max(), "heatmap": np.abs(torch16[2] - ref[2]).max()}
    assert err["probability"] <= PROB_ATOL and err["heatmap"] <= HEAT_ATOL, err
    for k in err:
        assert err[k] <= REL_FACTOR * err_torch[k] + REL_FLOOR, (k, err[k], err_torch[k])
    assert not np.array_equal(got.probability, fp32.probability) or not np.array_equal(got.heatmap, fp32.heatmap)


def test_engine_bf16_thread_counts_agree(tmp_path: Path) -> None:
    """1, 2 and 3 threads (per-op split, two lanes, three-way split) give the same answer within bf16 noise."""
    _bf16_or_skip()
    import cmir_trt

    model = small_model("full", image_size=64, width=0.25, seed=2)
    plan = export(model, tmp_path / "m.plan")
    x = inputs(model, 2, seed=5)
    outs = [cmir_trt.Engine(plan, threads=t, precision="bf16").predict(*x) for t in (1, 2, 3)]
    for o in outs[1:]:
        assert np.abs(o.probability - outs[0].probability).max() <= 1e-3
        assert np.abs(o.heatmap - outs[0].heatmap).max() <= 1e-2


def test_precision_errors_are_one_clear_line(tmp_path: Path) -> None:
    import cmir_trt

    native_core()
    model = small_model("full", image_size=32, width=0.25)
    plan = export(model, tmp_path / "m.plan")
    with pytest.raises(ValueError, match="native CPU engine runs precision 'fp32' or 'bf16'"):
        cmir_trt.Engine(plan, precision="fp16")
    from cmir_trt.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", model, {"training_data": {"synthetic": True}})
    with pytest.raises(ValueError, match="torch CPU backend runs fp32 only"):
        cmir_trt.Engine(ckpt, precision="bf16")


_REFUSAL = """
import json, sys
import cmir_trt
from cmir_trt.export.plan import check_plan_precisions
from cmir_trt.model.checkpoint import load_checkpoint
out = {}
try:
    cmir_trt.Engine(sys.argv[1], precision="bf16")
    out["engine"] = "loaded"
except ValueError as exc:
    out["engine"] = str(exc)
model = load_checkpoint(sys.argv[2])
out["check"] = check_plan_precisions(model, open(sys.argv[1], "rb").read(), ("fp32", "bf16"))
print(json.dumps(out))
"""


def test_bf16_refused_without_avx512_bf16(tmp_path: Path) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI makes this CPU look like one without bf16 (as Skylake/Cascade Lake, or
    any AVX2 CPU): the engine refuses in one line naming what is missing, and the export-time check records bf16 as
    not validated, with the reason, while fp32 is."""
    native_core()
    from cmir_trt.model.checkpoint import save_checkpoint

    model = small_model("full", image_size=32, width=0.25)
    plan = export(model, tmp_path / "m.plan")
    ckpt = save_checkpoint(tmp_path / "m.pt", model, {"training_data": {"synthetic": True}})
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX512_CORE_VNNI")
    proc = subprocess.run([sys.executable, "-c", _REFUSAL, str(plan), str(ckpt)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "refused" in out["engine"] and "avx512_bf16 or AMX" in out["engine"], out["engine"]
    assert "\n" not in out["engine"]
    assert out["check"]["fp32"]["validated"] is True
    assert out["check"]["bf16"]["validated"] is False and "avx512_bf16" in out["check"]["bf16"]["reason"]


def test_exported_plan_records_validated_precisions(tmp_path: Path) -> None:
    """`cmir-trt export --format plan` (export_model) checks each engine precision and records it in the plan."""
    native_core()
    from cmir_trt.export.exporters import export_model
    from cmir_trt.export.plan import read_plan_metadata
    from cmir_trt.model.checkpoint import save_checkpoint
    from cmir_trt.predictor import precision_validation

    model = small_model("full", image_size=32, width=0.25)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, {"training_data": {"synthetic": True}})
    plan = export_model(ckpt, "plan", tmp_path / "m.plan")
    meta = read_plan_metadata(plan)
    rec = meta["precisions"]
    assert rec["fp32"]["validated"] is True and rec["fp32"]["max_abs"]["probability"] <= 1e-5
    ok, _ = native_core().bf16_supported()
    assert rec["bf16"]["validated"] is ok
    if ok:
        assert 0 < rec["bf16"]["max_abs"]["probability"] <= PROB_ATOL
    assert precision_validation(meta, "fp32") == (True, None)
    # a plan written without the check (export_plan directly) makes bf16 users see a note
    bare = read_plan_metadata(export(model, tmp_path / "bare.plan"))
    assert "precisions" not in bare
    validated, note = precision_validation(bare, "bf16")
    assert validated is None and "records no parity check of precision bf16" in note
    assert precision_validation(bare, "fp32") == (None, None)


def test_validate_bf16_on_tiny_synthetic_cohort(tmp_path: Path) -> None:
    """`cmir-trt validate` on the demo model (trained on SYNTHETIC data) and the tiny SYNTHETIC cohort: native-bf16
    within its bounds, within 2x PyTorch's own bf16 error, and no decision flip on the cohort cases."""
    _bf16_or_skip()
    pytest.importorskip("SimpleITK", reason="the tiny synthetic cohort needs SimpleITK")
    out = tmp_path / "val"
    proc = subprocess.run([sys.executable, "-m", "cmir_trt", "validate", "--model", str(ROOT / "models" /
                                                                                         "cmir-demo.pt"),
                           "--out", str(out), "--backends", "native,native-bf16", "--max-cases", "26"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    row = next(b for b in report["backends"] if b["name"] == "native-bf16")
    assert row["status"] == "ran" and row["within_tolerance"] is True
    assert row["decision_flips"]["cases"] == 0
    assert report["inputs"][1]["synthetic"] is True and report["inputs"][1]["cases"] >= 20
    rc = row["relative_check"]
    assert rc["checked"] and rc["to"] == "torch-bf16" and rc["within"]
    assert row["outputs"]["probability"]["max_abs"] > 0  # really ran in bf16
    assert "native-bf16" in (out / "parity.md").read_text(encoding="utf-8")


def test_engine_bf16_concurrent_calls_equal_sequential(tmp_path: Path) -> None:
    """Several Python threads on one bf16 engine (each call takes its own context; the packed bf16 weights are shared
    read-only): every result equals the sequential one, bit for bit."""
    _bf16_or_skip()
    from concurrent.futures import ThreadPoolExecutor

    import cmir_trt

    model = small_model("full", image_size=32, width=0.25, seed=9)
    eng = cmir_trt.Engine(export(model, tmp_path / "m.plan"), threads=1, precision="bf16")
    xs = [inputs(model, b, seed=20 + i) for i, b in enumerate((1, 2, 1, 3, 2, 1))]
    want = [eng.predict(*x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: eng.predict(*x), xs * 2))
    for g, w in zip(got, want * 2, strict=True):
        assert np.array_equal(g.probability, w.probability) and np.array_equal(g.heatmap, w.heatmap)

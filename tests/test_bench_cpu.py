"""cmir_trt.cpu.bench (behind `cmir-trt bench`): statistics, ratios and reports on fake backends with known
durations; failures as rows with reasons; OpenVINO as a peer (parity with ONNX Runtime, bf16 refusal); the CPU flags
of cmir_trt._machine; one tiny end-to-end CLI run. No wall-clock time is asserted."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmir_trt._machine import BF16_FLAGS, bf16_support, cpu_flags
from cmir_trt.cpu import bench as cb

HAVE_OV = importlib.util.find_spec("openvino") is not None
NO_OV = "the openvino package is not installed (pip install openvino)"
SPEC = {"image_size": 8, "in_channels": 3, "num_clinical": 4}


class FakeClock:
    """Seconds that only move when a fake backend runs: durations are exactly what the backends say."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeBackend:
    """predict() takes the next of `durations_ms` (cycled) on the fake clock; raises at batch `fail_on_batch` (in the
    warm-up) or on call number `fail_on_call` (counting from 1: in the timed runs when it is past the warm-up)."""

    def __init__(self, clock: FakeClock, durations_ms: list[float], fail_on_batch: int | None = None,
                 fail_on_call: int | None = None) -> None:
        self.clock = clock
        self.durations = itertools.cycle(durations_ms)
        self.fail_on_batch = fail_on_batch
        self.fail_on_call = fail_on_call
        self.calls = 0

    def predict(self, art: Any, pv: Any, clinical: Any) -> None:
        self.calls += 1
        if art.shape[0] == self.fail_on_batch:
            raise RuntimeError(f"kernel exploded at batch {art.shape[0]}")
        if self.calls == self.fail_on_call:
            raise RuntimeError(f"died on call {self.calls}")
        self.clock.t += next(self.durations) / 1e3


def _factory(clock: FakeClock, plan: dict[tuple[str, str], Any]) -> cb.BackendFactory:
    def make(name: str, prec: str, threads: int) -> Any:
        what = plan[(name, prec)]
        if isinstance(what, BaseException):
            raise what
        return FakeBackend(clock, *what) if isinstance(what, tuple) else FakeBackend(clock, what)

    return make


def _row(res: dict[str, Any], lab: str, batch: int, threads: int) -> dict[str, Any]:
    (row,) = [r for r in res["rows"] if (r["label"], r["batch"], r["threads"]) == (lab, batch, threads)]
    return row


def _assert_every_pair_accounted(res: dict[str, Any], backends: list[str], precisions: list[str],
                                 batches: list[int], threads: list[int]) -> None:
    # Each requested (backend, precision, batch, threads) is exactly one row or one failure with a reason.
    for be, prec, b, t in itertools.product(backends, precisions, batches, threads):
        rows = [r for r in res["rows"] if (r["backend"], r["precision"], r["batch"], r["threads"]) == (be, prec, b, t)]
        fails = [f for f in res["failures"]
                 if (f["backend"], f["precision"], f["batch"], f["threads"]) == (be, prec, b, t)]
        assert len(rows) + len(fails) == 1, (be, prec, b, t, rows, fails)
        for f in fails:
            assert f["reason"].strip() and f["kind"] in ("unsupported", "unavailable", "error")


def test_percentiles_of_known_values() -> None:
    st = cb.percentiles([float(v) for v in range(1, 11)])  # numpy's linear interpolation
    assert st == pytest.approx({"p50_ms": 5.5, "p90_ms": 9.1, "p99_ms": 9.91, "mean_ms": 5.5, "min_ms": 1.0})
    with pytest.raises(ValueError):
        cb.percentiles([])


def test_fake_timings_give_exact_rows_ratios_and_markdown() -> None:
    clock = FakeClock()
    plan = {("native", "fp32"): [10.0], ("native", "bf16"): [5.0], ("onnxruntime", "fp32"): [30.0],
            ("openvino", "fp32"): [float(v) for v in range(1, 11)], ("openvino", "bf16"): [20.0]}
    backends, precs = ["native", "onnxruntime", "openvino"], ["fp32", "bf16"]
    out = cb.bench_matrix(_factory(clock, plan), SPEC, backends, precs, [1, 4], [1, 2], warmup=2, repeats=10,
                          pause_s=0, clock=clock)
    res = {"model": "fake", "date": "d", "machine": "m", "device": "cpu", "command": "c", "warmup": 2,
           "repeats": 10, **out}
    _assert_every_pair_accounted(res, backends, precs, [1, 4], [1, 2])
    assert len(res["rows"]) == 5 * 2 * 2  # 5 runnable pairs x 2 batches x 2 thread counts
    nat = _row(res, "native fp32", 4, 2)
    assert nat["p50_ms"] == pytest.approx(10.0) and nat["throughput"] == pytest.approx(4 * 1e3 / 10.0)
    assert nat["repeats"] == 10 and nat["p50_vs_native_fp32"] == pytest.approx(1.0)
    assert "p50_vs_openvino_bf16" not in nat  # that column is for bf16 rows only
    ov32 = _row(res, "openvino fp32", 1, 1)  # the warm-up consumed 2 durations: timed ones are 3..10, 1, 2
    assert ov32["p50_ms"] == pytest.approx(5.5) and ov32["p90_ms"] == pytest.approx(9.1)
    assert ov32["min_ms"] == pytest.approx(1.0)
    bf = _row(res, "native bf16", 1, 1)
    assert bf["p50_vs_native_fp32"] == pytest.approx(0.5)
    assert bf["p50_vs_openvino_bf16"] == pytest.approx(0.25)
    assert _row(res, "onnxruntime fp32", 4, 1)["p50_vs_native_fp32"] == pytest.approx(3.0)
    assert _row(res, "openvino bf16", 4, 2)["p50_vs_openvino_bf16"] == pytest.approx(1.0)
    md = cb.to_markdown(res)
    assert "| 2 | 4 | native bf16 | 5.0 | 5.0 | 5.0 | 800.0 | - | 0.50x | 0.25x |" in md
    assert "| 1 | 1 | onnxruntime fp32 | 30.0 | 30.0 | 30.0 | 33.3 | - | 3.00x | - |" in md
    # the fp32-only backend asked for bf16: not a silent gap but an "unsupported" entry, listed in the report
    unsup = [f for f in res["failures"] if f["label"] == "onnxruntime bf16"]
    assert len(unsup) == 4 and all(f["kind"] == "unsupported" and "fp32 only" in f["reason"] for f in unsup)
    assert "## Not measured" in md and "| 1 | 1 | onnxruntime bf16 | unsupported |" in md


def test_backend_that_raises_becomes_a_failure_and_the_run_continues() -> None:
    clock = FakeClock()
    plan = {("native", "fp32"): [10.0],
            ("native", "bf16"): ValueError("the native CPU engine refuses bf16 here"),
            ("openvino", "fp32"): ([2.0], 8),  # loads, then fails in the warm-up of batch 8 only
            ("openvino", "bf16"): cb.BackendUnavailable("no BF16 capability"),
            ("onnxruntime", "fp32"): ([3.0], None, 3),  # warm-up (call 1) and one timed run pass, then it fails
            ("torch", "fp32"): [40.0]}
    backends, precs = ["native", "openvino", "onnxruntime", "torch"], ["fp32", "bf16"]
    logged: list[str] = []
    out = cb.bench_matrix(_factory(clock, plan), SPEC, backends, precs, [1, 8], [2], warmup=1, repeats=3,
                          pause_s=0, clock=clock, log=logged.append)
    _assert_every_pair_accounted(out, backends, precs, [1, 8], [2])
    by = {(f["label"], f["batch"]): f for f in out["failures"]}
    assert by[("native bf16", 1)]["kind"] == "error" and by[("native bf16", 1)]["stage"] == "load"
    assert "ValueError: the native CPU engine refuses bf16 here" in by[("native bf16", 8)]["reason"]
    assert by[("openvino bf16", 1)]["kind"] == "unavailable" and by[("openvino bf16", 1)]["reason"] == \
        "no BF16 capability"
    assert by[("openvino fp32", 8)]["stage"] == "run" and "batch 8" in by[("openvino fp32", 8)]["reason"]
    assert by[("onnxruntime fp32", 1)]["stage"] == "run" and "died on call 3" in by[("onnxruntime fp32", 1)]["reason"]
    assert _row(out, "onnxruntime fp32", 8, 2)["p50_ms"] == pytest.approx(3.0)  # the next batch runs it again
    assert by[("torch bf16", 1)]["kind"] == "unsupported"
    assert _row(out, "openvino fp32", 1, 2)["p50_ms"] == pytest.approx(2.0)  # the same pair ran at batch 1
    assert _row(out, "torch fp32", 8, 2)["p50_vs_native_fp32"] == pytest.approx(4.0)
    assert any("native bf16: unavailable: ValueError" in line for line in logged)


def test_cpu_flags_and_bf16_support_from_cpuinfo(tmp_path: Path) -> None:
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nmodel name\t: Fake EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n", encoding="utf-8")
    old = tmp_path / "old"
    old.write_text("model name\t: Fake Xeon\nflags\t\t: fpu avx2 avx512f\n", encoding="utf-8")
    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: avx2 avx512f amx_tile amx_bf16\n", encoding="utf-8")
    assert cpu_flags(str(zen4)) == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": False,
                                    "amx_bf16": False}
    assert set(cpu_flags(str(old))) == set(BF16_FLAGS)
    assert bf16_support(cpuinfo=str(zen4)) == (True, "CPU has avx512_bf16")
    ok, why = bf16_support(cpuinfo=str(old))
    assert not ok and "avx512_bf16" in why and "AMX" in why
    ok, why = bf16_support(cpuinfo=str(amx))
    assert ok and "AMX" in why
    ok, why = bf16_support(cpuinfo=str(tmp_path / "missing"))
    assert not ok and "unknown" in why
    assert bf16_support({"amx_bf16": True})[0] is False  # AMX bf16 needs the tile unit as well


E2E_ARGS = ["bench", "--width", "0.25", "--image-size", "32", "--batch", "1", "--repeats", "2", "--warmup", "1",
            "--no-rss", "--precision", "fp32,bf16", "--threads", "1"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    """One tiny `cmir-trt bench` run, in-process (the ONNX export is most of its time, so the OpenVINO tests below
    reuse the model files it keeps with --work instead of exporting again). Returns (exit code, out, work)."""
    from cmir_trt.cli import main

    base = tmp_path_factory.mktemp("bench-e2e")
    out, work = base / "out", base / "work"
    with pytest.MonkeyPatch.context() as mp:
        # The command sets OMP_WAIT_POLICY when unset; keep that from leaking into the rest of the session.
        mp.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        mp.setenv("CMIR_TRT_DEBUG", "1")  # a failure shows its traceback here rather than one line
        rc = main([*E2E_ARGS, "--out", str(out), "--work", str(work)])
    return rc, out, work


@pytest.fixture(scope="module")
def tiny(e2e: tuple[int, Path, Path]) -> tuple[dict[str, Path], dict[str, Any]]:
    rc, out, work = e2e
    assert rc == 0
    spec = json.loads((out / "results.json").read_text(encoding="utf-8"))["input_spec"]
    paths = {"checkpoint": work / "model.pt", "plan": work / "model.plan", "onnx": work / "model.onnx"}
    assert all(p.is_file() for p in paths.values())
    return paths, spec


@pytest.mark.skipif(not HAVE_OV, reason=NO_OV)
def test_openvino_fp32_matches_onnxruntime(tiny: tuple[dict[str, Path], dict[str, Any]]) -> None:
    paths, spec = tiny
    ort_be = cb.make_backend("onnxruntime", "fp32", "cpu", paths, 1)
    ov_be = cb.make_backend("openvino", "fp32", "cpu", paths, 1)
    for batch in (1, 3):  # a recompile per batch size: the second shape must not reuse the first's compile
        x = cb.make_inputs(batch, spec, seed=batch)
        ref, got = ort_be.predict(*x), ov_be.predict(*x)
        assert set(ref) == set(got) and {"probability", "logit", "heatmap"} <= set(ref)
        assert ov_be.actual_precision == "f32"
        # Both run the same fp32 graph; only summation order and kernel choice differ (seen here: <= 4e-7).
        for name in ref:
            assert got[name].shape == ref[name].shape
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=2e-5, err_msg=name)


@pytest.mark.skipif(not HAVE_OV, reason=NO_OV)
def test_openvino_bf16_within_the_issue_bounds(tiny: tuple[dict[str, Path], dict[str, Any]]) -> None:
    ok, why = cb.openvino_bf16_capable()
    if not ok:
        pytest.skip(why)
    paths, spec = tiny
    x = cb.make_inputs(2, spec, seed=5)
    ref = cb.make_backend("onnxruntime", "fp32", "cpu", paths, 1).predict(*x)
    be = cb.make_backend("openvino", "bf16", "cpu", paths, 1)
    got = be.predict(*x)
    assert be.actual_precision == "bf16"  # really compiled for bf16, not a silent f32 fallback
    # Issue 18's bf16 parity bounds (probability 1e-2, heatmap 5e-2); seen here: 3e-4 and 2e-3.
    assert np.abs(got["probability"] - ref["probability"]).max() <= 1e-2
    assert np.abs(got["heatmap"] - ref["heatmap"]).max() <= 5e-2


@pytest.mark.skipif(not HAVE_OV, reason=NO_OV)
def test_openvino_bf16_refused_without_bf16_capability(monkeypatch: pytest.MonkeyPatch,
                                                       tiny: tuple[dict[str, Path], dict[str, Any]]) -> None:
    import openvino as ov

    paths, _ = tiny

    class NoBf16Core:  # what OpenVINO reports on a CPU without avx512_bf16/AMX
        def get_property(self, device: str, name: str) -> list[str]:
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]

    monkeypatch.setattr(ov, "Core", NoBf16Core)
    ok, why = cb.openvino_bf16_capable()
    assert not ok and "BF16" in why
    with pytest.raises(cb.BackendUnavailable, match="BF16"):
        cb.make_backend("openvino", "bf16", "cpu", paths, 1)
    out = cb.bench_matrix(lambda n, p, t: cb.make_backend(n, p, "cpu", paths, t), {"image_size": 32,
                          "in_channels": 3, "num_clinical": 8}, ["openvino"], ["bf16"], [1], [1], repeats=1,
                          pause_s=0)
    assert out["rows"] == [] and out["failures"][0]["kind"] == "unavailable"
    assert "silently run f32" in out["failures"][0]["reason"]


def test_openvino_missing_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(cb.BackendUnavailable, match="openvino package is not installed"):
        cb.OpenVINOBackend(tmp_path / "model.onnx", 1, "fp32")


def test_peak_rss_child(tiny: tuple[dict[str, Path], dict[str, Any]]) -> None:
    paths, spec = tiny
    mib = cb.peak_rss_probe("cpu", paths, spec)("onnxruntime", "fp32", 1, 1)
    assert 10 < mib < 4096


def test_cli_end_to_end_fp32_bf16(e2e: tuple[int, Path, Path]) -> None:
    rc, out, _ = e2e
    assert rc == 0
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["precisions"] == ["fp32", "bf16"] and res["backends"] == list(cb.CPU_BACKENDS)
    _assert_every_pair_accounted(res, list(cb.CPU_BACKENDS), ["fp32", "bf16"], [1], [1])
    labels = {r["label"] for r in res["rows"]}
    assert "native fp32" in labels and "onnxruntime fp32" in labels
    if HAVE_OV:
        assert "openvino fp32" in labels
    assert set(res["machine_info"]["flags"]) == set(BF16_FLAGS)
    assert res["machine_info"]["bf16"]["reason"]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md.startswith("# cmir-trt bench — CMIR full, width 0.25, S=32")
    assert "avx512_bf16" in md and "vs native fp32 p50" in md and "vs openvino bf16 p50" in md
    for r in res["rows"]:
        assert f"| {r['label']} |" in md
    for f in res["failures"]:
        assert f"| {f['label']} | {f['kind']} |" in md
    assert (out / "results.png").stat().st_size > 0
    assert "--precision fp32,bf16" in res["command"]


def test_cli_rejects_bad_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMIR_TRT_DEBUG", raising=False)  # the one-line error, not a traceback
    from cmir_trt.cli import main

    assert main(["bench", "--precision", "fp16", "--out", str(tmp_path / "b")]) == 1
    assert "--precision for --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "b" / "results.json").exists()

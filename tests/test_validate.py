"""`cmir-trt validate`: the parity table over the backend registry, on seeded random inputs and a tiny SYNTHETIC
cohort; unavailable backends listed with a reason; a backend that is off is reported as off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _export_helpers import make_checkpoint

from cmir_trt.cli import main
from cmir_trt.export import validation as V

# torchscript and the onnx-trt expansion have their own test files; here the table, the cohort and fp16 on it.
RUN = ["onnxruntime-fp32", "onnxruntime-fp16", "onnx-trt-tensorrt", "native", "cuda"]


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CLI run; without --data it generates and uses the tiny SYNTHETIC cohort (OUT/tiny-cohort)."""
    root = tmp_path_factory.mktemp("validate")
    ckpt, _ = make_checkpoint(root, "full", seed=31)
    out = root / "out"
    rc = main(["validate", "--model", str(ckpt), "--out", str(out), "--backends", ",".join(RUN), "--max-cases", "8"])
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    return {"rc": rc, "report": report, "out": out, "ckpt": ckpt, "root": root}


def test_every_available_backend_within_tolerance(validated: dict[str, Any]) -> None:
    report = validated["report"]
    rows = {b["name"]: b for b in report["backends"]}
    assert list(rows) == RUN
    for name, b in rows.items():
        assert b["status"] in ("ran", "unavailable"), f"{name}: {b.get('reason')}"
        if b["status"] == "unavailable":
            assert b["reason"], f"{name} unavailable without a reason"
        else:
            assert b["within_tolerance"], f"{name} out of tolerance: {b['outputs']}"
            assert set(b["decision_flips"]) == {"random", "cases"}
    for name in ("onnxruntime-fp32", "onnxruntime-fp16"):
        assert rows[name]["status"] == "ran"
    assert rows["onnxruntime-fp32"]["outputs"]["probability"]["max_abs"] <= 1e-5
    assert rows["onnxruntime-fp32"]["outputs"]["logit"]["max_rel"] <= 1e-4
    assert rows["onnxruntime-fp16"]["outputs"]["probability"]["max_abs"] <= 1e-2
    assert rows["onnxruntime-fp16"]["decision_flips"]["cases"] == 0
    if not torch.cuda.is_available():
        assert rows["cuda"]["status"] == "unavailable" and "CUDA" in rows["cuda"]["reason"]
        assert rows["onnx-trt-tensorrt"]["status"] == "unavailable"
    assert report["all_available_within_tolerance"] is True and validated["rc"] == 0


def test_report_labels_synthetic_and_is_written(validated: dict[str, Any]) -> None:
    report = validated["report"]
    by_name = {s["name"]: s for s in report["inputs"]}
    assert by_name["random"]["synthetic"] is True and by_name["random"]["cases"] == 8
    assert by_name["cases"]["synthetic"] is True and by_name["cases"]["cases"] == 8
    assert "tiny-cohort" in by_name["cases"]["note"] and (validated["out"] / "tiny-cohort" / "cohort.json").is_file()
    assert report["synthetic_training_data"] is True
    md = (validated["out"] / "parity.md").read_text(encoding="utf-8")
    assert "synthetic" in md and "| onnxruntime-fp32 | logit |" in md
    assert "unavailable" in md or torch.cuda.is_available()
    for art in report["artifacts"].values():
        assert Path(art).is_file() or Path(art).is_dir()


def test_out_of_tolerance_backend_is_reported(validated: dict[str, Any]) -> None:
    """A runner that perturbs the probability by 2e-5 fails the fp32 bound; one that inverts it flips decisions."""

    def make(delta: float, invert: bool) -> Any:
        def prepare(ctx: V.ValidationContext) -> V.Runner:
            def run(art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> V.Arrays:
                with torch.no_grad():
                    o = ctx.model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
                p = o.probability.numpy() + delta
                return o.logit.numpy(), (1.0 - p if invert else p), o.heatmap.numpy()
            return run
        return prepare

    saved = dict(V.BACKENDS)
    try:
        V.register_backend(V.Backend("test-off-by-2e-5", "test", V.FP32, make(2e-5, False)))
        V.register_backend(V.Backend("test-inverted", "test", V.FP16, make(0.0, True)))
        V.register_backend(V.Backend("test-exact", "test", V.FP32, make(0.0, False)))
        report = V.validate_checkpoint(validated["ckpt"], validated["root"] / "w2",
                                       backends=["test-off-by-2e-5", "test-inverted", "test-exact"])
    finally:
        V.BACKENDS.clear()
        V.BACKENDS.update(saved)
    rows = {b["name"]: b for b in report["backends"]}
    off = rows["test-off-by-2e-5"]
    assert off["within_tolerance"] is False
    assert off["outputs"]["probability"]["max_abs"] == pytest.approx(2e-5, rel=0.05)
    assert off["outputs"]["probability"]["within_tolerance"] is False
    assert rows["test-inverted"]["within_tolerance"] is False  # abs error far above 1e-2
    assert rows["test-inverted"]["decision_flips"]["random"] > 0
    assert rows["test-exact"]["within_tolerance"] is True
    assert report["all_available_within_tolerance"] is False
    assert "OUT OF TOLERANCE" in V.format_text(report) or "NO" in V.format_text(report)


def test_cli_rejects_unknown_backend(validated: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["validate", "--model", str(validated["ckpt"]), "--out", str(validated["root"] / "o3"), "--backends",
               "nope", "--no-cohort"])
    assert rc == 1 and "unknown backend" in capsys.readouterr().err
    assert main(["validate", "--model", "x", "--list-backends"]) == 0
    assert "onnxruntime-fp16" in capsys.readouterr().out


def test_borderline_flips_are_reported_not_failed() -> None:
    """compare() on constructed outputs (threshold 0.5): a flip of a case 0.004 from the threshold, within the bf16
    probability bound of 1e-2, is a listed borderline flip; a flip 0.2 away fails the row; fp32 rows have no band."""
    ref_p = np.array([[0.496], [0.9], [0.1]], np.float32)
    z = np.zeros((3, 1), np.float32)
    heat = np.zeros((3, 1, 4, 4), np.float32)
    batch = (np.zeros((3, 3, 4, 4), np.float32), np.zeros((3, 3, 4, 4), np.float32), np.zeros((3, 8), np.float32))
    sets = [(V.InputSet("cases", [batch], ["near", "far", "low"], synthetic=True), [(z, ref_p, heat)])]

    def runner(p: np.ndarray) -> V.Runner:
        return lambda art, pv, clinical: (z, p, heat)

    bf16 = V.Backend("t-bf16", "test", V.BF16, lambda ctx: runner(ref_p))
    near = V.compare(bf16, runner(ref_p + np.array([[0.008], [0], [0]], np.float32)), sets, 0.5)
    assert near["decision_flips"]["cases"] == 1 and near["within_tolerance"] is True
    assert near["borderline_flips"][0]["case"] == "near"
    assert near["borderline_flips"][0]["reference_distance_to_threshold"] == pytest.approx(0.004, abs=1e-6)
    far = V.compare(bf16, runner(ref_p + np.array([[0.008], [0], [0.45]], np.float32)), sets, 0.5)
    assert far["within_tolerance"] is False and [f["case"] for f in far["borderline_flips"]] == ["near"]
    fp32 = V.Backend("t-fp32", "test", V.Tolerance({"probability": ("abs", 1.0)}), lambda ctx: runner(ref_p))
    strict = V.compare(fp32, runner(ref_p + np.array([[0.008], [0], [0]], np.float32)), sets, 0.5)
    assert strict["within_tolerance"] is True  # band = the row's bound (1.0) here: the flip is borderline
    fp32b = V.Backend("t-fp32b", "test", V.FP32, lambda ctx: runner(ref_p))
    assert V.compare(fp32b, runner(ref_p + np.array([[0.008], [0], [0]], np.float32)), sets, 0.5)[
        "borderline_flips"] == []

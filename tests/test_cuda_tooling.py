"""The GPU benchmark/report tooling, host side: target evaluation and Markdown report on hand-made rows (exact
expected values), the GPU entry points failing clearly without a GPU, and the GPU-machine script's syntax."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmir_trt.gpu import bench

ROOT = Path(__file__).resolve().parents[1]


def _results() -> dict:
    return {
        "device": {"name": "Test GPU", "torch": "x", "cuda": "y"}, "date": "2026-01-01 00:00 UTC",
        "copy_bandwidth_gbs": 3000.0,
        "involution": [{"N": 64, "C": 256, "H": 28, "precision": "fp32", "ours_ms": 0.1, "pct_of_copy_bw": 71.5,
                        "speedup_vs_unfold": 9.5},
                       {"N": 64, "C": 256, "H": 28, "precision": "fp16", "pct_of_copy_bw": 10.0,
                        "errors": {"unfold_ms": "OutOfMemoryError: CUDA out of memory"}}],
        "cmam": [{"N": 1, "precision": "fp32", "speedup_vs_sdpa": 2.0}],
        "e2e": [{"batch": 1, "precision": "fp32", "graph_vs_eager": 0.25}],
        "failures": {},
    }


def test_evaluate_targets() -> None:
    t = bench.evaluate_targets(_results())
    assert t["involution_pct_copy_bw"]["value"] == 71.5 and t["involution_pct_copy_bw"]["met"] is True
    assert t["involution_speedup_vs_unfold"]["met"] is False
    assert t["cmam_speedup_vs_sdpa"]["met"] is True
    assert t["e2e_b1_graph_vs_eager"]["met"] is False  # 0.25 > 0.2
    empty = bench.evaluate_targets({})
    assert all(v["value"] is None and v["met"] is None for v in empty.values())


def test_markdown_report() -> None:
    res = _results()
    res["targets"] = bench.evaluate_targets(res)
    md = bench.to_markdown(res)
    assert md.startswith("# cmir_trt GPU benchmarks — Test GPU")
    assert "synthetic" in md
    assert "| 64 | 256 | 28 | fp32 | 0.1 |" in md
    assert "OutOfMemoryError" in md  # a failed timing is reported, not dropped
    assert "| involution N=64 C=256 28x28 fp32: % of measured copy bandwidth | 71.5 | >= 70.0 | True |" in md


def test_report_is_written_atomically(tmp_path: Path) -> None:
    bench._write_atomic(tmp_path / "a" / "r.md", "x\n")
    assert (tmp_path / "a" / "r.md").read_text(encoding="utf-8") == "x\n"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.md"]  # no temp file left behind


def test_gpu_entry_points_without_gpu_raise_runtime_error() -> None:
    from cmir_trt._native import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda|CUDA"):
        bench.run_gpu_benchmarks(None, parts=("cmam",), quick=True)
    from cmir_trt.gpu.validate import compare_with_reference
    from cmir_trt.model.cmir import CMIRConfig, build_model

    with pytest.raises(RuntimeError, match="cuda|CUDA"):
        compare_with_reference(build_model(CMIRConfig(width=0.25, image_size=32)))
    with pytest.raises(ValueError, match="precision"):
        compare_with_reference(build_model(CMIRConfig(width=0.25, image_size=32)), precision="int4")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_machine_script_parses() -> None:
    script = ROOT / "benchmarks" / "gpu" / "run.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text(encoding="utf-8")
    for needle in ("pip install --no-build-isolation --no-deps", '-m "gpu or trt"', "compute-sanitizer",
                   "run_gpu_benchmarks", 'OUT="${OUT:-'):
        assert needle in text, needle


@pytest.mark.parametrize("script", ["bench_involution.py", "bench_cmam.py", "bench_gpu_e2e.py", "gpu/smoke.py"])
def test_benchmark_scripts_have_a_cli(script: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout

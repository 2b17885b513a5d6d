"""cmir_trt.gpu.bench without a GPU: the timing method on a simulated device clock (host dispatch overlapping device
work, CUDA-graph replay), the median statistic, failures becoming rows with their reasons, no device call after a
sticky CUDA error, the official-kernel loader (parsed, rendered and compiled with nvcc; launched through a fake cupy),
and the row builders run for real on the CPU with fake CUDA events."""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from cmir_trt.gpu import bench
from cmir_trt.model.involution import involution_aggregate

ROOT = Path(__file__).resolve().parents[1]
REAL_OFFICIAL = ROOT / ".deps" / "involution" / "cls" / "mmcls" / "models" / "utils" / "involution_cuda.py"


class FakeDevice:
    """A simulated GPU: kernels queue in order; a kernel starts when both the host has enqueued it and the previous
    one has finished. Events are stamped when the device reaches them. Graph capture records kernels instead of
    running them; a replay runs them back to back after one host-side launch."""

    def __init__(self) -> None:
        self.host = 0.0
        self.dev = 0.0
        self.capturing: FakeGraph | None = None
        self.broken: str | None = None
        self.empty_cache_calls = 0
        self.sync_calls = 0

    def launch(self, device_ms: float, host_ms: float = 0.0) -> None:
        if self.broken:
            raise RuntimeError(f"CUDA error: {self.broken}")
        self.host += host_ms
        if self.capturing is not None:
            self.capturing.kernels.append(device_ms)
            return
        self.dev = max(self.dev, self.host) + device_ms

    def synchronize(self) -> None:
        self.sync_calls += 1
        if self.broken:
            raise RuntimeError(f"CUDA error: {self.broken}")
        self.host = max(self.host, self.dev)

    def empty_cache(self) -> None:
        if self.broken:
            raise RuntimeError(f"CUDA error: {self.broken}")
        self.empty_cache_calls += 1

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.stamp: float | None = None

            def record(self) -> None:
                self.stamp = max(fake.dev, fake.host)

            def synchronize(self) -> None:
                assert self.stamp is not None
                fake.host = max(fake.host, self.stamp)

            def elapsed_time(self, end: Event) -> float:
                assert self.stamp is not None and end.stamp is not None
                return end.stamp - self.stamp

        class Stream:
            cuda_stream = 4242

            def wait_stream(self, other: Any) -> None:
                pass

        @contextlib.contextmanager
        def graph(g: FakeGraph) -> Any:
            fake.capturing = g
            try:
                yield
            finally:
                fake.capturing = None

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: fake.synchronize())
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: fake.empty_cache())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: FakeGraph(fake))
        monkeypatch.setattr(torch.cuda, "graph", graph)
        return self


class FakeGraph:
    def __init__(self, device: FakeDevice, replay_host_ms: float = 0.01) -> None:
        self.device = device
        self.kernels: list[float] = []
        self.replay_host_ms = replay_host_ms

    def replay(self) -> None:
        d = self.device
        d.host += self.replay_host_ms
        d.dev = max(d.dev, d.host) + sum(self.kernels)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    return FakeDevice().install(monkeypatch)


# ---------------------------------------------------------------- timing method
def test_back_to_back_launches_amortise_host_dispatch(fake: FakeDevice) -> None:
    """0.1 ms kernels behind 0.05 ms of Python dispatch: timing one call after a sync counts the dispatch (0.15 ms);
    R back-to-back calls per event pair measure 0.1 + 0.05 / R."""
    calls = []

    def fn() -> None:
        calls.append(1)
        fake.launch(0.1, host_ms=0.05)

    alone = bench.cuda_time_ms(fn, warmup=2, iters=5, reps=1)
    assert alone["median_ms"] == pytest.approx(0.15)
    t = bench.cuda_time_ms(fn, warmup=2, iters=5, reps=20)
    assert t["median_ms"] == pytest.approx(0.1 + 0.05 / 20)
    assert (t["reps"], t["iters"], t["mode"]) == (20, 5, "stream")
    assert len(calls) == 2 + 5 + 2 + 5 * 20  # warm-up, then iters x reps: every call is timed


def test_graph_replay_measures_device_time(fake: FakeDevice) -> None:
    """A host-bound call (0.3 ms dispatch, 0.2 ms kernel): streamed it reads 0.3 + 0.2 / R; as a replayed graph of R
    captured calls, 0.2 + (one replay launch) / R. The timed samples call fn no more (the graph replays it)."""
    calls = []

    def fn() -> None:
        calls.append(1)
        fake.launch(0.2, host_ms=0.3)

    streamed = bench.cuda_time_ms(fn, warmup=1, iters=4, reps=10)
    assert streamed["median_ms"] == pytest.approx(0.3 + 0.2 / 10)
    calls.clear()
    t = bench.cuda_time_ms(fn, warmup=3, iters=7, reps=10, graph=True)
    assert t["mode"] == "graph"
    assert t["median_ms"] == pytest.approx(0.2 + 0.01 / 10)
    assert len(calls) == 3 + 10  # side-stream warm-up + capture only


def test_the_statistic_is_the_median(fake: FakeDevice) -> None:
    costs = iter([1.0] * 3 + [1.0, 9.0, 0.2, 1.5, 1.2])  # 3 warm-up calls, then five samples of one call

    def fn() -> None:
        fake.launch(next(costs))

    assert bench.cuda_time_ms(fn, warmup=3, iters=5, reps=1)["median_ms"] == pytest.approx(1.2)
    with pytest.raises(ValueError, match="reps"):
        bench.cuda_time_ms(fn, reps=0)


def test_copy_bandwidth_uses_the_same_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def timer(fn: Any, warmup: int, iters: int, reps: int, graph: bool = False) -> dict[str, Any]:
        fn()  # the copy itself runs (on the CPU here)
        seen.update(warmup=warmup, iters=iters, reps=reps)
        return {"median_ms": 0.5}

    monkeypatch.setattr(bench, "_DEVICE", "cpu")
    monkeypatch.setattr(bench, "cuda_time_ms", timer)
    gbs = bench.copy_bandwidth_gbs(nbytes=1 << 16, timing=bench.Timing(warmup=1, iters=3, reps=4))
    assert gbs == pytest.approx(2 * (1 << 16) / 0.5e-3 / 1e9)
    assert seen == {"warmup": 1, "iters": 3, "reps": 4}


def test_card_spec_from_device_name() -> None:
    assert bench.card_spec("NVIDIA H100 80GB HBM3").bw_gbs == 3350.0  # SXM5
    assert bench.card_spec("NVIDIA H200").bw_gbs == 4800.0
    assert bench.card_spec("NVIDIA H100 PCIe").label == "H100 PCIe"
    assert bench.card_spec("NVIDIA H200 NVL").label == "H200 NVL"
    assert bench.card_spec("NVIDIA GeForce RTX 4090") is None


# ---------------------------------------------------------------- failures become rows with their reasons
def test_failures_are_recorded_per_cell(fake: FakeDevice) -> None:
    row: dict[str, Any] = {}
    t = bench.Timing(warmup=1, iters=3, reps=2)

    def good() -> Any:
        return lambda: fake.launch(0.5)

    def bad_setup() -> Any:
        raise ValueError("cupy.cuda.compiler.CompileException: bad\nsecond line")

    def bad_run() -> Any:
        def fn() -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.5 GiB")
        return fn

    assert bench._measure(row, "a_ms", good, t) == pytest.approx(0.5)
    assert bench._measure(row, "b_ms", bad_setup, t) is None
    assert bench._measure(row, "c_ms", bad_run, t) is None
    assert row["a_ms"] == pytest.approx(0.5) and "b_ms" not in row and "c_ms" not in row
    assert row["errors"] == {"b_ms": "ValueError: cupy.cuda.compiler.CompileException: bad",
                             "c_ms": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.5 GiB"}


def test_sticky_error_stops_the_part_without_touching_the_device(fake: FakeDevice) -> None:
    """A kernel that breaks the context: its row says so, later cases become rows saying why they did not run, and
    empty_cache (which would raise) is never called after it."""
    t = bench.Timing(warmup=0, iters=1, reps=1)

    def fill(row: dict[str, Any], case: int) -> None:
        def fn() -> None:
            if case == 2:
                fake.broken = "an illegal memory access was encountered"
            fake.launch(1.0)
        bench._measure(row, "ours_ms", lambda: fn, t)

    with pytest.raises(bench.StickyCudaError) as info:
        bench._run_cases([1, 2, 3, 4], lambda case: {"case": case}, fill)
    rows = info.value.rows
    assert [r["case"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["ours_ms"] == pytest.approx(1.0) and "errors" not in rows[0]
    assert "illegal memory access" in rows[1]["errors"]["ours_ms"]
    assert "CUDA context lost" in rows[1]["errors"]["ours_ms"]
    for r in rows[2:]:
        assert r["errors"]["row"].startswith("not run: ours_ms: RuntimeError: CUDA error: an illegal memory access")
        assert "ours_ms" not in r
    assert fake.empty_cache_calls == 1  # after row 1 only


def test_run_gpu_benchmarks_keeps_rows_and_skips_parts_after_a_sticky_error(
        fake: FakeDevice, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cmir_trt.gpu as gpu

    monkeypatch.setattr(gpu, "require_cuda", lambda device=0: None)
    monkeypatch.setattr(bench, "device_info", lambda: {"name": "NVIDIA H200", "torch": "t", "cuda": "c",
                                                       "spec": "H200 SXM", "spec_bw_gbs": 4800.0})
    monkeypatch.setattr(bench, "copy_bandwidth_gbs", lambda: 4000.0)
    touched = []

    def involution(**kw: Any) -> Any:
        assert kw["spec"].label == "H200 SXM" and kw["copy_gbs"] == 4000.0
        fake.broken = "unspecified launch failure"
        raise bench.StickyCudaError("ours_ms: launch failure", rows=[{"N": 64, "errors": {"ours_ms": "x"}}])

    monkeypatch.setattr(bench, "bench_involution", involution)
    monkeypatch.setattr(bench, "bench_cmam", lambda **kw: touched.append("cmam"))
    monkeypatch.setattr(bench, "bench_e2e", lambda *a, **kw: touched.append("e2e"))
    res = bench.run_gpu_benchmarks(tmp_path, name="r")
    assert touched == []
    assert res["involution"] == [{"N": 64, "errors": {"ours_ms": "x"}}]
    assert res["failures"]["involution"] == "ours_ms: launch failure"
    assert res["failures"]["cmam"].startswith("not run: CUDA context lost")
    assert res["failures"]["e2e"].startswith("not run: CUDA context lost")
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["involution"] == res["involution"] and saved["timing"]["statistic"] == "median"
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "not run: CUDA context lost" in md and "H200 SXM spec 4800 GB/s" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]
    with pytest.raises(ValueError, match="unknown benchmark part"):
        bench.run_gpu_benchmarks(tmp_path, parts=("involution", "convs"))


def test_a_non_sticky_part_failure_lets_later_parts_run(fake: FakeDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    import cmir_trt.gpu as gpu

    monkeypatch.setattr(gpu, "require_cuda", lambda device=0: None)
    monkeypatch.setattr(bench, "device_info", lambda: {"name": "Test GPU"})

    def cmam(**kw: Any) -> Any:
        raise KeyError("weights")

    monkeypatch.setattr(bench, "bench_cmam", cmam)
    monkeypatch.setattr(bench, "bench_e2e", lambda *a, **kw: [{"batch": 1, "precision": "fp16", "eager_ms": 1.0,
                                                             "ours_graph_ms": 0.1, "graph_vs_eager": 0.1}])
    res = bench.run_gpu_benchmarks(None, parts=("cmam", "e2e"))
    assert res["failures"]["cmam"].startswith("KeyError")
    assert res["targets"]["e2e_b1_fp16_graph_vs_eager"]["met"] is True
    assert "copy_bandwidth_gbs" not in res  # measured only for the involution part


# ---------------------------------------------------------------- row builders, run on the CPU
@pytest.fixture
def on_cpu(fake: FakeDevice, monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    monkeypatch.setattr(bench, "_DEVICE", "cpu")
    return fake


def test_involution_rows_record_every_backend(on_cpu: FakeDevice, tmp_path: Path) -> None:
    """Real row builders on CPU tensors: the CUDA-only backends fail with their reasons (never silently missing),
    the PyTorch references run, each precision gets its own row; a missing official source is a reason per row."""
    shapes = [{"label": "odd", "N": 1, "C": 32, "H": 9, "W": 9, "K": 3, "stride": 2, "group_channels": 16}]
    t = bench.Timing(warmup=0, iters=1, reps=1)
    rows = bench.bench_involution(shapes, precisions=("fp32", "bf16"), timing=t, copy_gbs=1000.0,
                                  spec=bench.card_spec("H100 80GB HBM3"), official=tmp_path / "missing.py")
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert (r["N"], r["C"], r["H"], r["W"], r["K"], r["stride"], r["shape"]) == (1, 32, 9, 9, 3, 2, "odd")
        for key in ("ours_ms", "ours_graph_ms", "fused_ms", "fused_graph_ms", "separate_ms", "official_ms",
                    "official_graph_ms"):
            assert key not in r and r["errors"][key], key
        assert "official involution kernel not found" in r["errors"]["official_ms"]
        assert "unfold_ms" in r and "pytorch_module_ms" in r  # the references ran (0 ms on the fake clock)
        assert "row" not in r["errors"]
        assert r["mbytes"] == pytest.approx(bench.involution_cost(1, 32, 9, 9, 3, 2, 16, r["precision"])["bytes"]
                                            / 1e6)
        assert r["roofline_ms"] > 0


def test_cmam_rows_time_stream_and_graph(on_cpu: FakeDevice) -> None:
    rows = bench.bench_cmam(batches=(2,), channels=48, size=3, dim=24, heads=3, precisions=("fp32",),
                            timing=bench.Timing(warmup=0, iters=1, reps=1))
    (r,) = rows
    assert (r["N"], r["C"], r["tokens"], r["dim"], r["heads"]) == (2, 48, 9, 24, 3)
    assert {"sdpa_ms", "reference_ms", "sdpa_graph_ms", "reference_graph_ms"} <= set(r)
    assert set(r["errors"]) == {"ours_ms", "ours_graph_ms"}  # our op needs CUDA tensors: a reason, not a gap


def test_e2e_backend_construction_errors_are_rows_not_gaps(on_cpu: FakeDevice) -> None:
    from cmir_trt.model.cmir import CMIRConfig, build_model

    torch.manual_seed(0)
    model = build_model(CMIRConfig(width=0.125, image_size=32, cmam_dim=16, cmam_heads=2)).eval()
    updates = []
    rows = bench.bench_e2e(model=model, batches=(1, 2), precisions=("fp32", "bf16"), compile_models=False,
                           timing=bench.Timing(warmup=0, iters=1, reps=1), on_update=lambda r: updates.append(len(r)))
    assert [(r["batch"], r["precision"]) for r in rows] == [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    for r in rows:
        assert "eager_ms" in r
        for key in ("ours_ms", "ours_graph_ms", "ours_cudnn_graph_ms"):
            assert r["errors"][key].startswith("set-up failed: ") and key not in r
        # kernel counts at batch 1 only; on the CPU the profiler sees no CUDA kernel: a reason, never a 0
        if r["batch"] == 1:
            assert "eager_kernels" not in r and r["errors"]["eager_kernels"], r["errors"]
        else:
            assert "eager_kernels" not in r.get("errors", {})
        assert "ours_kernels" not in r  # its backend could not be built
    assert updates and updates[-1] == 4


def test_e2e_compile_rows_respect_the_budget(on_cpu: FakeDevice) -> None:
    from cmir_trt.model.cmir import CMIRConfig, build_model

    model = build_model(CMIRConfig(width=0.125, image_size=32, cmam_dim=16, cmam_heads=2)).eval()
    rows = bench.bench_e2e(model=model, batches=(1,), precisions=("fp32",), compile_models=True, budget_s=0.0,
                           timing=bench.Timing(warmup=0, iters=1, reps=1))
    assert rows[0]["errors"]["compile_ms"] == "skipped: time budget spent"


def test_involution_derived_metrics() -> None:
    spec = bench.card_spec("NVIDIA H200")
    row = {"N": 64, "C": 256, "H": 28, "W": 28, "K": 7, "stride": 1, "group_channels": 16, "precision": "fp32",
           "ours_ms": 0.12, "ours_graph_ms": 0.1, "official_ms": 0.31, "official_graph_ms": 0.3, "unfold_ms": 2.4,
           "fused_ms": 0.2, "separate_ms": 0.25}
    bench._involution_derived(row, 4000.0, spec)
    nbytes = 64 * 256 * 784 * 4 * 2 + 64 * 16 * 49 * 784 * 4  # x + y + kernel tensor
    assert row["mbytes"] == pytest.approx(nbytes / 1e6)
    assert row["ours_gbs"] == pytest.approx(nbytes / 1e-4 / 1e9)
    assert row["pct_of_copy_bw"] == pytest.approx(100 * nbytes / 1e-4 / 1e9 / 4000.0)
    assert row["pct_of_spec_bw"] == pytest.approx(100 * nbytes / 1e-4 / 1e9 / 4800.0)
    assert row["official_pct_of_copy_bw"] == pytest.approx(row["pct_of_copy_bw"] / 3)
    assert row["speedup_vs_official"] == pytest.approx(3.0)
    assert row["speedup_vs_unfold"] == pytest.approx(20.0)  # both launched from Python
    assert row["fused_vs_separate"] == pytest.approx(1.25)


def test_cmam_derived_metrics_count_split_k_partials() -> None:
    """Batch 1 of the model's CMAM (16 tokens x 2048, d 256) splits K 16 ways for Q/K/V and 2 ways for the output
    projections on 132 SMs (tensor-core tiles in every dtype): those partial sums are bytes the kernels move, so they
    count in GB/s and % of spec."""
    spec = bench.card_spec("NVIDIA H100 80GB HBM3")
    row = {"N": 1, "C": 2048, "size": 4, "dim": 256, "heads": 8, "precision": "fp32", "ours_graph_ms": 0.05}
    bench._cmam_derived(row, spec, 132)
    m = 16
    weights = 2 * (4 * 256 * 2048 + 3 * 256 + 3 * 2048) * 4
    work = 4 * 2 * 6 * 16 * m * 256 + 4 * 2 * 2 * m * 256 + 4 * 2 * m * 2048 * (1 + 2 + 1)
    nbytes = weights + 4 * m * 2048 * 4 + work
    assert (row["qkv_splits"], row["out_splits"]) == (16, 2)
    assert row["mbytes"] == pytest.approx(nbytes / 1e6)
    assert row["pct_of_spec_bw"] == pytest.approx(100 * nbytes / 5e-5 / 1e9 / 3350.0)
    bench._cmam_derived(row, spec, 16)  # a small card: fewer blocks needed, fewer splits, fewer bytes
    assert row["qkv_splits"] < 16 and row["mbytes"] < nbytes / 1e6
    assert row["roofline_ms"] == pytest.approx(row["mbytes"] * 1e6 / 3.35e12 * 1e3)  # memory-bound (3.35 TB/s)


def test_targets_cover_every_precision_and_batch() -> None:
    res = {"involution": [{"N": 64, "C": 256, "H": 28, "precision": p, "pct_of_copy_bw": v, "speedup_vs_official": 2.5,
                           "speedup_vs_unfold": 12.0} for p, v in (("fp32", 75.0), ("fp16", 60.0), ("bf16", 71.0))],
           "cmam": [{"N": n, "precision": p, "speedup_vs_sdpa": 1.2 if n == 64 else 1.6}
                    for n in (1, 8, 64) for p in ("fp32", "fp16", "bf16")]}
    t = bench.evaluate_targets(res)
    assert t["involution_pct_copy_bw"]["met"] is True and t["involution_pct_copy_bw_fp16"]["met"] is False
    assert t["involution_pct_copy_bw_bf16"]["met"] is True
    assert all(t[f"involution_speedup_vs_official{s}"]["met"] for s in ("", "_fp16", "_bf16"))
    assert t["cmam_speedup_vs_sdpa"]["met"] is True and t["cmam_b8_bf16_speedup_vs_sdpa"]["met"] is True
    assert t["cmam_b64_fp16_speedup_vs_sdpa"]["met"] is False
    assert t["e2e_b1_fp16_graph_vs_eager"]["met"] is None  # no row: unknown, not failed


# ---------------------------------------------------------------- the official kernel: source, render, launch
# A stand-in written for this test with the same layout as the official file (module-level template strings
# joined with +, string.Template placeholders); it is not the official kernel.
STAND_IN = '''
import cupy  # never imported by the loader
loop_macro = """
#define EACH(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
"""
_involution_kernel = loop_macro + """
extern "C" __global__ void involution_forward_kernel(const ${Dtype}* x, const ${Dtype}* w, ${Dtype}* y) {
  EACH(i, ${nthreads}) {
    ${Dtype} acc = 0;
    const int hw = i % (${top_height} * ${top_width});
    const int g = (i / (${top_height} * ${top_width})) % ${channels} / (${channels} / ${groups});
    acc += w[g * ${kernel_h} * ${kernel_w} + hw % (${kernel_w})] * x[i * ${stride_h} % (${num} * ${channels})];
    y[i] = acc + (${Dtype})(${pad_h} + ${pad_w} + ${dilation_h} + ${dilation_w} + ${stride_w} + ${bottom_height}
                            + ${bottom_width});
  }
}
"""
'''


def _nvcc_compiles(code: str, tmp_path: Path, tag: str) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (the CUDA toolkit compiler is needed to compile the rendered kernel)")
    src = tmp_path / f"{tag}.cu"
    src.write_text(code, encoding="utf-8")
    proc = subprocess.run([nvcc, "-c", "-arch=sm_90", "-o", str(tmp_path / f"{tag}.o"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_official_source_is_parsed_not_imported(tmp_path: Path) -> None:
    path = tmp_path / "involution_cuda.py"
    path.write_text(STAND_IN, encoding="utf-8")
    src = bench.official_involution_source(path)
    assert src.startswith("\n#define EACH") and "involution_forward_kernel" in src
    code, nthreads, out_hw = bench.render_official_involution(src, "fp32", 2, 32, 9, 9, 3, 2, 2)
    assert out_hw == (5, 5) and nthreads == 2 * 32 * 5 * 5
    assert "EACH(i, 1600)" in code and "const float* x" in code and "$" not in code


def test_official_source_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fetch d-li14/involution"):
        bench.official_involution_source(tmp_path / "nope.py")
    other = tmp_path / "other.py"
    other.write_text("x = 'no kernel here'\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no module-level string _involution_kernel"):
        bench.official_involution_source(other)
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable Python file"):
        bench.official_involution_source(broken)
    huge = tmp_path / "huge.py"
    huge.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ValueError, match="bytes, not d-li14"):
        bench.official_involution_source(huge)
    with pytest.raises(ValueError, match="placeholder"):
        bench.render_official_involution("void involution_forward_kernel() { ${unknown_name}; }", "fp32",
                                         1, 16, 8, 8, 3, 1, 1)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_stand_in_renders_to_compilable_cuda(precision: str, tmp_path: Path) -> None:
    path = tmp_path / "involution_cuda.py"
    path.write_text(STAND_IN, encoding="utf-8")
    code, _, _ = bench.render_official_involution(bench.official_involution_source(path), precision, 1, 32, 8, 8, 7,
                                                  1, 2)
    _nvcc_compiles(code, tmp_path, precision)


@pytest.mark.skipif(not REAL_OFFICIAL.is_file(), reason="the official d-li14/involution source is not fetched into "
                    ".deps/involution (benchmarks/gpu/README.md says how); the stand-in tests cover the loader")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_real_official_kernel_renders_and_compiles(precision: str, tmp_path: Path) -> None:
    src = bench.official_involution_source(REAL_OFFICIAL)
    code, nthreads, out_hw = bench.render_official_involution(src, precision, 64, 256, 28, 28, 7, 1, 16)
    assert out_hw == (28, 28) and nthreads == 64 * 256 * 28 * 28 and "$" not in code
    _nvcc_compiles(code, tmp_path, precision)


def _fake_cupy(monkeypatch: pytest.MonkeyPatch, compute: Any) -> dict[str, Any]:
    log: dict[str, Any] = {"launches": [], "streams": [], "compiled": False}

    class RawKernel:
        def __init__(self, code: str, name: str) -> None:
            log["code"], log["name"] = code, name

        def compile(self) -> None:
            log["compiled"] = True

        def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
            assert log["compiled"], "compiled during warm-up, before the first launch"
            assert log["streams"] and log["streams"][-1] == "entered"
            log["launches"].append((grid, block, args))
            compute(args)

    @contextlib.contextmanager
    def external_stream(ptr: int) -> Any:
        log["streams"].append(ptr)
        log["streams"].append("entered")
        yield

    cuda = types.SimpleNamespace(ExternalStream=external_stream)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawKernel=RawKernel, cuda=cuda, __fake__=True))
    return log


@pytest.mark.parametrize("wrong", [False, True])
def test_official_kernel_launch_and_check(wrong: bool, fake: FakeDevice, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Launch configuration (1024 threads, ceil(outputs / 1024) blocks, raw pointers), torch's current stream, and
    the check against our output before anything is timed (a wrong result is an error, never a timing)."""
    path = tmp_path / "involution_cuda.py"
    path.write_text(STAND_IN, encoding="utf-8")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 9, 9, generator=g)
    kern = torch.randn(2, 2, 3, 3, 5, 5, generator=g)
    expect = involution_aggregate(x, kern, 3, 2)

    def compute(args: tuple[Any, ...]) -> None:  # plays the kernel: y = reference (or garbage) at the pointer
        assert int(args[0]) == x.data_ptr() and int(args[1]) == kern.data_ptr()
        out = (torch.zeros_like(expect) if wrong else expect).contiguous()
        ctypes.memmove(int(args[2]), out.data_ptr(), out.numel() * out.element_size())

    log = _fake_cupy(monkeypatch, compute)
    official = bench.OfficialInvolution(path)
    if wrong:
        with pytest.raises(ValueError, match="differs from ours"):
            official.make(x, kern, 3, 2, "fp32", expect)
        return
    run = official.make(x, kern, 3, 2, "fp32", expect)
    y = run()
    assert torch.equal(y, expect)
    assert log["name"] == "involution_forward_kernel" and "EACH(i, 1600)" in log["code"]
    grid, block, args = log["launches"][0]
    assert grid == (2,) and block == (1024,) and len(args) == 3  # 1600 outputs -> 2 blocks of 1024
    assert log["streams"][0] == 4242  # torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="output"):
        official.make(x, kern, 3, 2, "fp32", expect[:, :, :4])

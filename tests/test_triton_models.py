"""The Python-backend models' set-up without a server: which engine a CPU or GPU instance loads (the GPU branches
cannot run on these machines; test_triton_server.py serves the CPU one for real), and a clear error for a bad
gpu_backend. A stand-in for Triton's `triton_python_backend_utils` records the log lines."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

import cmir_trt.engine
from cmir_trt.serve.models import TensorModel


class _Engine:
    """Records how the model constructs its engine."""

    calls: list[tuple] = []

    def __init__(self, path, device="cpu", backend="auto", threads=None, precision="fp32") -> None:
        _Engine.calls.append((Path(path), device, backend, threads))
        self.backend, self.device, self.metadata = backend, device, {"model_id": "m", "synthetic": True}


@pytest.fixture
def fake_triton(monkeypatch):
    logs: list[str] = []
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Logger = types.SimpleNamespace(log_info=logs.append, log_error=logs.append)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(cmir_trt.engine, "Engine", _Engine)
    # setenv first so monkeypatch records the variable and removes what the model sets (delenv of an absent
    # variable records nothing, and the value leaked into later tests such as the plugin harness).
    monkeypatch.setenv("CMIR_TRT_PLUGIN_LIBRARY", "")
    monkeypatch.delenv("CMIR_TRT_PLUGIN_LIBRARY")
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # the model installs a filter; undo it after
    _Engine.calls = []
    return logs


def _args(repo: Path, kind: str, **params: str) -> dict:
    cfg = {"name": "cmir", "input": [{"name": n} for n in ("art", "pv", "clinical")],
           "output": [{"name": n} for n in ("probability", "logit", "heatmap")],
           "parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(cfg), "model_repository": str(repo / "cmir"), "model_version": "1",
            "model_instance_kind": kind, "model_instance_device_id": "0"}


def test_cpu_instance_runs_native_plan(tmp_path, fake_triton) -> None:
    TensorModel().initialize(_args(tmp_path, "CPU", plan="model.plan", threads="3"))
    assert _Engine.calls == [(tmp_path / "cmir" / "1" / "model.plan", "cpu", "native", 3)]
    assert any("SYNTHETIC" in line and "native" in line for line in fake_triton)
    TensorModel().initialize(_args(tmp_path, "CPU", threads="0"))
    assert _Engine.calls[-1][3] == os.cpu_count()  # 0 = all cores for one instance
    args = _args(tmp_path, "CPU", threads="0")
    cfg = json.loads(args["model_config"])
    cfg["instance_group"] = [{"count": 2, "kind": "KIND_CPU"}]
    TensorModel().initialize({**args, "model_config": json.dumps(cfg)})
    assert _Engine.calls[-1][3] == max(1, (os.cpu_count() or 1) // 2)  # the instances share the cores


def test_gpu_instance_tensorrt_engine_with_plugins(tmp_path, fake_triton) -> None:
    TensorModel().initialize(_args(tmp_path, "GPU", gpu_backend="tensorrt",
                                   tensorrt_engine="../cmir_tensorrt/1/model.plan",
                                   plugin_library="../cmir_tensorrt/plugins/libcmir_trt_plugins.so"))
    path, device, backend, _ = _Engine.calls[-1]
    assert path == (tmp_path / "cmir_tensorrt" / "1" / "model.plan").resolve()
    assert (device, backend) == ("cuda", "tensorrt")
    assert os.environ["CMIR_TRT_PLUGIN_LIBRARY"] == str(
        (tmp_path / "cmir_tensorrt" / "plugins" / "libcmir_trt_plugins.so").resolve())


def test_gpu_instance_torch_checkpoint(tmp_path, fake_triton) -> None:
    pytest.importorskip("torch")
    TensorModel().initialize(_args(tmp_path, "GPU", gpu_backend="torch", checkpoint="model.pt"))
    assert _Engine.calls[-1][:3] == (tmp_path / "cmir" / "1" / "model.pt", "cuda", "torch")


def test_gpu_backend_must_be_known(tmp_path, fake_triton) -> None:
    with pytest.raises(ValueError, match="gpu_backend must be tensorrt or torch, got 'onnx'"):
        TensorModel().initialize(_args(tmp_path, "GPU", gpu_backend="onnx"))


def test_preprocess_model_is_the_predictors_pipeline(tmp_path, monkeypatch) -> None:
    """`cmir_preprocess` turns the request into tensors through Predictor.prepare_inputs (one call, no second copy
    of the pipeline): its outputs equal prepare_inputs on the same images exactly, and a bad clinical value is the
    Predictor's one-line error."""
    sitk = pytest.importorskip("SimpleITK")
    pytest.importorskip("torch")
    import numpy as np
    from _dicom_helpers import CLINICAL_COLUMNS, tiny_plan, volumes

    from cmir_trt import Predictor
    from cmir_trt.data import read_image
    from cmir_trt.data.errors import ClinicalDataError
    from cmir_trt.serve.models import CASE_INPUTS, PreprocessModel

    plan = tiny_plan(tmp_path)
    paths = []
    for img, name in zip(volumes(4), CASE_INPUTS, strict=True):
        paths.append(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(img, str(paths[-1]))
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Logger = types.SimpleNamespace(log_info=print, log_error=print)  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    calls = []
    original = Predictor.prepare_inputs

    def spy(self, *args, **kwargs):
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "prepare_inputs", spy)
    model = PreprocessModel()
    cfg = {"name": "cmir_preprocess", "parameters": {"model_file": {"string_value": str(plan)}}}
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(tmp_path / "cmir_preprocess")})
    try:
        clinical = dict(zip(CLINICAL_COLUMNS, (61.0, 1, 2.2, 1.9, 1, 0, -2.6), strict=True))
        as_u8 = lambda b: np.frombuffer(b, dtype=np.uint8)  # noqa: E731
        request = {n: as_u8(p.read_bytes()) for n, p in zip(CASE_INPUTS, paths, strict=True)}
        request.update(case_id=as_u8(b"P7"), clinical_json=as_u8(json.dumps(clinical).encode()))
        work = tmp_path / "work"
        work.mkdir()
        out = model._prepare(request, work)
        assert calls == ["P7"]
        prep, x_clin = original(model.predictor, "P7", *(read_image(p) for p in paths), clinical)
        np.testing.assert_array_equal(out["art"], prep.art[None])
        np.testing.assert_array_equal(out["pv"], prep.pv[None])
        np.testing.assert_array_equal(out["clinical"], x_clin)
        info = json.loads(out["case_info"].tobytes())
        assert info["case_id"] == "P7" and info["preprocessing"]["slices"] == list(prep.slices)
        request["clinical_json"] = as_u8(json.dumps({**clinical, "age": "sixty"}).encode())
        with pytest.raises(ClinicalDataError, match="age") as ei:
            model._prepare(request, work)
        assert "P7" in str(ei.value) and "\n" not in str(ei.value)
    finally:
        model.finalize()

"""cmir_trt.tensorrt.build_engine against a recording stand-in of TensorRT's Python API.

TensorRT cannot be installed here, so its API (the calls build_engine makes, as documented for TensorRT 10/11) is
emulated by a small recording module; its ONNX "parser" reads the real graph with the onnx package. What is checked
is our side of the contract: strongly typed network flags per major version, one optimization profile over the
batch axis with the requested min/opt/max, the workspace cap, plugin loading and creator lookup, atomic output, the
sidecar (engine hash, ONNX sidecar carried over), and clear errors for every failure TensorRT can report."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from _trt_helpers import FakeTRT  # noqa: E402

from cmir_trt import tensorrt as cmt  # noqa: E402

S, F = 40, 6
REPO = Path(__file__).resolve().parents[1]


def _onnx_model(path: Path, dynamic_hw: bool = False) -> Path:
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    hw: list[Any] = ["h", "w"] if dynamic_hw else [S, S]
    inputs = [vi("art", TensorProto.FLOAT, ["batch", 3, *hw]), vi("pv", TensorProto.FLOAT, ["batch", 3, *hw]),
              vi("clinical", TensorProto.FLOAT, ["batch", F])]
    outputs = [vi("logit", TensorProto.FLOAT, ["batch", 1]), vi("probability", TensorProto.FLOAT, ["batch", 1]),
               vi("heatmap", TensorProto.FLOAT, ["batch", 3, *hw])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [F, 1], np.ones(F, np.float32))
    nodes = [helper.make_node("MatMul", ["clinical", "w"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"]),
             helper.make_node("Add", ["art", "pv"], ["heatmap"])]
    onnx.save_model(helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, [w])), str(path))
    Path(str(path) + ".json").write_text(json.dumps({"synthetic_training_data": True,
                                                     "artifact": {"file": path.name, "precision": "fp16"},
                                                     "model": {"config": {"image_size": S}}}), encoding="utf-8")
    return path


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    p = tmp_path / "libcmir_trt_plugins.so"
    p.write_bytes(b"\x7fELF stand-in")
    return p


def _install(monkeypatch: pytest.MonkeyPatch, fake: FakeTRT) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    monkeypatch.setattr(cmt, "_loaded_libraries", {})


@pytest.mark.parametrize("version, flags", [("10.16.0", 1 << 1), ("11.1.0", 0)])
def test_build_engine_profile_flags_and_sidecar(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch,
                                                version: str, flags: int) -> None:
    fake = FakeTRT(version)
    _install(monkeypatch, fake)
    src = _onnx_model(tmp_path / "m.onnx")
    out = cmt.build_engine(src, tmp_path / "out" / "m.engine", min_batch=2, opt_batch=3, max_batch=7,
                           workspace_mib=64, plugin_library=lib)
    assert fake.calls["flags"] == flags  # strongly typed: TRT 10 by flag, TRT 11 always
    assert fake.calls["loaded"] == [str(lib.resolve())]
    assert fake.calls["pool"] == ("workspace", 64 << 20)
    assert fake.calls["profiles"] == [{
        "art": ([2, 3, S, S], [3, 3, S, S], [7, 3, S, S]),
        "pv": ([2, 3, S, S], [3, 3, S, S], [7, 3, S, S]),
        "clinical": ([2, F], [3, F], [7, F]),
    }]
    assert out.read_bytes() == fake.engine_bytes
    sc = json.loads(Path(str(out) + ".json").read_text(encoding="utf-8"))
    assert sc["artifact"]["sha256"] == hashlib.sha256(fake.engine_bytes).hexdigest()
    assert sc["artifact"]["bytes"] == len(fake.engine_bytes) and sc["artifact"]["precision"] == "fp16"
    assert sc["synthetic_training_data"] is True and sc["model"]["config"]["image_size"] == S
    assert sc["tensorrt"]["tensorrt_version"] == version
    assert sc["tensorrt"]["profile"] == {"min_batch": 2, "opt_batch": 3, "max_batch": 7}
    assert sc["tensorrt"]["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sc["source_artifact"]["file"] == "m.onnx"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.engine", "m.engine.json"]  # no temp files


def test_default_opt_batch(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTRT("10.16.0")
    _install(monkeypatch, fake)
    cmt.build_engine(_onnx_model(tmp_path / "m.onnx"), tmp_path / "m.engine", max_batch=16, plugin_library=lib)
    lo, opt, hi = fake.calls["profiles"][0]["art"]
    assert (lo[0], opt[0], hi[0]) == (1, 4, 16)
    assert fake.calls["pool"] is None  # TensorRT's own default unless asked


@pytest.mark.parametrize("knob, error, match", [
    ("parse_ok", cmt.EngineBuildError, "could not parse .*CMIRInvolution\\): plugin not found"),
    ("build_ok", cmt.EngineBuildError, "failed to build an engine"),
    ("load_ok", RuntimeError, "could not load the plugin library"),
])
def test_tensorrt_failures_are_reported(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch, knob: str,
                                        error: type, match: str) -> None:
    fake = FakeTRT("11.1.0")
    setattr(fake, knob, False)
    _install(monkeypatch, fake)
    with pytest.raises(error, match=match):
        cmt.build_engine(_onnx_model(tmp_path / "m.onnx"), tmp_path / "m.engine", plugin_library=lib)
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


def test_missing_creators_named(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTRT("11.1.0")
    fake.creators = {"CMIRInvolution"}
    _install(monkeypatch, fake)
    with pytest.raises(RuntimeError, match="no creator for \\['CMIRCrossModalAttention'\\]"):
        cmt.load_plugin_library(lib)


def test_dynamic_spatial_dims_refused(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, FakeTRT("10.16.0"))
    with pytest.raises(cmt.EngineBuildError, match="dynamic non-batch dimensions"):
        cmt.build_engine(_onnx_model(tmp_path / "m.onnx", dynamic_hw=True), tmp_path / "m.engine",
                         plugin_library=lib)


def test_plugin_library_loaded_once(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTRT("11.1.0")
    _install(monkeypatch, fake)
    assert cmt.load_plugin_library(lib) == lib.resolve()
    assert cmt.load_plugin_library(lib) == lib.resolve()
    assert fake.calls["loaded"] == [str(lib.resolve())]  # a second load_library would register twice


def test_backend_refuses_engine_that_differs_from_its_sidecar(tmp_path: Path, lib: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTRT("11.1.0")
    _install(monkeypatch, fake)
    engine = cmt.build_engine(_onnx_model(tmp_path / "m.onnx"), tmp_path / "m.engine", plugin_library=lib)

    class Reached(Exception):
        pass

    def stop() -> None:
        raise Reached  # the intact engine gets past the integrity check to the device set-up

    monkeypatch.setattr(cmt, "_device_module", stop)
    with pytest.raises(Reached):
        cmt.TensorRTBackend(engine, plugin_library=lib)
    engine.write_bytes(engine.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="does not match its sidecar"):
        cmt.TensorRTBackend(engine, plugin_library=lib)


def _standalone() -> types.ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cmir_build_engine_script", REPO / "export" / "build_engine.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_standalone_script_builds_with_tensorrt_only(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """export/build_engine.py imports nothing of cmir_trt: same profile, flags and sidecar as build_engine."""
    fake = FakeTRT("10.16.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    src = _onnx_model(tmp_path / "m.onnx")
    out = tmp_path / "model.plan"
    rc = _standalone().main(["--onnx", str(src), "--plugins", str(lib), "--out", str(out), "--max-batch", "5",
                             "--workspace-mib", "32"])
    assert rc == 0, capsys.readouterr().err
    assert out.read_bytes() == fake.engine_bytes
    assert fake.calls["flags"] == 1 << 1 and fake.calls["pool"] == ("workspace", 32 << 20)
    assert fake.calls["profiles"][0]["clinical"] == ([1, F], [4, F], [5, F])
    sc = json.loads(Path(str(out) + ".json").read_text(encoding="utf-8"))
    assert sc["artifact"]["sha256"] == hashlib.sha256(fake.engine_bytes).hexdigest()
    assert sc["synthetic_training_data"] is True


def test_standalone_script_errors(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = _onnx_model(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    mod = _standalone()
    assert mod.main(["--onnx", str(src), "--plugins", str(lib), "--out", str(tmp_path / "e.plan")]) == 1
    assert "TensorRT is not installed" in capsys.readouterr().err
    fake = FakeTRT("11.1.0")
    fake.parse_ok = False
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    assert mod.main(["--onnx", str(src), "--plugins", str(lib), "--out", str(tmp_path / "e.plan")]) == 1
    assert "could not parse" in capsys.readouterr().err
    assert mod.main(["--onnx", str(src), "--plugins", str(lib), "--out", str(tmp_path / "e.plan"),
                     "--min-batch", "4", "--max-batch", "2"]) == 1
    assert not (tmp_path / "e.plan").exists()


def test_cli_build_with_tensorrt(tmp_path: Path, lib: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cmir_trt.cli import main

    _install(monkeypatch, FakeTRT("11.1.0"))
    out = tmp_path / "m.engine"
    rc = main(["build", "--onnx", str(_onnx_model(tmp_path / "m.onnx")), "--out", str(out), "--max-batch", "3",
               "--plugins", str(lib)])
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.is_file() and Path(str(out) + ".json").is_file()

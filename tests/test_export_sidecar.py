"""Sidecars and artefact checks: contents, truncated/modified files, sidecars that disagree with the graph, bad
input to `cmir-trt export` (clear errors, no half-written output), static batch and the grading head."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from _export_helpers import METADATA, inputs, make_checkpoint, max_abs, max_rel, reference, run_ort

from cmir_trt.cli import main
from cmir_trt.export import ArtifactError, export_model, read_sidecar, verify_artifact
from cmir_trt.export.sidecar import load_onnx_checked, sidecar_path
from cmir_trt.model import save_checkpoint


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sidecar")
    ckpt, model = make_checkpoint(root, "M2", seed=5, num_classes=3)
    rc = main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(root / "m.onnx"), "--batch", "2"])
    assert rc == 0
    ts = export_model(ckpt, "torchscript", root / "m.pt")
    return {"root": root, "ckpt": ckpt, "model": model, "onnx": root / "m.onnx", "ts": ts}


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


def test_sidecar_contents(artefacts: dict[str, Any]) -> None:
    sc = read_sidecar(artefacts["onnx"])
    ckpt_hash = hashlib.sha256(artefacts["ckpt"].read_bytes()).hexdigest()
    assert sc["checkpoint"]["sha256"] == ckpt_hash
    assert sc["artifact"]["sha256"] == hashlib.sha256(artefacts["onnx"].read_bytes()).hexdigest()
    assert sc["artifact"]["bytes"] == artefacts["onnx"].stat().st_size
    assert sc["model"]["config"] == artefacts["model"].config.to_dict()
    assert sc["threshold"] == METADATA["threshold"] and sc["decision_threshold"] == METADATA["threshold"]
    assert sc["clinical_schema"] == METADATA["clinical_schema"]
    assert sc["preprocess"] == METADATA["preprocess"]
    assert sc["synthetic_training_data"] is True and sc["training_data"]["cohort"] == "unit-test"
    assert [i["name"] for i in sc["inputs"]] == ["art", "pv", "clinical"]
    assert sc["inputs"][0] == {"name": "art", "shape": [2, 3, 40, 40], "dtype": "float32"}
    assert sc["outputs"][1] == {"name": "probability", "shape": [2, 3], "dtype": "float32"}
    assert sc["artifact"]["format"] == "onnx" and sc["artifact"]["batch"] == 2
    ts = read_sidecar(artefacts["ts"])
    assert ts["artifact"]["batch"] == "dynamic" and ts["inputs"][0]["shape"][0] == "batch"


def test_static_batch_and_grading_head(artefacts: dict[str, Any]) -> None:
    proto = onnx.load(str(artefacts["onnx"]))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_value == 2
    x = inputs(2, seed=11)
    ref = reference(artefacts["model"], x)
    got = run_ort(artefacts["onnx"], x)
    assert got[1].shape == (2, 3)
    np.testing.assert_allclose(got[1].sum(axis=1), 1.0, atol=1e-6)
    assert max_abs(got[1], ref[1]) <= 1e-5
    assert max_rel(got[0], ref[0]) <= 1e-4
    assert max_abs(got[2], ref[2]) <= 1e-4


@pytest.mark.parametrize("kind", ["onnx", "ts"])
def test_truncated_artifact_is_refused(artefacts: dict[str, Any], tmp_path: Path, kind: str) -> None:
    p = _copy(artefacts[kind], tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        verify_artifact(p)


@pytest.mark.parametrize("kind", ["onnx", "ts"])
def test_modified_artifact_is_refused(artefacts: dict[str, Any], tmp_path: Path, kind: str) -> None:
    p = _copy(artefacts[kind], tmp_path)
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified"):
        verify_artifact(p)


def _edit_sidecar(p: Path, edit: Any) -> None:
    sp = sidecar_path(p)
    sc = json.loads(sp.read_text(encoding="utf-8"))
    edit(sc)
    sp.write_text(json.dumps(sc), encoding="utf-8")


@pytest.mark.parametrize("edit,match", [
    (lambda sc: sc["inputs"][0].__setitem__("shape", [2, 3, 64, 64]), "shape"),
    (lambda sc: sc["outputs"].reverse(), "outputs"),
    (lambda sc: sc["inputs"][2].__setitem__("dtype", "float16"), "float16"),
    (lambda sc: sc["model"]["config"].__setitem__("image_size", 64), "config"),
    (lambda sc: sc["checkpoint"].__setitem__("sha256", "0" * 64), "checkpoint_sha256"),
    (lambda sc: sc["artifact"].__setitem__("precision", "fp16"), "precision"),
])
def test_sidecar_disagreeing_with_graph_is_refused(artefacts: dict[str, Any], tmp_path: Path, edit: Any,
                                                   match: str) -> None:
    p = _copy(artefacts["onnx"], tmp_path)
    _edit_sidecar(p, edit)
    with pytest.raises(ArtifactError, match=match):
        verify_artifact(p)


def test_torchscript_sidecar_disagreeing_is_refused(artefacts: dict[str, Any], tmp_path: Path) -> None:
    p = _copy(artefacts["ts"], tmp_path)
    _edit_sidecar(p, lambda sc: sc["model"]["config"].__setitem__("variant", "full"))
    with pytest.raises(ArtifactError, match="config"):
        verify_artifact(p)


def test_sidecar_of_another_artifact_and_garbage(artefacts: dict[str, Any], tmp_path: Path) -> None:
    p = _copy(artefacts["onnx"], tmp_path)
    shutil.copy(sidecar_path(artefacts["ts"]), sidecar_path(p))  # the TorchScript archive's sidecar
    with pytest.raises(ArtifactError):
        verify_artifact(p)
    # garbage whose sidecar hash was "fixed up": decoding fails with a clear message, not a crash
    g = tmp_path / "g.onnx"
    g.write_bytes(b"\x08\x07garbage" * 50)
    shutil.copy(sidecar_path(artefacts["onnx"]), sidecar_path(g))
    _edit_sidecar(g, lambda sc: sc["artifact"].update(bytes=g.stat().st_size,
                                                         sha256=hashlib.sha256(g.read_bytes()).hexdigest()))
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        load_onnx_checked(g)
    sidecar_path(g).write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        verify_artifact(g)
    sidecar_path(g).unlink()
    with pytest.raises(ArtifactError, match="sidecar"):
        verify_artifact(g)


def test_cli_errors_are_clear_and_leave_nothing(artefacts: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = artefacts["ckpt"]
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(out), "--batch", "two"]) == 1
    assert "--batch" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", str(out)]) == 1
    assert "not found" in capsys.readouterr().err
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["export", "--model", str(trunc), "--format", "onnx", "--out", str(out)]) == 1
    assert "not a readable cmir checkpoint" in capsys.readouterr().err
    model = artefacts["model"]
    bad = tmp_path / "nan.pt"
    sd_model = type(model)(model.config)
    sd_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        sd_model.classifier.bias[0] = math.nan
    save_checkpoint(bad, sd_model, METADATA)
    assert main(["export", "--model", str(bad), "--format", "onnx-trt", "--out", str(out)]) == 1
    assert "NaN" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt", "trunc.pt"], "no partial output may remain"


def test_failed_export_leaves_no_file(artefacts: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cmir_trt.export.exporters as ex

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(ex.torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(artefacts["ckpt"], "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_delegated_formats_report_what_is_missing(artefacts: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name.endswith("export.triton"):
            raise ImportError("No module named 'cmir_trt.export.triton'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(RuntimeError, match="triton.*not available"):
        export_model(artefacts["ckpt"], "triton", tmp_path / "repo")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(artefacts["ckpt"], "tflite", tmp_path / "m")

"""Triton model repository export: config.pbtxt parsed by protobuf's text-format parser against Triton's field
names, repository layout, engine/ONNX/checkpoint sources, and refusal of bad input. No TensorRT is needed: where it
is absent the plan is left to build on the serving machine (and the README says so)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _trt_helpers import parse_triton_config

onnx = pytest.importorskip("onnx")

from cmir_trt.export.triton import TritonExportError, export_triton_repository, render_config  # noqa: E402
from cmir_trt.tensorrt import tensorrt_version  # noqa: E402

S, F, K = 48, 5, 3  # odd sizes on purpose: image size, clinical features, classes


def _io(s: int = S, f: int = F, k: int = K) -> dict:
    return {"inputs": [{"name": "art", "shape": ["batch", 3, s, s], "dtype": "float32"},
                       {"name": "pv", "shape": ["batch", 3, s, s], "dtype": "float32"},
                       {"name": "clinical", "shape": ["batch", f], "dtype": "float32"}],
            "outputs": [{"name": "logit", "shape": ["batch", k], "dtype": "float32"},
                        {"name": "probability", "shape": ["batch", k], "dtype": "float32"},
                        {"name": "heatmap", "shape": ["batch", 1, s, s], "dtype": "float32"}]}


def _write_onnx(path: Path, with_sidecar: bool = True, synthetic: bool = True) -> Path:
    """A small standard-op graph with CMIR's I/O names and shapes (the repository does not look inside)."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    inputs = [vi("art", TensorProto.FLOAT, ["batch", 3, S, S]), vi("pv", TensorProto.FLOAT, ["batch", 3, S, S]),
              vi("clinical", TensorProto.FLOAT, ["batch", F])]
    outputs = [vi("logit", TensorProto.FLOAT, ["batch", K]), vi("probability", TensorProto.FLOAT, ["batch", K]),
               vi("heatmap", TensorProto.FLOAT, ["batch", 1, S, S])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [F, K], np.linspace(-1, 1, F * K).astype(np.float32).ravel())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("MatMul", ["clinical", "w"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"]),
             helper.make_node("Add", ["art", "pv"], ["sum"]),
             helper.make_node("ReduceMean", ["sum", "axes"], ["mean"], keepdims=1),
             helper.make_node("Sigmoid", ["mean"], ["heatmap"])]
    graph = helper.make_graph(nodes, "cmir_stub_io", inputs, outputs, initializer=[w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    if with_sidecar:
        sc = {**_io(), "synthetic_training_data": synthetic, "artifact": {"precision": "fp32"}}
        Path(str(path) + ".json").write_text(json.dumps(sc), encoding="utf-8")
    return path


def _check_config(cfg_text: str, max_batch: int, s: int = S, f: int = F, k: int = K) -> None:
    m = parse_triton_config(cfg_text)
    assert m.name == "cmir_tensorrt"
    assert m.platform == "tensorrt_plan"
    assert m.max_batch_size == max_batch
    assert m.default_model_filename == "model.plan"
    tname = m.DESCRIPTOR.file.pool.FindEnumTypeByName("cmir_tests.DataType").values_by_number
    got_in = [(t.name, tname[t.data_type].name, list(t.dims)) for t in m.input]
    assert got_in == [("art", "TYPE_FP32", [3, s, s]), ("pv", "TYPE_FP32", [3, s, s]),
                      ("clinical", "TYPE_FP32", [f])]
    got_out = [(t.name, tname[t.data_type].name, list(t.dims)) for t in m.output]
    assert got_out == [("logit", "TYPE_FP32", [k]), ("probability", "TYPE_FP32", [k]),
                       ("heatmap", "TYPE_FP32", [1, s, s])]
    assert m.HasField("dynamic_batching")
    pbs = list(m.dynamic_batching.preferred_batch_size)
    assert pbs and all(1 <= b <= max_batch for b in pbs) and max_batch in pbs
    assert len(m.instance_group) == 1 and m.instance_group[0].count == 1
    assert m.instance_group[0].kind == 1  # KIND_GPU


def test_repository_from_onnx(tmp_path: Path) -> None:
    src = _write_onnx(tmp_path / "model.onnx")
    repo = export_triton_repository(src, tmp_path / "repo", max_batch_size=6)
    cfg = (repo / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8")
    _check_config(cfg, 6)
    assert "SYNTHETIC" in cfg  # synthetic training data is labelled wherever the model is described
    assert (repo / "cmir_tensorrt" / "onnx" / "model.onnx").read_bytes() == src.read_bytes()
    assert (repo / "cmir_tensorrt" / "1").is_dir()
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert "--backend-config=tensorrt,plugins=" in readme and "LD_PRELOAD" in readme and "synthetic" in readme
    assert (repo / "build_engine.py").is_file()
    if tensorrt_version() is None:
        assert not (repo / "cmir_tensorrt" / "1" / "model.plan").exists()
        assert "Not built yet" in readme and "TensorRT is not installed" in readme
    marker = json.loads((repo / ".cmir-triton-repository").read_text(encoding="utf-8"))
    assert marker["max_batch_size"] == 6 and marker["source_kind"] == "onnx"
    assert (repo / "cmir_tensorrt" / "plugins" / "libcmir_trt_plugins.so").is_file() == marker["plugin_library"]


def test_repository_from_onnx_without_sidecar_reads_graph(tmp_path: Path) -> None:
    src = _write_onnx(tmp_path / "model.onnx", with_sidecar=False)
    repo = export_triton_repository(src, tmp_path / "repo", batch=3)  # --batch N sets max_batch_size
    cfg = (repo / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8")
    _check_config(cfg, 3)
    assert "Training data not recorded" in cfg


def test_repository_from_engine_copies_plan(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    blob = np.random.default_rng(3).integers(0, 256, 4099, dtype=np.uint8).tobytes()  # opaque bytes
    engine.write_bytes(blob)
    sc = {**_io(), "synthetic_training_data": False, "tensorrt": {"tensorrt_version": "10.16.0",
                                                                  "profile": {"min_batch": 1, "max_batch": 8}}}
    Path(str(engine) + ".json").write_text(json.dumps(sc), encoding="utf-8")
    repo = export_triton_repository(engine, tmp_path / "repo", max_batch_size=8)
    assert (repo / "cmir_tensorrt" / "1" / "model.plan").read_bytes() == blob
    cfg = (repo / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8")
    _check_config(cfg, 8)
    assert "SYNTHETIC" not in cfg
    with pytest.raises(TritonExportError, match="serves batches up to 8"):
        export_triton_repository(engine, tmp_path / "repo2", max_batch_size=16)
    Path(str(engine) + ".json").unlink()
    with pytest.raises(TritonExportError, match="no sidecar"):
        export_triton_repository(engine, tmp_path / "repo3")
    assert not (tmp_path / "repo2").exists() and not (tmp_path / "repo3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]  # no temp folders left behind


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_repository_has_ordinary_permissions(tmp_path: Path, umask: int) -> None:
    """The repository folder, its subfolders and files get what mkdir/open give under the umask (not mkdtemp's
    0700), so a Triton server running as another user can read it."""
    src = _write_onnx(tmp_path / "model.onnx")
    old = os.umask(umask)
    try:
        repo = export_triton_repository(src, tmp_path / "repo", max_batch_size=2)
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [repo, *repo.rglob("*")]
             if not p.name.endswith(".so")}  # a copied plugin library keeps its own (executable) mode
    for p, mode in modes.items():
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == want, f"{p.relative_to(tmp_path)}: mode {mode:o}, expected {want:o} under umask {umask:03o}"


def test_overwrite_rules(tmp_path: Path) -> None:
    src = _write_onnx(tmp_path / "model.onnx")
    repo = export_triton_repository(src, tmp_path / "repo", max_batch_size=2)
    export_triton_repository(src, repo, max_batch_size=5)  # an earlier cmir repository is replaced
    _check_config((repo / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8"), 5)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(TritonExportError, match="not an earlier cmir Triton repository"):
        export_triton_repository(src, other)
    assert (other / "keep.txt").read_text(encoding="utf-8") == "x"


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"batch": "sometimes"}, "batch must be"),
    ({"precision": "int8"}, "precision"),
    ({"model_name": "a b"}, "invalid Triton model name"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    src = _write_onnx(tmp_path / "model.onnx")
    with pytest.raises(TritonExportError, match=match):
        export_triton_repository(src, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        export_triton_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    txt = tmp_path / "model.txt"
    txt.write_text("not a model", encoding="utf-8")
    with pytest.raises(TritonExportError, match="expected a checkpoint"):
        export_triton_repository(txt, tmp_path / "repo")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 truncated")
    with pytest.raises(Exception, match="(?i)protobuf|parse|decode|onnx"):
        export_triton_repository(bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_render_config_rejects_dynamic_dims() -> None:
    io = _io()
    io["inputs"][0]["shape"] = ["batch", 3, "h", "w"]
    with pytest.raises(TritonExportError, match="static positive"):
        render_config(io)
    with pytest.raises(TritonExportError, match="preferred batch"):
        render_config(_io(), max_batch_size=4, preferred_batch_sizes=[8])


@pytest.mark.slow
def test_cli_export_triton_from_checkpoint(tmp_path: Path) -> None:
    """`cmir-trt export --format triton` end to end from a small checkpoint (onnx-trt export inside)."""
    torch = pytest.importorskip("torch")
    from cmir_trt.model import CMIRConfig, build_model
    from cmir_trt.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = CMIRConfig(image_size=32, num_clinical=3, num_classes=1, width=0.25, cmam_dim=16, cmam_heads=2,
                     clinical_hidden=8)
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(cfg).eval(),
                           {"training_data": {"synthetic": True, "description": "synthetic test cohort"}})
    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "cmir_trt", "export", "--model", str(ckpt), "--format", "triton",
                           "--out", str(out), "--batch", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    _check_config((out / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8"), 4, s=32, f=3, k=1)
    g = onnx.load_model(str(out / "cmir_tensorrt" / "onnx" / "model.onnx"))
    domains = {n.domain for n in g.graph.node}
    assert "trt.plugins" in domains  # the onnx-trt form, with the cmir plugin nodes
    ops = {n.op_type for n in g.graph.node if n.domain == "trt.plugins"}
    assert ops == {"CMIRInvolution", "CMIRCrossModalAttention"}
    # next to it, the Python-backend models over cmir_trt (served for real in test_triton_server.py)
    assert (out / "cmir" / "1" / "model.plan").is_file() and (out / "cmir" / "1" / "model.pt").is_file()
    assert "max_batch_size: 4" in (out / "cmir" / "config.pbtxt").read_text(encoding="utf-8")
    assert (out / "cmir_case" / "config.pbtxt").is_file() and (out / "cmir_preprocess" / "1" / "model.py").is_file()


def test_checkpoint_gives_python_models(tmp_path: Path) -> None:
    """A checkpoint source: the `cmir` Python model (native plan + checkpoint), preprocessing and the ensemble; with
    tensorrt=False no TensorRT model (and no ONNX export)."""
    pytest.importorskip("torch")
    from _triton_helpers import make_checkpoint

    import cmir_trt.serve.models as served_models
    from cmir_trt.export.plan import read_plan_metadata

    ckpt = make_checkpoint(tmp_path)
    repo = export_triton_repository(ckpt, tmp_path / "repo", max_batch_size=4, tensorrt=False,
                                    max_queue_delay_us=250)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["cmir", "cmir_case", "cmir_preprocess"]
    assert (repo / "cmir" / "1" / "model.pt").read_bytes() == ckpt.read_bytes()
    assert read_plan_metadata(repo / "cmir" / "1" / "model.plan")["synthetic"] is True
    cfg = (repo / "cmir" / "config.pbtxt").read_text(encoding="utf-8")
    for needle in ('name: "cmir"', 'backend: "python"', "max_batch_size: 4", "max_queue_delay_microseconds: 250",
                   "kind: KIND_CPU", 'dims: [ 3, 48, 48 ]', 'key: "gpu_backend"', "SYNTHETIC",
                   '"../cmir_tensorrt/1/model.plan"'):
        assert needle in cfg, needle
    pre = (repo / "cmir_preprocess" / "config.pbtxt").read_text(encoding="utf-8")
    assert "max_batch_size: 0" in pre and 'dims: [ 1, 3, 48, 48 ]' in pre and 'name: "case_info"' in pre
    ens = (repo / "cmir_case" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'platform: "ensemble"' in ens
    assert ens.index('model_name: "cmir_preprocess"') < ens.index('model_name: "cmir"\n')
    assert 'input_map { key: "art" value: "_art" }' in ens and 'output_map { key: "art" value: "_art" }' in ens
    for model, cls in (("cmir", "TensorModel"), ("cmir_preprocess", "PreprocessModel")):
        code = (repo / model / "1" / "model.py").read_text(encoding="utf-8")
        assert f"from cmir_trt.serve.models import {cls} as TritonPythonModel" in code
        assert callable(getattr(served_models, cls))
    marker = json.loads((repo / ".cmir-triton-repository").read_text(encoding="utf-8"))
    assert marker["python_models"] is True and marker["tensorrt_model"] is False
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert "cmir-trt serve --repo" in readme and "cmir_case" in readme
    assert "--no-tensorrt" in readme and "CMIR_TRT_PLUGINS_AUTOREGISTER" not in readme
    assert not (repo / "build_engine.py").exists()
    with pytest.raises(TritonExportError, match="needs a checkpoint"):
        export_triton_repository(_write_onnx(tmp_path / "model.onnx"), tmp_path / "repo2", tensorrt=False)


def test_plan_built_when_tensorrt_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TensorRT importable (a recording stand-in, see _trt_helpers.FakeTRT) and a plugin library, the plan is
    built into 1/model.plan with a batch profile reaching max_batch_size, and the library is copied along."""
    from _trt_helpers import FakeTRT

    import cmir_trt.tensorrt as cmt

    fake = FakeTRT("10.16.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    monkeypatch.setattr(cmt, "_loaded_libraries", {})
    lib = tmp_path / "libcmir_trt_plugins.so"
    lib.write_bytes(b"\x7fELF stand-in")
    repo = export_triton_repository(_write_onnx(tmp_path / "model.onnx"), tmp_path / "repo", max_batch_size=6,
                                    plugin_library=lib, build=True)
    assert (repo / "cmir_tensorrt" / "1" / "model.plan").read_bytes() == fake.engine_bytes
    assert fake.calls["profiles"][0]["art"][2] == [6, 3, S, S]
    assert (repo / "cmir_tensorrt" / "plugins" / "libcmir_trt_plugins.so").read_bytes() == lib.read_bytes()
    assert "Built at export time with TensorRT 10.16.0" in (repo / "README.md").read_text(encoding="utf-8")
    _check_config((repo / "cmir_tensorrt" / "config.pbtxt").read_text(encoding="utf-8"), 6)


def test_build_required_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeError, match="^TensorRT is not installed: "):
        export_triton_repository(_write_onnx(tmp_path / "model.onnx"), tmp_path / "repo", build=True)
    assert not (tmp_path / "repo").exists()

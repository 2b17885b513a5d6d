"""`cmir-trt serve` and the server launcher without a running server: one clear line when no tritonserver can be
found or the arguments are wrong, model selection by the backends a server has, and the wheel's stub preparation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmir_trt.cli import main
from cmir_trt.serve import server as srvmod
from cmir_trt.serve.server import ServerDist, ServerError, find_server, select_models


def _repo(tmp_path: Path) -> Path:
    """A repository shaped like the export's (configs only: nothing here starts a server)."""
    repo = tmp_path / "repo"
    for name, head in (("cmir", 'backend: "python"'), ("cmir_preprocess", 'backend: "python"'),
                       ("cmir_case", 'platform: "ensemble"\nstep [ { model_name: "cmir_preprocess" }, '
                                     '{ model_name: "cmir" } ]'),
                       ("cmir_tensorrt", 'platform: "tensorrt_plan"')):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n{head}\n', encoding="utf-8")
    return repo


@pytest.fixture
def no_server(monkeypatch, tmp_path):
    """No tritonserver anywhere: empty PATH, no $CMIR_TRITONSERVER, no nvidia-pytriton wheel."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CMIR_TRITONSERVER", raising=False)
    monkeypatch.setattr(srvmod, "_pytriton_root", lambda: None)


def test_no_server_found_is_one_clear_line(no_server, tmp_path, capsys) -> None:
    repo = _repo(tmp_path)
    assert main(["serve", "--repo", str(repo)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no Triton Inference Server found" in err and "cmir_trt[serve]" in err and "--server" in err


def test_bad_server_path_and_arguments(tmp_path, capsys) -> None:
    repo = _repo(tmp_path)
    assert main(["serve", "--repo", str(repo), "--server", str(tmp_path / "nope")]) == 1
    assert "not an executable file" in capsys.readouterr().err
    assert main(["serve", "--repo", str(tmp_path / "missing")]) == 1
    assert "model repository not found" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--http-port", "8000", "--grpc-port", "8000"]) == 1
    assert "ports must differ" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--metrics-port", "70000"]) == 1
    assert "metrics-port" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert main(["serve", "--repo", str(tmp_path / "empty"), "--server", str(fake)]) == 1
    assert "holds no model" in capsys.readouterr().err


def test_server_that_exits_is_reported(tmp_path, capsys) -> None:
    """A tritonserver that dies while starting: the error names its exit status and shows its log's errors."""
    repo = _repo(tmp_path)
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\necho 'E0101 model.cc:1] failed to load cmir: boom' >&2\nexit 3\n",
                    encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert main(["serve", "--repo", str(repo), "--server", str(fake), "--models", "cmir"]) == 1
    err = capsys.readouterr().err
    assert "exited with status 3" in err and "failed to load cmir: boom" in err


def test_port_in_use_is_refused(tmp_path, capsys) -> None:
    """Triton would run on without the endpoint whose port is taken; serve refuses before starting it."""
    import socket

    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--repo", str(_repo(tmp_path)), "--server", str(fake), "--models", "cmir",
                     "--grpc-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"the gRPC port {port} on 127.0.0.1 is not available" in err and "--grpc-port" in err


def test_select_models_by_backend(tmp_path) -> None:
    repo = _repo(tmp_path)
    wheel_like = ServerDist(Path("/x/tritonserver"), "wheel", backends=("python",))
    load, skipped = select_models(repo, wheel_like)
    assert load == ["cmir", "cmir_case", "cmir_preprocess"]
    assert len(skipped) == 1 and "cmir_tensorrt" in skipped[0] and "tensorrt backend" in skipped[0]
    full = ServerDist(Path("/x/tritonserver"), "PATH", backends=("python", "tensorrt"))
    load, skipped = select_models(repo, full)
    assert "cmir_tensorrt" not in load and "no engine built yet" in skipped[0]
    (repo / "cmir_tensorrt" / "1" / "model.plan").write_bytes(b"engine")
    assert "cmir_tensorrt" in select_models(repo, full)[0]
    # An ensemble whose step is not loaded is left out with the reason.
    load, skipped = select_models(repo, ServerDist(Path("/x"), "wheel", backends=("tensorrt",)))
    assert load == ["cmir_tensorrt"] and any("cmir_case: its step(s)" in s for s in skipped)
    with pytest.raises(ServerError, match="not in"):
        select_models(repo, full, ["cmir", "nope"])


def test_wheel_stub_prepared_for_this_python(tmp_path, monkeypatch) -> None:
    """With the wheel, the private backends folder links the stub of this interpreter's version."""
    try:
        dist = find_server()
    except ServerError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    if dist.stub is None:
        pytest.skip("the server found is not the nvidia-pytriton wheel's")
    from cmir_trt.serve import TritonServer

    srv = TritonServer(_repo(tmp_path), models=["cmir"])
    srv._prepare_backends(tmp_path / "work")
    stub = tmp_path / "work" / "backends" / "python" / "triton_python_backend_stub"
    assert stub.resolve() == dist.stub.resolve()
    assert os.access(stub, os.X_OK)
    import sys

    assert f"/{sys.version_info[0]}.{sys.version_info[1]}/" in str(dist.stub)


def test_export_triton_options(tmp_path, capsys) -> None:
    """`cmir-trt export --format triton --no-tensorrt --instances 2 --queue-delay-us 500`: a CPU-only repository with
    those settings and its sidecar; the options are refused with other formats."""
    pytest.importorskip("torch")
    from _triton_helpers import make_checkpoint

    from cmir_trt.export.sidecar import verify_artifact

    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "repo"
    assert main(["export", "--model", str(ckpt), "--format", "triton", "--out", str(out), "--batch", "4",
                 "--no-tensorrt", "--instances", "2", "--queue-delay-us", "500"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cmir", "cmir_case", "cmir_preprocess"]
    cfg = (out / "cmir" / "config.pbtxt").read_text(encoding="utf-8")
    assert "max_batch_size: 4" in cfg and "count: 2" in cfg and "max_queue_delay_microseconds: 500" in cfg
    assert verify_artifact(out)["artifact"]["format"] == "triton"
    assert main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--instances", "2"]) == 1
    assert "--instances: only with --format triton" in capsys.readouterr().err

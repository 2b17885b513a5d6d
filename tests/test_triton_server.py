"""A real Triton Inference Server over an exported repository, on free loopback ports: HTTP and gRPC parity with
`Engine`, the NIfTI-bytes ensemble against `cmir-trt predict`, 8 concurrent clients with dynamic batching seen in
Triton's own metrics, bad requests answered with an error naming the problem (and the server keeps serving), a
failing model instance reported while the next request succeeds, and clean shutdown of `cmir-trt serve` on SIGINT
and SIGTERM. Skipped only where no server exists (no `tritonserver` on PATH and no nvidia-pytriton wheel)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _engine_helpers import native_core
from _triton_helpers import (
    FAULT_MARKER,
    FAULTY,
    MAX_BATCH,
    add_faulty_model,
    file_bytes,
    infer,
    make_checkpoint,
    metric,
    server_or_skip,
    tensor_inputs,
    text_bytes,
)

OUTS = ("probability", "logit", "heatmap")
CASE_OUTS = ("probability", "logit", "heatmap", "case_info")
TOL = 1e-6  # the parity bound; the server runs the same native engine on the same plan


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server_or_skip()
    native_core()
    from cmir_trt.export.triton import export_triton_repository
    from cmir_trt.serve import TritonServer, free_port

    d = tmp_path_factory.mktemp("triton")
    ckpt = make_checkpoint(d)
    # CPU-only repository (no ONNX/TensorRT model: test_triton_export covers that part).
    repo = export_triton_repository(ckpt, d / "repo", max_batch_size=MAX_BATCH, max_queue_delay_us=20000,
                                    tensorrt=False)
    add_faulty_model(repo)
    srv = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       log_path=d / "server.log", exit_timeout_s=5)
    srv.start()
    try:
        srv.wait_ready(240)
        yield srv, repo
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def engine(served):
    from cmir_trt import Engine

    return Engine(served[1] / "cmir" / "1" / "model.plan", threads=1)


def _http(srv):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(srv.http_url, network_timeout=120.0, connection_timeout=60.0)


def _grpc(srv):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(srv.grpc_url)


def _assert_close(got: dict, ref, tol: float = TOL) -> None:
    for name in OUTS:
        want = getattr(ref, name)
        assert got[name].shape == want.shape, name
        assert got[name].dtype == np.float32, name
        err = float(np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64))))
        assert err <= tol, f"{name}: max abs error {err:.3g} > {tol}"


def test_repository_models_loaded(served) -> None:
    srv, _ = served
    assert set(srv.models) == {"cmir", "cmir_preprocess", "cmir_case", FAULTY}
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/cmir/config", timeout=10) as r:
        cfg = json.loads(r.read())
    assert cfg["backend"] == "python" and cfg["max_batch_size"] == MAX_BATCH and "dynamic_batching" in cfg
    assert [i["name"] for i in cfg["input"]] == ["art", "pv", "clinical"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_parity_with_engine(served, engine, protocol) -> None:
    srv, _ = served
    client = _http(srv) if protocol == "http" else _grpc(srv)
    try:
        for batch, seed in ((1, 11), (3, 12), (5, 13)):  # odd batch sizes, each its own request
            x = tensor_inputs(batch, seed)
            got = infer(client, "cmir", dict(zip(("art", "pv", "clinical"), x, strict=True)), OUTS,
                        grpc=protocol == "grpc")
            _assert_close(got, engine.predict(*x))
    finally:
        client.close()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    pytest.importorskip("SimpleITK")
    from cmir_trt.commands.demo import write_synthetic_case
    from cmir_trt.data import ClinicalSchema

    d = tmp_path_factory.mktemp("case")
    write_synthetic_case(d, seed=5, schema=ClinicalSchema(), case_id="P017")
    return d


def _clinical_json(case_dir: Path) -> str:
    with open(case_dir / "clinical.csv", encoding="utf-8", newline="") as f:
        row = next(csv.DictReader(f))
    row.pop("case_id")
    return json.dumps(row)


def _case_request(case_dir: Path, case_id: str = "P017") -> dict[str, np.ndarray]:
    return {"art_nii": file_bytes(case_dir / f"{case_id}_0000.nii.gz"),
            "pv_nii": file_bytes(case_dir / f"{case_id}_0001.nii.gz"),
            "mask_nii": file_bytes(case_dir / f"{case_id}_mask.nii.gz"),
            "clinical_json": text_bytes(_clinical_json(case_dir)), "case_id": text_bytes(case_id)}


def test_case_ensemble_equals_predict(served, engine, case_dir, tmp_path, capsys) -> None:
    """NIfTI bytes through cmir_case give what `cmir-trt predict` writes for the same files."""
    from cmir_trt.cli import main
    from cmir_trt.predictor import Predictor

    srv, repo = served
    plan = repo / "cmir" / "1" / "model.plan"
    out = tmp_path / "predicted"
    assert main(["predict", "--model", str(plan), "--input", str(case_dir), "--out", str(out), "--no-png",
                 "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    want = json.loads((out / "P017.json").read_text(encoding="utf-8"))
    roi = Predictor(plan, threads=1).predict_case(case_dir / "P017", json.loads(_clinical_json(case_dir)))
    for protocol in ("http", "grpc"):
        client = _http(srv) if protocol == "http" else _grpc(srv)
        try:
            got = infer(client, "cmir_case", _case_request(case_dir), CASE_OUTS, grpc=protocol == "grpc")
        finally:
            client.close()
        assert got["probability"].shape == (1, 1) and got["heatmap"].shape == (1, 1, 48, 48)
        assert abs(float(got["probability"][0, 0]) - want["probability"]) <= TOL
        assert abs(float(got["logit"][0, 0]) - want["logit"]) <= TOL
        assert float(np.max(np.abs(got["heatmap"][0, 0] - roi.heatmap_roi))) <= TOL
        info = json.loads(got["case_info"].tobytes().decode("utf-8"))
        assert info["case_id"] == "P017" and info["model"] == want["model"]
        assert info["threshold"] == want["threshold"] and info["synthetic_training_data"] is True
        assert info["preprocessing"]["slices"] == want["preprocessing"]["slices"]
        assert info["preprocessing"]["diameter_mm"] == pytest.approx(want["preprocessing"]["diameter_mm"])
        assert info["preprocessing"]["params"] == want["preprocessing"]["params"]
        decision = "MVI+" if float(got["probability"][0, 0]) >= info["threshold"] else "MVI-"
        assert decision == want["decision"]


def test_load_eight_clients_dynamic_batching(served, engine) -> None:
    """8 clients x 50 single-case requests: no errors, every answer right, and Triton batched them (> 1)."""
    srv, _ = served
    import tritonclient.http as httpclient

    stats0 = _http_stats(srv)
    n_clients, n_requests = 8, 50
    x = tensor_inputs(n_clients * n_requests, seed=99)
    ref = engine.predict(*x)
    errors: list[str] = []
    wrong: list[int] = []

    def client_loop(c: int) -> None:
        client = httpclient.InferenceServerClient(srv.http_url, network_timeout=120.0)
        try:
            for r in range(n_requests):
                k = c * n_requests + r
                try:
                    got = infer(client, "cmir", {"art": x[0][k:k + 1], "pv": x[1][k:k + 1],
                                                 "clinical": x[2][k:k + 1]}, ("probability",))
                except Exception as exc:  # noqa: BLE001 - counted and reported below
                    errors.append(f"client {c} request {r}: {exc}")
                    continue
                if abs(float(got["probability"][0, 0]) - float(ref.probability[k, 0])) > 1e-5:
                    wrong.append(k)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "clients did not finish"
    assert errors == [], errors[:3]
    assert wrong == []
    total = n_clients * n_requests
    deadline = time.monotonic() + 20  # the metrics endpoint may lag the last responses a little
    while True:
        now = _http_stats(srv)
        requests, executions = now["success"] - stats0["success"], now["exec"] - stats0["exec"]
        if requests >= total or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert requests == total
    assert executions < total, f"no dynamic batching: {executions:.0f} executions for {total} requests"
    batches = {int(b["batch_size"]) for b in _model_stats(srv)["batch_stats"]}
    assert max(batches) > 1, batches


def _model_stats(srv) -> dict:
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/cmir/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def _http_stats(srv) -> dict:
    with urllib.request.urlopen(srv.metrics_url, timeout=10) as r:
        text = r.read().decode("utf-8")
    return {"success": metric(text, "nv_inference_request_success", "cmir"),
            "exec": metric(text, "nv_inference_exec_count", "cmir")}


def _expect_error(client, model: str, arrays: dict, *needles: str, outputs=("probability",)) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as ei:
        infer(client, model, arrays, outputs)
    msg = str(ei.value)
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in {msg!r}"
    return msg


def test_bad_requests_named_and_server_keeps_serving(served, engine, case_dir) -> None:
    srv, _ = served
    client = _http(srv)
    try:
        art, pv, clin = tensor_inputs(1, seed=21)
        good = {"art": art, "pv": pv, "clinical": clin}
        _expect_error(client, "cmir", {**good, "art": tensor_inputs(1, 1, image=41)[0]}, "art", "shape")
        _expect_error(client, "cmir", {**good, "pv": pv.astype(np.float64)}, "pv", "FP64")
        _expect_error(client, "cmir", {"art": art, "pv": pv}, "clinical", "missing")
        bad = clin.copy()
        bad[0, 2] = np.nan
        _expect_error(client, "cmir", {**good, "clinical": bad}, "clinical", "NaN")
        req = _case_request(case_dir)
        garbage = np.frombuffer(np.random.default_rng(3).bytes(5000), dtype=np.uint8)
        _expect_error(client, "cmir_case", {**req, "pv_nii": garbage}, "P017", "PV", "pv_nii",
                      outputs=CASE_OUTS)
        _expect_error(client, "cmir_case", {**req, "mask_nii": garbage[:100]}, "mask_nii", "too short",
                      outputs=CASE_OUTS)
        _expect_error(client, "cmir_case", {**req, "clinical_json": text_bytes("{age: 61")}, "P017",
                      "clinical_json", "JSON", outputs=CASE_OUTS)
        cl = json.loads(_clinical_json(case_dir))
        cl.pop("age")
        _expect_error(client, "cmir_case", {**req, "clinical_json": text_bytes(json.dumps(cl))}, "P017", "age",
                      outputs=CASE_OUTS)
        # The server is still healthy and answers correctly.
        got = infer(client, "cmir", good, OUTS)
        _assert_close(got, engine.predict(art, pv, clin))
        assert infer(client, "cmir_case", req, CASE_OUTS)["probability"].shape == (1, 1)
    finally:
        client.close()


def test_failing_instance_reported_and_next_request_succeeds(served, engine) -> None:
    import tritonclient.http as httpclient

    srv, _ = served
    art, pv, clin = tensor_inputs(2, seed=31)
    bad = clin.copy()
    bad[:, 0] = FAULT_MARKER
    client = httpclient.InferenceServerClient(srv.http_url, concurrency=4, network_timeout=120.0)
    try:
        msg = _expect_error(client, FAULTY, {"art": art, "pv": pv, "clinical": bad}, "inference failed",
                            "RuntimeError", "injected fault")
        assert FAULTY in msg
        got = infer(client, FAULTY, {"art": art, "pv": pv, "clinical": clin}, OUTS)
        _assert_close(got, engine.predict(art, pv, clin))
        # A failing and a good request batched together (the faulty model waits for a batch of 4): only the failing
        # one fails.
        ins = []
        for c in (bad, clin):
            arrays = {"art": art, "pv": pv, "clinical": c}
            ii = []
            for name, a in arrays.items():
                i = httpclient.InferInput(name, list(a.shape), "FP32")
                i.set_data_from_numpy(a)
                ii.append(i)
            ins.append(client.async_infer(FAULTY, ii))
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="injected fault"):
            ins[0].get_result()
        res = ins[1].get_result()
        assert float(np.max(np.abs(res.as_numpy("probability") - engine.predict(art, pv, clin).probability))) <= TOL
        with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/{FAULTY}/stats", timeout=10) as r:
            stats = json.loads(r.read())["model_stats"][0]
        assert 4 in {int(b["batch_size"]) for b in stats["batch_stats"]}, "the two requests did not share a batch"
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while "injected fault" not in srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"{FAULTY}: inference failed: RuntimeError: injected fault" in srv.log_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_stops_cleanly_on_signal(served, tmp_path, sig) -> None:
    """`cmir-trt serve` in its own process: ready, answers, and on SIGINT/SIGTERM stops the server and exits 0."""
    from cmir_trt.serve import free_port

    _, repo = served
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "cmir_trt", "serve", "--repo", str(repo), "--models", "cmir",
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
           "--log", str(tmp_path / "serve.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    lines: list[str] = []
    try:
        pid = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if " pid " in line:
                pid = int(line.split(" pid ")[1].split(",")[0])
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith("ready:"), "".join(lines)
        assert "SYNTHETIC" in lines[-1]
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        x = tensor_inputs(1, seed=41)
        assert infer(client, "cmir", dict(zip(("art", "pv", "clinical"), x, strict=True)),
                     ("probability",))["probability"].shape == (1, 1)
        client.close()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, "".join(lines) + out
    assert f"{sig.name} received" in out and "stopped (tritonserver exit status 0)" in out
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and its Python-backend stubs (its process group) are gone, not orphaned

"""Serving benchmark: the `cmir` model through a real Triton Inference Server (HTTP and gRPC, 1 and N concurrent
clients, dynamic batching) vs direct `Engine.predict` calls on the same machine; and one case of NIfTI files through
the `cmir_case` ensemble vs `Predictor.predict_case`.

    .venv/bin/python benchmarks/bench_triton.py [--model models/cmir-demo.pt] [--requests 200] [--clients 8]

Per scenario: p50/p99 latency of single-case requests and throughput (cases/s). The direct runs happen before the
server starts (nothing else of ours runs meanwhile). Writes benchmarks/results/triton.{json,md}. Inputs are
synthetic; the demo model was trained on SYNTHETIC data. Never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cmir_trt._machine import cpu_name

HERE = Path(__file__).resolve().parent


def run_clients(n_clients: int, n_requests: int, make_call: Callable[[int], Callable[[int], None]]) -> dict[str, Any]:
    """n_clients threads, each doing n_requests calls one after another; latency percentiles and throughput."""
    lat: list[list[float]] = [[] for _ in range(n_clients)]
    errors: list[str] = []
    start_gate = threading.Barrier(n_clients + 1)

    def worker(c: int) -> None:
        call = make_call(c)
        start_gate.wait()
        for r in range(n_requests):
            t0 = time.perf_counter()
            try:
                call(c * n_requests + r)
            except Exception as exc:  # noqa: BLE001 - counted in the result
                errors.append(str(exc).splitlines()[0])
                continue
            lat[c].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.array([x for per in lat for x in per]) * 1e3
    return {"clients": n_clients, "requests": n_clients * n_requests, "errors": len(errors),
            "p50_ms": float(np.percentile(all_lat, 50)), "p99_ms": float(np.percentile(all_lat, 99)),
            "throughput_per_s": float(len(all_lat) / wall), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(HERE.parent / "models" / "cmir-demo.pt"), help="checkpoint (.pt)")
    ap.add_argument("--requests", type=int, default=200, help="single-case requests per client")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the concurrent scenarios")
    ap.add_argument("--case-requests", type=int, default=30, help="cmir_case requests (NIfTI files)")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from cmir_trt import Engine
    from cmir_trt._io import atomic_write_text
    from cmir_trt.commands.demo import write_synthetic_case
    from cmir_trt.export.triton import export_triton_repository
    from cmir_trt.predictor import Predictor
    from cmir_trt.serve import TritonServer, free_port

    repo = export_triton_repository(args.model, work / "repo", max_batch_size=8, tensorrt=False,
                                    max_queue_delay_us=args.max_queue_delay_us)
    if args.threads:
        cfg = repo / "cmir" / "config.pbtxt"
        cfg.write_text(cfg.read_text(encoding="utf-8").replace(
            'key: "threads" value: { string_value: "0" }', f'key: "threads" value: {{ string_value: '
                                                             f'"{args.threads}" }}'), encoding="utf-8")
    plan = repo / "cmir" / "1" / "model.plan"
    engine = Engine(plan, threads=args.threads)
    spec = engine.input_spec
    s, f = int(spec["image_size"]), int(spec["num_clinical"])
    n_total = max(args.clients, 1) * args.requests
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((n_total, 3, s, s), dtype=np.float32),
         rng.standard_normal((n_total, 3, s, s), dtype=np.float32),
         rng.standard_normal((n_total, f), dtype=np.float32)]
    from cmir_trt.data import ClinicalSchema

    write_synthetic_case(work, seed=1, schema=ClinicalSchema(), case_id="B001")
    import csv

    with open(work / "clinical.csv", encoding="utf-8", newline="") as fh:
        row = next(csv.DictReader(fh))
    row.pop("case_id")
    clinical = {k: float(v) for k, v in row.items()}
    files = {n: np.frombuffer((work / f"B001_{suf}.nii.gz").read_bytes(), np.uint8)
             for n, suf in (("art_nii", "0000"), ("pv_nii", "0001"), ("mask_nii", "mask"))}
    files["clinical_json"] = np.frombuffer(json.dumps(clinical).encode("utf-8"), np.uint8)
    results: dict[str, Any] = {}

    def direct(_c: int) -> Callable[[int], None]:
        return lambda k: engine.predict(x[0][k:k + 1], x[1][k:k + 1], x[2][k:k + 1])

    for k in range(min(20, n_total)):  # warm-up
        engine.predict(x[0][k:k + 1], x[1][k:k + 1], x[2][k:k + 1])
    results["direct Engine, 1 caller"] = run_clients(1, args.requests, direct)
    results[f"direct Engine, {args.clients} callers (threads)"] = run_clients(args.clients, args.requests, direct)
    predictor = Predictor(plan, threads=args.threads)
    for _ in range(3):
        predictor.predict_case(work / "B001", clinical)
    results["direct Predictor.predict_case (NIfTI files)"] = run_clients(
        1, args.case_requests, lambda _c: lambda _k: predictor.predict_case(work / "B001", clinical))
    engine = predictor = None  # type: ignore[assignment]  # free them before the server starts

    srv = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       models=["cmir", "cmir_preprocess", "cmir_case"], log_path=work / "server.log")
    with srv:
        def tensors(mod: Any, k: int) -> list[Any]:
            k %= n_total
            ins = []
            for name, a in zip(("art", "pv", "clinical"), x, strict=True):
                i = mod.InferInput(name, [1, *a.shape[1:]], "FP32")
                i.set_data_from_numpy(a[k:k + 1])
                ins.append(i)
            return ins

        def http_call(_c: int) -> Callable[[int], None]:
            cl = httpclient.InferenceServerClient(srv.http_url, network_timeout=300.0)
            return lambda k: cl.infer("cmir", tensors(httpclient, k))

        def grpc_call(_c: int) -> Callable[[int], None]:
            cl = grpcclient.InferenceServerClient(srv.grpc_url)
            return lambda k: cl.infer("cmir", tensors(grpcclient, k))

        def case_call(_c: int) -> Callable[[int], None]:
            cl = httpclient.InferenceServerClient(srv.http_url, network_timeout=300.0)

            def call(_k: int) -> None:
                ins = []
                for name, a in files.items():
                    i = httpclient.InferInput(name, list(a.shape), "UINT8")
                    i.set_data_from_numpy(a)
                    ins.append(i)
                cl.infer("cmir_case", ins)
            return call

        run_clients(2, 10, http_call)  # warm-up
        for name, n_clients, call in (("Triton HTTP, 1 client", 1, http_call), ("Triton gRPC, 1 client", 1, grpc_call),
                                      (f"Triton HTTP, {args.clients} clients", args.clients, http_call),
                                      (f"Triton gRPC, {args.clients} clients", args.clients, grpc_call)):
            before = _stats(srv)
            results[name] = run_clients(n_clients, args.requests, call)
            after = _stats(srv)
            results[name]["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1.0)
        run_clients(1, 3, case_call)  # warm-up
        results["Triton HTTP cmir_case ensemble (NIfTI bytes), 1 client"] = run_clients(1, args.case_requests,
                                                                                        case_call)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
            "cores": os.cpu_count(), "command": " ".join(["python", *sys.argv]), "model": Path(args.model).name,
            "image_size": s, "synthetic_training_data": True, "max_batch_size": 8,
            "max_queue_delay_us": args.max_queue_delay_us, "engine_threads": args.threads or "all cores",
            "server": srv.dist.source, "load_average_1min_at_end": os.getloadavg()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "triton.json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"# Triton serving vs direct Engine calls ({meta['date']}, {meta['cpu']}, {meta['cores']} cores)", "",
             f"Command: `{meta['command']}`. Model {meta['model']} (S={s}; trained on SYNTHETIC data), synthetic "
             f"random inputs, one case per request; server {meta['server']}, `cmir` max_batch_size 8, dynamic "
             f"batching with max_queue_delay {args.max_queue_delay_us} us, one CPU instance; engine threads "
             f"{meta['engine_threads']}. Load average at the end {meta['load_average_1min_at_end']:.1f} (a machine "
             f"shared with other jobs).", "",
             "| scenario | requests | errors | p50 ms | p99 ms | cases/s | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        mb = f"{r['mean_batch']:.2f}" if "mean_batch" in r else ""
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['throughput_per_s']:.1f} | {mb} |")
    atomic_write_text(out / "triton.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _stats(srv: Any) -> tuple[float, float]:
    """(successful requests, executions) of model cmir from Triton's statistics API."""
    import urllib.request

    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/cmir/stats", timeout=10) as r:
        st = json.loads(r.read())["model_stats"][0]
    return float(st["inference_stats"]["success"]["count"]), float(st["execution_count"])


if __name__ == "__main__":
    sys.exit(main())

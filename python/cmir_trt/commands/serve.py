"""`cmir-trt serve`: run Triton Inference Server over a repository written by `cmir-trt export --format triton`.

The server is `--server PATH`, $CMIR_TRITONSERVER, `tritonserver` on PATH, or the one bundled in the nvidia-pytriton
wheel (`pip install 'cmir_trt[serve]'`); the Python-backend models run in this Python environment. SIGINT (Ctrl-C)
and SIGTERM stop it cleanly: Triton finishes the requests in flight and unloads the models. Research use only, not
for diagnostic use.
"""

from __future__ import annotations

import argparse

HELP = "serve an exported Triton model repository with Triton Inference Server (HTTP, gRPC, metrics)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, help="model repository (cmir-trt export --format triton --out REPO)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--models", default=None,
                   help="comma-separated models to load (default: every model this server can run)")
    p.add_argument("--server", default=None, help="the tritonserver binary (default: $CMIR_TRITONSERVER, PATH, "
                                                  "then the nvidia-pytriton wheel)")
    p.add_argument("--log", default=None, help="write the server's log to this file (default: a temporary file, "
                                               "kept when the server fails)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the models to load")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from ..serve import TritonServer

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    srv = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, address=args.address, models=models, server=args.server,
                       log_path=args.log)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for line in srv.skipped:
            print(f"not loading {line}", file=sys.stderr)
        srv.start()
        assert srv.process is not None
        print(f"tritonserver ({srv.dist.source}: {srv.dist.binary}) pid {srv.process.pid}, log {srv.log_path}",
              flush=True)
        print(f"loading {', '.join(srv.models)} from {srv.repo} ...", flush=True)
        srv.wait_ready(args.startup_timeout, cancel=stop)
        if not stop.is_set():
            synthetic = any("SYNTHETIC" in (srv.repo / m / "config.pbtxt").read_text(encoding="utf-8")
                            for m in srv.models)
            print(f"ready: HTTP {srv.http_url}, gRPC {srv.grpc_url}, metrics {srv.metrics_url}; models "
                  f"{', '.join(srv.models)}" + (" -- model trained on SYNTHETIC data" if synthetic else "")
                  + "; research use only, not for diagnostic use. Ctrl-C stops.", flush=True)
        while not stop.wait(0.5):
            if not srv.is_running():
                rc = srv.process.poll()
                print(f"cmir-trt serve: error: tritonserver exited with status {rc} (log {srv.log_path})",
                      file=sys.stderr)
                srv.stop()
                return 1
        print(f"{received[0] if received else 'signal'} received: stopping tritonserver (finishing requests in "
              f"flight) ...", flush=True)
        rc = srv.stop()
        print(f"stopped (tritonserver exit status {rc})", flush=True)
        return 0
    except BaseException:
        srv.stop()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)

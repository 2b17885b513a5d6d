"""Start and stop a Triton Inference Server over a model repository.

Where the server comes from (first found wins): an explicit path, $CMIR_TRITONSERVER, `tritonserver` on PATH (a
Triton install or container, with its own backends), else the binary bundled in the `nvidia-pytriton` wheel
(`pip install 'cmir_trt[serve]'`). The wheel is used only as a set of files: its Python package is never imported
(its numpy<2 pin does not concern us).

The wheel ships one Python-backend stub per Python version. As pytriton itself does, a private backends folder is
prepared per run with the stub of *this* interpreter's version, and the server gets this interpreter's `bin/` first
on PATH: the stub's embedded Python resolves `python3` there and so runs with this environment's site-packages
(and thus this cmir_trt). Its libpython comes from this interpreter's LIBDIR when that holds one.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER_ENV = "CMIR_TRITONSERVER"
WHEEL = "nvidia-pytriton"
INSTALL_HINT = ("install the server with `pip install 'cmir_trt[serve]' && pip install --no-deps nvidia-pytriton` "
                "(--no-deps keeps this environment's numpy), put a Triton `tritonserver` on PATH, or pass --server "
                "PATH")


class ServerError(RuntimeError):
    """The server could not be started, did not become ready, or exited."""


class ServerNotFoundError(ServerError):
    """No tritonserver binary could be found."""


@dataclass(frozen=True)
class ServerDist:
    """A tritonserver binary and what it needs to run our Python-backend models."""

    binary: Path
    source: str                          # "--server", "$CMIR_TRITONSERVER", "PATH" or the wheel
    wheel_root: Path | None = None       # pytriton/tritonserver when the binary is the wheel's
    backends: tuple[str, ...] = ()       # backends known to be available ("" entries: unknown -> assume all)
    stub: Path | None = None             # the wheel's Python-backend stub for this interpreter
    lib_dirs: tuple[Path, ...] = field(default_factory=tuple)

    def has_backend(self, name: str) -> bool:
        return not self.backends or name in self.backends


def _pytriton_root() -> Path | None:
    """pytriton/tritonserver of an installed nvidia-pytriton wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        root = Path(loc) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def _libpython_dirs() -> tuple[Path, ...]:
    """Folders that hold this interpreter's shared libpython (the stub links libpython3.X.so.1.0)."""
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / soname).is_file():
        return (Path(libdir),)
    return ()


def _backends_in(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))


def find_server(binary: str | os.PathLike[str] | None = None) -> ServerDist:
    """The tritonserver to use (see the module docstring for the order); ServerNotFoundError when there is none."""
    candidates: list[tuple[Path, str]] = []
    if binary is not None:
        candidates.append((Path(binary), "--server"))
    elif os.environ.get(SERVER_ENV):
        candidates.append((Path(os.environ[SERVER_ENV]), f"${SERVER_ENV}"))
    for path, source in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerNotFoundError(f"tritonserver given by {source} is not an executable file: {path}")
        return ServerDist(path, source, backends=_backends_in(path.resolve().parent.parent / "backends"))
    on_path = shutil.which("tritonserver")
    if on_path:
        path = Path(on_path)
        # A Triton install keeps its backends in ../backends (or /opt/tritonserver/backends in the containers).
        backends = _backends_in(path.resolve().parent.parent / "backends") or _backends_in(
            Path("/opt/tritonserver/backends"))
        return ServerDist(path, "PATH", backends=backends)
    root = _pytriton_root()
    if root is None:
        raise ServerNotFoundError(f"no Triton Inference Server found: no `tritonserver` on PATH and the {WHEEL} "
                                  f"wheel is not installed; {INSTALL_HINT}")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir()) if (
            root / "python_backend_stubs").is_dir() else []
        raise ServerNotFoundError(f"the {WHEEL} wheel at {root.parent} has no Python-backend stub for Python "
                                  f"{version} (it has {', '.join(have) or 'none'}); use a Python it supports or a "
                                  f"Triton install")
    lib_dirs = _libpython_dirs()
    if not lib_dirs and ctypes.util.find_library(f"python{version}") is None:
        raise ServerNotFoundError(f"the Python-backend stub needs a shared libpython{version} and this Python "
                                  f"({sys.executable}) has none (a static build); use a Python built with "
                                  f"--enable-shared")
    return ServerDist(root / "bin" / "tritonserver", f"the {WHEEL} wheel", wheel_root=root,
                      backends=_backends_in(root / "backends"), stub=stub, lib_dirs=lib_dirs)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_BACKEND_RE = re.compile(r'^\s*(backend|platform)\s*:\s*"([^"]+)"', re.MULTILINE)
_PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                      "ensemble": ""}


def repository_models(repo: Path) -> dict[str, str]:
    """{model name: backend it needs ('' for ensembles)} of the models (folders with a config.pbtxt) in `repo`."""
    models = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        text = cfg.read_text(encoding="utf-8", errors="replace")
        m = _BACKEND_RE.search(text)
        kind, value = (m.group(1), m.group(2)) if m else ("backend", "")
        models[cfg.parent.name] = _PLATFORM_BACKENDS.get(value, value) if kind == "platform" else value
    return models


def _ensemble_steps(cfg: Path) -> list[str]:
    return re.findall(r'model_name\s*:\s*"([^"]+)"', cfg.read_text(encoding="utf-8", errors="replace"))


def select_models(repo: Path, dist: ServerDist, wanted: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(models to load, one line per model left out and why). `wanted` names them; default: every model this
    server can run (the wheel has only the Python backend: the TensorRT-plan model needs a Triton with TensorRT)."""
    models = repository_models(repo)
    if not models:
        raise ServerError(f"{repo} holds no model (no */config.pbtxt): export one with `cmir-trt export --format "
                          f"triton`")
    if wanted:
        unknown = [m for m in wanted if m not in models]
        if unknown:
            raise ServerError(f"model(s) {', '.join(unknown)} not in {repo} (it has {', '.join(models)})")
        return list(wanted), []
    load, skipped = [], []
    for name, backend in models.items():
        if backend and not dist.has_backend(backend):
            skipped.append(f"{name}: needs the {backend} backend, which this server ({dist.source}) lacks")
        elif backend == "tensorrt" and not any((repo / name).glob("*/model.plan")):
            skipped.append(f"{name}: no engine built yet ({name}/1/model.plan; see {repo}/README.md)")
        else:
            load.append(name)
    # An ensemble only loads with all its steps.
    for name in [n for n in load if models[n] == ""]:
        missing = [s for s in _ensemble_steps(repo / name / "config.pbtxt") if s not in load]
        if missing:
            load.remove(name)
            skipped.append(f"{name}: its step(s) {', '.join(missing)} are not loaded")
    if not load:
        raise ServerError(f"no model in {repo} can run on this server: " + "; ".join(skipped))
    return load, skipped


class TritonServer:
    """One tritonserver process over `repo`; a context manager (start + wait_ready, stop on exit).

    Binds `address` (loopback by default). `log_path` receives the server's output (default: a file in the run's
    private folder, removed on stop unless `keep_log`).
    """

    def __init__(self, repo: str | os.PathLike[str], *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, address: str = "127.0.0.1", models: Sequence[str] | None = None,
                 server: str | os.PathLike[str] | None = None, log_path: str | os.PathLike[str] | None = None,
                 exit_timeout_s: int = 10, extra_args: Sequence[str] = ()) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerError(f"model repository not found: {self.repo}")
        for name, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ServerError(f"--{name}-port must be a port number 1..65535, got {port!r}")
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ServerError(f"the HTTP, gRPC and metrics ports must differ, got {http_port}, {grpc_port}, "
                              f"{metrics_port}")
        self.dist = find_server(server)
        self.models, self.skipped = select_models(self.repo, self.dist, models)
        self.address = address
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = list(extra_args)
        self._log_path = Path(log_path) if log_path else None
        self._workdir: Path | None = None
        self._log_file: object | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"{self._host()}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host()}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host()}:{self.metrics_port}/metrics"

    def _host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_text(self) -> str:
        p = self._log_path
        return p.read_text(encoding="utf-8", errors="replace") if p and p.is_file() else ""

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        cmd = [str(self.dist.binary), f"--model-repository={self.repo}", "--model-control-mode=explicit",
               *(f"--load-model={m}" for m in self.models),
               f"--http-address={self.address}", f"--http-port={self.http_port}",
               f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
               "--allow-metrics=true", "--allow-cpu-metrics=true", "--allow-gpu-metrics=false",
               f"--exit-timeout-secs={self.exit_timeout_s}"]
        if self.dist.stub is not None and self._workdir is not None:
            cmd.append(f"--backend-directory={self._workdir / 'backends'}")
            cmd.append(f"--cache-directory={self.dist.wheel_root / 'caches'}")  # type: ignore[operator]
        return cmd + self.extra_args

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub's embedded Python finds `python3` on PATH: this interpreter's, so this environment's packages.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libs = [str(d) for d in self.dist.lib_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env

    def _prepare_backends(self, workdir: Path) -> None:
        """backends/python with the wheel's backend library and the stub of this Python (symlinks: nothing large
        is copied; the stub's RPATH resolves through the link to the wheel's bundled libraries)."""
        assert self.dist.wheel_root is not None and self.dist.stub is not None
        src = self.dist.wheel_root / "backends"
        dst = workdir / "backends"
        for backend in src.iterdir():
            if not backend.is_dir():
                continue
            (dst / backend.name).mkdir(parents=True)
            for f in backend.iterdir():
                (dst / backend.name / f.name).symlink_to(f)
        (dst / "python" / "triton_python_backend_stub").symlink_to(self.dist.stub)

    def _check_ports_free(self) -> None:
        """Triton keeps running when it cannot bind one of its ports (that endpoint is just missing): refuse first."""
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener blocks it, TIME_WAIT does not
                try:
                    s.bind((self.address or "0.0.0.0", port))
                except OSError as exc:
                    raise ServerError(f"the {name} port {port} on {self.address} is not available ({exc.strerror}); "
                                      f"choose another with --{name.lower()}-port") from exc

    def start(self) -> None:
        if self.process is not None:
            raise ServerError("the server is already started")
        self._check_ports_free()
        self._workdir = Path(tempfile.mkdtemp(prefix="cmir-triton-"))
        try:
            if self.dist.stub is not None:
                self._prepare_backends(self._workdir)
            if self._log_path is None:
                self._log_path = self._workdir / "tritonserver.log"
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self._log_path, "ab")  # kept open for the server's lifetime, closed in stop()
            self._log_file = log
            # Own session: a Ctrl-C at the terminal reaches us, and we stop the server in order (SIGTERM, wait).
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self._environment(),
                                            cwd=self._workdir, start_new_session=True)
        except BaseException:
            self._cleanup()
            raise

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def _log_errors(self, n: int = 12) -> str:
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower() or "Traceback" in ln]
        useful = [ln for ln in errors if "NVML" not in ln and "DCGM" not in ln and "CudaDriver" not in ln]
        return "\n".join((useful or lines)[-n:])

    def wait_ready(self, timeout_s: float = 180.0, cancel: threading.Event | None = None) -> None:
        """Block until the server answers ready (all its models loaded) or `cancel` is set; ServerError with the
        log's errors if it exits or is not ready within `timeout_s`."""
        if self.process is None:
            raise ServerError("the server is not started")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
            rc = self.process.poll()
            if rc is not None:
                raise ServerError(f"tritonserver exited with status {rc} while starting "
                                  f"(log {self._log_path}):\n{self._log_errors()}")
            if self._get("/v2/health/ready") == 200:
                return
            time.sleep(0.25)
        if cancel is not None and cancel.is_set():
            return
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s (log {self._log_path}):\n"
                          f"{self._log_errors()}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton finishes in-flight requests for up to exit_timeout_s and unloads the models), then
        SIGKILL to the server's own process group if it is still there. Returns its exit status."""
        proc = self.process
        rc = None
        if proc is not None:
            wait = (self.exit_timeout_s + 20) if timeout_s is None else timeout_s
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group we created: the server and its stubs
                rc = proc.wait(10)
            else:
                # Stubs left behind by a server that died abnormally are in the same group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._cleanup()
        return rc

    def _cleanup(self) -> None:
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        if self._workdir is not None:
            keep_log = self._log_path is not None and self._workdir in self._log_path.parents
            if keep_log and self.process is not None and self.process.returncode not in (0, None):
                pass  # keep the folder: its log explains the failure
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

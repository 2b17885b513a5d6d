"""TensorRT: engine builder and runtime backend for the `onnx-trt` export (involution and CMAM as plugins).

TensorRT itself is optional and imported lazily: without it every entry point raises `TensorRTNotInstalledError`
("TensorRT is not installed: ..."), and `import cmir_trt` / `import cmir_trt.tensorrt` work anyway.

* `build_engine(onnx, out, min_batch=1, opt_batch=None, max_batch=8, workspace_mib=None)` loads the plugin
  library, parses the graph, adds one optimization profile over the batch axis and writes the serialized engine
  (atomically) plus `OUT.json`, a sidecar carried over from the ONNX's (model config, metadata, synthetic flag) with
  the engine's own hash, TensorRT version and batch profile. Precision comes from the graph's own types: the
  network is strongly typed (TensorRT 11 always; TensorRT 10 through the STRONGLY_TYPED flag), so an fp16 graph
  builds in fp16 on both.
* `TensorRTBackend(path)` deserializes an engine (or builds one in memory from an `.onnx`) and runs it on device
  buffers (torch, else cupy), accepting numpy, torch or cupy inputs; `.predict` returns the common `Prediction`.
* `load_plugin_library(path=None)` registers libcmir_trt_plugins.so with TensorRT's plugin registry (once).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ._io import atomic_write_bytes as _write_atomic
from .prediction import Prediction

PLUGIN_LIBRARY_NAME = "libcmir_trt_plugins.so"
PLUGIN_LIBRARY_ENV = "CMIR_TRT_PLUGIN_LIBRARY"
ENGINE_SIDECAR_FORMAT = "cmir-trt-engine"
INPUT_NAMES = ("art", "pv", "clinical")
OUTPUT_NAMES = ("logit", "probability", "heatmap")
PLUGIN_NAMES = ("CMIRInvolution", "CMIRCrossModalAttention")
DEFAULT_MAX_BATCH = 8

_lock = threading.Lock()
_loaded_libraries: dict[str, Any] = {}


class TensorRTNotInstalledError(RuntimeError):
    """TensorRT's Python package is missing (or broken) on this machine."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the graph or build the engine; the message carries TensorRT's own errors."""


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install failing inside its own __init__
        raise TensorRTNotInstalledError(
            f"TensorRT is not installed: `import tensorrt` failed ({type(exc).__name__}: {exc}). Install TensorRT's "
            "Python package (e.g. `pip install tensorrt` from NVIDIA's index) on a machine with an NVIDIA GPU, or "
            "use backend='native' (CPU) / 'torch'.") from exc
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when TensorRT is not installed."""
    try:
        return str(_import_tensorrt().__version__)
    except TensorRTNotInstalledError:
        return None


def _trt_major(trt: ModuleType) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


# ---------------------------------------------------------------- plugin library

def find_plugin_library(path: str | os.PathLike[str] | None = None) -> Path:
    """The plugin library: `path`, else $CMIR_TRT_PLUGIN_LIBRARY, else the one installed with this package."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"TensorRT plugin library not found: {p}")
        return p
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"${PLUGIN_LIBRARY_ENV} points to a missing file: {p}")
        return p
    from ._native import plugin_library_path

    found = plugin_library_path()
    if found is not None:
        return found
    import cmir_trt

    # Editable installs keep compiled files beside the sources in another folder of the package path.
    for d in getattr(cmir_trt, "__path__", []):
        p = Path(d) / PLUGIN_LIBRARY_NAME
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{PLUGIN_LIBRARY_NAME} was not built with this cmir_trt (the build found no TensorRT headers; see "
        f"cmir_trt.build_info()['tensorrt_plugins']). Rebuild with TensorRT_ROOT=... or pass its path / set "
        f"${PLUGIN_LIBRARY_ENV}.")


def load_plugin_library(path: str | os.PathLike[str] | None = None) -> Path:
    """Register the cmir plugins with TensorRT's plugin registry (idempotent per library path)."""
    lib = find_plugin_library(path).resolve()
    trt = _import_tensorrt()
    with _lock:
        if str(lib) in _loaded_libraries:
            return lib
        registry = trt.get_plugin_registry()
        handle = registry.load_library(str(lib))
        if handle is None:
            raise RuntimeError(f"TensorRT could not load the plugin library {lib} (see TensorRT's log)")
        _loaded_libraries[str(lib)] = handle
    missing = []
    for name in PLUGIN_NAMES:
        creator = None
        try:
            creator = registry.get_creator(name, "1", "cmir")
        except (AttributeError, TypeError):  # older bindings: only the V2 lookup exists
            creator = getattr(registry, "get_plugin_creator", lambda *a: None)(name, "1", "cmir")
        if creator is None:
            missing.append(name)
    if missing:
        raise RuntimeError(f"{lib} loaded but TensorRT's registry has no creator for {missing} (namespace 'cmir', "
                           f"version '1')")
    return lib


# ---------------------------------------------------------------- builder

def _validate_profile(min_batch: int, opt_batch: int | None, max_batch: int) -> tuple[int, int, int]:
    for name, v in (("min_batch", min_batch), ("max_batch", max_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if opt_batch is None:
        opt_batch = max(min_batch, min(max_batch, 4))
    if isinstance(opt_batch, bool) or not isinstance(opt_batch, int):
        raise ValueError(f"opt_batch must be an integer, got {opt_batch!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    return min_batch, opt_batch, max_batch


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _logger(trt: ModuleType, verbose: bool) -> Any:
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def build_serialized(onnx_path: str | os.PathLike[str], *, min_batch: int = 1, opt_batch: int | None = None,
                     max_batch: int = DEFAULT_MAX_BATCH, workspace_mib: int | None = None,
                     plugin_library: str | os.PathLike[str] | None = None,
                     verbose: bool = False) -> tuple[bytes, dict[str, Any]]:
    """(serialized engine bytes, build info) for an ONNX graph; see `build_engine`."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    min_batch, opt_batch, max_batch = _validate_profile(min_batch, opt_batch, max_batch)
    if workspace_mib is not None and (isinstance(workspace_mib, bool) or not isinstance(workspace_mib, int)
                                      or workspace_mib < 1):
        raise ValueError(f"workspace_mib must be a positive integer, got {workspace_mib!r}")
    trt = _import_tensorrt()
    lib = load_plugin_library(plugin_library)
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    # Strongly typed: precision is the graph's (fp32 or fp16 export). TensorRT 11 networks always are.
    flags = 0
    if _trt_major(trt) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    inputs = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(f"input {t.name!r} has dynamic non-batch dimensions {shape}; only the batch axis "
                                   "may be dynamic")
        if shape and shape[0] < 0:
            rest = shape[1:]
            profile.set_shape(t.name, [min_batch, *rest], [opt_batch, *rest], [max_batch, *rest])
        elif shape and not min_batch <= shape[0] <= max_batch:
            raise EngineBuildError(f"input {t.name!r} has a fixed batch {shape[0]} outside [{min_batch}, {max_batch}]")
        inputs.append({"name": t.name, "shape": shape, "dtype": str(t.dtype)})
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the log above; rerun with "
                               "verbose=True / --verbose)")
    info = {
        "tensorrt_version": str(trt.__version__),
        "profile": {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch},
        "workspace_mib": workspace_mib,
        "inputs": inputs,
        "outputs": [{"name": network.get_output(i).name, "dtype": str(network.get_output(i).dtype)}
                    for i in range(network.num_outputs)],
        "plugin_library": lib.name,
        "source": {"file": onnx_path.name, "sha256": _sha256(onnx_path)},
    }
    return bytes(serialized), info


def engine_sidecar_path(engine: str | os.PathLike[str]) -> Path:
    return Path(str(engine) + ".json")




def engine_sidecar(engine_path: Path, onnx_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The engine's sidecar: the ONNX sidecar's model description (when present) plus the engine's own facts."""
    base: dict[str, Any] = {}
    onnx_sidecar = Path(str(onnx_path) + ".json")
    if onnx_sidecar.is_file():
        try:
            base = json.loads(onnx_sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"sidecar {onnx_sidecar} of the ONNX model is unreadable: {exc}") from exc
        if not isinstance(base, dict):
            raise ValueError(f"sidecar {onnx_sidecar} is not a JSON object")
    data = engine_path.read_bytes()
    sc = dict(base)
    sc["format"] = ENGINE_SIDECAR_FORMAT
    sc["source_artifact"] = base.get("artifact")
    sc["artifact"] = {"file": engine_path.name, "format": "tensorrt-engine", "kind": "file", "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(),
                      "batch": f"{info['profile']['min_batch']}..{info['profile']['max_batch']}",
                      "precision": (base.get("artifact") or {}).get("precision")}
    sc["tensorrt"] = info
    return sc


def build_engine(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, min_batch: int = 1,
                 opt_batch: int | None = None, max_batch: int = DEFAULT_MAX_BATCH, workspace_mib: int | None = None,
                 plugin_library: str | os.PathLike[str] | None = None, verbose: bool = False) -> Path:
    """Build a TensorRT engine from an `onnx-trt` (or standard) ONNX graph and write it with `OUT.json`.

    The batch axis gets one optimization profile [min_batch, opt_batch, max_batch] (opt defaults to
    min(max_batch, 4)); every other dimension must be static. `workspace_mib` caps TensorRT's scratch memory.
    Raises TensorRTNotInstalledError without TensorRT, EngineBuildError when parsing/building fails.
    """
    out = Path(out_path)
    serialized, info = build_serialized(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                        workspace_mib=workspace_mib, plugin_library=plugin_library, verbose=verbose)
    _write_atomic(out, serialized)
    sc = engine_sidecar(out, Path(onnx_path), info)
    _write_atomic(engine_sidecar_path(out), (json.dumps(sc, indent=2, default=str) + "\n").encode())
    return out


# ---------------------------------------------------------------- runtime

def _device_module() -> tuple[str, ModuleType]:
    """('torch', torch) when torch has CUDA, else ('cupy', cupy); a clear error otherwise."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", torch
    except ImportError:
        pass
    try:
        import cupy

        return "cupy", cupy
    except ImportError:
        pass
    raise RuntimeError("the TensorRT backend needs device buffers: install torch with CUDA or cupy")


_NP_OF_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BF16": None}


class TensorRTBackend:
    """A deserialized engine and one execution context; `predict` serializes calls on a lock (one context)."""

    def __init__(self, path: str | os.PathLike[str], plugin_library: str | os.PathLike[str] | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, verbose: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {self.path}")
        trt = _import_tensorrt()
        self._trt = trt
        load_plugin_library(plugin_library)
        self._logger = _logger(trt, verbose)
        if self.path.suffix == ".onnx":  # validation path: build in memory from the onnx-trt graph
            self._kind, self._dev = _device_module()
            blob, info = build_serialized(self.path, max_batch=max_batch, plugin_library=plugin_library,
                                          verbose=verbose)
            self._metadata = self._metadata_from(engine_sidecar_from_onnx(self.path, info))
        else:
            blob = self.path.read_bytes()
            sidecar = engine_sidecar_path(self.path)
            sc: dict[str, Any] = {}
            if sidecar.is_file():
                try:
                    sc = json.loads(sidecar.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ValueError(f"engine sidecar {sidecar} is unreadable: {exc}") from exc
                art = sc.get("artifact") or {}
                if art.get("sha256") and art["sha256"] != hashlib.sha256(blob).hexdigest():
                    raise ValueError(f"{self.path} does not match its sidecar {sidecar} (sha256 differs): the engine "
                                     "was modified or truncated")
            self._metadata = self._metadata_from(sc)
            self._kind, self._dev = _device_module()
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path} (built by another TensorRT version, for "
                               "another GPU, or corrupt; rebuild it with `cmir-trt build`)")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self._lock = threading.Lock()
        self._io = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            self._io[name] = {
                "input": self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                "dtype": self._engine.get_tensor_dtype(name),
                "shape": list(self._engine.get_tensor_shape(name)),
            }
        inputs = [n for n, v in self._io.items() if v["input"]]
        outputs = [n for n, v in self._io.items() if not v["input"]]
        if not set(inputs) <= set(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ValueError(f"{self.path} has inputs {inputs} and outputs {outputs}; a cmir engine has inputs "
                             f"{list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}")
        self.inputs = inputs
        self.batch_range = self._batch_range()

    @staticmethod
    def _metadata_from(sc: dict[str, Any]) -> dict[str, Any]:
        model = sc.get("model") if isinstance(sc.get("model"), dict) else {}
        return {
            "format": ENGINE_SIDECAR_FORMAT,
            "config": model.get("config", {}),
            "threshold": sc.get("threshold"),
            "decision_threshold": sc.get("decision_threshold"),
            "synthetic": sc.get("synthetic_training_data"),
            "clinical_schema": sc.get("clinical_schema"),
            "preprocess": sc.get("preprocess"),
            "checkpoint_sha256": (sc.get("checkpoint") or {}).get("sha256"),
            "tensorrt": sc.get("tensorrt"),
        }

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def _batch_range(self) -> tuple[int, int]:
        lo, hi = 1, 1 << 30
        for name in self.inputs:
            shape = self._io[name]["shape"]
            if shape and shape[0] >= 0:
                lo, hi = max(lo, shape[0]), min(hi, shape[0])
            else:
                pmin, _, pmax = self._engine.get_tensor_profile_shape(name, 0)
                lo, hi = max(lo, pmin[0]), min(hi, pmax[0])
        return lo, hi

    def _np_dtype(self, name: str) -> Any:
        dt = self._io[name]["dtype"]
        key = str(dt).rsplit(".", 1)[-1]
        np_dt = _NP_OF_TRT.get(key)
        if np_dt is None:
            raise ValueError(f"engine tensor {name!r} has type {dt}, which this backend does not feed")
        return np_dt

    def _to_device(self, name: str, x: Any) -> Any:
        if x is None:
            raise ValueError(f"input {name!r} is required by this engine")
        want = self._np_dtype(name)
        if self._kind == "torch":
            torch = self._dev
            tdt = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32,
                   np.int64: torch.int64}[want]
            if isinstance(x, torch.Tensor):
                t = x
            elif hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
                t = torch.from_dlpack(x)  # cupy and friends: zero copy where the device matches
            else:
                t = torch.as_tensor(np.asarray(x))
            if not t.is_floating_point():
                raise ValueError(f"input {name!r} must be a float array, got {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"input {name!r} contains NaN or infinite values")
            return t.to(device="cuda", dtype=tdt).contiguous()
        cp = self._dev
        if not np.issubdtype(getattr(x, "dtype", np.asarray(x).dtype), np.floating):
            raise ValueError(f"input {name!r} must be a float array")
        a = cp.asarray(x, dtype=want)
        if not bool(cp.isfinite(a).all()):
            raise ValueError(f"input {name!r} contains NaN or infinite values")
        return cp.ascontiguousarray(a)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        want = self._io[name]["shape"]
        if len(shape) != len(want) or any(w >= 0 and w != s for w, s in zip(want[1:], shape[1:], strict=False)):
            raise ValueError(f"input {name!r} has shape {list(shape)}, the engine expects "
                             f"{['B', *want[1:]]}")
        lo, hi = self.batch_range
        if not lo <= shape[0] <= hi:
            raise ValueError(f"batch size {shape[0]} is outside the engine's profile [{lo}, {hi}] (rebuild with "
                             f"--max-batch)")

    def predict(self, art: Any, pv: Any = None, clinical: Any = None) -> Prediction:
        given = {"art": art, "pv": pv, "clinical": clinical}
        with self._lock:
            dev = {name: self._to_device(name, given[name]) for name in self.inputs}
            batches = {tuple(v.shape)[0] for v in dev.values()}
            if len(batches) != 1:
                raise ValueError(f"inputs disagree on the batch size: "
                                 f"{ {k: list(v.shape) for k, v in dev.items()} }")
            for name, v in dev.items():
                self._check_shape(name, tuple(v.shape))
                if not self._context.set_input_shape(name, tuple(v.shape)):
                    raise ValueError(f"TensorRT refused the shape {list(v.shape)} for input {name!r}")
                self._context.set_tensor_address(name, int(v.data_ptr() if self._kind == "torch"
                                                            else v.data.ptr))
            outs = {}
            for name, v in self._io.items():
                if v["input"]:
                    continue
                shape = tuple(self._context.get_tensor_shape(name))
                np_dt = self._np_dtype(name)
                if self._kind == "torch":
                    torch = self._dev
                    buf = torch.empty(shape, dtype={np.float32: torch.float32, np.float16: torch.float16,
                                                    np.int32: torch.int32, np.int64: torch.int64}[np_dt],
                                      device="cuda")
                    ptr = buf.data_ptr()
                else:
                    buf = self._dev.empty(shape, dtype=np_dt)
                    ptr = buf.data.ptr
                outs[name] = buf
                self._context.set_tensor_address(name, int(ptr))
            if self._kind == "torch":
                stream = self._dev.cuda.current_stream()
                ok = self._context.execute_async_v3(stream.cuda_stream)
                stream.synchronize()
                host = {k: v.float().cpu().numpy() for k, v in outs.items()}
            else:
                stream = self._dev.cuda.get_current_stream()
                ok = self._context.execute_async_v3(stream.ptr)
                stream.synchronize()
                host = {k: self._dev.asnumpy(v).astype(np.float32) for k, v in outs.items()}
            if not ok:
                raise RuntimeError("TensorRT execution failed (see TensorRT's log)")
        return Prediction(probability=host["probability"], logit=host["logit"], heatmap=host["heatmap"])

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(self.path)!r}, batch {self.batch_range[0]}..{self.batch_range[1]})"


def engine_sidecar_from_onnx(onnx_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Sidecar-like dict for an engine built in memory from `onnx_path` (no engine file)."""
    sc: dict[str, Any] = {}
    p = Path(str(onnx_path) + ".json")
    if p.is_file():
        try:
            loaded = json.loads(p.read_text(encoding="utf-8"))
            sc = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            sc = {}
    sc["tensorrt"] = info
    return sc

"""Triton Python-backend models of an exported CMIR repository (they run inside Triton's stub process).

* `TensorModel` (`cmir`): art [B,3,S,S], pv [B,3,S,S], clinical [B,F] (float32) -> probability, logit [B,K],
  heatmap [B,1,S,S] through `cmir_trt.Engine`: the native engine on CPU instances; on GPU instances the TensorRT
  engine of the repository's plan model (parameter gpu_backend=tensorrt, with the plugin library) or the PyTorch
  CUDA backend on the checkpoint (gpu_backend=torch). The requests Triton batches together run as one engine call;
  if that call fails, each request is rerun alone so that only the failing one gets the error.
* `PreprocessModel` (`cmir_preprocess`): one case as NIfTI file bytes (art_nii, pv_nii, mask_nii) plus its
  clinical values (clinical_json) -> the model's input tensors and a case_info JSON, through `cmir_trt.Predictor`'s
  settings and the library's readers and preprocessing (the same steps as `cmir-trt predict`).

Tensors cross the stub boundary by DLPack, never `as_numpy()` / `Tensor(name, ndarray)`: the stub bundled in the
nvidia-pytriton wheel is built against NumPy 1's C layout and, under NumPy 2, reads input arrays as zeros and
rejects output arrays. For the same reason byte strings travel as UINT8 tensors, not TYPE_BYTES (whose conversion
crashes that stub under NumPy 2).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TENSOR_INPUTS = ("art", "pv", "clinical")
TENSOR_OUTPUTS = ("probability", "logit", "heatmap")
CASE_INPUTS = ("art_nii", "pv_nii", "mask_nii")
MAX_CASE_ID = 128


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only importable inside Triton's stub

    return pb_utils


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}


def _one_line(exc: BaseException) -> str:
    from ..data.errors import DataError

    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (DataError, ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"


def read_input(request: Any, name: str, required: bool = True) -> np.ndarray | None:
    """A request's input as a NumPy array (a copy, via DLPack); None when an optional input is absent."""
    t = _pb().get_input_tensor_by_name(request, name)
    if t is None:
        if required:
            raise ValueError(f"input {name!r} is missing")
        return None
    return np.array(np.from_dlpack(t), copy=True)


def output_tensor(name: str, array: np.ndarray) -> Any:
    # C-contiguous and writeable (DLPack 0.x cannot export read-only arrays); copies only when needed.
    return _pb().Tensor.from_dlpack(name, np.require(array, requirements=["C", "W"]).__dlpack__())


def _quiet_consumed_capsules() -> None:
    """Once the stub has taken an output's DLPack capsule, NumPy's capsule destructor reports "PyCapsule_GetPointer
    called with incorrect name" as an unraisable error (the stub does not rename consumed capsules the way NumPy
    expects), which would print a traceback per output tensor into the server log. The memory is released (measured:
    the stub's resident memory stays flat over 600 requests of batch 8). Drop exactly those reports."""
    previous = sys.unraisablehook
    if getattr(previous, "__name__", "") == "_cmir_quiet_capsules":
        return

    def _cmir_quiet_capsules(info: Any) -> None:
        if (isinstance(info.exc_value, ValueError)
                and "PyCapsule_GetPointer called with incorrect name" in str(info.exc_value)):
            return
        previous(info)

    sys.unraisablehook = _cmir_quiet_capsules


def _error_response(message: str) -> Any:
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


class TensorModel:
    """The `cmir` model: tensors in, engine outputs out (see the module docstring)."""

    def initialize(self, args: dict[str, Any]) -> None:
        from ..engine import Engine

        _quiet_consumed_capsules()
        config = json.loads(args["model_config"])
        self.name = config.get("name", "cmir")
        params = _parameters(config)
        model_dir = Path(args["model_repository"])
        version_dir = model_dir / str(args["model_version"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        if args.get("model_instance_kind") == "GPU":
            backend = params.get("gpu_backend", "tensorrt")
            device_id = int(args.get("model_instance_device_id", 0))
            if backend == "tensorrt":
                plugins = params.get("plugin_library")
                if plugins:  # the TensorRT backend loads the plugins from here
                    os.environ.setdefault("CMIR_TRT_PLUGIN_LIBRARY", str((model_dir / plugins).resolve()))
                path = (model_dir / params.get("tensorrt_engine", "")).resolve()
            elif backend == "torch":
                import torch

                if torch.cuda.is_available():  # else Engine says clearly that there is no GPU
                    torch.cuda.set_device(device_id)
                path = version_dir / params.get("checkpoint", "model.pt")
            else:
                raise ValueError(f"{self.name}: parameter gpu_backend must be tensorrt or torch, got {backend!r}")
            self.engine = Engine(path, device="cuda", backend=backend)
        else:
            # threads 0: the instances of this model share the cores (all of them for a single instance)
            count = sum(int(g.get("count", 1)) for g in config.get("instance_group") or [{}])
            threads = int(params.get("threads") or 0) or max(1, (os.cpu_count() or 1) // max(count, 1))
            self.engine = Engine(version_dir / params.get("plan", "model.plan"), device="cpu", backend="native",
                                 threads=threads)
        meta = self.engine.metadata
        _pb().Logger.log_info(f"{self.name}: model {meta.get('model_id')} on {self.engine.backend} "
                              f"({self.engine.device})" + (" -- trained on SYNTHETIC data" if meta.get("synthetic")
                                                           else ""))

    def _read(self, request: Any) -> list[np.ndarray]:
        arrays = []
        for name in self.inputs:
            a = read_input(request, name)
            assert a is not None
            if a.dtype != np.float32:
                raise ValueError(f"input {name!r} must be FP32, got {a.dtype}")
            if not np.isfinite(a).all():
                raise ValueError(f"input {name!r} holds NaN or infinite values")
            arrays.append(a)
        if len({a.shape[0] for a in arrays}) != 1:
            raise ValueError(f"inputs {self.inputs} disagree in batch size: {[a.shape[0] for a in arrays]}")
        return arrays

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        pred = self.engine.predict(*arrays)
        out = {"probability": pred.probability, "logit": pred.logit, "heatmap": pred.heatmap}
        return {k: np.asarray(out[k], dtype=np.float32) for k in self.outputs}

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        inputs: list[list[np.ndarray] | None] = []
        results: dict[int, Any] = {}
        for i, r in enumerate(requests):
            try:
                inputs.append(self._read(r))
            except Exception as exc:  # noqa: BLE001 - a bad request gets its own error; the others still run
                inputs.append(None)
                results[i] = f"{self.name}: {_one_line(exc)}"
        good = [i for i, x in enumerate(inputs) if x is not None]
        if good:
            try:
                batch = [np.concatenate([inputs[i][k] for i in good]) for k in range(len(self.inputs))]  # type: ignore[index]
                out = self._run(batch)
                start = 0
                for i in good:
                    n = inputs[i][0].shape[0]  # type: ignore[index]
                    results[i] = {k: v[start:start + n] for k, v in out.items()}
                    start += n
            except Exception:  # noqa: BLE001 - find the failing request(s): rerun one by one
                for i in good:
                    try:
                        results[i] = self._run(inputs[i])  # type: ignore[arg-type]
                    except Exception as exc:  # noqa: BLE001 - reported to the client and in the server log
                        results[i] = f"{self.name}: inference failed: {_one_line(exc)}"
        responses = []
        for i in range(len(requests)):
            res = results[i]
            if isinstance(res, str):
                pb.Logger.log_error(res)
                responses.append(_error_response(res))
            else:
                responses.append(pb.InferenceResponse([output_tensor(k, v) for k, v in res.items()]))
        return responses


def _decode_text(a: np.ndarray | None, name: str, default: str | None = None) -> str | None:
    if a is None:
        return default
    try:
        return np.ascontiguousarray(a, dtype=np.uint8).tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"input {name!r} is not UTF-8 text: {exc}") from exc


class PreprocessModel:
    """The `cmir_preprocess` model: one case's NIfTI bytes and clinical values -> the tensor model's inputs."""

    def initialize(self, args: dict[str, Any]) -> None:
        from ..predictor import Predictor

        _quiet_consumed_capsules()
        config = json.loads(args["model_config"])
        self.name = config.get("name", "cmir_preprocess")
        params = _parameters(config)
        model_dir = Path(args["model_repository"])
        plan = (model_dir / params.get("model_file", "../cmir/1/model.plan")).resolve()
        # The settings (preprocessing parameters, clinical schema, threshold) are the model's own, read as
        # `cmir-trt predict` reads them; this engine itself is never run here (one thread, loaded once).
        self.predictor = Predictor(plan, device="cpu", threads=1)
        self._tmp = tempfile.TemporaryDirectory(prefix="cmir-preprocess-")

    def finalize(self) -> None:
        self._tmp.cleanup()

    def _image(self, data: np.ndarray, name: str, case_id: str, what: str, folder: Path) -> Any:
        from ..data import read_image
        from ..data.errors import ImageReadError

        raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
        gz = raw[:2] == b"\x1f\x8b"
        # A NIfTI-1 header alone is 348 bytes; a gzip stream may be shorter (a small mask compresses to ~300 bytes)
        # and is checked to its end by read_image.
        if len(raw) < (18 if gz else 348):
            raise ImageReadError(f"case {case_id!r}, {name}: {len(raw)} bytes is too short for a NIfTI file")
        path = folder / (f"{name}.nii.gz" if gz else f"{name}.nii")
        path.write_bytes(raw)
        try:
            return read_image(path, what=f"case {case_id!r} {what} ({name})")
        finally:
            path.unlink()

    def _prepare(self, request: Any, folder: Path) -> dict[str, np.ndarray]:
        from ..data.errors import ClinicalDataError

        p = self.predictor
        case_id = _decode_text(read_input(request, "case_id", required=False), "case_id", "case") or "case"
        if len(case_id) > MAX_CASE_ID or not case_id.isprintable():
            raise ValueError(f"case_id must be printable text of at most {MAX_CASE_ID} characters")
        text = _decode_text(read_input(request, "clinical_json", required=False), "clinical_json")
        given = None
        if p.num_clinical:  # the request's encoding is checked here; the values themselves by the Predictor
            if not text:
                raise ClinicalDataError(f"case {case_id!r}: the model needs clinical values in clinical_json "
                                        f"({', '.join(p.schema.csv_columns)})")
            try:
                given = json.loads(text)
            except ValueError as exc:
                raise ClinicalDataError(f"case {case_id!r}: clinical_json is not valid JSON: {exc}") from exc
            if not isinstance(given, dict):
                raise ClinicalDataError(f"case {case_id!r}: clinical_json must be a JSON object of column: value")
        images = [self._image(read_input(request, n), n, case_id, w, folder)  # type: ignore[arg-type]
                  for n, w in zip(CASE_INPUTS, ("ART", "PV", "mask"), strict=True)]
        # The one per-case pipeline (DESIGN.md section 6): the same preprocessing and clinical row as `predict`.
        prep, x_clin = p.prepare_inputs(case_id, *images, given)
        info = {"case_id": case_id, "model": p.model_id, "threshold": p.threshold,
                "synthetic_training_data": bool(p.synthetic),
                "preprocessing": {"slices": list(prep.slices), "diameter_mm": prep.diameter_mm,
                                  "params": p.params.to_dict()},
                "clinical_normalised": bool(p.clinical_normalised or not p.num_clinical)}
        return {"art": prep.art[None].astype(np.float32), "pv": prep.pv[None].astype(np.float32),
                "clinical": np.asarray(x_clin, dtype=np.float32),
                "case_info": np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8)}

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses = []
        for r in requests:
            folder = Path(tempfile.mkdtemp(dir=self._tmp.name))
            try:
                out = self._prepare(r, folder)
                responses.append(pb.InferenceResponse([output_tensor(k, v) for k, v in out.items()]))
            except Exception as exc:  # noqa: BLE001 - one bad case gets its error; the server keeps serving
                msg = f"{self.name}: {_one_line(exc)}"
                pb.Logger.log_error(msg)
                responses.append(_error_response(msg))
            finally:
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
        return responses

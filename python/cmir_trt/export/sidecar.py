"""Sidecar JSON of an exported artefact, and the checks that an artefact matches its sidecar (no torch needed).

Every artefact `PATH` gets `PATH.json`: model config, input/output spec, clinical schema and normalisation,
preprocessing, decision threshold, checkpoint sha256, the training-data description with its `synthetic` flag, and
the artefact's own size and sha256. `verify_artifact` refuses a truncated or modified file, and a sidecar whose
spec disagrees with the graph (ONNX inputs/outputs, custom nodes, embedded metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, file_sha256

SIDECAR_FORMAT = "cmir-export-sidecar"
SIDECAR_VERSION = 1
ARTIFACT_FORMATS = ("torchscript", "onnx", "onnx-trt", "plan", "triton")
INPUT_NAMES = ("art", "pv", "clinical")
OUTPUT_NAMES = ("logit", "probability", "heatmap")
METADATA_KEY = "cmir_trt.export"  # ONNX metadata_props key / TorchScript extra file holding the embedded summary
DEFAULT_THRESHOLD = 0.5


class ArtifactError(ValueError):
    """An exported artefact that is missing, truncated, modified, or disagrees with its sidecar."""


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    return Path(str(artifact) + ".json")




def tree_digest(path: Path) -> tuple[int, str]:
    """(total bytes, sha256 over relative names and contents) of a directory artefact (e.g. a Triton repository)."""
    h = hashlib.sha256()
    total = 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(file_sha256(p).encode())
        total += p.stat().st_size
    return total, h.hexdigest()


def artifact_digest(path: Path) -> tuple[int, str]:
    if path.is_dir():
        return tree_digest(path)
    return path.stat().st_size, file_sha256(path)


def io_spec(config: dict[str, Any], batch: int | str, precision: str) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes (batch dim an int or "batch") and dtypes of the artefact's inputs and outputs."""
    s = int(config["image_size"])
    cin = int(config.get("in_channels", 3))
    f = int(config.get("num_clinical", 8))
    k = int(config.get("num_classes", 1))
    b: int | str = batch if isinstance(batch, int) else "batch"
    dtype = "float32"  # fp16 graphs keep fp32 inputs/outputs and cast inside
    return {
        "inputs": [{"name": "art", "shape": [b, cin, s, s], "dtype": dtype},
                   {"name": "pv", "shape": [b, cin, s, s], "dtype": dtype},
                   {"name": "clinical", "shape": [b, f], "dtype": dtype}],
        "outputs": [{"name": "logit", "shape": [b, k], "dtype": dtype},
                    {"name": "probability", "shape": [b, k], "dtype": dtype},
                    {"name": "heatmap", "shape": [b, 1, s, s], "dtype": dtype}],
        "internal_precision": precision,
    }


def build_sidecar(*, artifact: Path, fmt: str, config: dict[str, Any], metadata: dict[str, Any],
                  checkpoint_sha256: str, checkpoint_name: str, batch: int | str, precision: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar dict (artefact size/hash filled in from the file as written)."""
    from .. import __version__

    training = metadata.get("training_data")
    synthetic = training.get("synthetic") if isinstance(training, dict) else None
    threshold = metadata.get("threshold")
    size, digest = artifact_digest(artifact)
    sc: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "sidecar_version": SIDECAR_VERSION,
        "cmir_trt_version": __version__,
        "artifact": {"file": artifact.name, "format": fmt, "kind": "directory" if artifact.is_dir() else "file",
                     "bytes": size, "sha256": digest, "batch": batch, "precision": precision},
        "model": {"config": dict(config)},
        **io_spec(config, batch, precision),
        "clinical_schema": metadata.get("clinical_schema"),
        "preprocess": metadata.get("preprocess"),
        "threshold": threshold,
        "decision_threshold": float(threshold) if isinstance(threshold, (int, float)) else DEFAULT_THRESHOLD,
        "checkpoint": {"file": checkpoint_name, "sha256": checkpoint_sha256},
        "training_data": training,
        "synthetic_training_data": synthetic,
    }
    if extra:
        sc.update(extra)
    return sc


def embedded_summary(config: dict[str, Any], checkpoint_sha256: str, fmt: str, batch: int | str,
                     precision: str) -> dict[str, Any]:
    """What the artefact itself carries (ONNX metadata_props / TorchScript extra file) to cross-check the sidecar."""
    return {"format": fmt, "config": dict(config), "checkpoint_sha256": checkpoint_sha256, "batch": batch,
            "precision": precision}


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_sidecar(artifact: str | os.PathLike[str]) -> dict[str, Any]:
    sp = sidecar_path(artifact)
    if not sp.is_file():
        raise ArtifactError(f"sidecar {sp} not found (every exported artefact comes with PATH.json)")
    try:
        sc = json.loads(sp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"sidecar {sp} is not valid JSON: {exc}") from exc
    if not isinstance(sc, dict) or sc.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"{sp} is not a cmir_trt export sidecar (missing format marker {SIDECAR_FORMAT!r})")
    if sc.get("sidecar_version") != SIDECAR_VERSION:
        raise ArtifactError(f"{sp}: unsupported sidecar version {sc.get('sidecar_version')!r}")
    for key in ("artifact", "model", "inputs", "outputs"):
        if key not in sc:
            raise ArtifactError(f"{sp}: field {key!r} missing")
    art = sc["artifact"]
    if not isinstance(art, dict) or not isinstance(art.get("bytes"), int) or not isinstance(art.get("sha256"), str):
        raise ArtifactError(f"{sp}: field 'artifact' lacks bytes/sha256")
    return sc


def _check_bytes(path: Path, sc: dict[str, Any]) -> None:
    art = sc["artifact"]
    if not path.exists():
        raise ArtifactError(f"artefact {path} not found")
    size, digest = artifact_digest(path)
    if path.is_file() and size < art["bytes"]:
        raise ArtifactError(f"{path} is truncated: {size} of {art['bytes']} bytes (per its sidecar)")
    if size != art["bytes"] or digest != art["sha256"]:
        raise ArtifactError(f"{path} does not match its sidecar (size {size} vs {art['bytes']} bytes, sha256 "
                            f"{digest[:12]}… vs {art['sha256'][:12]}…): the file was modified or replaced after export")


def _onnx_dims(vi: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def _compare_spec(where: str, kind: str, graph: list[tuple[str, list[int | str], str]],
                  spec: list[dict[str, Any]]) -> None:
    gnames = [g[0] for g in graph]
    snames = [s.get("name") for s in spec]
    if gnames != snames:
        raise ArtifactError(f"{where}: graph {kind} {gnames} disagree with the sidecar's {snames}")
    for (name, dims, dtype), s in zip(graph, spec, strict=True):
        sdims = s.get("shape", [])
        if len(dims) != len(sdims):
            raise ArtifactError(f"{where}: {kind[:-1]} {name!r} has rank {len(dims)} in the graph, {len(sdims)} in "
                                f"the sidecar")
        for gd, sd in zip(dims, sdims, strict=True):
            if isinstance(sd, int) != isinstance(gd, int) or (isinstance(sd, int) and gd != sd):
                raise ArtifactError(f"{where}: {kind[:-1]} {name!r} has shape {dims} in the graph but {sdims} in "
                                    f"the sidecar")
        if dtype != s.get("dtype"):
            raise ArtifactError(f"{where}: {kind[:-1]} {name!r} is {dtype} in the graph, {s.get('dtype')} in the "
                                f"sidecar")


def _compare_embedded(where: str, embedded: Any, sc: dict[str, Any]) -> None:
    if not isinstance(embedded, dict):
        raise ArtifactError(f"{where}: the artefact carries no cmir_trt export summary ({METADATA_KEY})")
    checks = {
        "format": sc["artifact"].get("format"),
        "config": sc["model"].get("config"),
        "checkpoint_sha256": (sc.get("checkpoint") or {}).get("sha256"),
        "batch": sc["artifact"].get("batch"),
        "precision": sc["artifact"].get("precision"),
    }
    for key, want in checks.items():
        if embedded.get(key) != want:
            raise ArtifactError(f"{where}: sidecar disagrees with the artefact on {key!r}: artefact says "
                                f"{embedded.get(key)!r}, sidecar says {want!r}")


def load_onnx_checked(path: str | os.PathLike[str], sc: dict[str, Any] | None = None) -> Any:
    """The onnx.ModelProto after every check (size/hash, decodability, I/O spec, embedded summary, custom nodes)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    sc = sc if sc is not None else read_sidecar(path)
    _check_bytes(path, sc)
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc
    elem = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32"}

    def entries(vals: Any) -> list[tuple[str, list[int | str], str]]:
        return [(v.name, _onnx_dims(v), elem.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)))
                for v in vals]

    init = {i.name for i in model.graph.initializer}
    _compare_spec(str(path), "inputs", entries([v for v in model.graph.input if v.name not in init]), sc["inputs"])
    _compare_spec(str(path), "outputs", entries(model.graph.output), sc["outputs"])
    props = {p.key: p.value for p in model.metadata_props}
    try:
        embedded = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: embedded {METADATA_KEY} metadata is not JSON: {exc}") from exc
    _compare_embedded(str(path), embedded, sc)
    want_custom = sc.get("custom_ops")
    if want_custom is not None:
        from .trt_graph import custom_node_counts

        got = custom_node_counts(model)
        if got != {k: int(v) for k, v in dict(want_custom.get("counts", {})).items()}:
            raise ArtifactError(f"{path}: custom nodes {got} disagree with the sidecar's {want_custom.get('counts')}")
    return model


def load_torchscript_checked(path: str | os.PathLike[str], sc: dict[str, Any] | None = None) -> Any:
    """torch.jit.load after the size/hash check and the embedded-summary comparison."""
    import torch

    path = Path(path)
    sc = sc if sc is not None else read_sidecar(path)
    _check_bytes(path, sc)
    extra = {METADATA_KEY: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch >= 2.10
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError / zip errors for corrupt archives
        raise ArtifactError(f"{path} is not a readable TorchScript archive: {type(exc).__name__}: {exc}") from exc
    try:
        embedded = json.loads(extra[METADATA_KEY]) if extra[METADATA_KEY] else None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: embedded {METADATA_KEY} summary is not JSON: {exc}") from exc
    _compare_embedded(str(path), embedded, sc)
    return module


def verify_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of a consistent artefact; ArtifactError naming the problem otherwise."""
    path = Path(path)
    sc = read_sidecar(path)
    fmt = sc["artifact"].get("format")
    if fmt in ("onnx", "onnx-trt"):
        load_onnx_checked(path, sc)
    elif fmt == "torchscript":
        load_torchscript_checked(path, sc)
    elif fmt in ("plan", "triton"):
        _check_bytes(path, sc)
    else:
        raise ArtifactError(f"{sidecar_path(path)}: unknown artefact format {fmt!r}")
    return sc

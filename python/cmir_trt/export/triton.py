"""Triton model repository for CMIR served as a TensorRT engine with the cmir plugins.

Layout written by `export_triton_repository(source, out_dir, max_batch_size)`:

    OUT/README.md                     how to build the plan (if needed) and start tritonserver with the plugins
    OUT/build_engine.py               standalone engine builder (needs only TensorRT) for the serving machine
    OUT/<name>/config.pbtxt           platform "tensorrt_plan", max_batch_size, art/pv/clinical -> logit/probability/
                                      heatmap, dynamic batching, one GPU instance (from export/triton/config.pbtxt.in)
    OUT/<name>/1/model.plan           the engine: copied when `source` is one, built when TensorRT is installed here,
                                      otherwise built on the serving machine with build_engine.py (see README)
    OUT/<name>/onnx/model.onnx(.json) the onnx-trt graph and its sidecar (Triton ignores non-numeric folders)
    OUT/<name>/plugins/libcmir_trt_plugins.so   when this build has it

`source` is a checkpoint (.pt/.pth; exported to onnx-trt here, needs torch), an onnx-trt `.onnx`, or a TensorRT
engine (`.engine`/`.plan` with its `ENGINE.json` sidecar). The repository is assembled in a temporary folder and
moved into place, so a failed export leaves no half-written repository.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

TEMPLATE_NAME = "config.pbtxt.in"
TEMPLATE_ENV = "CMIR_TRITON_TEMPLATE"
MARKER = ".cmir-triton-repository"
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}
ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


class TritonExportError(ValueError):
    """The source cannot be turned into a Triton repository (unknown kind, missing sidecar, bad sizes)."""


def template_path() -> Path:
    """export/triton/config.pbtxt.in: $CMIR_TRITON_TEMPLATE, the installed copy, or the source tree's."""
    env = os.environ.get(TEMPLATE_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    import cmir_trt

    candidates = [Path(d) / "export" / "triton" / TEMPLATE_NAME for d in getattr(cmir_trt, "__path__", [])]
    candidates += [here / "triton" / TEMPLATE_NAME, here.parents[2] / "export" / "triton" / TEMPLATE_NAME]
    for p in candidates:
        if p.is_file():
            return p
    raise TritonExportError(f"Triton config template not found (looked at {[str(p) for p in candidates]}; set "
                            f"{TEMPLATE_ENV})")


def _standalone_builder() -> Path | None:
    here = Path(__file__).resolve().parent
    import cmir_trt

    candidates = [Path(d) / "export" / "build_engine.py" for d in getattr(cmir_trt, "__path__", [])]
    candidates += [here / "build_engine.py", here.parents[2] / "export" / "build_engine.py"]
    return next((p for p in candidates if p.is_file()), None)


def _tensor_block(name: str, dtype: str, dims: list[int]) -> str:
    if dtype not in _TRITON_TYPES:
        raise TritonExportError(f"tensor {name!r} has dtype {dtype!r}, which has no Triton type here")
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise TritonExportError(f"tensor {name!r} needs static positive non-batch dims for Triton, got {dims}")
    return (f"  {{\n    name: \"{name}\"\n    data_type: {_TRITON_TYPES[dtype]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def render_config(io: dict[str, Any], *, model_name: str = "cmir", max_batch_size: int = 8,
                  preferred_batch_sizes: list[int] | None = None, max_queue_delay_us: int = 100,
                  instance_count: int = 1, synthetic: bool | None = None) -> str:
    """config.pbtxt text for the I/O spec `io` ({"inputs"/"outputs": [{name, shape [batch, ...], dtype}]})."""
    if not model_name or any(c in model_name for c in "\"\\/ \n"):
        raise TritonExportError(f"invalid Triton model name {model_name!r}")
    for what, v, lo in (("max_batch_size", max_batch_size, 1), ("max_queue_delay_us", max_queue_delay_us, 0),
                        ("instance_count", instance_count, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise TritonExportError(f"{what} must be an integer >= {lo}, got {v!r}")
    if preferred_batch_sizes is None:
        preferred_batch_sizes = sorted({max(1, max_batch_size // 2), max_batch_size})
    if not preferred_batch_sizes or any(not 1 <= b <= max_batch_size for b in preferred_batch_sizes):
        raise TritonExportError(f"preferred batch sizes {preferred_batch_sizes} must lie in [1, {max_batch_size}]")
    blocks = {}
    for kind in ("inputs", "outputs"):
        specs = io.get(kind)
        if not isinstance(specs, list) or not specs:
            raise TritonExportError(f"I/O spec has no {kind}")
        blocks[kind] = ",\n".join(_tensor_block(s["name"], s["dtype"], list(s["shape"][1:])) for s in specs)
    note = {True: "\n# The model was trained on SYNTHETIC data: its outputs mean nothing clinically.",
            False: "", None: "\n# Training data not recorded."}[synthetic]
    text = string.Template(template_path().read_text(encoding="utf-8")).substitute(
        model_name=model_name, max_batch_size=max_batch_size, inputs=blocks["inputs"], outputs=blocks["outputs"],
        preferred_batch_sizes=", ".join(str(b) for b in preferred_batch_sizes), max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count, synthetic_note=note)
    return text


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TritonExportError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise TritonExportError(f"{path} is not a JSON object")
    return data


def _io_from_onnx(path: Path) -> dict[str, Any]:
    """I/O spec read from the graph itself (when the ONNX has no sidecar)."""
    import onnx

    type_names = {1: "float32", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 9: "bool", 2: "uint8"}
    model = onnx.load_model(str(path), load_external_data=False)

    def spec(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else "batch" for d in tt.shape.dim]
        return {"name": vi.name, "shape": dims, "dtype": type_names.get(tt.elem_type, f"onnx-type-{tt.elem_type}")}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def _export_checkpoint(source: Any, onnx_out: Path, precision: str, verbose: bool) -> None:
    from .exporters import export_onnx

    if isinstance(source, (str, os.PathLike)):
        from ..model.checkpoint import load_checkpoint

        ckpt = Path(source)
        export_onnx(load_checkpoint(ckpt), onnx_out, "custom", "dynamic", precision, ckpt, verbose=verbose)
    else:  # a CMIR module
        export_onnx(source, onnx_out, "custom", "dynamic", precision, None, verbose=verbose)


def _readme(name: str, max_batch_size: int, plan_status: str, plugins: str | None, synthetic: bool | None) -> str:
    lib = f"$REPO/{name}/plugins/libcmir_trt_plugins.so"
    syn = {True: "\n**The model was trained on synthetic data: its outputs have no clinical meaning.**\n",
           False: "", None: "\nThe training data of this model was not recorded.\n"}[synthetic]
    plugin_line = (f"The plugin library is `{name}/plugins/libcmir_trt_plugins.so`." if plugins else
                   f"**No plugin library was available at export time**: build cmir_trt with TensorRT's headers "
                   f"(`TensorRT_ROOT=... pip install -e .`) and copy `libcmir_trt_plugins.so` to `{name}/plugins/`.")
    return f"""# CMIR Triton model repository

Research use only, not for diagnostic use.{syn}
Written by `cmir-trt export --format triton`. Model `{name}`: TensorRT plan with the cmir plugins
(CMIRInvolution, CMIRCrossModalAttention; namespace `cmir`, version 1), inputs `art` [B, 3, S, S], `pv` [B, 3, S, S],
`clinical` [B, F] (float32), outputs `logit`, `probability`, `heatmap` [B, 1, S, S]; max_batch_size {max_batch_size},
dynamic batching on.

{plugin_line}

## 1. The engine (`{name}/1/model.plan`)

{plan_status}

A TensorRT engine only runs with the TensorRT version and GPU type it was built with, so build it on the serving
machine (or one like it), e.g. inside the Triton container:

    python build_engine.py --onnx {name}/onnx/model.onnx --plugins {name}/plugins/libcmir_trt_plugins.so \\
        --out {name}/1/model.plan --min-batch 1 --max-batch {max_batch_size}

(`cmir-trt build --onnx ... --out ...` does the same where cmir_trt is installed.) The engine's largest batch must
be at least max_batch_size in `config.pbtxt`.

## 2. Start Triton with the plugins

Triton's TensorRT backend only `dlopen`s plugin libraries; set `CMIR_TRT_PLUGINS_AUTOREGISTER=1` so that
libcmir_trt_plugins.so registers its creators with the TensorRT already loaded by the backend:

    CMIR_TRT_PLUGINS_AUTOREGISTER=1 tritonserver --model-repository=$REPO \\
        --backend-config=tensorrt,plugins="{lib}"

`LD_PRELOAD={lib}` alone does not work: it runs before TensorRT is loaded, and the library deliberately links no
libnvinfer (it prints a message saying so when CMIR_TRT_PLUGINS_AUTOREGISTER=1). Tools that call TensorRT's
`loadLibrary` need no variable: `trtexec --loadEngine={name}/1/model.plan --dynamicPlugins={lib}` or
`trt.get_plugin_registry().load_library(...)` in Python.
"""


def _prepare_target(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier cmir Triton repository."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise TritonExportError(f"{out} exists and is not an earlier cmir Triton repository; choose a new --out or "
                                f"remove it")


def export_triton_repository(source: Any, out_dir: str | os.PathLike[str], max_batch_size: int = 8, *,
                             batch: int | str = "dynamic", precision: str = "fp32", model_name: str = "cmir",
                             plugin_library: str | os.PathLike[str] | None = None, build: bool | str = "auto",
                             max_queue_delay_us: int = 100, instance_count: int = 1,
                             workspace_mib: int | None = None, verbose: bool = False) -> Path:
    """Write a Triton model repository for `source` (checkpoint, onnx-trt .onnx, or engine) to `out_dir`.

    `batch`: an integer sets max_batch_size (the export CLI's --batch); "dynamic" keeps `max_batch_size`.
    `build`: "auto" builds `1/model.plan` when TensorRT is installed here, True requires it, False never builds.
    Returns `out_dir`.
    """
    if isinstance(batch, int) and not isinstance(batch, bool):
        max_batch_size = batch
    elif batch != "dynamic":
        raise TritonExportError(f"batch must be 'dynamic' or an integer, got {batch!r}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise TritonExportError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if precision not in ("fp32", "fp16"):
        raise TritonExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if build not in ("auto", True, False):
        raise TritonExportError(f"build must be 'auto', True or False, got {build!r}")
    out = Path(out_dir)
    _prepare_target(out)

    kind = "model"
    if isinstance(source, (str, os.PathLike)):
        src = Path(source)
        if not src.is_file():
            raise FileNotFoundError(f"source not found: {src}")
        suffix = src.suffix.lower()
        if suffix in ENGINE_SUFFIXES:
            kind = "engine"
        elif suffix == ".onnx":
            kind = "onnx"
        elif suffix in CHECKPOINT_SUFFIXES:
            kind = "checkpoint"
        else:
            raise TritonExportError(f"{src}: expected a checkpoint (.pt/.pth), an onnx-trt graph (.onnx) or a "
                                    f"TensorRT engine (.engine/.plan)")

    from .. import tensorrt as trt_mod

    try:
        lib: Path | None = trt_mod.find_plugin_library(plugin_library)
    except FileNotFoundError:
        if plugin_library is not None:
            raise
        lib = None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mdir = tmp / model_name
        (mdir / "1").mkdir(parents=True)
        sidecar: dict[str, Any]
        if kind == "engine":
            src = Path(source)
            sc_path = trt_mod.engine_sidecar_path(src)
            if not sc_path.is_file():
                raise TritonExportError(f"{src} has no sidecar {sc_path} (written by `cmir-trt build`); it holds the "
                                        f"I/O shapes Triton's config needs")
            sidecar = _read_json(sc_path)
            prof = (sidecar.get("tensorrt") or {}).get("profile") or {}
            if int(prof.get("max_batch", 0)) < max_batch_size:
                raise TritonExportError(f"engine {src} serves batches up to {prof.get('max_batch')}, less than "
                                        f"max_batch_size {max_batch_size}; rebuild it with --max-batch "
                                        f"{max_batch_size} or lower --batch")
            shutil.copyfile(src, mdir / "1" / "model.plan")
            shutil.copyfile(sc_path, mdir / "1" / "model.plan.json")
            plan_status = f"Copied from `{src.name}` (TensorRT {sidecar['tensorrt'].get('tensorrt_version')})."
        else:
            onnx_dir = mdir / "onnx"
            onnx_dir.mkdir()
            onnx_path = onnx_dir / "model.onnx"
            if kind == "onnx":
                src = Path(source)
                shutil.copyfile(src, onnx_path)
                if Path(str(src) + ".json").is_file():
                    shutil.copyfile(str(src) + ".json", str(onnx_path) + ".json")
            else:
                _export_checkpoint(source, onnx_path, precision, verbose)
            sc_file = Path(str(onnx_path) + ".json")
            sidecar = _read_json(sc_file) if sc_file.is_file() else _io_from_onnx(onnx_path)
            can_build = trt_mod.tensorrt_version() is not None and lib is not None
            if build is True and not can_build:
                trt_mod._import_tensorrt()  # raises "TensorRT is not installed: ..." when that is the reason
                raise TritonExportError("the plugin library is needed to build the engine")
            if build is not False and can_build:
                trt_mod.build_engine(onnx_path, mdir / "1" / "model.plan", min_batch=1, max_batch=max_batch_size,
                                     workspace_mib=workspace_mib, plugin_library=lib, verbose=verbose)
                plan_status = "Built at export time with TensorRT " + str(trt_mod.tensorrt_version()) + "."
            else:
                if build is False:
                    why = "build=False"
                elif trt_mod.tensorrt_version() is None:
                    why = "TensorRT is not installed on the exporting machine"
                else:
                    why = "the plugin library was not available"
                plan_status = f"**Not built yet** ({why}): `{model_name}/1/` is empty; build it as shown below."
        synthetic = sidecar.get("synthetic_training_data") if "synthetic_training_data" in sidecar else None
        io = {"inputs": sidecar.get("inputs"), "outputs": sidecar.get("outputs")}
        (mdir / "config.pbtxt").write_text(
            render_config(io, model_name=model_name, max_batch_size=max_batch_size,
                          max_queue_delay_us=max_queue_delay_us, instance_count=instance_count, synthetic=synthetic),
            encoding="utf-8")
        if lib is not None:
            (mdir / "plugins").mkdir()
            shutil.copy2(lib, mdir / "plugins" / lib.name)
        builder = _standalone_builder()
        if builder is not None:
            shutil.copyfile(builder, tmp / "build_engine.py")
        (tmp / "README.md").write_text(_readme(model_name, max_batch_size, plan_status,
                                               str(lib) if lib else None, synthetic), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"model_name": model_name, "max_batch_size": max_batch_size,
                                              "source_kind": kind, "plan_built": (mdir / "1" / "model.plan").is_file(),
                                              "plugin_library": lib is not None}, indent=2) + "\n",
                                  encoding="utf-8")
        # Swap into place: an earlier repository is only removed once the new one is complete.
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.rename(out, old / "repo")
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

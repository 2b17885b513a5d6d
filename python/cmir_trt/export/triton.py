"""Triton model repository for CMIR: Python-backend models over cmir_trt and a TensorRT-plan model.

Layout written by `export_triton_repository(source, out_dir, max_batch_size)` (NAME = model_name, default "cmir"):

    OUT/README.md                     how to serve it (`cmir-trt serve`, or tritonserver with the plugins)
    OUT/build_engine.py               standalone engine builder (needs only TensorRT) for the serving machine
    OUT/NAME/                         (checkpoint sources) Python backend over cmir_trt.Engine, tensors in/out:
        config.pbtxt                  art/pv/clinical -> probability/logit/heatmap, dynamic batching, CPU instances
        1/model.py                    imports cmir_trt.serve.models.TensorModel
        1/model.plan                  the native-engine plan (CPU instances)
        1/model.pt                    the checkpoint (GPU instances with gpu_backend=torch)
    OUT/NAME_preprocess/              (checkpoint sources) Python backend: one case's NIfTI bytes + clinical JSON ->
                                      NAME's input tensors, with the model's own preprocessing settings
    OUT/NAME_case/config.pbtxt        (checkpoint sources) ensemble NAME_preprocess -> NAME
    OUT/NAME_tensorrt/config.pbtxt    platform "tensorrt_plan", max_batch_size, the same I/O, dynamic batching, one
                                      GPU instance (from export/triton/config.pbtxt.in)
    OUT/NAME_tensorrt/1/model.plan    the engine: copied when `source` is one, built when TensorRT is installed here,
                                      otherwise built on the serving machine with build_engine.py (see README)
    OUT/NAME_tensorrt/onnx/model.onnx(.json)  the onnx-trt graph and its sidecar (Triton ignores non-numeric folders)
    OUT/NAME_tensorrt/plugins/libcmir_trt_plugins.so   when this build has it

`source` is a checkpoint (.pt/.pth; exported to onnx-trt and to a native plan here, needs torch), an onnx-trt
`.onnx`, or a TensorRT engine (`.engine`/`.plan` with its `ENGINE.json` sidecar); the last two give only the
TensorRT model. The repository is assembled in a temporary folder and moved into place, so a failed export leaves
no half-written repository.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

from .._io import public_dir_mode

TEMPLATE_NAME = "config.pbtxt.in"
TEMPLATE_ENV = "CMIR_TRITON_TEMPLATE"
MARKER = ".cmir-triton-repository"
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}
ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


class TritonExportError(ValueError):
    """The source cannot be turned into a Triton repository (unknown kind, missing sidecar, bad sizes)."""


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """export/triton/<name>: beside $CMIR_TRITON_TEMPLATE (which names config.pbtxt.in), the installed copy, or the
    source tree's."""
    env = os.environ.get(TEMPLATE_ENV)
    if env:
        return Path(env) if name == TEMPLATE_NAME else Path(env).parent / name
    here = Path(__file__).resolve().parent
    import cmir_trt

    candidates = [Path(d) / "export" / "triton" / name for d in getattr(cmir_trt, "__path__", [])]
    candidates += [here / "triton" / name, here.parents[2] / "export" / "triton" / name]
    for p in candidates:
        if p.is_file():
            return p
    raise TritonExportError(f"Triton template {name} not found (looked at {[str(p) for p in candidates]}; set "
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
                  instance_count: int = 1, synthetic: bool | None = None, template: str = TEMPLATE_NAME,
                  **extra: Any) -> str:
    """config.pbtxt text for the I/O spec `io` ({"inputs"/"outputs": [{name, shape [batch, ...], dtype}]}) from
    `template` (config.pbtxt.in: the TensorRT-plan model; python_model.pbtxt.in: the Python model, which also takes
    instance_kind, threads and trt_model_name in `extra`)."""
    _check_name(model_name)
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
    text = string.Template(template_path(template).read_text(encoding="utf-8")).substitute(
        model_name=model_name, max_batch_size=max_batch_size, inputs=blocks["inputs"], outputs=blocks["outputs"],
        preferred_batch_sizes=", ".join(str(b) for b in preferred_batch_sizes), max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count, synthetic_note=_synthetic_note(synthetic), **extra)
    return text


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "\"\\/ \n"):
        raise TritonExportError(f"invalid Triton model name {name!r}")


def _synthetic_note(synthetic: bool | None) -> str:
    return {True: "\n# The model was trained on SYNTHETIC data: its outputs mean nothing clinically.",
            False: "", None: "\n# Training data not recorded."}[synthetic]


def _spec(io: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for s in io.get(kind) or []:
        if s.get("name") == name:
            return s
    raise TritonExportError(f"I/O spec has no {kind[:-1]} {name!r}")


def render_preprocess_config(io: dict[str, Any], *, model_name: str, tensor_model_name: str, case_model_name: str,
                             instance_count: int = 1, synthetic: bool | None = None) -> str:
    """config.pbtxt of the preprocessing model: its outputs are the tensor model's inputs with a batch of 1."""
    for n in (model_name, tensor_model_name, case_model_name):
        _check_name(n)
    if isinstance(instance_count, bool) or not isinstance(instance_count, int) or instance_count < 1:
        raise TritonExportError(f"instance_count must be an integer >= 1, got {instance_count!r}")
    blocks = [_tensor_block(s["name"], s["dtype"], [1, *s["shape"][1:]]) for s in io["inputs"]]
    blocks.append('  {\n    name: "case_info"\n    data_type: TYPE_UINT8\n    dims: [ -1 ]\n  }')
    return string.Template(template_path("preprocess.pbtxt.in").read_text(encoding="utf-8")).substitute(
        model_name=model_name, tensor_model_name=tensor_model_name, case_model_name=case_model_name,
        outputs=",\n".join(blocks), instance_count=instance_count, synthetic_note=_synthetic_note(synthetic))


def _maps(kind: str, pairs: list[tuple[str, str]]) -> str:
    return "\n".join(f'      {kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)


def render_ensemble_config(io: dict[str, Any], *, model_name: str, preprocess_model_name: str,
                           tensor_model_name: str, synthetic: bool | None = None) -> str:
    """config.pbtxt of the ensemble NIfTI bytes -> preprocessing -> tensor model."""
    for n in (model_name, preprocess_model_name, tensor_model_name):
        _check_name(n)
    tensors = [s["name"] for s in io["inputs"]]
    outputs = [_spec(io, "outputs", n) for n in ("probability", "logit", "heatmap")]
    blocks = [_tensor_block(s["name"], s["dtype"], [1, *s["shape"][1:]]) for s in outputs]
    blocks.append('  {\n    name: "case_info"\n    data_type: TYPE_UINT8\n    dims: [ -1 ]\n  }')
    case_inputs = ["art_nii", "pv_nii", "mask_nii", "clinical_json", "case_id"]
    pre_maps = _maps("input_map", [(n, n) for n in case_inputs]) + "\n" + _maps(
        "output_map", [(n, f"_{n}") for n in tensors] + [("case_info", "case_info")])
    tensor_maps = _maps("input_map", [(n, f"_{n}") for n in tensors]) + "\n" + _maps(
        "output_map", [(s["name"], s["name"]) for s in outputs])
    return string.Template(template_path("ensemble.pbtxt.in").read_text(encoding="utf-8")).substitute(
        model_name=model_name, preprocess_model_name=preprocess_model_name, tensor_model_name=tensor_model_name,
        outputs=",\n".join(blocks), preprocess_maps=pre_maps, tensor_maps=tensor_maps,
        synthetic_note=_synthetic_note(synthetic))


def render_model_py(model_name: str, class_name: str) -> str:
    return string.Template(template_path("model.py.in").read_text(encoding="utf-8")).substitute(
        model_name=model_name, class_name=class_name)


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


def _checkpoint_io(source: Any) -> dict[str, Any]:
    """The I/O spec and synthetic flag of a checkpoint (or CMIR module), as an ONNX sidecar would give them."""
    from ..model.checkpoint import load_checkpoint
    from .sidecar import io_spec

    model = load_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    training = (getattr(model, "metadata", None) or {}).get("training_data")
    return {**io_spec(model.config.to_dict(), "batch", "fp32"),
            "synthetic_training_data": training.get("synthetic") if isinstance(training, dict) else None}


def _readme(names: dict[str, str], max_batch_size: int, plan_status: str, plugins: str | None,
            synthetic: bool | None, python_models: bool, tensorrt: bool = True) -> str:
    trt = names["tensorrt"]
    lib = f"$REPO/{trt}/plugins/libcmir_trt_plugins.so"
    syn = {True: "\n**The model was trained on synthetic data: its outputs have no clinical meaning.**\n",
           False: "", None: "\nThe training data of this model was not recorded.\n"}[synthetic]
    plugin_line = (f"The plugin library is `{trt}/plugins/libcmir_trt_plugins.so`." if plugins else
                   f"**No plugin library was available at export time**: build cmir_trt with TensorRT's headers "
                   f"(`TensorRT_ROOT=... pip install -e .`) and copy `libcmir_trt_plugins.so` to `{trt}/plugins/`.")
    t, pre, case = names["tensor"], names["preprocess"], names["case"]
    if python_models:
        models = f"""Models:

- `{t}` (Python backend over `cmir_trt.Engine`): inputs `art` [B, 3, S, S], `pv` [B, 3, S, S], `clinical` [B, F]
  (FP32), outputs `probability`, `logit` [B, K], `heatmap` [B, 1, S, S]; max_batch_size {max_batch_size}, dynamic
  batching. CPU instances run the native engine (`{t}/1/model.plan`); GPU instances (`kind: KIND_GPU`) run the
  TensorRT engine of `{trt}` (parameter `gpu_backend: tensorrt`) or PyTorch CUDA on `{t}/1/model.pt`
  (`gpu_backend: torch`).
- `{pre}` (Python backend): one case as NIfTI file bytes (`art_nii`, `pv_nii`, `mask_nii`, UINT8) plus
  `clinical_json` (UTF-8 JSON object of the clinical columns) and `case_id` -> `{t}`'s inputs and `case_info`
  (JSON bytes: threshold, slices, tumour diameter), with the model's own preprocessing settings.
- `{case}` (ensemble `{pre}` -> `{t}`): NIfTI bytes in, `probability`, `logit`, `heatmap`, `case_info` out; the
  same numbers as `cmir-trt predict` on the same files.
- `{trt}` (TensorRT plan with the cmir plugins, GPU): the same tensors as `{t}`.

## 0. Serve it

    cmir-trt serve --repo $REPO            # HTTP 8000, gRPC 8001, metrics 8002 on 127.0.0.1

uses `tritonserver` from PATH or the `nvidia-pytriton` wheel (`pip install 'cmir_trt[serve]' && pip install
--no-deps nvidia-pytriton`) and runs the Python models in this environment; models the server cannot run (`{trt}`
without TensorRT or without its engine) are left out with a message. With a Triton container, install cmir_trt (with
SimpleITK) into its Python and start `tritonserver --model-repository=$REPO`.
"""
    else:
        models = f"""Model `{trt}`: TensorRT plan with the cmir plugins (CMIRInvolution, CMIRCrossModalAttention;
namespace `cmir`, version 1), inputs `art` [B, 3, S, S], `pv` [B, 3, S, S], `clinical` [B, F] (float32), outputs
`logit`, `probability`, `heatmap` [B, 1, S, S]; max_batch_size {max_batch_size}, dynamic batching on. (Exported from an
ONNX graph or an engine: the Python-backend models need a checkpoint as the source.)
"""
    head = f"""# CMIR Triton model repository

Research use only, not for diagnostic use.{syn}
Written by `cmir-trt export --format triton`.

{models}"""
    if not tensorrt:
        return head.replace(f"- `{trt}` (TensorRT plan with the cmir plugins, GPU): the same tensors as `{t}`.\n", "") \
            + f"""
Exported without the TensorRT model (`--no-tensorrt`): GPU instances of `{t}` can use `gpu_backend: torch`;
export again without that option for `{trt}` (TensorRT plan with the cmir plugins).
"""
    return head + f"""
{plugin_line}

## 1. The engine (`{trt}/1/model.plan`)

{plan_status}

A TensorRT engine only runs with the TensorRT version and GPU type it was built with, so build it on the serving
machine (or one like it), e.g. inside the Triton container:

    python build_engine.py --onnx {trt}/onnx/model.onnx --plugins {trt}/plugins/libcmir_trt_plugins.so \\
        --out {trt}/1/model.plan --min-batch 1 --max-batch {max_batch_size}

(`cmir-trt build --onnx ... --out ...` does the same where cmir_trt is installed.) The engine's largest batch must
be at least max_batch_size in `config.pbtxt`.

## 2. Start Triton with the plugins

Triton's TensorRT backend only `dlopen`s plugin libraries; set `CMIR_TRT_PLUGINS_AUTOREGISTER=1` so that
libcmir_trt_plugins.so registers its creators with the TensorRT already loaded by the backend:

    CMIR_TRT_PLUGINS_AUTOREGISTER=1 tritonserver --model-repository=$REPO \\
        --backend-config=tensorrt,plugins="{lib}"

`LD_PRELOAD={lib}` alone does not work: it runs before TensorRT is loaded, and the library deliberately links no
libnvinfer (it prints a message saying so when CMIR_TRT_PLUGINS_AUTOREGISTER=1). Tools that call TensorRT's
`loadLibrary` need no variable: `trtexec --loadEngine={trt}/1/model.plan --dynamicPlugins={lib}` or
`trt.get_plugin_registry().load_library(...)` in Python.
"""


def _prepare_target(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier cmir Triton repository."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise TritonExportError(f"{out} exists and is not an earlier cmir Triton repository; choose a new --out or "
                                f"remove it")


def model_names(model_name: str = "cmir") -> dict[str, str]:
    """The repository's model names: tensor (Python), preprocess, case (ensemble) and tensorrt (plan)."""
    _check_name(model_name)
    return {"tensor": model_name, "preprocess": f"{model_name}_preprocess", "case": f"{model_name}_case",
            "tensorrt": f"{model_name}_tensorrt"}


def _write_python_models(tmp: Path, names: dict[str, str], source: Any, io: dict[str, Any], max_batch_size: int,
                         max_queue_delay_us: int, instance_count: int, synthetic: bool | None) -> None:
    """The Python-backend tensor model (native plan + checkpoint), the preprocessing model and the ensemble."""
    from .plan import export_plan

    t = tmp / names["tensor"]
    (t / "1").mkdir(parents=True)
    export_plan(source, t / "1" / "model.plan")
    if isinstance(source, (str, os.PathLike)):
        shutil.copyfile(source, t / "1" / "model.pt")
    else:
        from ..model.checkpoint import save_checkpoint

        save_checkpoint(t / "1" / "model.pt", source, getattr(source, "metadata", None) or {})
    (t / "config.pbtxt").write_text(
        render_config(io, model_name=names["tensor"], max_batch_size=max_batch_size,
                      max_queue_delay_us=max_queue_delay_us, instance_count=instance_count, synthetic=synthetic,
                      template="python_model.pbtxt.in", instance_kind="KIND_CPU", threads="0",
                      trt_model_name=names["tensorrt"]), encoding="utf-8")
    (t / "1" / "model.py").write_text(render_model_py(names["tensor"], "TensorModel"), encoding="utf-8")
    pre = tmp / names["preprocess"]
    (pre / "1").mkdir(parents=True)
    (pre / "config.pbtxt").write_text(
        render_preprocess_config(io, model_name=names["preprocess"], tensor_model_name=names["tensor"],
                                 case_model_name=names["case"], instance_count=instance_count, synthetic=synthetic),
        encoding="utf-8")
    (pre / "1" / "model.py").write_text(render_model_py(names["preprocess"], "PreprocessModel"), encoding="utf-8")
    case = tmp / names["case"]
    (case / "1").mkdir(parents=True)  # an ensemble needs an (empty) version folder
    (case / "config.pbtxt").write_text(
        render_ensemble_config(io, model_name=names["case"], preprocess_model_name=names["preprocess"],
                               tensor_model_name=names["tensor"], synthetic=synthetic), encoding="utf-8")


def export_triton_repository(source: Any, out_dir: str | os.PathLike[str], max_batch_size: int = 8, *,
                             batch: int | str = "dynamic", precision: str = "fp32", model_name: str = "cmir",
                             plugin_library: str | os.PathLike[str] | None = None, build: bool | str = "auto",
                             max_queue_delay_us: int = 100, instance_count: int = 1,
                             workspace_mib: int | None = None, tensorrt: bool = True, verbose: bool = False) -> Path:
    """Write a Triton model repository for `source` (checkpoint, onnx-trt .onnx, or engine) to `out_dir`.

    `batch`: an integer sets max_batch_size (the export CLI's --batch); "dynamic" keeps `max_batch_size`.
    `build`: "auto" builds the TensorRT engine when TensorRT is installed here, True requires it, False never builds.
    A checkpoint source also gives the Python-backend models (see the module docstring); `tensorrt=False` then
    leaves out the TensorRT model (no ONNX export: a CPU-only repository). Returns `out_dir`.
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
    names = model_names(model_name)
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
    if not tensorrt and kind not in ("checkpoint", "model"):
        raise TritonExportError("tensorrt=False needs a checkpoint source: an ONNX graph or an engine only gives the "
                                "TensorRT model")

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
        os.chmod(tmp, public_dir_mode())  # mkdtemp's 0700 would become the repository's own mode after the rename
        mdir = tmp / names["tensorrt"]
        (mdir / "1").mkdir(parents=True)
        sidecar: dict[str, Any]
        plan_status = "Not part of this repository (exported without the TensorRT model)."
        if not tensorrt:
            shutil.rmtree(mdir)
            sidecar = _checkpoint_io(source)
        elif kind == "engine":
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
                plan_status = f"**Not built yet** ({why}): `{names['tensorrt']}/1/` is empty; build it as shown below."
        synthetic = sidecar.get("synthetic_training_data") if "synthetic_training_data" in sidecar else None
        io = {"inputs": sidecar.get("inputs"), "outputs": sidecar.get("outputs")}
        if tensorrt:
            (mdir / "config.pbtxt").write_text(
                render_config(io, model_name=names["tensorrt"], max_batch_size=max_batch_size,
                              max_queue_delay_us=max_queue_delay_us, instance_count=instance_count,
                              synthetic=synthetic), encoding="utf-8")
        python_models = kind in ("checkpoint", "model")
        if python_models:
            _write_python_models(tmp, names, source, io, max_batch_size, max_queue_delay_us, instance_count,
                                 synthetic)
        if lib is not None and tensorrt:
            (mdir / "plugins").mkdir()
            shutil.copy2(lib, mdir / "plugins" / lib.name)
        builder = _standalone_builder() if tensorrt else None
        if builder is not None:
            shutil.copyfile(builder, tmp / "build_engine.py")
        (tmp / "README.md").write_text(_readme(names, max_batch_size, plan_status, str(lib) if lib else None,
                                               synthetic, python_models, tensorrt), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"model_name": model_name, "models": names,
                                              "python_models": python_models, "max_batch_size": max_batch_size,
                                              "source_kind": kind, "tensorrt_model": tensorrt,
                                              "plan_built": (mdir / "1" / "model.plan").is_file(),
                                              "plugin_library": lib is not None and tensorrt}, indent=2) + "\n",
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

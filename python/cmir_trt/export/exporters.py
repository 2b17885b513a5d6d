"""checkpoint -> TorchScript / ONNX (standard ops) / ONNX (custom ops for TensorRT), each with its sidecar.

All writes go to a temporary file in the target folder and are renamed into place, so an interrupted export never
leaves a half-written artefact behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_target
from ..model.checkpoint import load_checkpoint
from ..model.cmir import CMIR
from ..model.resnet import STAGE_BLOCKS
from .graph import exportable_model, reference_model
from .schema import CMAM_PLUGIN, INVOLUTION_PLUGIN, load_schema
from .sidecar import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAMES,
    build_sidecar,
    embedded_summary,
    sidecar_path,
    write_json_atomic,
)

DEFAULT_OPSET = 18
MAX_DYNAMIC_BATCH = 4096


def parse_batch(batch: int | str) -> int | str:
    """'dynamic' or a positive int (strings of digits accepted)."""
    if isinstance(batch, str):
        if batch == "dynamic":
            return batch
        if batch.isdigit():
            batch = int(batch)
        else:
            raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return batch


def example_inputs(model: CMIR, batch: int, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return (torch.randn(batch, cfg.in_channels, s, s, generator=g, dtype=dtype),
            torch.randn(batch, cfg.in_channels, s, s, generator=g, dtype=dtype),
            torch.randn(batch, cfg.num_clinical, generator=g, dtype=dtype))


def expected_custom_counts(model: CMIR) -> dict[str, int]:
    """How many custom nodes of each plugin the onnx-trt form of `model` has."""
    cfg = model.config
    phases = 2 if cfg.two_phase else 1
    inv = phases * (1 + sum(STAGE_BLOCKS[cfg.depth])) if cfg.involution else 0
    cmam = 1 if cfg.use_cmam and cfg.two_phase else 0
    return {k: v for k, v in ((CMAM_PLUGIN, cmam), (INVOLUTION_PLUGIN, inv)) if v}


_atomic_target = atomic_target  # temp file beside the output, ordinary permissions, renamed when complete


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The exporters print progress and warn about tracing details; keep the CLI output to what matters."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        import logging

        levels = {}
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
                     "onnxscript", "torch.onnx._internal.exporter._registration"):
            lg = logging.getLogger(name)
            levels[name] = lg.level
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, lvl in levels.items():
                logging.getLogger(name).setLevel(lvl)


def _write_sidecar(out: Path, model: CMIR, fmt: str, batch: int | str, precision: str, checkpoint: Path | None,
                   extra: dict[str, Any] | None = None) -> Path:
    sc = build_sidecar(artifact=out, fmt=fmt, config=model.config.to_dict(),
                       metadata=dict(getattr(model, "metadata", {}) or {}),
                       checkpoint_sha256=str(getattr(model, "checkpoint_sha256", "")),
                       checkpoint_name=checkpoint.name if checkpoint else "", batch=batch, precision=precision,
                       extra=extra)
    sp = sidecar_path(out)
    write_json_atomic(sp, sc)
    return sp


def _summary(model: CMIR, fmt: str, batch: int | str, precision: str) -> str:
    return json.dumps(embedded_summary(model.config.to_dict(), str(getattr(model, "checkpoint_sha256", "")), fmt,
                                       batch, precision), sort_keys=True)


def export_torchscript(model: CMIR, out: str | os.PathLike[str], batch: int | str = "dynamic",
                       precision: str = "fp32", checkpoint: Path | None = None, verbose: bool = False) -> Path:
    """A traced module that `torch.jit.load` reads without cmir_trt; returns (logit, probability, heatmap).

    Traced (not scripted) from the reference forward pass itself, so it is the checkpoint's exact arithmetic; the
    batch dimension stays symbolic because the model reads sizes from its inputs.
    """
    if precision != "fp32":
        raise ValueError("TorchScript export is fp32 only (fp16 graphs are an ONNX feature here; cast inside "
                         "TensorRT or run the torch backend with autocast)")
    batch = parse_batch(batch)
    out = Path(out)
    wrapped = reference_model(model)
    example = example_inputs(model, 2 if batch == "dynamic" else int(batch))
    with _quiet(verbose), torch.no_grad():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
    with _atomic_target(out, ".pt") as tmp, _quiet(verbose):
        torch.jit.save(traced, str(tmp), _extra_files={METADATA_KEY: _summary(model, "torchscript", batch,
                                                                               precision)})
    _write_sidecar(out, model, "torchscript", batch, precision, checkpoint)
    return out


def export_onnx(model: CMIR, out: str | os.PathLike[str], form: str = "standard", batch: int | str = "dynamic",
                precision: str = "fp32", checkpoint: Path | None = None, opset: int = DEFAULT_OPSET,
                verbose: bool = False) -> Path:
    """ONNX through the dynamo exporter; `form` "standard" (any runtime) or "custom" (TensorRT plugin nodes)."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    batch = parse_batch(batch)
    out = Path(out)
    fmt = "onnx" if form == "standard" else "onnx-trt"
    exportable = exportable_model(model, form, precision)
    example = example_inputs(model, 2 if batch == "dynamic" else int(batch))
    dynamic_shapes = None
    if batch == "dynamic":
        dim = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic_shapes = {"art": {0: dim}, "pv": {0: dim}, "clinical": {0: dim}}
    with _quiet(verbose), torch.no_grad():
        try:
            program = torch.onnx.export(exportable, example, dynamo=True, input_names=list(INPUT_NAMES),
                                        output_names=list(OUTPUT_NAMES), opset_version=opset,
                                        dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
        except ImportError:
            raise  # onnx / onnxscript missing: the caller reports the package, not an export bug
        except Exception as exc:
            raise RuntimeError(f"ONNX export ({fmt}, {precision}) failed: {type(exc).__name__}: {exc}") from exc
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    _finalise_io(proto, batch)
    meta = proto.metadata_props.add()
    meta.key, meta.value = METADATA_KEY, _summary(model, fmt, batch, precision)
    extra: dict[str, Any] = {"onnx": {"opset": opset, "ir_version": int(proto.ir_version)}}
    if form == "custom":
        from .trt_graph import check_custom_graph

        schema = load_schema()
        counts = check_custom_graph(proto, schema, expected_custom_counts(model))
        extra["custom_ops"] = {"domain": schema.domain, "namespace": schema.namespace,
                               "schema_version": schema.schema_version, "counts": counts,
                               "plugins": {n: schema[n].version for n in counts}}
    onnx.checker.check_model(proto, full_check=False)
    with _atomic_target(out, ".onnx") as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    _write_sidecar(out, model, fmt, batch, precision, checkpoint, extra)
    return out


def _finalise_io(proto: Any, batch: int | str) -> None:
    """Name the batch dimension "batch" on every graph input/output (the exporter names only the inputs)."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if batch == "dynamic" and len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    names = [v.name for v in proto.graph.input]
    if names != list(INPUT_NAMES):
        raise RuntimeError(f"exported graph has inputs {names}, expected {list(INPUT_NAMES)} (an input the model "
                           f"does not use may have been dropped)")
    outs = [v.name for v in proto.graph.output]
    if outs != list(OUTPUT_NAMES):
        raise RuntimeError(f"exported graph has outputs {outs}, expected {list(OUTPUT_NAMES)}")


FORMATS = ("torchscript", "onnx", "onnx-trt", "plan", "triton")


def export_model(checkpoint: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str],
                 batch: int | str = "dynamic", precision: str = "fp32", opset: int = DEFAULT_OPSET,
                 verbose: bool = False) -> Path:
    """Export `checkpoint` to `fmt` at `out` (+ `out`.json sidecar); returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    batch = parse_batch(batch)
    ckpt = Path(checkpoint)
    if fmt in ("plan", "triton"):
        return _export_delegated(ckpt, fmt, Path(out), batch, precision)
    model = load_checkpoint(ckpt)
    if fmt == "torchscript":
        return export_torchscript(model, out, batch, precision, ckpt, verbose)
    return export_onnx(model, out, "standard" if fmt == "onnx" else "custom", batch, precision, ckpt, opset,
                       verbose)


def _export_delegated(ckpt: Path, fmt: str, out: Path, batch: int | str, precision: str) -> Path:
    """plan -> cmir_trt.export.plan.export_plan, triton -> cmir_trt.export.triton.export_triton_repository.

    Those modules belong to the native-engine and TensorRT parts; they are imported lazily and called with the
    keyword arguments they accept. A sidecar is added unless the helper wrote one itself.
    """
    import importlib
    import inspect

    mod_name, fn_name = (("plan", "export_plan") if fmt == "plan" else ("triton", "export_triton_repository"))
    try:
        mod = importlib.import_module(f"{__package__}.{mod_name}")
        fn = getattr(mod, fn_name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"--format {fmt} is not available in this build: cmir_trt.export.{mod_name}."
                           f"{fn_name} could not be loaded ({exc})") from exc
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    if "precision" in params:
        kwargs["precision"] = precision
    elif precision != "fp32":
        raise ValueError(f"--format {fmt} does not take --precision {precision} (the {fmt} writer is fp32 only)")
    if "batch" in params:
        kwargs["batch"] = batch
    if "validate_precisions" in params:  # a plan records which engine precisions passed a parity check
        kwargs["validate_precisions"] = ("fp32", "bf16")
    else:
        batch = "dynamic"  # the writer takes no batch: its artefact serves any batch size
    result = fn(ckpt, out, **kwargs)
    path = Path(result) if isinstance(result, (str, os.PathLike)) else out
    if not sidecar_path(path).exists():
        model = load_checkpoint(ckpt)
        _write_sidecar(path, model, fmt, batch, precision, ckpt)
    return path

"""Parity of every exported form against the checkpoint's PyTorch model (`cmir-trt validate`).

The backends are a small registry (`BACKENDS`, `register_backend`): each entry says how to prepare a runner from
the checkpoint (export the artefact, load it) or why it is unavailable here, and states its tolerances. A runner
maps float32 numpy (art, pv, clinical) to (logit, probability, heatmap). The reference is the checkpoint's model in
PyTorch fp32 eager mode on CPU.

Error measures, per backend and output, over all cases:
    max abs = max |y - y_ref|;  max rel = max |y - y_ref| / max |y_ref|  (norm-wise, so a logit near 0 does not
    inflate it);  decision flips = cases whose decision (probability >= threshold, or argmax for grading) differs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .sidecar import DEFAULT_THRESHOLD, OUTPUT_NAMES, write_json_atomic

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]
Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], Arrays]  # (art, pv, clinical) -> (logit, prob, heatmap)


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this machine/build; the message says why."""


@dataclass(frozen=True)
class Tolerance:
    """Bounds per output: ("abs" | "rel", bound); an output without a bound is reported only."""

    bounds: dict[str, tuple[str, float]]
    flips_random: bool = False  # may the decision flip on random inputs (fp16 near the threshold)?
    flips_cases: bool = False   # ... on real (cohort) cases?
    # Also bounded relative to another backend's error on the same inputs (flash-attention's rule for low
    # precision): max abs <= relative_factor * that backend's max abs + relative_floor, per bounded output.
    relative_to: str | None = None
    relative_factor: float = 2.0
    relative_floor: float = 1e-4

    def describe(self, output: str) -> str:
        if output not in self.bounds:
            return "reported"
        kind, bound = self.bounds[output]
        return f"{kind} <= {bound:g}"


@dataclass
class ValidationContext:
    checkpoint: Path
    workdir: Path
    model: Any                     # the reference CMIR (torch), eval
    config: dict[str, Any]
    threshold: float
    verbose: bool = False
    artifacts: dict[str, Path] = field(default_factory=dict)

    def export(self, fmt: str, precision: str = "fp32") -> Path:
        """Export once per (format, precision) into the work folder (dynamic batch)."""
        key = f"{fmt}-{precision}"
        if key not in self.artifacts:
            from .exporters import export_model

            suffix = {"torchscript": ".ts.pt", "onnx": ".onnx", "onnx-trt": ".trt.onnx", "plan": ".plan"}[fmt]
            out = self.workdir / f"model-{precision}{suffix}"
            self.artifacts[key] = export_model(self.checkpoint, fmt, out, batch="dynamic", precision=precision,
                                               verbose=self.verbose)
        return self.artifacts[key]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    tolerance: Tolerance
    prepare: Callable[[ValidationContext], Runner]  # raises BackendUnavailable with the reason


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend row of the parity table."""
    BACKENDS[backend.name] = backend
    return backend


FP32 = Tolerance({"probability": ("abs", 1e-5), "logit": ("rel", 1e-4), "heatmap": ("abs", 1e-4)})
FP16 = Tolerance({"probability": ("abs", 1e-2), "heatmap": ("abs", 5e-2)}, flips_random=True, flips_cases=False)
# bf16 (8-bit mantissa): the fp16 bounds, no flip on cohort cases, and within 2x PyTorch's own bf16 error (autocast).
BF16 = Tolerance({"probability": ("abs", 1e-2), "heatmap": ("abs", 5e-2)}, flips_random=True, flips_cases=False,
                 relative_to="torch-bf16")
REPORTED = Tolerance({}, flips_random=True, flips_cases=True)


def _ort_runner(path: Path, model_proto: Any | None = None) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model_proto.SerializeToString() if model_proto is not None else str(path)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])

    def run(art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> Arrays:
        out = sess.run(list(OUTPUT_NAMES), {"art": art, "pv": pv, "clinical": clinical})
        return out[0], out[1], out[2]

    return run


def _prepare_torchscript(ctx: ValidationContext) -> Runner:
    import torch

    from .sidecar import load_torchscript_checked

    module = load_torchscript_checked(ctx.export("torchscript"))

    def run(art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> Arrays:
        with torch.no_grad():
            out = module(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
        return out[0].numpy(), out[1].numpy(), out[2].numpy()

    return run


def _prepare_onnx(precision: str) -> Callable[[ValidationContext], Runner]:
    def prepare(ctx: ValidationContext) -> Runner:
        from .sidecar import load_onnx_checked

        path = ctx.export("onnx", precision)
        load_onnx_checked(path)
        return _ort_runner(path)

    return prepare


def _prepare_onnx_trt_expanded(precision: str) -> Callable[[ValidationContext], Runner]:
    def prepare(ctx: ValidationContext) -> Runner:
        from .sidecar import load_onnx_checked
        from .trt_graph import expand_custom_nodes

        path = ctx.export("onnx-trt", precision)
        proto = load_onnx_checked(path)  # includes the custom-node structure check against the schema
        return _ort_runner(path, expand_custom_nodes(proto))

    return prepare


def _engine_runner(engine: Any) -> Runner:
    def run(art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> Arrays:
        pred = engine.predict(art, pv, clinical)
        return (np.asarray(_to_numpy(pred.logit)), np.asarray(_to_numpy(pred.probability)),
                np.asarray(_to_numpy(pred.heatmap)))

    return run


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "get"):  # cupy
        return x.get()
    return np.asarray(x)


def _engine(path: Path, **kwargs: Any) -> Any:
    try:
        import cmir_trt

        return cmir_trt.Engine(str(path), **kwargs)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        raise BackendUnavailable(f"cmir_trt.Engine({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) is not "
                                 f"available: {exc}") from exc


def _prepare_tensorrt(precision: str) -> Callable[[ValidationContext], Runner]:
    def prepare(ctx: ValidationContext) -> Runner:
        try:
            from .. import tensorrt as trt_backend
        except ImportError as exc:
            raise BackendUnavailable(f"cmir_trt.tensorrt could not be imported: {exc}") from exc
        version = trt_backend.tensorrt_version()
        if version is None:
            raise BackendUnavailable("TensorRT is not installed here; the onnx-trt graph was checked against the "
                                     "plugin schema and run through the schema expansion instead")
        reason = _cuda_reason()
        if reason is not None:
            raise BackendUnavailable(f"TensorRT {version} needs a GPU: {reason}")
        path = ctx.export("onnx-trt", precision)
        try:
            return _engine_runner(_engine(path, device="cuda", backend="tensorrt"))
        except (RuntimeError, OSError, ValueError) as exc:
            raise BackendUnavailable(f"TensorRT {version} could not build/run the onnx-trt graph: {exc}") from exc

    return prepare


def _prepare_native(ctx: ValidationContext) -> Runner:
    try:
        from . import plan as _plan  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"the plan writer (cmir_trt.export.plan) is not available: {exc}") from exc
    try:
        from .._native import load_core

        load_core()
    except ImportError as exc:
        raise BackendUnavailable(f"the native core is not built: {exc}") from exc
    path = ctx.export("plan")
    try:
        return _engine_runner(_engine(path, backend="native"))
    except (RuntimeError, ValueError) as exc:
        raise BackendUnavailable(f"the native engine could not load the plan: {exc}") from exc


def _prepare_native_bf16(ctx: ValidationContext) -> Runner:
    try:
        from .._native import load_core

        core = load_core()
    except ImportError as exc:
        raise BackendUnavailable(f"the native core is not built: {exc}") from exc
    ok, why = core.bf16_supported() if hasattr(core, "bf16_supported") else (False, "this build has no bf16 engine")
    if not ok:
        raise BackendUnavailable(why)
    path = ctx.export("plan")
    try:
        return _engine_runner(_engine(path, backend="native", precision="bf16"))
    except (RuntimeError, ValueError) as exc:
        raise BackendUnavailable(f"the native engine could not load the plan in bf16: {exc}") from exc


def _prepare_torch_bf16(ctx: ValidationContext) -> Runner:
    """The checkpoint model under torch.autocast("cpu", bfloat16): PyTorch's own bf16 error on the same inputs."""
    import torch

    model = ctx.model

    def run(art: np.ndarray, pv: np.ndarray, clinical: np.ndarray) -> Arrays:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            o = model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
        return tuple(t.float().numpy() for t in (o.logit, o.probability, o.heatmap))  # type: ignore[return-value]

    return run


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch on this machine"
    return None


def _prepare_cuda(ctx: ValidationContext) -> Runner:
    reason = _cuda_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    try:
        return _engine_runner(_engine(ctx.checkpoint, device="cuda", backend="torch"))
    except (RuntimeError, ValueError) as exc:
        raise BackendUnavailable(f"the CUDA torch backend could not start: {exc}") from exc


register_backend(Backend("torchscript", "TorchScript (torch.jit.load), CPU",
                         Tolerance({"probability": ("abs", 1e-6), "logit": ("rel", 1e-5), "heatmap": ("abs", 1e-5)}),
                         _prepare_torchscript))
register_backend(Backend("onnxruntime-fp32", "standard-op ONNX, ONNX Runtime CPU, fp32", FP32, _prepare_onnx("fp32")))
register_backend(Backend("onnxruntime-fp16", "standard-op ONNX, ONNX Runtime CPU, fp16 weights/activations", FP16,
                         _prepare_onnx("fp16")))
register_backend(Backend("onnx-trt-expanded-fp32",
                         "onnx-trt graph, custom nodes checked against the schema and expanded to standard ops "
                         "(ONNX Runtime CPU)", FP32, _prepare_onnx_trt_expanded("fp32")))
register_backend(Backend("onnx-trt-expanded-fp16", "onnx-trt fp16 graph, custom nodes expanded (ONNX Runtime CPU)",
                         FP16, _prepare_onnx_trt_expanded("fp16")))
# TensorRT may run fp32 convolutions in TF32 and reorders reductions: GPU fp32 bounds, not the CPU ones.
GPU_FP32 = Tolerance({"probability": ("abs", 1e-4), "logit": ("rel", 1e-3), "heatmap": ("abs", 1e-3)})
register_backend(Backend("onnx-trt-tensorrt", "onnx-trt graph built by TensorRT with the cmir plugins, fp32",
                         GPU_FP32, _prepare_tensorrt("fp32")))
register_backend(Backend("onnx-trt-tensorrt-fp16", "onnx-trt fp16 graph built by TensorRT with the cmir plugins",
                         FP16, _prepare_tensorrt("fp16")))
register_backend(Backend("native", "native C++ engine on the plan (cmir_trt.Engine, backend='native')", FP32,
                         _prepare_native))
register_backend(Backend("native-bf16", "native C++ engine on the plan in bf16 (Engine(..., precision='bf16'); CPUs "
                         "with avx512_bf16/AMX)", BF16, _prepare_native_bf16))
register_backend(Backend("torch-bf16", "PyTorch CPU autocast bf16 (the yardstick of the bf16 error; reported)",
                         REPORTED, _prepare_torch_bf16))
register_backend(Backend("cuda", "PyTorch on the GPU (cmir_trt.Engine, device='cuda', backend='torch')", GPU_FP32,
                         _prepare_cuda))


# ----------------------------------------------------------------------------------------------------- inputs

@dataclass
class InputSet:
    name: str                      # "random" | "cases"
    batches: list[Arrays]
    case_ids: list[str]
    synthetic: bool
    note: str = ""

    @property
    def count(self) -> int:
        return sum(b[0].shape[0] for b in self.batches)


def random_inputs(config: dict[str, Any], seed: int = 0, batch_sizes: Sequence[int] = (1, 3, 4)) -> InputSet:
    """Seeded standard-normal images and clinical vectors (synthetic), in batches of the given sizes."""
    rng = np.random.default_rng(seed)
    s, cin, f = int(config["image_size"]), int(config.get("in_channels", 3)), int(config.get("num_clinical", 8))
    batches = []
    for b in batch_sizes:
        batches.append((rng.standard_normal((b, cin, s, s), dtype=np.float32),
                        rng.standard_normal((b, cin, s, s), dtype=np.float32),
                        rng.standard_normal((b, f), dtype=np.float32)))
    ids = [f"random-{i}" for i in range(sum(batch_sizes))]
    return InputSet("random", batches, ids, synthetic=True, note=f"seeded N(0,1) inputs, seed {seed}")


def cohort_inputs(data_dir: str | os.PathLike[str], config: dict[str, Any], metadata: dict[str, Any],
                  max_cases: int = 16, batch: int = 4) -> InputSet:
    """Preprocessed cases of a cohort folder (cmir_trt.data.load_cohort), clinical data normalised with the schema
    stored in the checkpoint (or, failing that, fitted on these cases, which the note says)."""
    from ..data import ClinicalSchema, PreprocessParams, load_cohort

    pre = metadata.get("preprocess")
    params = PreprocessParams.from_dict(pre) if isinstance(pre, dict) else PreprocessParams(
        image_size=int(config["image_size"]))
    if params.image_size != int(config["image_size"]):
        raise ValueError(f"checkpoint preprocessing makes {params.image_size}² inputs, the model takes "
                         f"{config['image_size']}²")
    cs = metadata.get("clinical_schema")
    schema = ClinicalSchema.from_dict(cs) if isinstance(cs, dict) else ClinicalSchema()
    cohort = load_cohort(data_dir, params, schema=schema)
    if len(cohort) == 0:
        raise ValueError(f"cohort {data_dir} has no cases")
    n = min(len(cohort), max_cases)
    idx = np.arange(n)
    note = f"{n} of {len(cohort)} cases of {data_dir}"
    if schema.fitted:
        clinical = schema.normalise(cohort.clinical_raw[idx], list(cohort.case_ids[idx]))
    else:
        fitted = ClinicalSchema.from_dict(schema.to_dict()).fit(cohort.clinical_raw)
        clinical = fitted.normalise(cohort.clinical_raw[idx])
        note += "; clinical normalised with this cohort's own statistics (the checkpoint stores none)"
    f = int(config.get("num_clinical", 8))
    if clinical.shape[1] != f:
        raise ValueError(f"the cohort's clinical schema has {clinical.shape[1]} features, the model takes {f}")
    batches = []
    for i in range(0, n, batch):
        j = slice(i, min(i + batch, n))
        batches.append((np.ascontiguousarray(cohort.art[idx][j], dtype=np.float32),
                        np.ascontiguousarray(cohort.pv[idx][j], dtype=np.float32),
                        np.ascontiguousarray(clinical[j], dtype=np.float32)))
    return InputSet("cases", batches, [str(c) for c in cohort.case_ids[idx]], synthetic=bool(cohort.synthetic),
                    note=note)


# ----------------------------------------------------------------------------------------------------- parity

def decisions(probability: np.ndarray, threshold: float) -> np.ndarray:
    p = np.asarray(probability)
    if p.ndim == 2 and p.shape[1] > 1:
        return p.argmax(axis=1)
    return (p.reshape(p.shape[0], -1)[:, 0] >= threshold).astype(np.int64)


def reference_outputs(model: Any, batches: list[Arrays]) -> list[Arrays]:
    import torch

    outs = []
    with torch.no_grad():
        for art, pv, clinical in batches:
            o = model(torch.from_numpy(art), torch.from_numpy(pv), torch.from_numpy(clinical))
            outs.append((o.logit.numpy(), o.probability.numpy(), o.heatmap.numpy()))
    return outs


@dataclass
class _Acc:
    max_abs: float = 0.0
    ref_max: float = 0.0
    non_finite: int = 0


def compare(backend: Backend, runner: Runner, sets: list[tuple[InputSet, list[Arrays]]],
            threshold: float) -> dict[str, Any]:
    acc = {k: _Acc() for k in OUTPUT_NAMES}
    flips: dict[str, int] = {}
    flipped_cases: list[str] = []
    # A flip of a case whose reference probability lies within the row's probability bound of the threshold is the
    # bounded error seen through the threshold ("borderline"): reported, and not a failure for low-precision rows
    # whose tolerance bounds the probability (fp16/bf16: 1e-2); any other flip is judged by flips_random/flips_cases.
    pbound = backend.tolerance.bounds.get("probability")
    band = pbound[1] if pbound is not None and pbound[0] == "abs" and pbound[1] >= 1e-3 else 0.0
    hard: dict[str, int] = {}
    borderline: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for inputs, refs in sets:
        flips[inputs.name] = 0
        hard[inputs.name] = 0
        k = 0
        for batch, ref in zip(inputs.batches, refs, strict=True):
            got = runner(*batch)
            if len(got) != len(OUTPUT_NAMES):
                raise ValueError(f"{backend.name}: runner returned {len(got)} outputs, expected {OUTPUT_NAMES}")
            for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=False):
                g = np.asarray(g, dtype=np.float64)
                r = np.asarray(r, dtype=np.float64)
                if g.shape != r.shape:
                    raise ValueError(f"{backend.name}: output {name!r} has shape {g.shape}, reference {r.shape}")
                a = acc[name]
                a.non_finite += int((~np.isfinite(g)).sum())
                a.max_abs = max(a.max_abs, float(np.nan_to_num(np.abs(g - r), nan=np.inf).max(initial=0.0)))
                a.ref_max = max(a.ref_max, float(np.abs(r).max(initial=0.0)))
            d_ref, d_got = decisions(ref[1], threshold), decisions(got[1], threshold)
            for i in np.flatnonzero(d_ref != d_got):
                flips[inputs.name] += 1
                flipped_cases.append(inputs.case_ids[k + int(i)])
                pr = np.asarray(ref[1], dtype=np.float64).reshape(len(d_ref), -1)
                margin = abs(float(pr[i, 0]) - threshold) if pr.shape[1] == 1 else math.inf
                if margin <= band:
                    borderline.append({"case": inputs.case_ids[k + int(i)], "set": inputs.name,
                                       "reference_distance_to_threshold": margin})
                else:
                    hard[inputs.name] += 1
            k += batch[0].shape[0]
    outputs: dict[str, Any] = {}
    ok = True
    for name in OUTPUT_NAMES:
        a = acc[name]
        rel = a.max_abs / a.ref_max if a.ref_max > 0 else (0.0 if a.max_abs == 0 else math.inf)
        bound = backend.tolerance.bounds.get(name)
        within = None
        if bound is not None:
            within = (a.max_abs if bound[0] == "abs" else rel) <= bound[1] and a.non_finite == 0
            ok = ok and within
        outputs[name] = {"max_abs": a.max_abs, "max_rel": rel, "non_finite": a.non_finite,
                         "tolerance": backend.tolerance.describe(name), "within_tolerance": within}
    flips_ok = ((hard.get("random", 0) == 0 or backend.tolerance.flips_random)
                and (hard.get("cases", 0) == 0 or backend.tolerance.flips_cases))
    return {"name": backend.name, "description": backend.description, "status": "ran", "outputs": outputs,
            "decision_flips": flips, "flipped_cases": flipped_cases[:20],
            "borderline_flips": borderline[:20], "borderline_band": band, "flips_allowed": {
                "random": backend.tolerance.flips_random, "cases": backend.tolerance.flips_cases},
            "within_tolerance": bool(ok and flips_ok), "seconds": round(time.perf_counter() - t0, 3)}


def validate_checkpoint(checkpoint: str | os.PathLike[str], workdir: str | os.PathLike[str],
                        data_dir: str | os.PathLike[str] | None = None, backends: Sequence[str] | None = None,
                        seed: int = 0, max_cases: int = 16, verbose: bool = False,
                        log: Callable[[str], None] | None = None, cases_note: str | None = None) -> dict[str, Any]:
    """Run the parity check; returns the report dict (also what `write_report` writes)."""
    from ..model.checkpoint import load_checkpoint

    log = log or (lambda _msg: None)
    names = list(backends) if backends else list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    checkpoint = Path(checkpoint)
    model = load_checkpoint(checkpoint)
    metadata = dict(getattr(model, "metadata", {}) or {})
    thr = metadata.get("threshold")
    threshold = float(thr) if isinstance(thr, (int, float)) and math.isfinite(thr) else DEFAULT_THRESHOLD
    config = model.config.to_dict()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = ValidationContext(checkpoint, workdir, model, config, threshold, verbose)

    input_sets = [random_inputs(config, seed)]
    cases_note = cases_note or "no cohort given (--data DIR)"
    if data_dir is not None:
        cs = cohort_inputs(data_dir, config, metadata, max_cases=max_cases)
        input_sets.append(cs)
        cases_note = cs.note
    sets = [(s, reference_outputs(model, s.batches)) for s in input_sets]
    training = metadata.get("training_data")
    report: dict[str, Any] = {
        "checkpoint": {"file": checkpoint.name, "sha256": getattr(model, "checkpoint_sha256", None),
                       "variant": config["variant"], "image_size": config["image_size"]},
        "synthetic_training_data": training.get("synthetic") if isinstance(training, dict) else None,
        "reference": "checkpoint model, PyTorch fp32 eager, CPU",
        "threshold": threshold,
        "inputs": [{"name": s.name, "cases": s.count, "synthetic": s.synthetic, "note": s.note}
                   for s in input_sets],
        "cases_note": cases_note,
        "error_measures": "max_abs = max|y - ref|; max_rel = max|y - ref| / max|ref| (norm-wise); decision flips "
                          "= cases whose decision differs from the reference's",
        "backends": [],
    }
    for name in names:
        backend = BACKENDS[name]
        log(f"validate: {name} ...")
        try:
            runner = backend.prepare(ctx)
        except (BackendUnavailable, ImportError) as exc:  # ImportError: an optional package (onnx, ...) is absent
            reason = str(exc) if isinstance(exc, BackendUnavailable) else f"missing package: {exc}"
            report["backends"].append({"name": name, "description": backend.description, "status": "unavailable",
                                       "reason": reason, "within_tolerance": None})
            continue
        except Exception as exc:  # an export or load failure is a failed row, not a crash of the whole table
            report["backends"].append({"name": name, "description": backend.description, "status": "failed",
                                       "reason": f"{type(exc).__name__}: {exc}", "within_tolerance": False})
            continue
        try:
            report["backends"].append(compare(backend, runner, sets, threshold))
        except Exception as exc:
            report["backends"].append({"name": name, "description": backend.description, "status": "failed",
                                       "reason": f"{type(exc).__name__}: {exc}", "within_tolerance": False})
    _relative_checks(report, ctx, sets, threshold, log)
    ran = [b for b in report["backends"] if b["status"] != "unavailable"]
    report["all_available_within_tolerance"] = bool(ran) and all(b["within_tolerance"] for b in ran)
    report["artifacts"] = {k: str(v) for k, v in ctx.artifacts.items()}
    return report


def _relative_checks(report: dict[str, Any], ctx: ValidationContext, sets: list[tuple[InputSet, list[Arrays]]],
                     threshold: float, log: Callable[[str], None]) -> None:
    """Rows whose tolerance is also relative to another backend's error: that backend is run too when it is not a row
    of the table, and the row fails when an output's error exceeds factor x the other's + floor."""
    rows = {b["name"]: b for b in report["backends"]}
    for row in report["backends"]:
        tol = BACKENDS[row["name"]].tolerance
        if row["status"] != "ran" or tol.relative_to is None:
            continue
        other = rows.get(tol.relative_to)
        if other is None:
            log(f"validate: {tol.relative_to} (yardstick of {row['name']}) ...")
            try:
                ob = BACKENDS[tol.relative_to]
                other = compare(ob, ob.prepare(ctx), sets, threshold)
            except Exception as exc:  # noqa: BLE001 - reported in the row, which then cannot be called within
                other = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        if other.get("status") != "ran":
            row["relative_check"] = {"to": tol.relative_to, "checked": False,
                                     "reason": other.get("reason", "not run")}
            continue
        outs, ok = {}, True
        for name in tol.bounds:
            ours, theirs = row["outputs"][name]["max_abs"], other["outputs"][name]["max_abs"]
            bound = tol.relative_factor * theirs + tol.relative_floor
            outs[name] = {"max_abs": ours, "yardstick_max_abs": theirs, "bound": bound, "within": ours <= bound}
            ok = ok and ours <= bound
        row["relative_check"] = {"to": tol.relative_to, "checked": True, "factor": tol.relative_factor,
                                 "floor": tol.relative_floor, "outputs": outs, "within": ok}
        row["within_tolerance"] = bool(row["within_tolerance"] and ok)


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def _label(report: dict[str, Any]) -> str:
    parts = []
    for s in report["inputs"]:
        parts.append(f"{s['cases']} {s['name']} ({'synthetic' if s['synthetic'] else 'real'})")
    syn = report.get("synthetic_training_data")
    trained = {True: "model trained on synthetic data", False: "model trained on real data"}.get(
        syn, "training data unknown")
    return f"inputs: {', '.join(parts)}; {trained}"


def format_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Export parity: {report['checkpoint']['file']} ({report['checkpoint']['variant']})", "",
             f"Reference: {report['reference']}. {_label(report)}. Decision threshold {report['threshold']:g}.",
             f"Cases: {report['cases_note']}.", "", f"Errors: {report['error_measures']}.", "",
             "| backend | output | max abs | max rel | tolerance | flips random / cases | within tolerance |",
             "|---|---|---|---|---|---|---|"]
    for b in report["backends"]:
        if b["status"] != "ran":
            lines.append(f"| {b['name']} | — | — | — | — | — | {b['status']}: {b['reason']} |")
            continue
        fl = b["decision_flips"]
        flips = f"{fl.get('random', 0)} / {fl['cases'] if 'cases' in fl else '—'}"
        for i, name in enumerate(OUTPUT_NAMES):
            o = b["outputs"][name]
            w = {True: "yes", False: "**NO**", None: "—"}[o["within_tolerance"]]
            lines.append(f"| {b['name'] if i == 0 else ''} | {name} | {_fmt(o['max_abs'])} | {_fmt(o['max_rel'])} | "
                         f"{o['tolerance']} | {flips if i == 0 else ''} | {w} |")
    lines += ["", "Per backend:"]
    for b in report["backends"]:
        verdict_b = {True: "within tolerance", False: "OUT OF TOLERANCE", None: "unavailable"}[b["within_tolerance"]]
        if b["status"] == "failed":
            verdict_b = "FAILED"
        if b.get("borderline_flips"):
            verdict_b += (f"; borderline flips (reference within {b['borderline_band']:g} of the threshold, not "
                          "failures): " + ", ".join(f"{f['case']} ({f['reference_distance_to_threshold']:.1e})"
                                                    for f in b["borderline_flips"]))
        rc = b.get("relative_check")
        if rc and rc["checked"]:
            verdict_b += f"; error vs {rc['to']} (bound {rc['factor']:g}x its error + {rc['floor']:g}): " + ", ".join(
                f"{n} {_fmt(o['max_abs'])} vs {_fmt(o['yardstick_max_abs'])} {'ok' if o['within'] else 'EXCEEDED'}"
                for n, o in rc["outputs"].items())
        elif rc:
            verdict_b += f"; not checked against {rc['to']} ({rc['reason']})"
        lines.append(f"- {b['name']} ({b['description']}): {verdict_b}")
    verdict = "every available backend is within tolerance" if report["all_available_within_tolerance"] else \
        "SOME BACKEND IS OUT OF TOLERANCE OR FAILED"
    lines += ["", f"Result: {verdict}.", ""]
    return "\n".join(lines)


def format_text(report: dict[str, Any]) -> str:
    head = f"{'backend':<24} {'output':<12} {'max abs':>9} {'max rel':>9}  {'tolerance':<13} {'flips r/c':<9} ok"
    lines = [f"parity vs {report['reference']} - {_label(report)}", f"cases: {report['cases_note']}", head,
             "-" * len(head)]
    for b in report["backends"]:
        if b["status"] != "ran":
            lines.append(f"{b['name']:<24} {b['status'].upper()}: {b['reason']}")
            continue
        fl = b["decision_flips"]
        flips = f"{fl.get('random', 0)}/{fl['cases'] if 'cases' in fl else '-'}"
        for i, name in enumerate(OUTPUT_NAMES):
            o = b["outputs"][name]
            ok = {True: "yes", False: "NO", None: "-"}[o["within_tolerance"]]
            lines.append(f"{b['name'] if i == 0 else '':<24} {name:<12} {_fmt(o['max_abs']):>9} "
                         f"{_fmt(o['max_rel']):>9}  {o['tolerance']:<13} {flips if i == 0 else '':<9} {ok}")
        if b.get("borderline_flips"):
            lines.append(f"{'':<24} borderline flips (reference within {b['borderline_band']:g} of the threshold, "
                         "not failures): " + ", ".join(f"{f['case']} ({f['reference_distance_to_threshold']:.1e})"
                                                       for f in b["borderline_flips"]))
        rc = b.get("relative_check")
        if rc:
            lines.append(f"{'':<24} vs {rc['to']}: " + (
                "; ".join(f"{n} {_fmt(o['max_abs'])} <= {rc['factor']:g}x{_fmt(o['yardstick_max_abs'])}+"
                          f"{rc['floor']:g}: {'yes' if o['within'] else 'NO'}" for n, o in rc["outputs"].items())
                if rc["checked"] else f"not checked ({rc['reason']})"))
        if not b["within_tolerance"]:
            lines.append(f"{'':<24} -> out of tolerance (flipped cases: {b['flipped_cases']})")
    lines.append("result: " + ("every available backend is within tolerance"
                               if report["all_available_within_tolerance"]
                               else "SOME BACKEND IS OUT OF TOLERANCE OR FAILED"))
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    out = Path(out_dir)
    jp, mp = out / "parity.json", out / "parity.md"
    write_json_atomic(jp, report)
    from .._io import atomic_write_text

    atomic_write_text(mp, format_markdown(report))
    return jp, mp


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "InputSet", "Tolerance", "ValidationContext", "cohort_inputs",
           "compare", "decisions", "format_markdown", "format_text", "random_inputs", "register_backend",
           "validate_checkpoint", "write_report"]

"""`cmir-trt predict`: a folder of cases -> per-case JSON, a summary CSV and heatmaps (NIfTI on the ART grid + PNG).

The model is loaded once (a .plan runs on the native engine, a .pt checkpoint on PyTorch); each case is preprocessed
with the parameters stored in the model, its clinical row normalised with the model's fitted statistics, and predicted.
A failing case is reported with its error and the others still run; every file is written atomically, and a case
that fails leaves none of its files behind. Research use only, not for diagnostic use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._io import atomic_write_text as _write_atomic

HELP = "predict MVI for a folder of cases with a plan (native engine) or checkpoint; JSON, CSV and heatmaps out"
DISCLAIMER = "research use only, not for diagnostic use"
GRADE_NAMES = ("M0", "M1", "M2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.plan (native engine) or checkpoint.pt (PyTorch)")
    p.add_argument("--input", required=True, help="folder of cases (CASE_0000/_0001/_mask.<ext> or DICOM folders)")
    p.add_argument("--out", required=True, help="output folder (CASE.json, summary.csv, CASE_heatmap.nii.gz/.png)")
    p.add_argument("--clinical", default=None, help="clinical CSV (default: INPUT/clinical.csv)")
    p.add_argument("--backend", choices=("auto", "native", "torch"), default="auto",
                   help="auto: native for .plan, torch for .pt")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's, else 0.5)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG overlays")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")




def model_settings(meta: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(ClinicalSchema, PreprocessParams, clinical normalised?) from a model's metadata, checked against its inputs."""
    from ..data import ClinicalSchema, PreprocessParams

    schema_d = meta.get("clinical_schema") or (meta.get("checkpoint_metadata") or {}).get("clinical_schema")
    schema = ClinicalSchema.from_dict(schema_d) if isinstance(schema_d, dict) else ClinicalSchema()
    if spec["num_clinical"] and schema.num_features != spec["num_clinical"]:
        raise ValueError(f"the model expects {spec['num_clinical']} clinical features but its clinical schema lists "
                         f"{schema.num_features} ({', '.join(schema.features)})")
    pre_d = meta.get("preprocess") or (meta.get("checkpoint_metadata") or {}).get("preprocess") or {}
    pdict = dict(pre_d)
    if pdict.get("image_size", spec["image_size"]) != spec["image_size"]:
        raise ValueError(f"the model's preprocessing image_size {pdict['image_size']} differs from its input size "
                         f"{spec['image_size']}")
    pdict["image_size"] = spec["image_size"]
    return schema, PreprocessParams.from_dict(pdict), schema.fitted


def case_result(case_id: str, prob: Any, logit: Any, threshold: float, meta: dict[str, Any],
                backend: str) -> dict[str, Any]:
    import numpy as np

    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    logit = np.asarray(logit, dtype=np.float64).reshape(-1)
    res: dict[str, Any] = {"case_id": case_id, "model": meta.get("model_id"), "backend": backend}
    if prob.size == 1:
        p = float(prob[0])
        res.update(probability=p, logit=float(logit[0]), threshold=threshold,
                   decision="MVI+" if p >= threshold else "MVI-")
    else:
        k = int(np.argmax(prob))
        res.update(probability=[float(x) for x in prob], logit=[float(x) for x in logit], threshold=threshold,
                   decision=GRADE_NAMES[k] if k < len(GRADE_NAMES) else str(k),
                   probability_mvi=float(prob[1:].sum()))
    if meta.get("synthetic"):
        res["synthetic_training_data"] = True
        res["note"] = "this model was trained on SYNTHETIC data; its outputs say nothing about real patients"
    res["disclaimer"] = DISCLAIMER
    return res


def run(args: argparse.Namespace) -> int:
    import csv
    import io
    import json
    import sys

    import numpy as np

    from ..data import DataError, find_cases, prepare_case, read_clinical_csv, write_heatmap
    from ..engine import Engine

    src, out = Path(args.input), Path(args.out)
    if not src.is_dir():
        raise FileNotFoundError(f"input folder not found: {src}")
    engine = Engine(args.model, device="cpu", backend=args.backend, threads=args.threads)
    meta, spec = engine.metadata, engine.input_spec
    schema, params, normalised = model_settings(meta, spec)
    threshold = args.threshold if args.threshold is not None else meta.get("threshold")
    threshold_source = "--threshold" if args.threshold is not None else "model"
    if threshold is None:
        threshold, threshold_source = 0.5, "default (the model stores none)"
    threshold = float(threshold)
    cases = find_cases(src, allow_incomplete=True)
    if not cases:
        raise DataError(f"no cases found in {src} (expected CASE_0000.<ext>, CASE_0001.<ext>, CASE_mask.<ext>)")
    clinical: dict[str, dict[str, float]] = {}
    csv_error: str | None = None
    if spec["num_clinical"]:
        csv_path = Path(args.clinical) if args.clinical else src / "clinical.csv"
        try:
            clinical = read_clinical_csv(csv_path, schema)
        except (DataError, FileNotFoundError) as exc:
            if args.clinical:  # an explicitly given CSV that is unusable stops the run
                raise
            csv_error = str(exc)
    out.mkdir(parents=True, exist_ok=True)

    print(f"model {meta.get('model_id')} ({engine.backend} backend, {engine.threads or '?'} threads), "
          f"{len(cases)} case(s), threshold {threshold:g} ({threshold_source})"
          + ("; trained on SYNTHETIC data" if meta.get("synthetic") else ""))
    if spec["num_clinical"] and not normalised:
        print("warning: the model has no fitted clinical statistics; raw clinical values are used", file=sys.stderr)

    iterator: Any = cases
    if not args.no_progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(cases, desc="predict", unit="case", file=sys.stderr)
        except ImportError:
            pass
    rows, failed = [], 0
    for case in iterator:
        written: list[Path] = []
        try:
            prep = prepare_case(case, params)
            x_clin = np.zeros((1, spec["num_clinical"]), np.float32)
            if spec["num_clinical"]:
                if case.case_id not in clinical:
                    raise DataError(csv_error or f"case {case.case_id!r}: no row in the clinical CSV")
                raw = schema.assemble(clinical[case.case_id], {"diameter_mm": prep.diameter_mm}, case.case_id)
                x_clin = (schema.normalise(raw[None], [case.case_id]) if normalised else raw[None]).astype(np.float32)
            pred = engine.predict(prep.art[None].astype(np.float32), prep.pv[None].astype(np.float32), x_clin)
            res = case_result(case.case_id, pred.probability[0], pred.logit[0], threshold, meta, engine.backend)
            nii = out / f"{case.case_id}_heatmap.nii.gz"
            png = None if args.no_png else out / f"{case.case_id}_heatmap.png"
            written += [nii] + ([png] if png else [])
            write_heatmap(prep, pred.heatmap[0, 0], nii, png,
                          title=f"{case.case_id}: p={np.ravel(pred.probability[0])[0]:.3f}")
            res["heatmap_nifti"] = nii.name
            if png:
                res["heatmap_png"] = png.name
            res["preprocessing"] = {"slices": list(prep.slices), "diameter_mm": prep.diameter_mm,
                                    "params": params.to_dict()}
            res["clinical_normalised"] = bool(normalised)
            js = out / f"{case.case_id}.json"
            written.append(js)
            _write_atomic(js, json.dumps(res, indent=2) + "\n")
            prob = res["probability"] if isinstance(res["probability"], float) else res["probability_mvi"]
            rows.append([case.case_id, "ok", f"{prob:.6f}", res["decision"], f"{threshold:g}", ""])
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others; reported below
            failed += 1
            for p in written:  # no partial results for a failed case
                if p.exists():
                    p.unlink()
            msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (DataError, ValueError)) else str(exc)
            rows.append([case.case_id, "error", "", "", f"{threshold:g}", msg])
            print(f"{case.case_id}: FAILED: {msg}", file=sys.stderr)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case_id", "status", "probability", "decision", "threshold", "error"])
    w.writerows(rows)
    _write_atomic(out / "summary.csv", buf.getvalue())
    ok = len(cases) - failed
    print(f"{ok} of {len(cases)} case(s) predicted; results in {out} (CASE.json, summary.csv, "
          f"CASE_heatmap.nii.gz{'' if args.no_png else ' and .png'})"
          + (" -- model trained on SYNTHETIC data" if meta.get("synthetic") else "") + f"; {DISCLAIMER}")
    return 1 if failed else 0

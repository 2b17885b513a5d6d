"""`cmir-trt predict`: a folder of cases -> per-case JSON, a summary CSV and heatmaps (NIfTI on the ART grid + PNG).

A thin layer over cmir_trt.Predictor (model loaded once, per-case pipeline, one failure per bad case). This file
only handles the output folder: it is checked for writing before any case is computed, the outputs of an earlier
run there (its summary.csv's cases and this run's cases) are removed first, so no file contradicts the new results,
and every file is written atomically; a case that fails leaves none of its files. Research use only, not for
diagnostic use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..predictor import DISCLAIMER, CaseResult

HELP = "predict MVI for a folder of cases with a plan (native engine) or checkpoint; JSON, CSV and heatmaps out"
SUMMARY = "summary.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.plan (native engine) or checkpoint.pt (PyTorch)")
    p.add_argument("-i", "--input", required=True,
                   help="folder of cases (CASE_0000/_0001/_mask.<ext>, DICOM series folders, or DICOM study folders)")
    p.add_argument("-o", "--out", required=True,
                   help="output folder (CASE.json, summary.csv, CASE_heatmap.nii.gz/.png)")
    p.add_argument("--clinical", default=None, help="clinical CSV (default: INPUT/clinical.csv)")
    p.add_argument("--masks", default=None, help="folder of tumour masks named CASE.<ext> (nnU-Net output naming) "
                                                 "instead of CASE_mask.<ext> beside the images")
    p.add_argument("--mask-label", type=int, default=None,
                   help="the tumour's label in multi-label masks (e.g. 2 for liver=1/tumour=2)")
    p.add_argument("--seg-segment", default=None, metavar="LABEL|NUMBER",
                   help="for DICOM studies without a mask file: the segment of the study's SEG (on the ART series) "
                        "that is the tumour (default: the only segment, or the one labelled tumor/tumour/lesion)")
    p.add_argument("--series-rules", default=None,
                   help="JSON rules picking ART/PV in DICOM study folders (default: the shipped series_rules.json)")
    p.add_argument("--backend", choices=("auto", "native", "torch"), default="auto",
                   help="auto: native for .plan, torch for .pt")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="engine precision (default fp32); bf16: the native engine's bf16 convolutions (a .plan on a "
                        "CPU with avx512_bf16 or AMX; refused elsewhere)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's, else 0.5)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG overlays")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dicom-out", default=None, help="also write a DICOM SR + heatmap SC per DICOM case into this "
                                                     "folder (needs the dicom extra; NIfTI cases get none)")


def case_output_names(case_id: str) -> list[str]:
    """Every file name `predict` may write for a case (cleared before the case is written again)."""
    return [f"{case_id}.json", f"{case_id}_heatmap.nii.gz", f"{case_id}_heatmap.png"]


def dicom_output_names(case_id: str) -> list[str]:
    """The files `--dicom-out` may hold for a case (dicom.results.write_dicom_results)."""
    return [f"{case_id}_sr.dcm", f"{case_id}_sc.dcm"]


def ensure_writable(out: Path) -> None:
    """Create `out` and prove it takes a file, before any case is computed (one clear line otherwise)."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise PermissionError(f"output folder {out} is not writable: {exc.strerror or exc}") from None


def prepare_output(out: Path, case_ids: list[str], dicom_out: Path | None = None) -> None:
    """Make `out` (and `dicom_out`) usable before any case runs: writable folders without outputs of an earlier run
    that could contradict this one (the cases of its summary.csv and of this run)."""
    import csv

    ensure_writable(out)
    old: set[str] = set()
    if (out / SUMMARY).is_file():
        try:
            with open(out / SUMMARY, newline="", encoding="utf-8") as f:
                old = {r.get("case_id", "") for r in csv.DictReader(f)} - {""}
        except (OSError, UnicodeDecodeError, csv.Error):
            old = set()
        (out / SUMMARY).unlink()
    if dicom_out is not None:
        ensure_writable(dicom_out)
    for cid in sorted(old | set(case_ids)):
        targets = [out / n for n in case_output_names(cid)]
        if dicom_out is not None:
            targets += [dicom_out / n for n in dicom_output_names(cid)]
        for path in targets:
            if path.is_file():
                path.unlink()


def write_case(out: Path, r: CaseResult, no_png: bool) -> list[Path]:
    """The case's files (heatmap NIfTI [+ PNG], then CASE.json last); returns them. Removed again on failure."""
    import json

    from ..data import write_heatmap

    written: list[Path] = []
    try:
        res = r.to_json()
        nii = out / f"{r.case_id}_heatmap.nii.gz"
        png = None if no_png else out / f"{r.case_id}_heatmap.png"
        written += [nii] + ([png] if png else [])
        write_heatmap(r.prepared, r.heatmap_roi, nii, png, title=f"{r.case_id}: p={r.probability:.3f}")
        res["heatmap_nifti"] = nii.name
        if png:
            res["heatmap_png"] = png.name
        js = out / f"{r.case_id}.json"
        written.append(js)
        atomic_write_text(js, json.dumps(res, indent=2) + "\n")
    except BaseException:
        for p in written:  # no partial results for a failed case
            if p.exists():
                p.unlink()
        raise
    return written


def run(args: argparse.Namespace) -> int:
    import csv
    import io
    import sys

    from ..predictor import Predictor

    src, out = Path(args.input), Path(args.out)
    if not src.is_dir():
        raise FileNotFoundError(f"input folder not found: {src}")
    pred = Predictor(args.model, device="cpu", threads=args.threads, backend=args.backend, threshold=args.threshold,
                     mask_label=args.mask_label, precision=args.precision, series_rules=args.series_rules,
                     seg_segment=args.seg_segment)
    cases = pred.folder_cases(src, args.masks)
    pred.clinical_table(src, args.clinical)  # an explicit CSV that cannot be read stops the run before any case
    prepare_output(out, [c.case_id for c in cases], Path(args.dicom_out) if args.dicom_out else None)
    thr_src = "--threshold" if args.threshold is not None else pred.threshold_source
    print(f"model {pred.model_id} ({pred.engine.backend} backend, {pred.precision}, "
          f"{pred.engine.threads or '?'} threads), "
          f"{len(cases)} case(s), threshold {pred.threshold:g} ({thr_src})"
          + ("; trained on SYNTHETIC data" if pred.synthetic else ""))
    if pred.precision_note:
        print(f"warning: {pred.precision_note}", file=sys.stderr)
    if pred.num_clinical and not pred.clinical_normalised:
        print("warning: the model has no fitted clinical statistics; raw clinical values are used", file=sys.stderr)
    items: Any = pred.predict_folder(src, args.clinical, args.masks, cases=cases)
    if not args.no_progress:
        try:
            from tqdm import tqdm

            items = tqdm(items, total=len(cases), desc="predict", unit="case", file=sys.stderr)
        except ImportError:
            pass
    rows, failed = [], 0
    for item in items:
        error = getattr(item, "error", None)
        if isinstance(item, CaseResult):
            try:
                if args.dicom_out:  # before write_case: a case whose DICOM results fail leaves no files
                    from ..dicom.predict_out import write_case_dicom

                    write_case_dicom(item, next(c for c in cases if c.case_id == item.case_id), args.dicom_out,
                                     args.series_rules)
                write_case(out, item, args.no_png)
                rows.append([item.case_id, "ok", f"{item.probability:.6f}", item.decision, f"{pred.threshold:g}", ""])
                continue
            except (OSError, ValueError) as exc:
                error = f"cannot write the results: {exc}"
        failed += 1
        rows.append([item.case_id, "error", "", "", f"{pred.threshold:g}", error])
        print(f"{item.case_id}: FAILED: {error}", file=sys.stderr)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case_id", "status", "probability", "decision", "threshold", "error"])
    w.writerows(rows)
    atomic_write_text(out / SUMMARY, buf.getvalue())
    print(f"{len(cases) - failed} of {len(cases)} case(s) predicted; results in {out} (CASE.json, {SUMMARY}, "
          f"CASE_heatmap.nii.gz{'' if args.no_png else ' and .png'})"
          + (" -- model trained on SYNTHETIC data" if pred.synthetic else "") + f"; {DISCLAIMER}")
    return 1 if failed else 0

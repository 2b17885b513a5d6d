"""`cmir-trt preprocess`: the model-ready arrays of every case in a folder, and PNGs of what the model sees."""

from __future__ import annotations

import argparse

HELP = "preprocess a folder of cases (ART/PV/mask + clinical.csv) into model-ready CASE.npz and CASE.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", required=True,
                   help="folder of cases (CASE_0000/_0001/_mask.<ext>, DICOM series folders or DICOM study folders)")
    p.add_argument("-o", "--out", required=True, help="output folder for CASE.npz and CASE.png")
    p.add_argument("--clinical", default=None, help="clinical CSV (default: INPUT/clinical.csv)")
    p.add_argument("--masks", default=None, help="folder of tumour masks named CASE.<ext> (nnU-Net output naming)")
    p.add_argument("--mask-label", type=int, default=None,
                   help="the tumour's label in multi-label masks (e.g. 2 for liver=1/tumour=2)")
    p.add_argument("--series-rules", default=None,
                   help="JSON rules picking ART/PV in DICOM study folders (default: the shipped series_rules.json)")
    p.add_argument("--schema", default=None,
                   help="JSON with the model's clinical schema (ClinicalSchema.to_dict(), or checkpoint metadata "
                        "holding 'clinical_schema' and 'preprocess'); with fitted statistics `clinical` is "
                        "normalised, otherwise it holds the raw values")
    p.add_argument("--image-size", type=int, default=None, help="S (default 128 or the schema file's)")
    p.add_argument("--margin-mm", type=float, default=None, help="margin around the tumour (default 10 mm)")
    p.add_argument("--component", type=int, default=None, help="tumour component by size rank (1 = largest)")
    p.add_argument("--square", choices=("pad", "extend"), default=None,
                   help="make the crop square by padding (default) or by extending into the image")
    p.add_argument("--no-png", action="store_true", help="skip the PNGs")
    p.add_argument("--keep-going", action="store_true", help="report failing cases and continue (exit code 1)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    import numpy as np

    from .._io import atomic_write_via
    from ..data import ClinicalSchema, DataError, PreprocessParams, find_cases, prepare_case, read_clinical_table
    from ..data.preprocess import write_channels_png
    from ..data.series import load_rules

    src, out = Path(args.input), Path(args.out)
    schema, pdict = ClinicalSchema(), {}
    if args.schema:
        try:
            meta = json.loads(Path(args.schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--schema {args.schema}: not a readable JSON file: {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"--schema {args.schema}: expected a JSON object")
        if isinstance(meta.get("metadata"), dict):
            meta = meta["metadata"]
        schema = ClinicalSchema.from_dict(meta["clinical_schema"] if "clinical_schema" in meta else meta)
        pdict = dict(meta.get("preprocess") or {})
    for key, val in (("image_size", args.image_size), ("margin_mm", args.margin_mm),
                     ("component", args.component), ("square", args.square), ("mask_label", args.mask_label)):
        if val is not None:
            pdict[key] = val
    params = PreprocessParams.from_dict(pdict)
    rules = load_rules(args.series_rules)
    cases = find_cases(src, masks=args.masks)
    if not cases:
        raise DataError(f"no cases found in {src} (expected CASE_0000.<ext>, CASE_0001.<ext>, CASE_mask.<ext>)")
    csv_path = Path(args.clinical) if args.clinical else src / "clinical.csv"
    clinical = read_clinical_table(csv_path, schema)  # a bad row fails its own case (below)
    from .predict import ensure_writable

    ensure_writable(out)  # checked before any case is computed
    failed = []
    for case in cases:
        written = [out / f"{case.case_id}.npz", out / f"{case.case_id}.png"]
        for p in written:  # an earlier run's outputs for this case never survive next to a new failure
            if p.is_file():
                p.unlink()
        try:
            row = clinical.row(case.case_id)
            prep = prepare_case(case, params, series_rules=rules)
            raw = schema.assemble(row, {"diameter_mm": prep.diameter_mm}, case.case_id)
            norm = schema.normalise(raw[None], [case.case_id])[0] if schema.fitted else raw.astype(np.float32)
            meta = prep.metadata()
            meta.update(features=list(schema.features), clinical_normalised=schema.fitted,
                        preprocess=params.to_dict())
            arrays = {"art": prep.art, "pv": prep.pv, "clinical": norm.astype(np.float32), "clinical_raw": raw,
                      "mask": prep.mask, "meta": np.array(json.dumps(meta))}
            atomic_write_via(out / f"{case.case_id}.npz", lambda tmp, a=arrays: np.savez_compressed(tmp, **a),
                             suffix=".npz")
            if not args.no_png:
                write_channels_png(prep, out / f"{case.case_id}.png")
            print(f"{case.case_id}: slices {prep.slices}, diameter {prep.diameter_mm:.1f} mm"
                  f"{', PV resampled onto ART' if prep.info.get('pv_resampled') else ''}")
        except (DataError, FileNotFoundError) as exc:
            for p in written:
                if p.is_file():
                    p.unlink()
            if not args.keep_going:
                raise
            failed.append(case.case_id)
            print(f"{case.case_id}: FAILED: {exc}", file=sys.stderr)
    print(f"{len(cases) - len(failed)} of {len(cases)} cases written to {out}"
          + ("" if schema.fitted else " (clinical not normalised: no fitted schema given)"))
    return 1 if failed else 0

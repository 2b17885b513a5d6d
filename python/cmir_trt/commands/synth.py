"""`cmir-trt synth`: write a SYNTHETIC multi-centre cohort of two-phase liver MRI phantoms with known MVI truth."""

from __future__ import annotations

import argparse

HELP = ("generate a synthetic multi-centre cohort (case folders, clinical.csv, manifest.csv) with known MVI labels; "
        "--format dicom writes DICOM studies (ART + PV MR series and a SEG)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; must be empty or a previous synth cohort)")
    p.add_argument("--preset", choices=("tiny", "default"), default="default",
                   help="tiny: 26 cases for tests; default: 902 cases mirroring the source study's centres")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> byte-identical files)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink the preset's case counts by this factor (0, 1]")
    p.add_argument("--strength", type=float, default=1.0,
                   help="strength of the MVI signal in images and clinical data (0 = no signal)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering cases in parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--format", choices=("nifti", "dicom"), default="nifti",
                   help="nifti: case folders of NIfTI files; dicom: OUT/dicom/CASE/{ART,PV,SEG} studies (needs the "
                        "dicom extra), with the NIfTI source in OUT/nifti")


def run(args: argparse.Namespace) -> int:
    import csv
    from collections import Counter

    from ..data import generate_cohort

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.format == "dicom":
        from ..dicom.study import write_dicom_cohort

        out = write_dicom_cohort(args.out, preset=args.preset, seed=args.seed, scale=args.scale,
                                 strength=args.strength, workers=args.workers, progress=not args.no_progress)
    else:
        out = generate_cohort(args.out, preset=args.preset, seed=args.seed, scale=args.scale,
                              progress=not args.no_progress, strength=args.strength, workers=args.workers)
    with open(out / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    counts: Counter[tuple[str, str, str]] = Counter((r["centre"], r["split"], r["mvi"]) for r in rows)
    kind = "DICOM studies in " + str(out / "dicom") if args.format == "dicom" else "cases in " + str(out)
    print(f"SYNTHETIC cohort: {len(rows)} {kind} (preset {args.preset}, seed {args.seed}, "
          f"scale {args.scale}, strength {args.strength})")
    for centre, split in dict.fromkeys((r["centre"], r["split"]) for r in rows):
        pos, neg = counts[(centre, split, "1")], counts[(centre, split, "0")]
        print(f"  {centre:<5} {split:<9} {pos + neg:4d} cases  {pos:3d} MVI+ / {neg:3d} MVI-")
    return 0

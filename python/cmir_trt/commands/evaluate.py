"""`cmir-trt evaluate`: multi-centre report (ACC/AUC/SEN/SPE with bootstrap CIs, DeLong, calibration, ROC plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate one or more checkpoints on a cohort: per-centre metrics with 95% CIs, DeLong tests, calibration"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="CKPT",
                   help="checkpoint to evaluate; repeat for several models (DeLong tests between them)")
    p.add_argument("--name", action="append", default=None, metavar="NAME",
                   help="display name per --model, in the same order (default: file names)")
    p.add_argument("--data", required=True, help="cohort folder (cases, clinical.csv, manifest.csv)")
    p.add_argument("--out", required=True, help="report folder (predictions.csv, report.md/.csv/.json, PNGs)")
    p.add_argument("--bootstrap", type=int, default=2000, help="stratified bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the ROC and reliability PNGs")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size (default 64)")
    p.add_argument("--mask-label", type=int, default=None,
                   help="the tumour's label in multi-label masks (default: the model's, else one label only)")


def print_summary(report: dict) -> None:
    syn = report["synthetic"]
    tag = " (SYNTHETIC data)" if syn else ""
    groups = [g["key"] for g in report["groups"]]
    print(f"AUC (95% CI){tag}; SEN/SPE at each model's fixed threshold")
    width = max(len(m["name"]) for m in report["models"])
    for m in report["models"]:
        cells = []
        for g in groups:
            r = m["centres"][g]
            lo, hi = r["auc_ci"]
            if r["auc"] is None:
                cells.append(f"{g} n/a")
            else:
                cells.append(f"{g} {r['auc']:.3f} ({lo:.3f}-{hi:.3f}) {r['sen']:.2f}/{r['spe']:.2f}")
        print(f"  {m['name']:<{width}}  thr {m['threshold']:.3f}  " + "  ".join(cells))
    for d in report["delong"]:
        ps = ", ".join(f"{g} p={d['centres'][g]['p_value']:.3g}" for g in groups
                       if d["centres"][g]["p_value"] is not None)
        print(f"  DeLong{tag} {d['model_a']} vs {d['model_b']}: {ps}")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.predict import predict_directory
    from ..evaluation.report import write_report

    if args.bootstrap < 1:
        raise ValueError("--bootstrap must be >= 1")
    cases, preds, synthetic = predict_directory(args.model, args.data, names=args.name, batch_size=args.batch_size,
                                                threads=args.threads, progress=True, mask_label=args.mask_label)
    report = write_report(args.out, cases, preds, synthetic, n_resamples=args.bootstrap, seed=args.seed,
                          plots=not args.no_plots, data_description=f"cohort folder {Path(args.data).name}")
    print_summary(report)
    print(f"wrote {args.out}/report.md, report.csv, report.json, predictions.csv"
          + ("" if args.no_plots else f" and {len(report.get('plots', []))} plots")
          + (" (all metrics on SYNTHETIC data)" if synthetic else ""))
    return 0

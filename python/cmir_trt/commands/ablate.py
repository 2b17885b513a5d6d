"""`cmir-trt ablate`: train S1, M1, M2, M3 and full on the same splits and seeds; Table 2 and Table 3 layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

from .train import add_train_options

HELP = "ablation study: train the five variants alike and report Table 2 (internal split) and Table 3 (all centres)"

ALL_VARIANTS = ("S1", "M1", "M2", "M3", "full")
# --preset quick: minutes on 2 CPU cores (small ROI and width, few epochs); applies to options left at defaults
PRESETS = {
    "quick": {"image_size": 32, "width": 0.125, "epochs": 3, "batch_size": 16, "cmam_dim": 32, "cmam_heads": 2,
              "patience": 3},
    "standard": {},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="cohort folder (cases, clinical.csv, manifest.csv)")
    p.add_argument("--out", required=True, help="folder for the checkpoints <variant>.pt and the reports")
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard",
                   help="quick: image size 32, width 0.125, 3 epochs (explicit options still win)")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS),
                   help="comma-separated subset of S1,M1,M2,M3,full (default all five)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even where OUT/<variant>.pt exists with the same settings")
    p.add_argument("--bootstrap", type=int, default=2000, help="stratified bootstrap resamples (default 2000)")
    p.add_argument("--no-plots", action="store_true", help="skip the ROC and reliability PNGs")
    add_train_options(p)


def apply_preset(args: argparse.Namespace, preset: str) -> None:
    from ..train.config import TrainConfig

    defaults = TrainConfig().to_dict()
    for key, value in PRESETS[preset].items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def table_files(report: dict, out: Path) -> list[str]:
    """table2.md/.csv (one row per variant, internal split) and table3.md/.csv (all centres)."""
    from ..evaluation.metrics import METRICS
    from ..evaluation.report import (
        METRIC_NAMES,
        atomic_write_text,
        centre_table_md,
        csv_text,
        metric_table_md,
        report_csv_rows,
    )

    syn = report["synthetic"]
    flag = ("**SYNTHETIC DATA**: measured on a generated cohort, not clinical performance.\n\n" if syn else "")
    ci = report["ci"]
    note = (f"95% CIs: {ci['method']}, {ci['n_resamples']} resamples, seed {ci['seed']}; threshold per variant: "
            "Youden's J on the internal split.\n\n")
    t2 = f"# Ablation (Table 2 layout): internal validation{' (synthetic)' if syn else ''}\n\n" + flag + note + \
        metric_table_md(report, "internal", "Variant")
    t3 = f"# Ablation (Table 3 layout): all centres{' (synthetic)' if syn else ''}\n\n" + flag + note + \
        centre_table_md(report, "Variant")
    rows = []
    for m in report["models"]:
        r = m["centres"]["internal"]
        row = {"variant": m["name"], "synthetic": syn, "split": "internal", "n": r["n"], "threshold": m["threshold"]}
        for k in METRICS:
            row[METRIC_NAMES[k]] = r[k]
            row[f"{METRIC_NAMES[k]} ci_low"], row[f"{METRIC_NAMES[k]} ci_high"] = r[f"{k}_ci"]
        rows.append(row)
    atomic_write_text(out / "table2.md", t2)
    atomic_write_text(out / "table2.csv", csv_text(rows))
    atomic_write_text(out / "table3.md", t3)
    atomic_write_text(out / "table3.csv", csv_text(report_csv_rows(report)))
    return ["table2.md", "table2.csv", "table3.md", "table3.csv"]


def run(args: argparse.Namespace) -> int:
    from ..evaluation.predict import predict_directory
    from ..evaluation.report import write_report
    from ..model.checkpoint import CheckpointError, read_checkpoint
    from ..train import train_from_directory
    from .train import config_from_args

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ALL_VARIANTS]
    if bad or not variants:
        raise ValueError(f"--variants must be a subset of {','.join(ALL_VARIANTS)}, got {args.variants!r}")
    if args.bootstrap < 1:
        raise ValueError("--bootstrap must be >= 1")
    apply_preset(args, args.preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in variants:
        cfg = config_from_args(args, v)
        ckpt = out / f"{v}.pt"
        reuse = False
        if ckpt.is_file() and not args.retrain:
            try:
                reuse = read_checkpoint(ckpt)["metadata"].get("train_config") == cfg.to_dict()
            except CheckpointError:
                reuse = False
        if reuse:
            print(f"{v}: reusing {ckpt} (same settings; --retrain to train again)")
        else:
            print(f"{v}: training (seed {cfg.seed}, image size {cfg.image_size}, width {cfg.width}, "
                  f"{cfg.epochs} epochs max)")
            train_from_directory(args.data, cfg, ckpt, resume=True, progress=False if args.quiet else None,
                                 log=(lambda s: None) if args.quiet else None)
        paths.append(ckpt)
    cases, preds, synthetic = predict_directory(paths, args.data, names=variants, threads=args.threads)
    report = write_report(out, cases, preds, synthetic, n_resamples=args.bootstrap, seed=args.seed,
                          plots=not args.no_plots, data_description=f"cohort folder {Path(args.data).name}")
    table_files(report, out)
    print((out / "table2.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/table2.md, table3.md (+ .csv), report.md/.csv/.json, predictions.csv"
          + (" (all metrics on SYNTHETIC data)" if synthetic else ""))
    return 0

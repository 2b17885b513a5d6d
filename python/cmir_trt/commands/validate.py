"""`cmir-trt validate`: export a checkpoint to every form and check each runnable backend against the PyTorch
model (parity table in the terminal, parity.json and parity.md on disk)."""

from __future__ import annotations

import argparse

HELP = "export to every form and print/write a parity table (backend x output: max abs/rel error, decision flips)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", default=None,
                   help="cohort folder (manifest.csv, clinical.csv, case folders) whose preprocessed cases are "
                        "checked besides the seeded random inputs")
    p.add_argument("--out", default="validate-out", help="folder for parity.json, parity.md and the exported "
                   "artefacts (default: validate-out)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of the backends (default: all; see --list-backends)")
    p.add_argument("--list-backends", action="store_true", help="print the known backends and exit")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--max-cases", type=int, default=16, help="at most this many cohort cases (default 16)")
    p.add_argument("--verbose", action="store_true", help="show the exporters' own output")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..export.validation import BACKENDS, format_text, validate_checkpoint, write_report

    if args.list_backends:
        for b in BACKENDS.values():
            print(f"{b.name:<24} {b.description}")
        return 0
    if args.max_cases < 1:
        raise ValueError(f"--max-cases must be >= 1, got {args.max_cases}")
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    out = Path(args.out)
    report = validate_checkpoint(args.model, out / "artifacts", data_dir=args.data, backends=names, seed=args.seed,
                                 max_cases=args.max_cases, verbose=args.verbose,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_text(report))
    jp, mp = write_report(report, out)
    print(f"wrote {jp} and {mp}")
    return 0 if report["all_available_within_tolerance"] else 1

"""`cmir-trt validate`: export a checkpoint to every form and check each runnable backend against the PyTorch
model (parity table in the terminal, parity.json and parity.md on disk)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export to every form and print/write a parity table (backend x output: max abs/rel error, decision flips)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", default=None,
                   help="cohort folder (manifest.csv, clinical.csv, case folders) whose preprocessed cases are "
                        "checked besides the seeded random inputs (default: the tiny SYNTHETIC cohort, generated "
                        "into OUT/tiny-cohort)")
    p.add_argument("--no-cohort", action="store_true", help="seeded random inputs only (no cohort cases)")
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

    from ..export.validation import BACKENDS, format_text, validate_checkpoint, write_report

    if args.list_backends:
        for b in BACKENDS.values():
            print(f"{b.name:<24} {b.description}")
        return 0
    if args.max_cases < 1:
        raise ValueError(f"--max-cases must be >= 1, got {args.max_cases}")
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    unknown = [n for n in names or [] if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.model}")
    out = Path(args.out)
    data_dir, note = args.data, None
    if data_dir is None and args.no_cohort:
        note = "no cohort (--no-cohort)"
    elif data_dir is None:
        data_dir, note = _tiny_cohort(out / "tiny-cohort", args.seed)
    report = validate_checkpoint(args.model, out / "artifacts", data_dir=data_dir, backends=names, seed=args.seed,
                                 max_cases=args.max_cases, verbose=args.verbose, cases_note=note,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_text(report))
    jp, mp = write_report(report, out)
    print(f"wrote {jp} and {mp}")
    return 0 if report["all_available_within_tolerance"] else 1


def _tiny_cohort(path: Path, seed: int) -> tuple[Path | None, str | None]:
    """The tiny SYNTHETIC cohort (cmir_trt.data.generate_cohort, preset "tiny"), made once; (None, reason) when it
    cannot be made here (e.g. no SimpleITK on the machine)."""
    import sys

    try:
        from ..data import generate_cohort

        print(f"validate: preparing the tiny SYNTHETIC cohort in {path} ...", file=sys.stderr, flush=True)
        return generate_cohort(path, preset="tiny", seed=seed, progress=False), None
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        return None, f"the tiny synthetic cohort could not be generated here ({type(exc).__name__}: {exc})"

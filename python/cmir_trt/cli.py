"""`cmir-trt` command line. Each subcommand lives in cmir_trt/commands/<name>.py and defines
HELP (one line), add_arguments(parser) and run(args) -> int; heavy imports (torch, SimpleITK) happen inside run()."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands


class CLIError(Exception):
    """An error the user can fix (bad path, bad option); printed without a traceback."""


def _command_modules() -> dict[str, object]:
    mods = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods[info.name.replace("_", "-")] = importlib.import_module(f"{commands.__name__}.{info.name}")
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmir-trt", description="CMIR inference engine: MVI prediction from "
                                     "two-phase liver MRI (research use only, not for diagnostic use).")
    parser.add_argument("--version", action="version", version=f"cmir_trt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules().items():
        # argparse %-formats help strings (not descriptions): a literal % (e.g. "95% CIs") must be doubled there
        p = sub.add_parser(name, help=mod.HELP.replace("%", "%%"), description=mod.HELP)  # type: ignore[attr-defined]
        mod.add_arguments(p)  # type: ignore[attr-defined]
        p.set_defaults(_run=mod.run)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CLIError, OSError, ValueError, RuntimeError) as exc:
        # User-facing errors (bad path or option, corrupt file, no GPU, ...): one clear line, no traceback, unless
        # CMIR_TRT_DEBUG is set.
        if os.environ.get("CMIR_TRT_DEBUG"):
            raise
        print(f"cmir-trt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cmir-trt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Subcommands of `cmir-trt`, one module each (see cmir_trt.cli)."""

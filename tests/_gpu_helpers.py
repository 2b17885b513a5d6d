"""Shared helpers of the CUDA/GPU tests (issue 7): seeded inputs, NaN poisoning, the flash-attention style bound."""

from __future__ import annotations

import os
import secrets

import torch

# Fresh random inputs on every run (the seed is printed on failure through the assertion messages); pin it with
# CMIR_TEST_SEED to reproduce a failure.
SEED = int(os.environ.get("CMIR_TEST_SEED", secrets.randbelow(2**31)))

# Kernels accumulate in fp32: normwise error vs float64 within this factor of fp32 epsilon times the reduction size.
FP32_REL_TOL = 2e-5

LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}


def generator(offset: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(SEED + offset)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (normwise, float64)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double().cpu()).abs().max())


def assert_no_nan(t: torch.Tensor, what: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    assert bad == 0, f"{what}: {bad} non-finite elements (unwritten outputs were poisoned with NaN); seed {SEED}"


def assert_low_precision_bound(ours: float, torch_err: float, what: str, floor: float) -> None:
    """Ours at fp16/bf16 within 2x the error of the same computation done by PyTorch at that precision
    (floor: an absolute slack for the case where PyTorch happens to be nearly exact)."""
    assert ours <= 2.0 * torch_err + floor, (f"{what}: error {ours:.3g} > 2 x PyTorch's {torch_err:.3g} "
                                            f"(+{floor:.1g}); seed {SEED}")

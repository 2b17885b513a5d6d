"""Accuracy of the pointwise (1x1) convolution kernel as the CUDA emulator runs it (issue 13; cuda/pointwise.cu).

    .venv/bin/python benchmarks/pointwise_emu_error.py

Runs tests/test_cuda_emu_pointwise.py's seeded cases (odd Cin/Cout/H*W, batch 1-3, with and without residual and
ReLU) through the emulated kernel and prints, per precision, the error against float64: normwise for fp32 (the
tests' bound 1e-5), and for fp16/bf16 the max error as a multiple of PyTorch's own conv2d + add + relu error in that
dtype (the tests' bound: 2x, plus one ulp of the output scale). The numbers behind benchmarks/RESULTS.md; the tests
only assert the bounds. Runs on the CPU (builds the emulator driver on first use).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import test_cuda_emu_pointwise as T  # noqa: E402
from _gpu_helpers import max_err, rel_err  # noqa: E402

from cmir_trt.ops import reference as R  # noqa: E402


def main() -> int:
    errs: dict[str, list[float]] = {"fp32": [], "fp16": [], "bf16": []}
    for i, case in enumerate(T.CASES):
        for prec in errs:
            t = T._inputs(case, T.DTYPES[prec], 50 + i)
            y = T._run(case, prec, t, i + list(T.DTYPES).index(prec))
            ref = R.pointwise_conv_ref(t["x"], t["w"], t["bias"], t.get("residual"), bool(case[6]))
            if prec == "fp32":
                errs[prec].append(rel_err(y, ref))
            else:
                theirs = max_err(T._torch_at_precision(t, bool(case[6])), ref)
                errs[prec].append(max_err(y, ref) / max(theirs, 1e-30))
    print(f"{len(T.CASES)} cases, seed {T.SEED}")
    print(f"fp32 normwise error vs float64: {min(errs['fp32']):.2g} .. {max(errs['fp32']):.2g} (bound 1e-5)")
    for prec in ("fp16", "bf16"):
        print(f"{prec} max error / PyTorch's own: {min(errs[prec]):.2f} .. {max(errs[prec]):.2f} (bound 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

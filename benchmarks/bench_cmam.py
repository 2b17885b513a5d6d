"""CMAM on the GPU: our fused kernels vs a PyTorch module built on scaled_dot_product_attention (and the reference),
batch 1/8/64, fp32/fp16/bf16, launched from Python and replayed as a CUDA graph.

    python benchmarks/bench_cmam.py [--quick] [--out DIR]
Needs a CUDA GPU. Inputs are synthetic; writes DIR/cmam.json and .md when --out is given.
"""

from __future__ import annotations

import argparse
import json

from cmir_trt.gpu.bench import run_gpu_benchmarks, to_markdown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples per figure (every batch and precision stays)")
    p.add_argument("--out", default=None, help="folder for cmam.json / cmam.md")
    args = p.parse_args()
    res = run_gpu_benchmarks(args.out, parts=("cmam",), quick=args.quick, name="cmam")
    print(to_markdown(res))
    if res["failures"]:
        print(json.dumps(res["failures"], indent=2))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End-to-end CMIR latency on the GPU: PyTorch eager vs torch.compile vs cmir_trt's GPU backend (CUDA graph off/on),
batch 1/8/64, fp32/fp16/bf16.

    python benchmarks/bench_gpu_e2e.py [--checkpoint CKPT] [--quick] [--out DIR] [--budget SECONDS]
Needs a CUDA GPU. Without a checkpoint the default full model with random weights is used (synthetic inputs).
"""

from __future__ import annotations

import argparse
import json

from cmir_trt.gpu.bench import run_gpu_benchmarks, to_markdown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--quick", action="store_true", help="fewer samples per figure (every batch and precision stays)")
    p.add_argument("--out", default=None, help="folder for e2e.json / e2e.md")
    p.add_argument("--budget", type=float, default=None, help="seconds after which torch.compile rows are skipped")
    args = p.parse_args()
    res = run_gpu_benchmarks(args.out, parts=("e2e",), quick=args.quick, checkpoint=args.checkpoint,
                             budget_s=args.budget, name="e2e")
    print(to_markdown(res))
    if res["failures"]:
        print(json.dumps(res["failures"], indent=2))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Involution on the GPU: ours (plain, fused) vs the official CuPy kernel (d-li14/involution), PyTorch unfold and the
PyTorch module, at N=64 C=256 28x28 K=7 and the model's own shapes, fp32/fp16/bf16; GB/s as % of the measured
device-to-device copy and of the card's spec bandwidth.

    python benchmarks/bench_involution.py [--quick] [--out DIR] [--official-involution PATH]
Needs a CUDA GPU (and cupy plus the fetched official source for that baseline: benchmarks/gpu/README.md). Inputs are
synthetic; writes DIR/involution.json and .md when --out is given. Exit status 1 when any part failed.
"""

from __future__ import annotations

import argparse
import json

from cmir_trt.gpu.bench import OFFICIAL_INVOLUTION_DEFAULT, run_gpu_benchmarks, to_markdown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples per figure (every shape and precision stays)")
    p.add_argument("--out", default=None, help="folder for involution.json / involution.md")
    p.add_argument("--official-involution", default=str(OFFICIAL_INVOLUTION_DEFAULT), metavar="PATH",
                   help="d-li14/involution's cls/mmcls/models/utils/involution_cuda.py (read, never imported; "
                        "default: %(default)s)")
    args = p.parse_args()
    res = run_gpu_benchmarks(args.out, parts=("involution",), quick=args.quick, name="involution",
                             official_involution=args.official_involution)
    print(to_markdown(res))
    if res["failures"]:
        print(json.dumps(res["failures"], indent=2))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small GPU self-check without pytest: each CUDA op vs its float64 reference on tiny shapes (and, without --small,
the GPU backend vs the CPU model). Also the workload that benchmarks/gpu/run.sh runs under compute-sanitizer.

    python benchmarks/gpu/smoke.py [--small] [--json FILE]
Exit status 0 when every check is within its tolerance (normwise relative error vs float64: fp32 2e-5 / 1e-4,
fp16 2e-3, bf16 1.6e-2). Inputs are synthetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

import torch

from cmir_trt import ops
from cmir_trt.model.cmam import CMAM
from cmir_trt.model.involution import Involution2d
from cmir_trt.ops import reference as R

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp32": 2e-5, "fp16": 2e-3, "bf16": 1.6e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run(small: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    g = torch.Generator(device="cuda").manual_seed(1234)

    def record(name: str, err: float, tol: float) -> None:
        out.append({"check": name, "rel_err": err, "tol": tol, "ok": err <= tol})

    for prec, dt in DTYPES.items():
        for b, c, h, w, k, s, gc in ((2, 48, 13, 13, 7, 2, 16), (1, 16, 7, 7, 3, 1, 16), (1, 32, 11, 11, 9, 1, 16)):
            ho, wo = -(-h // s), -(-w // s)
            x = torch.randn(b, c, h, w, device="cuda", generator=g).to(dt)
            kern = (torch.randn(b, c // gc, k, k, ho, wo, device="cuda", generator=g) / k).to(dt)
            record(f"involution {prec} {b}x{c}x{h}x{w} K{k} s{s}", rel(ops.involution(x, kern, k, s),
                                                                     R.involution_ref(x, kern, k, s)), TOL[prec])
        for b, c, h, w, k, s, gc in ((2, 32, 9, 10, 3, 2, 8), (1, 48, 13, 13, 7, 1, 16)):
            m = Involution2d(c, k, s, gc).cuda().eval()
            gen = ops.fold_generator(m)
            x = torch.randn(b, c, h, w, device="cuda", generator=g).to(dt)
            y = ops.involution_fused(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc)
            ref = R.involution_fused_ref(x, gen["w1"], gen["b1"], gen["w2"], gen["b2"], k, s, gc)
            record(f"involution_fused {prec} {b}x{c}x{h}x{w} K{k} s{s}", rel(y, ref), max(TOL[prec], 1e-4))
        for b, c, h, w, d, heads in ((2, 64, 4, 4, 32, 4), (1, 48, 3, 5, 24, 3), (1, 96, 8, 9, 64, 2)):
            m = CMAM(c, heads, d).cuda().eval()
            wa, wp = (t.to(dt) for t in ops.pack_cmam_module(m))
            art = torch.randn(b, c, h, w, device="cuda", generator=g).to(dt)
            pv = torch.randn(b, c, h, w, device="cuda", generator=g).to(dt)
            oa, op = ops.cmam(art, pv, wa, wp, heads)
            ra, rp = R.cmam_ref(art, pv, wa, wp, heads)
            record(f"cmam {prec} {b}x{c}x{h}x{w} d{d} h{heads}", max(rel(oa, ra), rel(op, rp)), max(TOL[prec], 1e-4))
    torch.cuda.synchronize()
    if not small:
        from cmir_trt.gpu import TorchCudaBackend
        from cmir_trt.model.cmir import CMIRConfig, build_model

        torch.manual_seed(0)
        model = build_model(CMIRConfig(width=0.25, image_size=64, cmam_dim=64, cmam_heads=4)).eval()
        art, pv, clin = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 8)
        with torch.no_grad():
            ref = model(art, pv, clin)
        for graph in (False, True):
            pred = TorchCudaBackend(model, "fp32", cuda_graph=graph).predict(art.numpy(), pv.numpy(), clin.numpy())
            err = float(abs(pred.probability - ref.probability.numpy()).max())
            out.append({"check": f"backend fp32 graph={graph} max|dprob|", "abs_err": err, "tol": 2e-3,
                        "ok": err <= 2e-3})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="ops only (the compute-sanitizer case)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    try:
        results = run(args.small)
    except Exception as exc:
        traceback.print_exc()
        results = [{"check": "smoke run", "ok": False, "error": f"{type(exc).__name__}: {exc}"}]
    for r in results:
        print(("ok   " if r["ok"] else "FAIL ") + json.dumps(r))
    if args.json:
        from cmir_trt._io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"note": "synthetic inputs", "checks": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The compute-sanitizer workload of benchmarks/gpu/run.sh: only our CUDA kernels run on the device.

Inputs, weights and the float64 references are made on the CPU; the device sees host-to-device copies, our kernels
(involution plain / with the BN-ReLU epilogue / generic K, fused involution, CMAM, pointwise convolution with its
bias / residual / ReLU epilogue, with K split over blocks and with a projection shortcut, implicit-GEMM conv2d,
spatial attention) on small odd shapes in fp32, fp16 and bf16, and device-to-host copies — so memcheck and racecheck
instrument our kernels and nothing of PyTorch's.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_ops.py [--json FILE]
Exit status 0 when every output is within tolerance (normwise vs float64: fp32 1e-4, fp16 4e-3, bf16 3e-2), 1 when
not, 2 on an error. Inputs are synthetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

TOL = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}
DEVICE = "cuda"  # the host-side test runs the script's checks on "cpu" with reference stand-ins for the ops


def _rel(y: Any, ref: Any) -> float:
    y = y.double()
    if not bool(y.isfinite().all()):
        return float("inf")
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def run() -> list[dict[str, Any]]:
    import torch

    from cmir_trt import ops
    from cmir_trt.model.cmam import CMAM
    from cmir_trt.model.involution import Involution2d
    from cmir_trt.ops import reference as R

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    g = torch.Generator().manual_seed(7)
    out: list[dict[str, Any]] = []

    def dev(t: Any, dt: Any) -> Any:  # rounded on the CPU, then one host-to-device copy
        return t.to(dt).contiguous().to(DEVICE)

    def check(name: str, prec: str, y: Any, ref: Any) -> None:
        err = _rel(y.cpu(), ref)
        out.append({"check": f"{name} {prec}", "rel_err": err, "tol": TOL[prec], "ok": err <= TOL[prec]})

    for prec, dt in dtypes.items():
        # stride 2 and K 9: CUDA-core kernel; (1, 16, 7, 7, 3, 1) and (1, 32, 8, 40, 5, 1) in fp16/bf16: tensor cores
        inv_cases = ((2, 48, 13, 11, 7, 2), (1, 16, 7, 7, 3, 1), (1, 32, 9, 10, 9, 1), (1, 32, 8, 40, 5, 1))
        for b, c, h, w, k, s in inv_cases:
            ho, wo = -(-h // s), -(-w // s)
            x = torch.randn(b, c, h, w, generator=g).to(dt)
            kern = (torch.randn(b, c // 16, k, k, ho, wo, generator=g) / k).to(dt)
            scale, shift = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
            ref = R.involution_ref(x.double(), kern.double(), k, s)
            check(f"involution {b}x{c}x{h}x{w} K{k} s{s}", prec, ops.involution(dev(x, dt), dev(kern, dt), k, s), ref)
            ref = R.involution_ref(x.double(), kern.double(), k, s, scale.double(), shift.double(), True)
            y = ops.involution(dev(x, dt), dev(kern, dt), k, s, dev(scale, torch.float32),
                               dev(shift, torch.float32), True)
            check(f"involution+bn+relu {b}x{c}x{h}x{w} K{k} s{s}", prec, y, ref)
        for b, c, h, w, k, s, gc in ((2, 32, 9, 10, 3, 2, 8), (1, 48, 13, 13, 7, 1, 16)):
            gen = ops.fold_generator(Involution2d(c, k, s, gc).eval())
            x = torch.randn(b, c, h, w, generator=g).to(dt)
            ref = R.involution_fused_ref(x.double(), *(gen[n].double() for n in ("w1", "b1", "w2", "b2")), k, s, gc)
            y = ops.involution_fused(dev(x, dt), *(dev(gen[n], torch.float32) for n in ("w1", "b1", "w2", "b2")),
                                     k, s, gc)
            check(f"involution_fused {b}x{c}x{h}x{w} K{k} s{s}", prec, y, ref)
        # the last: fp16/bf16 on the mma.sync tiles on a 132-SM card (Q/K/V split 2 ways, output projections too)
        for b, c, h, w, d, heads in ((2, 64, 4, 4, 32, 4), (1, 48, 3, 5, 24, 3), (96, 520, 2, 4, 136, 4)):
            wa, wp = (t.to(dt) for t in ops.pack_cmam_module(CMAM(c, heads, d).eval()))
            art = torch.randn(b, c, h, w, generator=g).to(dt)
            pv = torch.randn(b, c, h, w, generator=g).to(dt)
            ra, rp = R.cmam_ref(art.double(), pv.double(), wa.double(), wp.double(), heads)
            oa, op = ops.cmam(dev(art, dt), dev(pv, dt), wa.to(DEVICE), wp.to(DEVICE), heads)
            check(f"cmam art {b}x{c}x{h}x{w} d{d} h{heads}", prec, oa, ra)
            check(f"cmam pv {b}x{c}x{h}x{w} d{d} h{heads}", prec, op, rp)
        # odd Cin/Cout and H*W (partial tiles, the unaligned-W path); with and without residual and ReLU; K split
        # over blocks through a workspace (1030 channels on a 3x5 map: 7 splits, the last block of each tile sums)
        for b, cin, cout, h, w, res, relu in ((2, 20, 36, 5, 7, True, True), (1, 64, 48, 9, 9, False, False),
                                              (1, 1030, 40, 3, 5, True, True)):
            x = torch.randn(b, cin, h, w, generator=g).to(dt)
            wt = (torch.randn(cout, cin, generator=g) / cin ** 0.5).to(dt)
            bias = torch.randn(cout, generator=g).to(dt)
            r = torch.randn(b, cout, h, w, generator=g).to(dt) if res else None
            ref = R.pointwise_conv_ref(x.double(), wt.double(), bias.double(), None if r is None else r.double(),
                                       relu)
            xd, wd = dev(x, dt), dev(wt, dt)
            ws = ops.pointwise_workspace(xd, wd) if DEVICE == "cuda" else None
            y = ops.pointwise_conv(xd, wd, dev(bias, dt), None if r is None else dev(r, dt), relu, workspace=ws)
            check(f"pointwise_conv {b}x{cin}->{cout}x{h}x{w}{' +res' if res else ''}{' relu' if relu else ''}"
                  f"{' split-K' if ws is not None else ''}", prec, y, ref)
        # conv3 + strided projection shortcut (gathered A segment), odd map, K split over blocks
        b, cin, cout, h, w, cs, hs, ws_, stride = 1, 256, 40, 3, 5, 520, 5, 9, 2
        x = torch.randn(b, cin, h, w, generator=g).to(dt)
        sc = torch.randn(b, cs, hs, ws_, generator=g).to(dt)
        wt = (torch.randn(cout, cin + cs, generator=g) / (cin + cs) ** 0.5).to(dt)
        bias = torch.randn(cout, generator=g).to(dt)
        ref = R.pointwise_conv_ref(x.double(), wt.double(), bias.double(), None, True, sc.double(), stride)
        xd, wd = dev(x, dt), dev(wt, dt)
        ws = ops.pointwise_workspace(xd, wd) if DEVICE == "cuda" else None
        y = ops.pointwise_conv(xd, wd, dev(bias, dt), None, True, workspace=ws, shortcut=dev(sc, dt),
                               shortcut_stride=stride)
        check(f"pointwise_conv {b}x{cin}+{cs}->{cout}x{h}x{w} shortcut s{stride}", prec, y, ref)
        # implicit-GEMM convolution: a 3x3 stride-2 padded conv on an odd map, and a 2x2 stride-2 one with K split
        for b, cin, cout, h, w, k, s, p in ((2, 5, 9, 11, 9, 3, 2, 1), (1, 256, 40, 6, 6, 2, 2, 0)):
            x = torch.randn(b, cin, h, w, generator=g).to(dt)
            wt = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).to(dt)
            bias = torch.randn(cout, generator=g).to(dt)
            ref = R.conv2d_ref(x.double(), wt.double(), bias.double(), None, True, s, p)
            xd, wd = dev(x, dt), dev(wt, dt)
            ws = ops.conv2d_workspace(xd, wd, s, p) if DEVICE == "cuda" else None
            y = ops.conv2d(xd, wd, dev(bias, dt), None, True, s, p, workspace=ws)
            check(f"conv2d {b}x{cin}->{cout}x{h}x{w} k{k} s{s} p{p}", prec, y, ref)
        # spatial attention of two maps (the a/p boundary inside a 32-channel slice; more pixels than threads)
        for b, ca, cp, h, w, k in ((2, 20, 28, 5, 6, 7), (1, 8, 40, 17, 19, 3)):
            a = torch.randn(b, ca, h, w, generator=g).to(dt)
            pm = torch.randn(b, cp, h, w, generator=g).to(dt)
            wt = torch.randn(1, 2, k, k, generator=g) / k
            bias = torch.randn(1, generator=g) * 0.3
            refs = R.spatial_attention_ref(a.double(), pm.double(), wt.double(), bias.double())
            got = ops.spatial_attention(dev(a, dt), dev(pm, dt), dev(wt, torch.float32), dev(bias, torch.float32))
            for name, y, ref in zip(("a", "p", "att"), got, refs, strict=True):
                check(f"spatial_attention {b}x{ca}+{cp}x{h}x{w} k{k} {name}", prec, y, ref)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the checks here (synthetic inputs)")
    args = p.parse_args()
    try:
        results = run()
    except Exception as exc:
        traceback.print_exc()
        print(f"sanitize_ops: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(("ok   " if r["ok"] else "FAIL ") + json.dumps(r))
    if args.json:
        from cmir_trt._io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps({"note": "synthetic inputs", "checks": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Native engine: fused involution (kernel generation + aggregation + BN/ReLU in one op, the plan default) vs the
unfused plan (avg-pool, two oneDNN 1x1 convs, aggregation with BN/ReLU epilogue), same weights, interleaved runs.

    .venv/bin/python benchmarks/bench_involution_fusion.py [--image-size 128] [--repeats 30] [--threads 1,2]

Prints a Markdown table (median and min ms after warm-up; outputs compared) and writes it as JSON with --json.
Never collected by pytest; the inputs are synthetic random arrays and the weights untrained (randomised BN
statistics) — speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numpy as np
    import torch

    import cmir_trt
    from cmir_trt._io import atomic_write_text
    from cmir_trt.export.plan import export_plan
    from cmir_trt.model import CMIRConfig, build_model

    torch.manual_seed(0)
    cfg = CMIRConfig(variant="full", image_size=args.image_size, width=args.width)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    work = Path(tempfile.mkdtemp(prefix="cmir-fusion-"))
    plans = {"fused": export_plan(model, work / "fused.plan", fuse_involution=True),
             "unfused": export_plan(model, work / "unfused.plan", fuse_involution=False)}
    rng = np.random.default_rng(0)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        engines = {k: cmir_trt.Engine(str(p), backend="native", threads=threads) for k, p in plans.items()}
        for batch in [int(b) for b in args.batch.split(",")]:
            s = cfg.image_size
            art = rng.standard_normal((batch, 3, s, s), dtype=np.float32)
            pv = rng.standard_normal((batch, 3, s, s), dtype=np.float32)
            clin = rng.standard_normal((batch, cfg.num_clinical), dtype=np.float32)
            outs = {k: e.predict(art, pv, clin) for k, e in engines.items()}
            for _ in range(args.warmup):
                for e in engines.values():
                    e.predict(art, pv, clin)
            times: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
                for k, e in engines.items():
                    t0 = time.perf_counter()
                    e.predict(art, pv, clin)
                    times[k].append((time.perf_counter() - t0) * 1e3)
            diff = float(np.abs(outs["fused"].logit - outs["unfused"].logit).max())
            row = {"threads": threads, "batch": batch, "max_abs_logit_diff": diff}
            for k, ts in times.items():
                row[f"{k}_median_ms"] = statistics.median(ts)
                row[f"{k}_min_ms"] = min(ts)
            row["speedup_median"] = row["unfused_median_ms"] / row["fused_median_ms"]
            rows.append(row)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# Fused vs unfused involution in the native engine ({when}, {os.cpu_count()} cores, full CMIR "
          f"S={cfg.image_size} width {cfg.width}, synthetic random inputs)\n")
    print(f"command: `python {' '.join(sys.argv)}`; load average {os.getloadavg()}\n")
    print("| threads | batch | unfused median ms | fused median ms | unfused min ms | fused min ms | speed-up (median) "
          "| max abs logit diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['threads']} | {r['batch']} | {r['unfused_median_ms']:.2f} | {r['fused_median_ms']:.2f} | "
              f"{r['unfused_min_ms']:.2f} | {r['fused_min_ms']:.2f} | {r['speedup_median']:.2f}x | "
              f"{r['max_abs_logit_diff']:.2e} |")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"date": when, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

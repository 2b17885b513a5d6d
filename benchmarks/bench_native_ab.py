"""A/B of the native engine between two builds on one machine: a baseline build of another revision vs this working
tree, alternating child processes (so machine noise hits both alike), each timing --repeats runs after warm-up;
reported: the median of the per-process medians and the ratio. Used to check "fp32 native unchanged or faster".

    git worktree add /tmp/base <rev>
    (cd /tmp/base && .venv/bin/python -m pip install --no-build-isolation --no-deps --target /tmp/base-pkg .)
    .venv/bin/python benchmarks/bench_native_ab.py --baseline /tmp/base-pkg [--batch 1,8] [--rounds 5]

The model is the untrained full CMIR (width 1, S=128) exported to a plan by this tree; inputs are synthetic random
arrays (speed does not depend on them). Never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import os, sys
if os.environ.get("CMIR_AB_BASELINE"):
    # The editable install's redirecting finder would import this tree again: drop it so PYTHONPATH's build loads.
    sys.meta_path = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
import json, time
import numpy as np
import cmir_trt
plan, batch, repeats, precision, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
c = rng.standard_normal((batch, 8), dtype=np.float32)
kw = {} if precision == "fp32" else {"precision": precision}
e = cmir_trt.Engine(plan, threads=2, **kw)
for _ in range(3):
    e.predict(x, x, c)
ts = []
for _ in range(repeats):
    time.sleep(0.02)
    t = time.perf_counter()
    e.predict(x, x, c)
    ts.append(time.perf_counter() - t)
print(json.dumps({"module": cmir_trt.__file__, "median_ms": float(np.median(ts) * 1e3)}))
'''


def _child(plan: Path, batch: int, repeats: int, precision: str, size: int, baseline: str | None) -> dict:
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = baseline
        env["CMIR_AB_BASELINE"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD, str(plan), str(batch), str(repeats), precision, str(size)],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="folder of the baseline build (pip install --target DIR)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--rounds", type=int, default=5, help="child processes per side and batch")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per child")
    ap.add_argument("--precision", default="fp32", help="precision of both sides (the baseline must support it)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    args = ap.parse_args()
    import torch

    from cmir_trt._machine import cpu_name
    from cmir_trt.export.plan import export_plan
    from cmir_trt.model import CMIRConfig, build_model

    torch.manual_seed(0)
    model = build_model(CMIRConfig(variant="full", width=args.width, image_size=args.image_size)).eval()
    work = Path(tempfile.mkdtemp(prefix="cmir-ab-"))
    plan = export_plan(model, work / "model.plan")
    print(f"# native A/B, {args.precision}, full CMIR width {args.width:g} S={args.image_size}, 2 threads; "
          f"{cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f} (synthetic inputs)")
    for batch in [int(b) for b in args.batch.split(",")]:
        res: dict[str, list[float]] = {"baseline": [], "tree": []}
        repeats = args.repeats if batch == 1 else max(5, args.repeats // 2)
        for r in range(args.rounds):
            for side in ("baseline", "tree"):
                d = _child(plan, batch, repeats, args.precision, args.image_size,
                           args.baseline if side == "baseline" else None)
                if r == 0:
                    print(f"  {side}: {d['module']}")
                res[side].append(d["median_ms"])
        b, t = statistics.median(res["baseline"]), statistics.median(res["tree"])
        print(f"batch {batch}: baseline {b:.2f} ms, this tree {t:.2f} ms, tree/baseline {t / b:.3f} "
              f"(per-process medians: baseline {[round(v, 2) for v in res['baseline']]}, "
              f"tree {[round(v, 2) for v in res['tree']]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

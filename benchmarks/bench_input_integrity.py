"""What the file-integrity check costs (issue 15): verify_image_file (header vs data bytes, compressed streams read
to their end) next to SimpleITK's own ReadImage of the same file, for one clinical-size MRI volume in each format.

    .venv/bin/python benchmarks/bench_input_integrity.py [--size 384 384 72] [--runs 7] [--out FILE.md]

Median of --runs timed runs after one warm-up, the two readers interleaved; the file is in the page cache (what a
second read of a case costs). Wall-clock on whatever else the machine is doing; the Markdown says when and where.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cmir_trt._machine import cpu_name


def main(argv: list[str] | None = None) -> int:
    import SimpleITK as sitk

    from cmir_trt._io import atomic_write_text
    from cmir_trt.data.integrity import verify_image_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=(384, 384, 72), metavar=("X", "Y", "Z"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the Markdown table here as well")
    args = ap.parse_args(argv)
    x, y, z = args.size
    rng = np.random.default_rng(0)
    # MRI-like int16: smooth anatomy + noise (compresses like real scans, not like zeros)
    base = np.cumsum(rng.integers(-3, 4, size=(z, y, x)), axis=2).astype(np.int16)
    vol = (base + rng.integers(0, 40, size=base.shape)).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 3.0))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, compress in (("vol.nii", False), ("vol.nii.gz", True), ("vol.nrrd", True), ("vol.mha", True)):
            p = Path(d) / name
            sitk.WriteImage(img, str(p), compress)
            verify_image_file(p)
            sitk.ReadImage(str(p))  # warm-up: page cache, ITK factories
            t_check, t_read = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                verify_image_file(p)
                t1 = time.perf_counter()
                sitk.ReadImage(str(p))
                t2 = time.perf_counter()
                t_check.append((t1 - t0) * 1e3)
                t_read.append((t2 - t1) * 1e3)
            c, r = statistics.median(t_check), statistics.median(t_read)
            rows.append(f"| {name} | {p.stat().st_size / 2**20:.1f} | {c:.1f} | {r:.1f} | {c / r:.2f} |")
    load = os.getloadavg()[0]
    head = (f"Input-integrity check vs SimpleITK read, {x}x{y}x{z} int16 ({vol.nbytes / 2**20:.1f} MiB raw); "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, {os.cpu_count()} cores, "
            f"load {load:.1f}; median of {args.runs} runs\n\n"
            f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n\n"
            "| file | MiB on disk | verify_image_file ms | sitk.ReadImage ms | check / read |\n"
            "|---|---:|---:|---:|---:|\n")
    text = head + "\n".join(rows) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of `cmir-trt dicom-node`: from the last instance of a study received to its result stored (SR + SC
written, job `stored`) and to its result delivered (C-STORE acknowledged by the destination), p50/p95 over N studies.

    .venv/bin/python benchmarks/bench_dicom_node.py [--studies 20] [--idle 1.0] [--model M] [--out DIR]

Inputs: the SYNTHETIC DICOM cohort (`cmir-trt synth --format dicom --preset tiny`, 96 x 96 x 16-32 voxels per
phase, PV on its own grid for two centres) and, by default, models/cmir-demo.pt (full CMIR, S = 128, trained on
SYNTHETIC data) exported to a native plan. Studies are sent one after another, one association each, to a node on
127.0.0.1 that forwards results to a recording destination in this process. Times come from the node's job table
(last_instance_at, stored_at, sent_at). "stored" includes the --idle wait that decides a study is complete; the
"processing" column subtracts it. Writes OUT/dicom_node.json and prints a Markdown table. Never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _percentile(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--idle", type=float, default=1.0, help="the node's --idle (seconds)")
    ap.add_argument("--model", default=None, help="plan/checkpoint (default: models/cmir-demo.pt as a plan)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from cmir_trt._io import atomic_write_text
    from cmir_trt.dicom.node import Destination, send_files

    work = Path(tempfile.mkdtemp(prefix="bench_dicom_node."))
    cohort = work / "cohort"
    subprocess.run([sys.executable, "-m", "cmir_trt", "synth", "--format", "dicom", "--preset", "tiny", "--out",
                    str(cohort), "--no-progress"], check=True, cwd=REPO)
    studies = sorted(p for p in (cohort / "dicom").iterdir() if p.is_dir())[: args.studies]
    if len(studies) < args.studies:
        raise SystemExit(f"the tiny cohort has only {len(studies)} studies")
    model = args.model
    model_name = model or "models/cmir-demo.pt (exported to a native plan)"
    if model is None:
        from cmir_trt.export.plan import export_plan

        model = str(export_plan(str(REPO / "models" / "cmir-demo.pt"), work / "demo.plan"))

    received: list[tuple[float, str]] = []
    lock = threading.Lock()

    def on_store(event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        with lock:
            received.append((time.time(), str(ds.StudyInstanceUID)))
        return 0

    dest_ae = AE(ae_title="DEST")
    dest_ae.supported_contexts = AllStoragePresentationContexts
    dest = dest_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    store, log = work / "store", work / "node.log"
    with open(log, "wb") as f:
        node = subprocess.Popen(
            [sys.executable, "-m", "cmir_trt", "dicom-node", "--model", model, "--store", str(store), "--host",
             "127.0.0.1", "--port", "0", "--idle", str(args.idle), "--threads", str(args.threads), "--clinical",
             str(cohort / "clinical.csv"), "--send-to", f"DEST@127.0.0.1:{dest.server_address[1]}"],
            stdout=subprocess.DEVNULL, stderr=f, cwd=REPO)
    try:
        port = None
        end = time.time() + 120
        while port is None and time.time() < end:
            time.sleep(0.2)
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                if '"event": "listening"' in line:
                    port = json.loads(line)["port"]
        if port is None:
            raise SystemExit("the node did not start:\n" + log.read_text(encoding="utf-8", errors="replace"))
        # Warm-up: one study through the whole path (imports, first engine run), not counted.
        warm = sorted(p for p in (cohort / "dicom").iterdir() if p.is_dir())[-1]
        send_files(Destination("CMIR", "127.0.0.1", port), sorted(warm.rglob("*.dcm")), "BENCH")
        n_expected = 2
        for st in studies:
            send_files(Destination("CMIR", "127.0.0.1", port), sorted(st.rglob("*.dcm")), "BENCH")
        n_expected += 2 * len(studies)
        end = time.time() + 600
        while time.time() < end:
            with lock:
                if len(received) >= n_expected:
                    break
            time.sleep(0.2)
    finally:
        node.terminate()
        node.wait(60)
        dest.shutdown()
    db = sqlite3.connect(store / "jobs.sqlite")
    rows = db.execute("SELECT job_id, state, last_instance_at, stored_at, sent_at, instances FROM jobs "
                      "ORDER BY job_id").fetchall()[1:]  # the first job is the warm-up
    bad = [r for r in rows if r[1] != "sent"]
    if len(rows) != len(studies) or bad:
        raise SystemExit(f"expected {len(studies)} sent jobs, got {len(rows)} ({len(bad)} not sent); log {log}")
    stored = [r[3] - r[2] for r in rows]
    sent = [r[4] - r[2] for r in rows]
    proc = [s - args.idle for s in stored]
    res = {"studies": len(rows), "idle_s": args.idle, "threads": args.threads, "model": model_name,
           "instances_per_study": [r[5] for r in rows],
           "stored_s": {"p50": _percentile(stored, 50), "p95": _percentile(stored, 95)},
           "processing_s": {"p50": _percentile(proc, 50), "p95": _percentile(proc, 95)},
           "delivered_s": {"p50": _percentile(sent, 50), "p95": _percentile(sent, 95)},
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
           "command": " ".join(["python", *sys.argv]), "synthetic": True}
    out = Path(args.out)
    atomic_write_text(out / "dicom_node.json", json.dumps(res, indent=2) + "\n")
    print(f"SYNTHETIC studies: {len(rows)} ({min(res['instances_per_study'])}-{max(res['instances_per_study'])} "
          f"instances each), --idle {args.idle} s, {args.threads} threads")
    print("| from last instance received to | p50 s | p95 s |\n|---|---:|---:|")
    for key, label in (("stored_s", "result stored (incl. idle)"), ("processing_s", "result stored minus idle"),
                       ("delivered_s", "result delivered (C-STORE acknowledged)")):
        print(f"| {label} | {res[key]['p50']:.3f} | {res[key]['p95']:.3f} |")
    print(f"wrote {out / 'dicom_node.json'}")
    shutil.rmtree(work, ignore_errors=True)  # kept (with the node's log) only when something failed
    return 0


if __name__ == "__main__":
    sys.exit(main())

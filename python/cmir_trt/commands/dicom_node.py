"""`cmir-trt dicom-node`: a DICOM node that receives studies by C-STORE, runs CMIR and sends SR + SC back.

See cmir_trt.dicom.node for the behaviour and docs/dicom.md for a walk-through. `--status` prints the job table.
"""

from __future__ import annotations

import argparse

HELP = "DICOM node: receive studies by C-STORE, predict, send SR + heatmap SC to a PACS (research use only)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model.plan, checkpoint.pt or TensorRT engine (required unless --status)")
    p.add_argument("--store", required=True, help="folder for received instances, results and the job table")
    p.add_argument("--ae-title", default="CMIR", help="this node's AE title (default CMIR)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all interfaces)")
    p.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112; 0 = any free port)")
    p.add_argument("--send-to", default=None, metavar="AE@HOST:PORT",
                   help="destination of the SR and SC (without it results stay in STORE/results)")
    p.add_argument("--idle", type=float, default=10.0,
                   help="a study is complete when no instance arrived for this many seconds (default 10)")
    p.add_argument("--clinical", default=None,
                   help="clinical CSV; its case_id column holds StudyInstanceUID, AccessionNumber or PatientID")
    p.add_argument("--segment", default=None, help="SEG segment to use as the tumour: a label or a number "
                                                   "(default: the only segment, else the one labelled tumor)")
    p.add_argument("--series-rules", default=None, help="phase rules JSON (default: the shipped rules)")
    p.add_argument("--send-attempts", type=int, default=20, help="C-STORE attempts per result before giving up")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each time)")
    p.add_argument("--max-backoff", type=float, default=60.0, help="longest retry delay in seconds")
    p.add_argument("--max-associations", type=int, default=10, help="concurrent associations accepted")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", default="auto", help="engine backend (auto, native, torch, tensorrt)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="engine precision (default fp32); bf16: the native engine on a CPU with avx512_bf16 or AMX; "
                        "fp16/bf16 with --device cuda")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--status", action="store_true", help="print the job table of --store and exit")


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    if args.status:
        from ..dicom.jobs import JobStore, format_table

        store = JobStore(args.store, readonly=True)
        print(format_table(store.rows()))
        store.close()
        return 0
    if not args.model:
        raise ValueError("--model is required (or --status)")
    if args.idle < 0 or args.send_attempts < 1 or args.backoff < 0 or args.max_backoff < 0:
        raise ValueError("--idle, --backoff and --max-backoff must be >= 0 and --send-attempts >= 1")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if not 1 <= len(args.ae_title) <= 16:
        raise ValueError(f"--ae-title must have 1-16 characters, got {args.ae_title!r}")
    if args.clinical and not Path(args.clinical).is_file():
        raise FileNotFoundError(f"clinical CSV not found: {args.clinical}")

    from .. import Predictor
    from ..dicom.node import Destination, DicomNode, EventLog, NodeConfig, route_library_logs

    dest = Destination.parse(args.send_to) if args.send_to else None
    log = EventLog()
    route_library_logs(log)  # stderr stays one JSON object per line
    predictor = Predictor(args.model, device=args.device, threads=args.threads, backend=args.backend,
                          threshold=args.threshold, precision=args.precision)
    log("model_loaded", model=predictor.model_id, threshold=predictor.threshold, synthetic=predictor.synthetic,
        precision=predictor.precision)
    if predictor.precision_note:
        log("warning", message=predictor.precision_note)
    segment = int(args.segment) if args.segment and args.segment.isdigit() else args.segment
    cfg = NodeConfig(store=Path(args.store), ae_title=args.ae_title, host=args.host, port=args.port,
                     destination=dest, idle_s=args.idle, send_attempts=args.send_attempts, backoff_s=args.backoff,
                     max_backoff_s=args.max_backoff, segment=segment, series_rules=args.series_rules,
                     clinical_csv=Path(args.clinical) if args.clinical else None,
                     max_associations=args.max_associations)
    node = DicomNode(predictor, cfg, log)

    def _stop(signum: int, _frame: object) -> None:
        log("signal", signal=signal.Signals(signum).name)
        node.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.start()
    node.wait()
    node.stop()
    return 0

"""The DICOM node: studies arrive by C-STORE, a durable job table, CMIR runs, SR + SC go back by C-STORE.

Receiving (pynetdicom SCP, several associations at once): C-ECHO; C-STORE of MR Image and Segmentation objects.
Each instance is checked (decodable, the UIDs it is filed under are real UIDs, pixel data as long as its header
says), written atomically and fsynced to STORE/studies/<study>/<series>/<sop>.dcm, recorded in the job table, and
only then acknowledged. A malformed instance gets a failure status (0xC210) and a log line; the node keeps serving.
Processing (one worker thread): a study is due when no instance arrived for `idle` seconds and no open association is
still in the middle of it (its latest instance was of that study: a slow sender is not cut off); ART/PV by the series
rules, the mask is the SEG on ART; the Predictor runs; SR + SC + result.json go to STORE/results/<job>/.
Instances of a study that arrive after its job was claimed open a new job for the updated study (a new SR/SC).
Sending (one sender thread): C-STORE of SR and SC to the destination; on failure the job stays `stored` and is
retried with exponential back-off, until `send_attempts` is used up (then `failed` with the reason).
Restart after a crash or kill -9: `running` jobs go back to `received`; `stored` ones are sent. The SR/SC UIDs derive
from the study's instances and the model, so a job re-run after a crash produces the same objects.
Log: one JSON object per line and event on stderr (ts, event, fields).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._io import atomic_write_bytes, atomic_write_text
from ._common import MR_IMAGE_STORAGE, SEGMENTATION_STORAGE
from .jobs import JobStore

ACCEPTED = {MR_IMAGE_STORAGE: "MR Image", SEGMENTATION_STORAGE: "Segmentation"}
STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_OUT_OF_RESOURCES = 0xA700
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DEST_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """AE@HOST:PORT, e.g. PACS@10.0.0.5:104."""
        m = _DEST_RE.match(text.strip())
        if not m or not 0 < int(m.group("port")) < 65536:
            raise ValueError(f"destination must be AE@HOST:PORT (AE title of 1-16 characters), got {text!r}")
        return cls(m.group("ae"), m.group("host"), int(m.group("port")))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    store: Path
    ae_title: str = "CMIR"
    host: str = "0.0.0.0"
    port: int = 11112
    destination: Destination | None = None
    idle_s: float = 10.0
    send_attempts: int = 20
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_runs: int = 3
    segment: int | str | None = None
    series_rules: str | None = None
    clinical_csv: Path | None = None
    max_associations: int = 10
    timeout_s: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """One JSON object per line and event: {"ts": ISO time, "event": name, ...fields}."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        t = time.time()
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z",
               "event": event, **fields}
        line = json.dumps(rec, default=str, sort_keys=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _LogBridge(logging.Handler):
    """Library log records (pynetdicom, pydicom, Python warnings) as EventLog lines, so stderr stays one JSON object
    per line."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().strip().splitlines()
            self._log("library_log", logger=record.name, level=record.levelname, message=(msg[0] if msg else "")[:300])
        except Exception:  # noqa: BLE001 - logging must never break the node
            self.handleError(record)


def route_library_logs(log: EventLog) -> None:
    """Send WARNING+ records of pynetdicom/pydicom and Python warnings through `log` (and nowhere else)."""
    logging.captureWarnings(True)
    bridge = _LogBridge(log)
    for name in ("pynetdicom", "pydicom", "highdicom", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers = [bridge]
        lg.propagate = False
        lg.setLevel(logging.WARNING)


def _fsync(path: Path) -> None:
    # The rename is atomic, but "on disk before the acknowledgement" also needs the bytes and the directory entry
    # flushed: a power cut after the peer saw success must not lose the instance.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_instance(raw: bytes) -> Any:
    """Decode a received Part 10 byte string and check what the node relies on; returns the dataset or raises
    ValueError with one line naming the problem."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        ds.decode()  # touch every element: truncated values raise here, not later in the worker
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken data
        raise ValueError(f"cannot decode the dataset: {type(exc).__name__}: {exc}".splitlines()[0][:300]) from exc
    for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(getattr(ds, name, "") or "")
        if not (_UID_RE.match(value) and len(value) <= 64):
            raise ValueError(f"{name} missing or not a DICOM UID ({value[:70]!r})")
    if str(ds.SOPClassUID) not in ACCEPTED:
        raise ValueError(f"SOP class {ds.SOPClassUID} is not MR Image or Segmentation")
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not pydicom.uid.UID(str(ts)).is_compressed:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            bits, spp = int(ds.BitsAllocated), int(getattr(ds, "SamplesPerPixel", 1) or 1)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"image pixel module incomplete: {exc}") from exc
        need = (rows * cols * frames * spp * bits + 7) // 8
        have = len(ds.PixelData)
        if have < need:
            raise ValueError(f"pixel data truncated: {have} bytes, {need} expected for {rows}x{cols}x{frames} "
                             f"at {bits} bits")
    return ds


class DicomNode:
    """Receive, process, send. `predictor` is a cmir_trt.Predictor (anything with predict_images and schema)."""

    def __init__(self, predictor: Any, config: NodeConfig, log: EventLog | None = None) -> None:
        self.predictor = predictor
        self.cfg = config
        self.log = log or EventLog()
        self.store = Path(config.store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.store)
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self.port: int | None = None
        self._busy_lock = threading.Lock()
        # open association -> the study it sent its latest instance of (an association that moved on to another
        # study has finished the previous one; a PACS may keep one association open for many studies)
        self._busy: dict[int, str] = {}

    # ---------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> int:
        """Recover after a crash, start the worker and sender threads and the SCP; returns the listening port."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import MRImageStorage, SegmentationStorage, Verification  # type: ignore

        for job_id, state in self.jobs.recover(self.cfg.max_runs):
            self.log("job_recovered", job=job_id, state=state)
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = self.cfg.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.cfg.timeout_s
        for ctx in (Verification, MRImageStorage, SegmentationStorage):
            ae.add_supported_context(ctx)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_ABORTED, self._on_aborted),
                    (evt.EVT_CONN_CLOSE, self._assoc_done)]  # a dropped connection must not keep a study busy
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        for target, name in ((self._work_loop, "cmir-worker"), (self._send_loop, "cmir-sender")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.log("listening", ae_title=self.cfg.ae_title, host=self.cfg.host, port=self.port,
                 store=str(self.store), destination=str(self.cfg.destination) if self.cfg.destination else None,
                 idle_s=self.cfg.idle_s)
        return self.port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let the worker/sender finish their current item, close the table."""
        self._stop.set()
        self._wake_sender.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout)
        self.jobs.close()
        self.log("stopped")

    def request_stop(self) -> None:
        """Ask wait() to return (signal handlers call this)."""
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    # ---------------------------------------------------------------------------------------------- receiving

    @staticmethod
    def _peer(event: Any) -> str:
        try:
            a = event.assoc.requestor
            return f"{a.ae_title}@{a.address}:{a.port}"
        except AttributeError:
            return "?"

    def _on_accepted(self, event: Any) -> None:
        self.log("association_accepted", peer=self._peer(event))

    def _on_released(self, event: Any) -> None:
        self._assoc_done(event)
        self.log("association_released", peer=self._peer(event))

    def _on_aborted(self, event: Any) -> None:
        self._assoc_done(event)
        self.log("association_aborted", peer=self._peer(event))

    def _assoc_done(self, event: Any) -> None:
        with self._busy_lock:
            self._busy.pop(id(event.assoc), None)

    def busy_studies(self) -> set[str]:
        """Studies an open association is in the middle of sending (not complete yet, whatever the idle time)."""
        with self._busy_lock:
            return set(self._busy.values())

    def _on_echo(self, event: Any) -> int:
        self.log("echo", peer=self._peer(event))
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        peer = self._peer(event)
        try:
            raw = event.encoded_dataset(include_meta=True)
            ds = check_instance(raw)
        except Exception as exc:  # noqa: BLE001 - a malformed instance is refused, never fatal to the node
            self.log("instance_rejected", peer=peer, status=f"0x{STATUS_CANNOT_UNDERSTAND:04X}",
                     reason=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        sop, study, series = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        digest = hashlib.sha256(raw).hexdigest()
        try:
            if self.jobs.known_instance(sop, digest):
                self.log("instance_duplicate", peer=peer, study=study, sop=sop)
                return STATUS_SUCCESS
            path = self.store / "studies" / study / series / f"{sop}.dcm"
            atomic_write_bytes(path, raw)
            _fsync(path)
            with self._busy_lock:
                self._busy[id(event.assoc)] = study
            job = self.jobs.add_instance(sop, study, series, str(ds.SOPClassUID), str(path), digest)
        except (OSError, sqlite3.Error) as exc:
            self.log("instance_not_stored", peer=peer, study=study, sop=sop, status=f"0x{STATUS_OUT_OF_RESOURCES:04X}",
                     reason=f"{type(exc).__name__}: {exc}")
            return STATUS_OUT_OF_RESOURCES
        self.log("instance_stored", peer=peer, job=job, study=study, series=series, sop=sop,
                 sop_class=ACCEPTED[str(ds.SOPClassUID)])
        return STATUS_SUCCESS

    # ---------------------------------------------------------------------------------------------- processing

    def _poll_s(self) -> float:
        return max(0.02, min(0.25, self.cfg.idle_s / 4))

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.jobs.claim_due(self.cfg.idle_s, self.busy_studies())
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the table is retried next tick
                self.log("worker_error", reason=f"{type(exc).__name__}: {exc}")
                job = None
            if job is None:
                self._stop.wait(self._poll_s())
                continue
            self._process(job.job_id, job.study_uid, job.runs)

    def _clinical(self, case: Any) -> dict[str, float] | None:
        """The study's clinical row (re-read per job: the CSV may be edited while the node runs); a bad row fails
        only its own study. None when there is no CSV (the Predictor then says what the model needs)."""
        if self.cfg.clinical_csv is None or not getattr(self.predictor, "num_clinical", 1):
            return None
        from ..data.clinical import read_clinical_table

        table = read_clinical_table(self.cfg.clinical_csv, self.predictor.schema)
        for key in case.clinical_keys():
            if key in table.values or key in table.errors:
                return dict(table.row(key))
        raise ValueError(f"case {case.case_id!r}: no row in {self.cfg.clinical_csv} for StudyInstanceUID, "
                         f"AccessionNumber or PatientID ({', '.join(case.clinical_keys())})")

    def _process(self, job_id: int, study_uid: str, run: int) -> None:
        from .case import load_study
        from .results import write_dicom_results

        t0 = time.time()
        self.log("job_started", job=job_id, study=study_uid, run=run)
        try:
            case = load_study(self.store / "studies" / study_uid, rules=self.cfg.series_rules,
                              segment=self.cfg.segment)
            result = self.predictor.predict_images(case.case_id, case.art, case.pv, case.mask,
                                                   self._clinical(case))
            out = self.store / "results" / str(job_id)
            files = write_dicom_results(result, case.art_files, case.pv_files, case.seg_file, out,
                                        case.segment_number)
            res_json = dict(result.to_json())
            res_json.update(job=job_id, study_uid=case.study_uid, sr_file=files.sr.name, sc_file=files.sc.name,
                            sr_sop_instance_uid=files.sr_uid, sc_sop_instance_uid=files.sc_uid)
            atomic_write_text(out / "result.json", json.dumps(res_json, indent=2, default=str) + "\n")
            prob = float(result.probability)  # P(MVI) for grading models too
            self.jobs.mark_stored(job_id, case.case_id, prob, str(result.decision), str(files.sr), str(files.sc),
                                  files.sr_uid, files.sc_uid, to_send=self.cfg.destination is not None)
        except Exception as exc:  # noqa: BLE001 - one bad study fails its job, the node goes on
            known = isinstance(exc, (ValueError, FileNotFoundError))
            reason = str(exc).splitlines()[0][:400] if known else f"internal error: {type(exc).__name__}: {exc}"
            self.jobs.mark_failed(job_id, reason)
            where = {}
            if not known:
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                where = {"where": f"{Path(tb.filename).name}:{tb.lineno}"}
            self.log("job_failed", job=job_id, study=study_uid, reason=reason, **where)
            return
        self.log("job_stored", job=job_id, study=study_uid, case=case.case_id, probability=prob,
                 decision=str(result.decision), seconds=round(time.time() - t0, 3), sr=files.sr_uid, sc=files.sc_uid)
        self._wake_sender.set()

    # ---------------------------------------------------------------------------------------------- sending

    def _send_loop(self) -> None:
        if self.cfg.destination is None:
            return
        while not self._stop.is_set():
            job = self.jobs.due_for_sending()
            if job is None:
                self._wake_sender.wait(self._poll_s())
                self._wake_sender.clear()
                continue
            files = [Path(p) for p in (job.sr_path, job.sc_path) if p]
            try:
                send_files(self.cfg.destination, files, self.cfg.ae_title, self.cfg.timeout_s)
            except SendError as exc:
                n = job.send_attempts + 1
                retry = None if n >= self.cfg.send_attempts else min(self.cfg.max_backoff_s,
                                                                      self.cfg.backoff_s * 2 ** (n - 1))
                reason = f"sending to {self.cfg.destination} failed (attempt {n}): {exc}"
                self.jobs.send_failed(job.job_id, reason, retry)
                self.log("send_failed", job=job.job_id, attempt=n, retry_in_s=retry, reason=str(exc))
                continue
            self.jobs.mark_sent(job.job_id)
            self.log("job_sent", job=job.job_id, study=job.study_uid, destination=str(self.cfg.destination),
                     attempt=job.send_attempts + 1)


class SendError(Exception):
    """A C-STORE to the destination that did not succeed (unreachable, rejected, failure status)."""


def send_files(dest: Destination, files: list[Path], calling_ae: str = "CMIR", timeout_s: float = 30.0) -> None:
    """C-STORE `files` (Part 10 files) to `dest` in one association; raises SendError unless every one is stored
    (success or a warning status)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    classes = []
    for f in files:
        try:
            classes.append(str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPClassUID))
        except Exception as exc:  # noqa: BLE001
            raise SendError(f"cannot read {f}: {exc}") from exc
    for c in dict.fromkeys(classes):
        ae.add_requested_context(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise SendError("no association (destination unreachable, or it rejected/aborted the association)")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise SendError(f"{f.name}: no response (connection lost or timed out)")
            if code != 0 and not (0xB000 <= code <= 0xBFFF):
                raise SendError(f"{f.name}: C-STORE failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()

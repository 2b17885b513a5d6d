"""Shared helpers of the DICOM tests: tiny SYNTHETIC studies, a tiny model, a recording C-STORE destination and a
`cmir-trt dicom-node` subprocess with its JSON log. Loopback only; everything stops by itself (timeouts)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE = 40
CLINICAL_COLUMNS = ("age", "sex", "log10_afp", "log10_pivka", "hbv", "cirrhosis", "albi")


def volumes(seed: int, pv_own_grid: bool = False) -> tuple[Any, Any, Any]:
    """(ART, PV, mask) SimpleITK images of a tiny SYNTHETIC case: 7 slices of 44 x 40, a bright lobulated lesion.
    With pv_own_grid, PV lies on a finer, shifted grid (the node must resample it)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    nz, ny, nx = 7, 40, 44
    zz, yy, xx = np.mgrid[:nz, :ny, :nx].astype(np.float64)
    c = np.array([22.0, 20.0]) + rng.uniform(-3, 3, 2)
    ang = np.arctan2(yy - c[1], xx - c[0])
    radius = 7 * (1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6)))
    r = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + ((zz - 3) * 2.5) ** 2)
    mask = (r < radius).astype(np.uint8)
    spacing, origin = (1.1, 1.2, 3.0), tuple(float(x) for x in rng.uniform(-30, 30, 3))
    imgs = []
    for gain in (1.8, 1.2):
        vol = 120 + 15 * rng.standard_normal((nz, ny, nx)) + gain * 70 * mask * (1 - 0.3 * (r / radius) ** 2)
        img = sitk.GetImageFromArray(np.rint(vol).astype(np.int16))
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        imgs.append(img)
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(imgs[0])
    art, pv = imgs
    if pv_own_grid:
        sp = (0.9, 1.0, 3.0)
        size = [int(np.ceil(n * s / t)) for n, s, t in zip(art.GetSize(), spacing, sp, strict=True)]
        o = tuple(a + d for a, d in zip(origin, (0.4, -0.3, 0.0), strict=True))
        pv = sitk.Resample(pv, size, sitk.Transform(), sitk.sitkLinear, o, sp, art.GetDirection(), 0.0,
                           sitk.sitkInt16)
    return art, pv, m


def write_studies(root: Path, n: int, first_seed: int = 0) -> list[Any]:
    """n tiny studies root/S<seed>/{ART,PV,SEG}, every third with PV on its own grid; returns their StudyFiles."""
    from cmir_trt.dicom.study import write_study

    out = []
    for seed in range(first_seed, first_seed + n):
        cid = f"S{seed:03d}"
        art, pv, mask = volumes(seed, pv_own_grid=seed % 3 == 1)
        out.append(write_study(root / cid, cid, art, pv, mask, seed=seed))
    return out


def clinical_csv(path: Path, case_ids: list[str]) -> Path:
    rng = np.random.default_rng(5)
    lines = ["case_id," + ",".join(CLINICAL_COLUMNS)]
    for cid in case_ids:
        vals = [rng.uniform(40, 75), float(rng.uniform() < 0.8), rng.uniform(0.5, 3), rng.uniform(1, 3),
                float(rng.uniform() < 0.7), float(rng.uniform() < 0.5), rng.uniform(-3, -2)]
        lines.append(cid + "," + ",".join(f"{v:.3f}" for v in vals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_plan(folder: Path) -> Path:
    """A seeded tiny CMIR (S = 40) exported to a native plan, with a fitted clinical schema, threshold 0.45, the
    synthetic flag, and a scaled-down classifier so that probabilities are not saturated at 0 or 1."""
    import torch
    from _engine_helpers import export, native_core, small_model

    from cmir_trt.data import ClinicalSchema
    from cmir_trt.model.checkpoint import save_checkpoint

    native_core()
    schema = ClinicalSchema()
    schema.fit(np.array([[50, 1, 2, 2, 1, 1, 20, -2.5], [65, 0, 3, 3, 0, 1, 35, -2.0]], dtype=np.float64))
    meta = {"clinical_schema": schema.to_dict(), "preprocess": {"image_size": IMAGE, "margin_mm": 6.0},
            "threshold": 0.45, "training_data": {"synthetic": True, "description": "DICOM tests"}}
    model = small_model("full", image_size=IMAGE, width=0.125, seed=11)
    with torch.no_grad():
        model.classifier.weight.mul_(0.02)
        model.classifier.bias.zero_()
    ckpt = save_checkpoint(folder / "tiny.pt", model, meta)
    return export(str(ckpt), folder / "tiny.plan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """A C-STORE destination (pynetdicom SCP on 127.0.0.1) that records every instance it is sent."""

    def __init__(self, port: int = 0, ae_title: str = "DEST") -> None:
        self.port, self.ae_title = port, ae_title
        self.received: list[Any] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> Recorder:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def by_class(self, sop_class: str) -> list[Any]:
        with self._lock:
            return [d for d in self.received if str(d.SOPClassUID) == sop_class]

    def wait_for(self, n: int, timeout: float = 120.0) -> list[Any]:
        end = time.time() + timeout
        while time.time() < end:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.1)
        with self._lock:
            return list(self.received)


class NodeProc:
    """`cmir-trt dicom-node` as a subprocess on 127.0.0.1 with its JSON log in a file."""

    def __init__(self, store: Path, model: Path, send_to: str | None, idle: float = 0.5,
                 extra: list[str] | None = None, log: Path | None = None) -> None:
        self.store, self.model, self.send_to, self.idle = store, model, send_to, idle
        self.extra = extra or []
        self.log = log or store.parent / f"{store.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._offset = 0

    def start(self, port: int = 0, timeout: float = 120.0) -> int:
        cmd = [sys.executable, "-m", "cmir_trt", "dicom-node", "--model", str(self.model), "--store",
               str(self.store), "--host", "127.0.0.1", "--port", str(port), "--idle", str(self.idle),
               "--threads", "1", *self.extra]
        if self.send_to:
            cmd += ["--send-to", self.send_to]
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, cwd=REPO)
        ev = self.wait_event("listening", timeout=timeout)
        self.port = int(ev["port"])
        return self.port

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events logged since the last start() (lines that are not JSON are ignored)."""
        out = []
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            for line in f.read().decode("utf-8", "replace").splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                    out.append(ev)
        return out

    def all_events(self, name: str) -> list[dict[str, Any]]:
        """Events of every run that wrote to this log."""
        saved, self._offset = self._offset, 0
        try:
            return self.events(name)
        finally:
            self._offset = saved

    def wait_event(self, name: str, count: int = 1, timeout: float = 120.0) -> dict[str, Any]:
        end = time.time() + timeout
        while time.time() < end:
            evs = self.events(name)
            if len(evs) >= count:
                return evs[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dicom-node exited with {self.proc.returncode}; log:\n"
                                     + self.log.read_text(encoding="utf-8", errors="replace")[-3000:])
            time.sleep(0.1)
        raise AssertionError(f"no {count} x {name!r} event within {timeout} s; log tail:\n"
                             + self.log.read_text(encoding="utf-8", errors="replace")[-3000:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


def send(port: int, files: list[Path], ae_title: str = "CMIR") -> None:
    """C-STORE files to the node in one association (pynetdicom as SCU); raises unless all are stored."""
    from cmir_trt.dicom.node import Destination, send_files

    send_files(Destination(ae_title, "127.0.0.1", port), list(files), "TESTSCU", 30.0)


def job_rows(store: Path) -> list[dict[str, Any]]:
    from cmir_trt.dicom.jobs import JobStore

    js = JobStore(store, readonly=True)
    try:
        return js.rows()
    finally:
        js.close()

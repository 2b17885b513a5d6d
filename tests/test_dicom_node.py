"""`cmir-trt dicom-node` over loopback: studies in by C-STORE, SR + SC out, the job table, and the faults of the
issue (truncated instance, kill -9 mid-study, destination down, 20 studies over 4 concurrent associations), plus a
real PACS (Orthanc) where it is installed. Every node is a subprocess; every wait has a timeout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from _dicom_helpers import (
    NodeProc,
    Recorder,
    clinical_csv,
    free_port,
    job_rows,
    send,
    tiny_plan,
    volumes,
    write_studies,
)

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("pynetdicom", reason="the dicom extra (pydicom, highdicom, pynetdicom) is not installed")

SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_node")
    plan = tiny_plan(root)
    studies = write_studies(root / "studies", 24)
    csv = clinical_csv(root / "clinical.csv", [s.patient_id for s in studies])
    return {"root": root, "plan": plan, "studies": studies, "csv": csv}


def _node(env, tmp_path, send_to, idle=0.5, extra=()):
    return NodeProc(tmp_path / "store", env["plan"], send_to, idle=idle,
                    extra=["--clinical", str(env["csv"]), *extra])


def _sr_probability(ds):
    from cmir_trt.dicom.results import read_sr

    return read_sr(ds)["probability"]


def test_end_to_end_storescu_truncated_and_predict_parity(env, tmp_path):
    """C-ECHO; a truncated instance gets 0xC210 and the node keeps serving; a study sent with pynetdicom's storescu
    comes back as one SR + one SC whose probability equals `cmir-trt predict` on the same files (<= 1e-6)."""
    import pydicom

    from cmir_trt.cli import main
    from cmir_trt.dicom.node import SendError

    study = env["studies"][0]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination)
    try:
        port = node.start()
        echo = subprocess.run([sys.executable, "-m", "pynetdicom", "echoscu", "127.0.0.1", str(port), "-aec",
                               "CMIR"], capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        assert node.wait_event("echo")
        raw = study.art_files[0].read_bytes()
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(raw[: len(raw) - 700])
        with pytest.raises(SendError, match="0xC210"):
            send(port, [cut])
        rej = node.wait_event("instance_rejected")
        assert "truncated" in rej["reason"] or "decode" in rej["reason"]
        out = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port),
                              str(study.folder), "-r", "-aec", "CMIR"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        got = dest.wait_for(2, timeout=120)
        time.sleep(1.0)  # anything sent twice would arrive now
        assert len(dest.by_class(SR)) == 1 and len(dest.by_class(SC)) == 1, [d.SOPClassUID for d in dest.received]
        sr = dest.by_class(SR)[0]
        assert sr.StudyInstanceUID == study.study_uid and len(got) == 2
        rows = job_rows(tmp_path / "store")
        assert [(r["state"], r["runs"], r["send_attempts"], r["instances"]) for r in rows] == \
            [("sent", 1, 1, len(study.files))]
        status = subprocess.run([sys.executable, "-m", "cmir_trt", "dicom-node", "--store",
                                 str(tmp_path / "store"), "--status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and " sent " in status.stdout and study.patient_id in status.stdout
    finally:
        node.stop()
        dest.stop()
    lines = node.log.read_text(encoding="utf-8").splitlines()
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines), "the node's stderr is JSON lines only"
    # The same files through `cmir-trt predict --dicom-out`: the DICOM study folder with the mask as NIfTI beside
    # it, and a NIfTI case (which gets no DICOM results).
    inp = tmp_path / "predict_in"
    shutil.copytree(study.folder, inp / study.patient_id, ignore=shutil.ignore_patterns("SEG"))
    art, pv, mask = volumes(0)
    sitk.WriteImage(mask, str(inp / f"{study.patient_id}_mask.nii.gz"))
    for img, suffix in ((art, "_0000"), (pv, "_0001"), (mask, "_mask")):
        sitk.WriteImage(img, str(inp / f"N000{suffix}.nii.gz"))
    csv = clinical_csv(tmp_path / "clinical.csv", [study.patient_id, "N000"])
    assert main(["predict", "--model", str(env["plan"]), "--input", str(inp), "--out", str(tmp_path / "pred"),
                 "--clinical", str(csv), "--threads", "1", "--no-progress", "--dicom-out",
                 str(tmp_path / "pred_dicom")]) == 0
    res = json.loads((tmp_path / "pred" / f"{study.patient_id}.json").read_text(encoding="utf-8"))
    assert 0.01 < res["probability"] < 0.99
    assert abs(_sr_probability(sr) - res["probability"]) <= 1e-6
    written = sorted(p.name for p in (tmp_path / "pred_dicom").iterdir())
    assert written == [f"{study.patient_id}_sc.dcm", f"{study.patient_id}_sr.dcm"]
    sr2 = pydicom.dcmread(tmp_path / "pred_dicom" / f"{study.patient_id}_sr.dcm")
    assert sr2.StudyInstanceUID == study.study_uid
    assert abs(_sr_probability(sr2) - res["probability"]) <= 1e-6
    if shutil.which("dciodvfy"):  # the image-level SR of `predict` (no SEG) must be valid too
        for name in written:
            chk = subprocess.run(["dciodvfy", str(tmp_path / "pred_dicom" / name)], capture_output=True, text=True,
                                 timeout=60)
            assert not [ln for ln in (chk.stdout + chk.stderr).splitlines() if ln.startswith("Error")], name


def test_kill9_mid_study_then_restart(env, tmp_path):
    """kill -9 while a study is half received; after a restart the rest arrives (one instance re-sent, as a sender
    retrying an unacknowledged C-STORE would): the study is processed once and its result sent once."""
    study = env["studies"][1]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination, idle=3.0)
    try:
        port = node.start()
        first = study.art_files + study.pv_files[:3]
        send(port, first)
        node.wait_event("instance_stored", count=len(first))
        node.kill9()
        assert job_rows(tmp_path / "store")[0]["state"] == "received"
        port = node.start()
        send(port, [study.pv_files[2], *study.pv_files[3:], study.seg_file])
        assert node.wait_event("instance_duplicate")["sop"]
        dest.wait_for(2, timeout=120)
        time.sleep(1.0)
        assert len(dest.by_class(SR)) == 1 and len(dest.by_class(SC)) == 1
        rows = job_rows(tmp_path / "store")
        assert [(r["state"], r["runs"], r["send_attempts"], r["instances"]) for r in rows] == \
            [("sent", 1, 1, len(study.files))]
        assert len(node.all_events("job_started")) == 1
    finally:
        node.stop()
        dest.stop()


def test_kill9_while_running_is_rerun_once(env, tmp_path):
    """A job left `running` by a killed node (claimed in the table as the worker does, then kill -9) is re-run by
    the next start (runs = 2) and its result sent once; the delivered SR is the one the job table records."""
    from cmir_trt.dicom.jobs import JobStore

    study = env["studies"][2]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination, idle=600)  # never due while this node runs
    try:
        port = node.start()
        send(port, study.files)
        node.kill9()
        js = JobStore(tmp_path / "store")
        assert js.claim_due(0.0, now=time.time() + 1200).runs == 1  # the crashed worker's claim
        js.close()
        node.idle = 0.3
        node.start()
        assert node.wait_event("job_recovered")["state"] == "received"
        dest.wait_for(2, timeout=120)
        time.sleep(1.0)
        assert len(dest.by_class(SR)) == 1 and len(dest.by_class(SC)) == 1
        rows = job_rows(tmp_path / "store")
        assert [(r["state"], r["runs"], r["send_attempts"]) for r in rows] == [("sent", 2, 1)]
        assert str(dest.by_class(SR)[0].SOPInstanceUID) == rows[0]["sr_uid"]
    finally:
        node.stop()
        dest.stop()


def test_slow_sender_is_not_cut_off(env, tmp_path):
    """Pauses longer than --idle inside one open association do not split a study into two jobs; once the same
    association moves on to the next study, the first one is processed without waiting for the release."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage, SegmentationStorage  # type: ignore

    first, second = env["studies"][3], env["studies"][1]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination, idle=0.3)
    try:
        port = node.start()
        ae = AE(ae_title="SLOWSCU")
        for ctx in (MRImageStorage, SegmentationStorage):
            ae.add_requested_context(ctx)
        assoc = ae.associate("127.0.0.1", port, ae_title="CMIR")
        assert assoc.is_established
        try:
            for n, f in enumerate(first.files):
                assert assoc.send_c_store(f).Status == 0
                if n in (3, len(first.files) - 2):
                    time.sleep(1.2)  # four times --idle
            assert assoc.send_c_store(second.files[0]).Status == 0
            stored = node.wait_event("job_stored", timeout=60)  # the association is still open
            assert stored["study"] == first.study_uid
            for f in second.files[1:]:
                assert assoc.send_c_store(f).Status == 0
        finally:
            assoc.release()
        dest.wait_for(4, timeout=120)
        time.sleep(1.0)
        rows = job_rows(tmp_path / "store")
        assert sorted((r["study_uid"], r["state"], r["instances"]) for r in rows) == sorted(
            [(first.study_uid, "sent", len(first.files)), (second.study_uid, "sent", len(second.files))])
    finally:
        node.stop()
        dest.stop()


def test_sender_dying_mid_association(env, tmp_path):
    """A sender killed with its association open (no release, no abort): the study still becomes due and is
    processed once."""
    study = env["studies"][3]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination, idle=0.3)
    try:
        port = node.start()
        script = (
            "import os, sys\n"
            "from pynetdicom import AE\n"
            "from pynetdicom.sop_class import MRImageStorage, SegmentationStorage\n"
            "ae = AE(ae_title='DYING')\n"
            "[ae.add_requested_context(c) for c in (MRImageStorage, SegmentationStorage)]\n"
            "a = ae.associate('127.0.0.1', int(sys.argv[1]), ae_title='CMIR')\n"
            "assert a.is_established\n"
            "for f in sys.argv[2:]:\n"
            "    assert a.send_c_store(f).Status == 0\n"
            "os._exit(0)\n")
        out = subprocess.run([sys.executable, "-c", script, str(port), *map(str, study.files)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        dest.wait_for(2, timeout=60)
        node.wait_event("job_sent", timeout=60)  # the table says "sent" once the destination has answered
        rows = job_rows(tmp_path / "store")
        assert [(r["state"], r["instances"]) for r in rows] == [("sent", len(study.files))]
    finally:
        node.stop()
        dest.stop()


def test_destination_down_then_delivered_and_kill9_while_pending(env, tmp_path):
    """The destination is down: the result waits in `stored` with back-off retries; kill -9 of the node while it
    waits, restart, the destination comes up: delivered once, never re-processed."""
    study = env["studies"][2]
    port_dest = free_port()
    node = _node(env, tmp_path, f"DEST@127.0.0.1:{port_dest}", extra=["--backoff", "0.2", "--max-backoff", "0.5"])
    dest = Recorder(port_dest)
    try:
        port = node.start()
        send(port, study.files)
        node.wait_event("send_failed", count=2, timeout=120)
        assert job_rows(tmp_path / "store")[0]["state"] == "stored"
        node.kill9()
        node.start()
        node.wait_event("send_failed", count=1, timeout=60)  # still down after the restart
        dest.start()
        dest.wait_for(2, timeout=60)
        time.sleep(1.0)
        assert len(dest.by_class(SR)) == 1 and len(dest.by_class(SC)) == 1
        rows = job_rows(tmp_path / "store")
        assert len(rows) == 1 and rows[0]["state"] == "sent" and rows[0]["runs"] == 1
        assert rows[0]["send_attempts"] >= 4  # >= 2 failures, kill, >= 1 failure, then the delivery
        assert len(node.all_events("job_started")) == 1
    finally:
        node.stop()
        dest.stop()


def test_twenty_studies_over_four_associations(env, tmp_path):
    """20 studies sent over 4 concurrent associations: 20 jobs, 20 SR + 20 SC, one per study, none twice."""
    studies = env["studies"][4:24]
    dest = Recorder().start()
    node = _node(env, tmp_path, dest.destination, idle=1.0)
    errors: list[BaseException] = []
    try:
        port = node.start()

        def sender(part):
            try:
                send(port, [f for s in part for f in s.files])
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(studies[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        dest.wait_for(40, timeout=300)
        time.sleep(1.5)
        srs, scs = dest.by_class(SR), dest.by_class(SC)
        assert sorted(d.StudyInstanceUID for d in srs) == sorted(s.study_uid for s in studies)
        assert sorted(d.StudyInstanceUID for d in scs) == sorted(s.study_uid for s in studies)
        uids = [str(d.SOPInstanceUID) for d in dest.received]
        assert len(uids) == 40 == len(set(uids))
        rows = job_rows(tmp_path / "store")
        assert len(rows) == 20 and all(r["state"] == "sent" and r["runs"] == 1 and r["send_attempts"] == 1
                                       for r in rows)
        accepted = node.events("association_accepted")
        assert len(accepted) >= 4
    finally:
        node.stop()
        dest.stop()


def _orthanc_config(folder: Path, http: int, dicom: int) -> Path:
    cfg = {"Name": "cmir-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
           "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [], "HttpServerEnabled": True,
           "ConcurrentJobs": 1, "StableAge": 1}
    path = folder / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback URL built by the test
        return r.read()


def test_orthanc_stores_sr_and_sc(env, tmp_path):
    """A real PACS: Orthanc (its own config, storage and loopback ports) receives the SR and SC; the test finds
    them through Orthanc's REST API and reads the probability back from the stored SR."""
    import io

    import pydicom

    exe = shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin:/usr/bin"))
    if exe is None:
        pytest.skip("Orthanc is not installed (Debian package `orthanc`; `make test` installs it where apt works)")
    study = env["studies"][3]
    http, dicom = free_port(), free_port()
    (tmp_path / "orthanc").mkdir()
    cfg = _orthanc_config(tmp_path / "orthanc", http, dicom)
    log = open(tmp_path / "orthanc.log", "wb")  # noqa: SIM115 - closed in finally
    orthanc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    node = _node(env, tmp_path, f"ORTHANC@127.0.0.1:{dicom}")
    base = f"http://127.0.0.1:{http}"
    try:
        end = time.time() + 60
        while True:
            try:
                _get(base + "/system")
                break
            except OSError:
                if time.time() > end or orthanc.poll() is not None:
                    pytest.fail("Orthanc did not start: " + (tmp_path / "orthanc.log").read_text(
                        encoding="utf-8", errors="replace")[-2000:])
                time.sleep(0.3)
        port = node.start()
        send(port, study.files)
        node.wait_event("job_sent", timeout=120)
        found: dict[str, bytes] = {}
        for iid in json.loads(_get(base + "/instances")):
            tags = json.loads(_get(f"{base}/instances/{iid}/simplified-tags"))
            if tags.get("StudyInstanceUID") == study.study_uid:
                found.setdefault(tags["SOPClassUID"], _get(f"{base}/instances/{iid}/file"))
        assert set(found) == {SR, SC}
        result = json.loads(next((tmp_path / "store" / "results").glob("*/result.json")).read_text(encoding="utf-8"))
        sr = pydicom.dcmread(io.BytesIO(found[SR]))
        assert abs(_sr_probability(sr) - result["probability"]) <= 1e-6
    finally:
        node.stop()
        orthanc.terminate()
        try:
            orthanc.wait(30)
        except subprocess.TimeoutExpired:
            orthanc.kill()
            orthanc.wait(10)
        log.close()


def test_node_precision_bf16(env, tmp_path):
    """`--precision bf16` (CPUs with avx512_bf16/AMX): the node logs the precision it loaded, warns that this plan
    records no bf16 parity check, and its SR probability is within the bf16 bound (1e-2) of the fp32 node's on the
    same study; fp16 on the CPU is refused in one line before anything listens."""
    from cmir_trt._native import load_core

    bad = subprocess.run([sys.executable, "-m", "cmir_trt", "dicom-node", "--model", str(env["plan"]), "--store",
                          str(tmp_path / "refused"), "--precision", "fp16"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "'fp32' or 'bf16'" in bad.stderr and bad.stderr.strip().count("\n") == 0
    ok, why = load_core().bf16_supported()
    if not ok:
        pytest.skip(f"no bf16 on this CPU: {why}")
    study = env["studies"][3]
    probs = {}
    for prec in ("fp32", "bf16"):
        (tmp_path / prec).mkdir()
        dest = Recorder().start()
        node = _node(env, tmp_path / prec, dest.destination, extra=["--precision", prec])
        try:
            port = node.start()
            assert node.wait_event("model_loaded")["precision"] == prec
            notes = [w.get("message", "") for w in node.events("warning")]
            assert any("no parity check of precision bf16" in n for n in notes) == (prec == "bf16"), notes
            send(port, study.files)
            dest.wait_for(2, timeout=120)
            probs[prec] = _sr_probability(dest.by_class(SR)[0])
        finally:
            node.stop()
            dest.stop()
    assert abs(probs["bf16"] - probs["fp32"]) <= 1e-2, probs

"""The node's pieces without the network: the durable job table (claims, crash recovery, retries, duplicates),
the instance checks that decide C-STORE statuses, destinations, and study-level errors (missing or ambiguous SEG)."""

from __future__ import annotations

import io
import shutil

import pytest
from _dicom_helpers import write_studies

pytest.importorskip("pynetdicom", reason="the dicom extra (pydicom, highdicom, pynetdicom) is not installed")

from cmir_trt.dicom.jobs import JobStore, format_table  # noqa: E402
from cmir_trt.dicom.node import Destination, check_instance  # noqa: E402


def _add(js, sop, study="1.2.3", t=100.0, sha="a"):
    return js.add_instance(sop, study, "1.2.3.1", "1.2.840.10008.5.1.4.1.1.4", f"/x/{sop}.dcm", sha, now=t)


def test_jobs_group_claim_and_recover(tmp_path):
    js = JobStore(tmp_path)
    j1 = _add(js, "1.1", t=100.0)
    assert _add(js, "1.2", t=101.0) == j1  # same study, open job
    j2 = _add(js, "2.1", study="9.9", t=100.5)
    assert j2 != j1
    assert js.claim_due(5.0, now=104.0) is None  # study 1.2.3 last seen at 101: not idle for 5 s
    got = js.claim_due(3.0, busy={"9.9"}, now=104.5)  # 9.9 is still being sent on an open association
    assert got is not None and got.job_id == j1 and got.runs == 1 and got.instances == 2
    assert js.get(j1).state == "running"
    # An instance of the running study opens a new job (the updated study), never touches the running one.
    j3 = _add(js, "1.3", t=105.0)
    assert j3 not in (j1, j2) and js.get(j1).instances == 2
    # Crash: the running job is superseded by the newer open job of its study.
    assert dict(js.recover(max_runs=3)) == {j1: "failed"}
    assert "superseded" in js.get(j1).reason
    js.close()
    # A fresh table: a job that crashes the node max_runs times fails instead of looping.
    js = JobStore(tmp_path / "b")
    j = _add(js, "5.1", study="5.5", t=0.0)
    for run in (1, 2, 3):
        assert js.claim_due(0.0, now=10.0 * run).runs == run
        assert js.recover(max_runs=3) == [(j, "received" if run < 3 else "failed")]
    assert js.get(j).state == "failed" and "interrupted 3 times" in js.get(j).reason
    js.close()


def test_jobs_send_retries_and_duplicates(tmp_path):
    js = JobStore(tmp_path)
    j = _add(js, "1.1", sha="abc")
    assert js.known_instance("1.1", "abc") and not js.known_instance("1.1", "other")
    js.claim_due(0.0, now=1e12)
    js.mark_stored(j, "C1", 0.3, "MVI-", "/r/sr.dcm", "/r/sc.dcm", "1.5", "1.6", to_send=True)
    assert js.get(j).state == "stored" and js.due_for_sending() is not None
    js.send_failed(j, "down", retry_in=3600.0)
    assert js.due_for_sending() is None and js.get(j).send_attempts == 1  # waits for the back-off
    js.send_failed(j, "still down", retry_in=None)  # attempts used up
    assert js.get(j).state == "failed" and js.get(j).reason == "still down"
    js.mark_sent(j)  # a late success report cannot resurrect a failed job
    assert js.get(j).state == "failed"
    table = format_table(js.rows())
    assert "failed" in table.splitlines()[1] and "C1" in table and "0.300000" in table
    js.close()
    ro = JobStore(tmp_path, readonly=True)
    assert len(ro.rows()) == 1
    ro.close()
    with pytest.raises(FileNotFoundError, match="no job table"):
        JobStore(tmp_path / "nowhere", readonly=True)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_check_instance(tmp_path):
    import pydicom

    sf = write_studies(tmp_path, 1)[0]
    raw = sf.art_files[0].read_bytes()
    assert check_instance(raw).SOPInstanceUID
    assert check_instance(sf.seg_file.read_bytes()).Modality == "SEG"
    with pytest.raises(ValueError, match="pixel data truncated"):
        check_instance(raw[:-300])
    for name, value, msg in (("StudyInstanceUID", "../../etc", "StudyInstanceUID missing or not a DICOM UID"),
                             ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2", "is not MR Image or Segmentation")):
        bad = pydicom.dcmread(io.BytesIO(raw))
        setattr(bad, name, value)
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, bad, enforce_file_format=True)
        with pytest.raises(ValueError, match=msg):
            check_instance(buf.getvalue())
    with pytest.raises(ValueError):
        check_instance(b"\x00" * 64)


def test_destination_parse():
    d = Destination.parse("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port) == ("PACS", "10.0.0.5", 104) and str(d) == "PACS@10.0.0.5:104"
    for bad in ("PACS@host", "@host:1", "A" * 17 + "@h:1", "P@h:0", "P@h:70000"):
        with pytest.raises(ValueError, match="AE@HOST:PORT"):
            Destination.parse(bad)


def test_study_without_or_with_two_segs(tmp_path):
    from cmir_trt.data import MaskError
    from cmir_trt.dicom.case import load_study

    sf = write_studies(tmp_path / "s", 1)[0]
    case = load_study(sf.folder)
    assert case.seg_file == sf.seg_file and case.case_id == sf.patient_id
    shutil.copy(sf.seg_file, sf.folder / "SEG" / "copy.dcm")
    with pytest.raises(MaskError, match="2 SEGs reference the ART series"):
        load_study(sf.folder)
    shutil.rmtree(sf.folder / "SEG")
    with pytest.raises(MaskError, match="no SEG references the ART series .* holds no SEG"):
        load_study(sf.folder)

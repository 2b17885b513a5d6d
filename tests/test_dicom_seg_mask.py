"""A DICOM study's SEG as the tumour mask of `cmir-trt predict` and `Predictor.predict_case` (no mask file needed).

SYNTHETIC studies (ART + PV MR series + a SEG on ART) predicted with the mask taken from the SEG give the same
probability (<= 1e-6) as the same studies with the ground-truth mask written as NIfTI beside them; a SEG made on
another series fails only its own case, with one line; the segment is chosen by label or number.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _dicom_helpers import clinical_csv, tiny_plan, volumes

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("highdicom", reason="the dicom extra (pydicom, highdicom, pynetdicom) is not installed")

from cmir_trt.cli import main  # noqa: E402
from cmir_trt.data import MaskError  # noqa: E402

SEEDS = (0, 1, 3)  # 1: PV on its own grid; 3: its SEG is made on the PV series (refused)
WRONG = "S003"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return tiny_plan(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """in/: studies with their SEG and no mask file; ref/: the good ones without SEG, ground truth as NIfTI."""
    import pydicom

    from cmir_trt.data.io import read_dicom_files
    from cmir_trt.dicom._common import dataset_bytes, stable_uid
    from cmir_trt.dicom.study import seg_dataset, write_study

    root = tmp_path_factory.mktemp("seg_cases")
    src, ref = root / "in", root / "ref"
    ids = [f"S{s:03d}" for s in SEEDS]
    for seed, cid in zip(SEEDS, ids, strict=True):
        art, pv, mask = volumes(seed, pv_own_grid=seed % 3 == 1)
        sf = write_study(src / cid, cid, art, pv, mask, seed=seed)
        if cid == WRONG:  # a SEG drawn on PV (same grid here), so it does not reference the ART series
            pv_ds = [pydicom.dcmread(str(p)) for p in sf.pv_files]
            seg = seg_dataset(mask, pv_ds, stable_uid("series", sf.study_uid, "seg-on-pv"))
            sf.seg_file.write_bytes(dataset_bytes(seg))
            continue
        shutil.copytree(src / cid, ref / cid, ignore=shutil.ignore_patterns("SEG"))
        truth = sitk.Cast(mask, sitk.sitkUInt8)
        truth.CopyInformation(read_dicom_files(sf.art_files))  # exactly the grid the pipeline reads ART on
        sitk.WriteImage(truth, str(ref / f"{cid}_mask.nii.gz"))
    for folder in (src, ref):
        clinical_csv(folder / "clinical.csv", ids)
    return src, ref


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_predict_takes_the_mask_from_the_seg(plan, folders, tmp_path, capsys):
    from cmir_trt.dicom._common import read_dataset
    from cmir_trt.dicom.results import read_sr

    src, ref = folders
    out, out_ref, dcm = tmp_path / "out", tmp_path / "out_ref", tmp_path / "dcm"
    rc = main(["predict", "--model", str(plan), "-i", str(src), "-o", str(out), "--threads", "1", "--no-png",
               "--no-progress", "--dicom-out", str(dcm)])
    err = capsys.readouterr().err
    assert rc == 1  # one case failed
    rows = _summary(out)
    assert [rows[c]["status"] for c in ("S000", "S001", WRONG)] == ["ok", "ok", "error"]
    msg = rows[WRONG]["error"]
    assert "S003" in msg and "SEG" in msg and "ART series" in msg and "\n" not in msg
    assert f"{WRONG}: FAILED" in err and "Traceback" not in err
    assert not list(out.glob(f"{WRONG}*")) and not list(dcm.glob(f"{WRONG}*"))  # nothing for the refused case
    assert main(["predict", "--model", str(plan), "-i", str(ref), "-o", str(out_ref), "--threads", "1", "--no-png",
                 "--no-progress"]) == 0
    for cid in ("S000", "S001"):
        got = json.loads((out / f"{cid}.json").read_text(encoding="utf-8"))
        want = json.loads((out_ref / f"{cid}.json").read_text(encoding="utf-8"))
        assert 0.01 < want["probability"] < 0.99  # not saturated: a meaningful comparison
        assert abs(got["probability"] - want["probability"]) <= 1e-6, cid
        assert got["preprocessing"]["diameter_mm"] == pytest.approx(want["preprocessing"]["diameter_mm"], abs=1e-9)
        seg = got["inputs"]["mask_seg"]
        assert seg["segment_number"] == 1 and Path(seg["file"]) == src / cid / "SEG" / "seg.dcm"
        # the SR of --dicom-out references the segment the mask came from
        sr = read_dataset(dcm / f"{cid}_sr.dcm")
        assert read_dataset(seg["file"], stop_before_pixels=True).SOPInstanceUID in str(sr)
        assert abs(read_sr(sr)["probability"] - got["probability"]) <= 1e-6


def test_predictor_segment_by_label_or_number(plan, folders):
    from cmir_trt import Predictor
    from cmir_trt.data.clinical import read_clinical_table
    from cmir_trt.data.io import find_cases

    src, ref = folders
    study = src / "S000"
    (case,) = [c for c in find_cases(src, allow_incomplete=True) if c.case_id == "S000"]
    assert case.study == study and case.mask is None and case.missing() == []
    p0 = Predictor(plan, threads=1)
    clinical = read_clinical_table(src / "clinical.csv", p0.schema).row("S000")
    base = p0.predict_case(ref / "S000", clinical).probability  # the NIfTI ground-truth mask
    for segment in (None, "tumor", "TUMOR", 1, "1"):
        r = Predictor(plan, threads=1, seg_segment=segment).predict_case(study, clinical)
        assert abs(r.probability - base) <= 1e-6, segment
        assert r.to_json()["inputs"]["mask_seg"]["segment_number"] == 1
    with pytest.raises(MaskError, match="no segment number 5") as ei:
        Predictor(plan, threads=1, seg_segment=5).predict_case(study, clinical)
    assert "S000" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(MaskError, match="no segment labelled 'liver'"):
        Predictor(plan, threads=1, seg_segment="liver").predict_case(study, clinical)
    for bad in (0, "", True):
        with pytest.raises(ValueError, match="seg_segment"):
            Predictor(plan, threads=1, seg_segment=bad)
    np.testing.assert_equal(base, p0.predict_case(ref / "S000", clinical).probability)  # deterministic baseline


def test_without_the_dicom_extra_one_clear_line(plan, folders, monkeypatch):
    """Where pydicom/highdicom are not installed, a study without a mask file fails with one line saying what to
    install (the dicom package is imported only when a SEG is needed)."""
    import sys

    from cmir_trt import Predictor
    from cmir_trt.data import DataError
    from cmir_trt.data.clinical import read_clinical_table

    src, _ = folders
    p = Predictor(plan, threads=1)
    clinical = read_clinical_table(src / "clinical.csv", p.schema).row("S000")
    monkeypatch.setitem(sys.modules, "cmir_trt.dicom.case", None)  # import of it fails like a missing extra
    with pytest.raises(DataError, match=r"pip install 'cmir_trt\[dicom\]'") as ei:
        p.predict_case(src / "S000", clinical)
    assert "S000" in str(ei.value) and "\n" not in str(ei.value)

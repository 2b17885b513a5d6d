"""DICOM without the network: SYNTHETIC studies written and read back, SEG -> mask on the ART grid, the SR and the
heatmap SC (values, references, UIDs, dciodvfy), and `cmir-trt synth --format dicom`."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from _dicom_helpers import clinical_csv, tiny_plan, volumes, write_studies

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("highdicom", reason="the dicom extra (pydicom, highdicom, pynetdicom) is not installed")

from cmir_trt.data import DataError, MaskError  # noqa: E402
from cmir_trt.dicom._common import read_dataset  # noqa: E402
from cmir_trt.dicom.seg import seg_mask  # noqa: E402


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return write_studies(tmp_path_factory.mktemp("studies"), 2)  # S001 has PV on its own grid


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from cmir_trt import Predictor

    return Predictor(tiny_plan(tmp_path_factory.mktemp("model")), threads=1)


def _read(files):
    r = sitk.ImageSeriesReader()
    r.SetFileNames([str(f) for f in files])
    return r.Execute()


def test_study_round_trip(studies):
    """Voxels exact, geometry within the DS string precision, one series per phase, PV on its own grid kept."""
    for sf, seed in zip(studies, (0, 1), strict=True):
        art0, pv0, _ = volumes(seed, pv_own_grid=seed == 1)
        for files, ref in ((sf.art_files, art0), (sf.pv_files, pv0)):
            img = _read(files)
            assert img.GetSize() == ref.GetSize()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))
            np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
        hdr = read_dataset(sf.art_files[0], stop_before_pixels=True)
        assert hdr.StudyInstanceUID == sf.study_uid and hdr.SeriesInstanceUID == sf.art_series_uid
        assert "SYNTHETIC" in str(hdr.PatientName) and hdr.Modality == "MR"
    assert len({sf.study_uid for sf in studies}) == 2


def test_seg_mask_exact_and_by_label_or_number(studies):
    sf = studies[0]
    art = _read(sf.art_files)
    ref = sitk.GetArrayFromImage(volumes(0)[2])
    for segment in (None, "tumor", "TUMOR", 1, "1", "Neoplasm"):  # Neoplasm: the segmented property type
        m = seg_mask(sf.seg_file, art, sf.art_series_uid, segment)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(m), ref)
        assert m.GetOrigin() == art.GetOrigin() and m.GetSpacing() == art.GetSpacing()
    with pytest.raises(MaskError, match=r"no segment number 2 \(segments: 1 'tumor'\)"):
        seg_mask(sf.seg_file, art, sf.art_series_uid, 2)
    with pytest.raises(MaskError, match="no segment labelled 'liver'"):
        seg_mask(sf.seg_file, art, sf.art_series_uid, "liver")
    with pytest.raises(MaskError, match=f"not the ART series {sf.pv_series_uid}"):
        seg_mask(sf.seg_file, art, sf.pv_series_uid)  # a SEG made on ART offered for another series


def test_seg_several_segments_and_other_grid(studies, tmp_path):
    """Two segments: the default picks the one labelled tumor; a SEG drawn on the PV grid is resampled onto ART
    exactly like SimpleITK's nearest-neighbour resampling of the same mask (the reference)."""
    import pydicom

    from cmir_trt.dicom._common import dataset_bytes
    from cmir_trt.dicom.study import seg_dataset

    sf = studies[1]
    art = _read(sf.art_files)
    pv = _read(sf.pv_files)
    pv_heads = [read_dataset(f, stop_before_pixels=True) for f in sf.pv_files]
    art_mask = volumes(1)[2]
    on_pv = sitk.Resample(art_mask, pv, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    other = sitk.BinaryDilate(on_pv, [2, 2, 0])
    seg = seg_dataset(other, pv_heads, "1.2.826.0.1.3680043.8.498.1", label="liver lesion",
                      extra_segments={"tumor": on_pv})
    (tmp_path / "seg.dcm").write_bytes(dataset_bytes(seg))
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    expect = sitk.GetArrayFromImage(sitk.Resample(on_pv, art, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                  sitk.sitkUInt8))
    got = seg_mask(ds, art, sf.pv_series_uid)  # segment 2, "tumor"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), expect)
    assert expect.sum() > 50
    big = seg_mask(ds, art, sf.pv_series_uid, "liver lesion")
    assert sitk.GetArrayFromImage(big).sum() > expect.sum()


def test_seg_damaged_file_one_line(studies, tmp_path):
    sf = studies[0]
    art = _read(sf.art_files)
    raw = sf.seg_file.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError) as ei:
        seg_mask(tmp_path / "cut.dcm", art, sf.art_series_uid)
    assert "cut.dcm" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(DataError, match="not a Segmentation"):
        seg_mask(sf.art_files[0], art, sf.art_series_uid)


def test_sr_and_sc(studies, predictor, tmp_path):
    """SR values equal the Predictor's result; both objects sit in the source study as new series, reference the
    inputs, keep their UIDs when rebuilt, and pass dciodvfy with no error where it is installed."""
    from cmir_trt.dicom.case import load_study
    from cmir_trt.dicom.results import DISCLAIMER, SYNTHETIC_NOTE, read_sr, write_dicom_results

    sf = studies[1]
    csv = clinical_csv(tmp_path / "clinical.csv", [sf.patient_id])
    from cmir_trt.data.clinical import read_clinical_table

    case = load_study(sf.folder)
    assert case.seg_file == sf.seg_file and case.segment_number == 1
    r = predictor.predict_images(case.case_id, case.art, case.pv, case.mask,
                                 read_clinical_table(csv, predictor.schema).row(sf.patient_id))
    assert 0.01 < r.probability < 0.99, "the tiny model should not saturate (a weak comparison otherwise)"
    files = write_dicom_results(r, case.art_files, case.pv_files, case.seg_file, tmp_path / "out",
                                case.segment_number)
    sr = read_dataset(files.sr)
    sc = read_dataset(files.sc)
    vals = read_sr(sr)
    assert abs(vals["probability"] - r.probability) <= 1e-6
    assert vals["threshold"] == pytest.approx(0.45) and vals["model_id"] == r.model_id
    assert vals["decision"] == ("Present" if r.probability >= 0.45 else "Absent")
    assert DISCLAIMER in vals["comments"] and SYNTHETIC_NOTE in vals["comments"]
    src_series = {sf.art_series_uid, sf.pv_series_uid, read_dataset(sf.seg_file).SeriesInstanceUID}
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == sf.study_uid and ds.PatientID == sf.patient_id
        assert ds.SeriesInstanceUID not in src_series
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    evidence = {s.SeriesInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    assert evidence == src_series
    text = str(sr)
    assert read_dataset(sf.seg_file).SOPInstanceUID in text  # the referenced segment
    assert sc.BurnedInAnnotation == "YES" and max(sc.Rows, sc.Columns) >= 256 and sc.SamplesPerPixel == 3
    assert "SYNTHETIC" in sc.SeriesDescription
    again = write_dicom_results(r, case.art_files, case.pv_files, case.seg_file, tmp_path / "again",
                                case.segment_number)
    assert (again.sr_uid, again.sc_uid) == (files.sr_uid, files.sc_uid)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; `make test` installs it where apt works")
    for path in (files.sr, files.sc):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"dciodvfy {path.name}: {errors}"


def test_sr_of_a_grading_model_and_without_seg(studies):
    """A 3-class model's result: the SR codes the grade and stores P(MVI) = P(M1) + P(M2); without a SEG the group
    is image-level and the evidence is ART + PV only; not synthetic -> no SYNTHETIC comment."""
    from types import SimpleNamespace

    from cmir_trt.dicom._common import sort_by_position
    from cmir_trt.dicom.results import DISCLAIMER, build_sr, read_sr

    sf = studies[0]
    art = sort_by_position(read_dataset(p, stop_before_pixels=True) for p in sf.art_files)
    pv = sort_by_position(read_dataset(p, stop_before_pixels=True) for p in sf.pv_files)
    r = SimpleNamespace(model_id="cmir-grade-test", probability=0.7125, decision="M2", threshold=0.5, synthetic=False)
    sr = build_sr(r, art, pv, None)
    vals = read_sr(sr)
    assert vals["decision"] == "MVI grade M2" and abs(vals["probability"] - 0.7125) <= 1e-12
    assert vals["comments"] == [DISCLAIMER]
    evidence = {s.SeriesInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    assert evidence == {sf.art_series_uid, sf.pv_series_uid}


def test_synth_dicom_cli(tmp_path):
    """`cmir-trt synth --format dicom`: every case becomes a study whose ART/PV voxels and SEG mask equal the NIfTI
    cohort it came from; a foreign folder is refused."""
    from cmir_trt.cli import main
    from cmir_trt.dicom.case import load_study

    out = tmp_path / "cohort"
    assert main(["synth", "--format", "dicom", "--out", str(out), "--preset", "tiny", "--scale", "0.01",
                 "--no-progress"]) == 0
    studies = sorted(p for p in (out / "dicom").iterdir() if p.is_dir())
    assert len(studies) == 12 and (out / "clinical.csv").is_file() and (out / "manifest.csv").is_file()
    for st in (studies[0], studies[-1]):  # one own-grid PV centre (FPWH) and one shared-grid (ZTH/ZFH...)
        cid = st.name
        case = load_study(st)
        for img, suffix in ((case.art, "_0000"), (case.pv, "_0001"), (case.mask, "_mask")):
            ref = sitk.ReadImage(str(out / "nifti" / cid / f"{cid}{suffix}.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))
            np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["synth", "--format", "dicom", "--out", str(junk), "--preset", "tiny", "--scale", "0.01",
                 "--no-progress"]) == 1
    assert (junk / "notes.txt").read_text(encoding="utf-8") == "mine"


def _stored(img, perm, flip):
    """The same physical image stored with permuted/flipped voxel axes (and the matching direction matrix)."""
    return sitk.Flip(sitk.PermuteAxes(img, list(perm)), list(flip), flipAboutOrigin=False)


def test_sc_of_flipped_and_permuted_series(predictor, tmp_path):
    """One physical study stored axially, with its slices (and columns) in reverse order, and as sagittal slices:
    the SC shows the same image, heatmap and contour; where the slice shown is one stored slice, the SC's Source
    Image Sequence names that stored instance (the same physical position), else it names none."""
    from cmir_trt.data.clinical import read_clinical_table
    from cmir_trt.dicom._common import sort_by_position
    from cmir_trt.dicom.case import load_study
    from cmir_trt.dicom.results import build_sc
    from cmir_trt.dicom.study import write_study

    # slices 1..6 of the phantom: the tumour's centre slice (2 of 6) is not the middle one, so stored index and
    # canonical index differ when the slices are stored in reverse order
    art, pv, mask = (img[:, :, 1:] for img in volumes(2))
    clinical = read_clinical_table(clinical_csv(tmp_path / "c.csv", ["O"]), predictor.schema).row("O")
    scs, heads = {}, {}
    for name, perm, flip in (("axial", (0, 1, 2), (False, False, False)), ("reversed", (0, 1, 2), (True, False, True)),
                             ("sagittal", (2, 0, 1), (False, True, False))):
        sf = write_study(tmp_path / name, "O", *(_stored(x, perm, flip) for x in (art, pv, mask)), seed=2)
        case = load_study(sf.folder, case_id="O")
        r = predictor.predict_images("O", case.art, case.pv, case.mask, clinical)
        assert r.prepared.info["reoriented"] == (name != "axial") and r.prepared.slices[1] == 2
        heads[name] = sort_by_position(read_dataset(p, stop_before_pixels=True) for p in case.art_files)
        scs[name] = build_sc(r, heads[name])
    base = scs["axial"]
    ref = base.SourceImageSequence[0].ReferencedSOPInstanceUID
    (ref_pos,) = [d.ImagePositionPatient for d in heads["axial"] if d.SOPInstanceUID == ref]
    for name in ("reversed", "sagittal"):
        sc = scs[name]
        diff = np.abs(sc.pixel_array.astype(int) - base.pixel_array.astype(int)).max()
        assert diff <= 1, f"{name}: the SC differs from the axial one by up to {diff} grey levels"
        assert list(sc.PatientOrientation) == list(base.PatientOrientation) == ["L", "P"]
        np.testing.assert_allclose([float(x) for x in sc.PixelSpacing], [float(x) for x in base.PixelSpacing])
    src = scs["reversed"].SourceImageSequence[0].ReferencedSOPInstanceUID
    (pos,) = [d.ImagePositionPatient for d in heads["reversed"] if d.SOPInstanceUID == src]
    assert float(pos[2]) == pytest.approx(float(ref_pos[2]), abs=1e-4)  # the same physical slice
    assert "SourceImageSequence" not in scs["sagittal"]  # an axial view of sagittal slices is no one stored slice
    if shutil.which("dciodvfy") is None:
        return
    path = tmp_path / "sc.dcm"
    from cmir_trt.dicom._common import write_dataset

    write_dataset(scs["reversed"], path)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, f"dciodvfy: {errors}"

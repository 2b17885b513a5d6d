"""DICOM series integrity and PACS-style study folders (issue 15, "Geometry" and "DICOM studies").

DICOM files are written by SimpleITK/GDCM (one file per slice with real position/orientation tags). A series must
be one regular volume; a study folder's ART and PV are picked by the shipped rules, a user rules file, the contrast
timing tags or series.csv, and the prediction on the picked series equals the one on the same images as NIfTI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import clinical_row, phantom, small_models, write_case, write_dicom_series

sitk = pytest.importorskip("SimpleITK")

from cmir_trt.data import DataError, ImageReadError, read_image  # noqa: E402
from cmir_trt.data.io import SLICE_SPACING_TOL, find_cases, read_dicom_files  # noqa: E402
from cmir_trt.data.series import select_phases  # noqa: E402

U = "1.2.826.0.1.3680043.2.1125.15."


def _read(files):
    return read_dicom_files(files, "case 'S' ART", "series X")


def test_regular_series_reads_like_the_source(tmp_path: Path) -> None:
    art, _, _ = phantom(seed=1)
    files = write_dicom_series(art, tmp_path / "s", U + "1")
    got = _read(list(reversed(files)))  # order comes from positions, not from the file list
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(sitk.Cast(art, sitk.sitkInt16)))
    np.testing.assert_allclose(got.GetOrigin(), art.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(got.GetSpacing(), art.GetSpacing(), atol=1e-5)


def test_projections_with_different_orientations_refused(tmp_path: Path) -> None:
    """The MR-angiography case: 7 projections, each its own orientation, one series UID."""
    art, _, _ = phantom(seed=2)

    def rotate(k: int) -> dict[str, str]:
        a = math.radians(25.0 * k)
        return {"0020|0037": "\\".join(f"{v:.6f}" for v in (math.cos(a), math.sin(a), 0, 0, 0, -1))}

    files = write_dicom_series(art[:, :, :7], tmp_path / "mra", U + "2", slice_tags=rotate)
    with pytest.raises(ImageReadError, match=r"slices disagree in orientation \(7 different ImageOrientation"):
        _read(files)
    with pytest.raises(ImageReadError, match="disagree in orientation"):
        read_image(tmp_path / "mra", what="case 'S' ART")


def test_missing_slice_refused_and_jitter_tolerated(tmp_path: Path) -> None:
    art, _, _ = phantom(seed=3)
    files = write_dicom_series(art, tmp_path / "s", U + "3")
    with pytest.raises(ImageReadError, match=r"non-uniform slice spacing \(2.500 to 5.000 mm.*a missing slice"):
        _read(files[:7] + files[8:])
    # positions rounded/jittered well inside the tolerance still read as one volume
    jit = np.random.default_rng(0).uniform(-1, 1, 16) * SLICE_SPACING_TOL * 2.5 * 0.3
    pos = [art.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(16)]

    def jitter(k: int) -> dict[str, str]:
        return {"0020|0032": "\\".join(f"{v:.6f}" for v in (pos[k][0], pos[k][1], pos[k][2] + jit[k]))}

    ok = write_dicom_series(art, tmp_path / "j", U + "31", slice_tags=jitter)
    assert _read(ok).GetSize() == art.GetSize()

    def tilt(k: int) -> dict[str, str]:  # a gantry-tilted stack: each slice shifted 0.8 mm further along y
        return {"0020|0032": "\\".join(f"{v:.6f}" for v in (pos[k][0], pos[k][1] + 0.8 * k, pos[k][2]))}

    tilted = write_dicom_series(art, tmp_path / "t", U + "32", slice_tags=tilt)
    with pytest.raises(ImageReadError, match=r"slice positions drift in-plane by up to 12.00 mm \(tilted"):
        _read(tilted)


def test_duplicate_positions_size_mismatch_single_slice_truncated(tmp_path: Path) -> None:
    art, _, _ = phantom(seed=4)
    a = write_dicom_series(art, tmp_path / "a", U + "4")
    b = write_dicom_series(art, tmp_path / "b", U + "4", tags={"0008|0018": "x"},
                           slice_tags=lambda k: {"0008|0018": f"{U}41.{k}"})
    with pytest.raises(ImageReadError, match=r"32 slices at only 16 positions \(several volumes"):
        _read(a + b)
    small = write_dicom_series(art[4:40, 4:30, :], tmp_path / "c", U + "5")
    with pytest.raises(ImageReadError, match=r"slices differ in size \(columns x rows 36x26, 56x48\)"):
        _read(a[:8] + small[8:])
    with pytest.raises(ImageReadError, match=r"is a single slice"):
        _read(a[:1])
    wider = sitk.Image(art)
    wider.SetSpacing((0.95, 1.2, 2.5))  # same rows x columns, another pixel spacing (GDCM writes the image's own)
    odd = write_dicom_series(wider, tmp_path / "d", U + "4", slice_tags=lambda k: {"0008|0018": f"{U}42.{k}"})
    with pytest.raises(ImageReadError, match=r"slices differ in pixel spacing \(0.95x1.2, 0.9x1.1 mm\)"):
        _read(a[:8] + odd[8:])
    # a slice cut short: GDCM cannot parse it and the series reader would silently skip it
    data = a[15].read_bytes()
    a[15].write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=r"1 damaged DICOM file\(s\) in .* \(truncated\?\): " + a[15].name
                       + r": element \(7FE0,0010\) declares \d+ bytes but only \d+ remain"):
        read_image(tmp_path / "a", what="case 'S' ART")


def _study(root: Path, art, pv, descriptions: dict[str, str], extra: dict[str, dict[str, str]] | None = None
           ) -> dict[str, str]:
    """A PACS-style study folder: one subfolder per series (some files flat in the study folder)."""
    uids = {}
    for n, (name, desc) in enumerate(descriptions.items()):
        uid = f"{U}9{n}"
        img = art if name.startswith("art") else pv
        tags = {"0008|103e": desc, "0020|0011": str(n + 1), **((extra or {}).get(name, {}))}
        write_dicom_series(img, root / (f"SE{n}" if n % 2 == 0 else ""), uid, study_uid=U + "100", tags=tags)
        uids[name] = uid
    return uids


def test_select_phases_by_description(tmp_path: Path) -> None:
    art, pv, _ = phantom(seed=5)
    uids = _study(tmp_path / "st", art, pv, {"pre": "t1_vibe_tra_pre", "art_early": "T1 VIBE early arterial",
                                               "art": "T1 VIBE late arterial", "pv": "t1_vibe_portal_venous",
                                               "delayed": "T1 VIBE delayed 3 min", "sub": "SUB arterial"})
    sel = select_phases(tmp_path / "st")
    assert sel.art.series_uid == uids["art"] and sel.pv.series_uid == uids["pv"]
    assert "late art" in sel.reasons["art"] and len(sel.series) == 6 and len(sel.art.files) == 16
    # the study folder given directly as the input folder is one case named after it (not one case per series)
    (case,) = find_cases(tmp_path / "st", allow_incomplete=True)
    assert case.case_id == "st" and case.study == tmp_path / "st" and case.mask is None
    assert case.missing() == []  # without a mask file the mask is the study's SEG (read_case_images)
    flat = tmp_path / "flat"
    write_dicom_series(art, flat, U + "71")
    write_dicom_series(pv, flat, U + "72")
    (case,) = find_cases(flat, allow_incomplete=True)
    assert case.case_id == "flat" and case.study == flat


def test_ambiguous_and_missing_phase_list_candidates(tmp_path: Path) -> None:
    art, pv, _ = phantom(seed=6)
    uids = _study(tmp_path / "amb", art, pv, {"art1": "Arterial", "art2": "arterial repeat", "pv": "PV"})
    with pytest.raises(DataError, match=r"case 'C1': 2 candidate ART series .* name the one to use in series.csv"
                       ) as ei:
        select_phases(tmp_path / "amb", case_id="C1")
    assert uids["art1"] in str(ei.value) and uids["art2"] in str(ei.value) and "\n" not in str(ei.value)
    _study(tmp_path / "nopv", art, pv, {"art": "Arterial", "x": "t2 haste"})
    with pytest.raises(DataError, match=r"no PV series in study .* \(series found: .*'Arterial'.*'t2 haste'"):
        select_phases(tmp_path / "nopv")
    # series.csv (overrides) decides where the rules cannot
    sel = select_phases(tmp_path / "amb", overrides={"art": uids["art2"]})
    assert sel.art.series_uid == uids["art2"] and sel.reasons["art"] == "series.csv"


def test_timing_tags_and_user_rules(tmp_path: Path) -> None:
    art, pv, _ = phantom(seed=7)
    timing = {"a": {"0018|1042": "101500", "0008|0032": "101530.5"},   # 30.5 s after contrast
              "p": {"0018|1042": "101500", "0008|0032": "101612"}}     # 72 s
    uids = _study(tmp_path / "t", art, pv, {"art_a": "t1_fl3d_tra_dyn", "pv_p": "t1_fl3d_tra_dyn",
                                             "pre": "t1_fl3d_tra_dyn_pre"},
                  extra={"art_a": timing["a"], "pv_p": timing["p"]})
    sel = select_phases(tmp_path / "t")
    assert sel.art.series_uid == uids["art_a"] and sel.pv.series_uid == uids["pv_p"]
    assert sel.art.delay_s == pytest.approx(30.5) and sel.reasons["pv"].startswith("contrast timing")
    # a site naming its series in German: the shipped rules find nothing, an edited copy does
    _study(tmp_path / "de", art, pv, {"art": "T1 arteriell", "pv": "T1 venoes spaet"})
    with pytest.raises(DataError, match="no ART series"):
        select_phases(tmp_path / "de")
    from cmir_trt.data.series import DEFAULT_RULES_PATH

    rules = json.loads(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    rules["phases"]["art"]["patterns"].append("arteriell")
    rules["phases"]["pv"]["patterns"].append("venoes")
    (tmp_path / "rules.json").write_text(json.dumps(rules), encoding="utf-8")
    sel = select_phases(tmp_path / "de", rules=tmp_path / "rules.json")
    assert sel.art.description == "T1 arteriell" and sel.pv.description == "T1 venoes spaet"
    (tmp_path / "bad.json").write_text('{"phases": {"art": {"patterns": ["("]}}}', encoding="utf-8")
    with pytest.raises(DataError, match=r"series rules .*bad.json.*malformed"):
        select_phases(tmp_path / "de", rules=tmp_path / "bad.json")


def test_study_folder_case_predicts_like_nifti(tmp_path: Path) -> None:
    """cases/STUDY/ (a PACS export) + cases/STUDY_mask.nii.gz is a case; same prediction as the NIfTI case."""
    pytest.importorskip("torch")
    from cmir_trt import CaseResult, Predictor

    art, pv, mask = phantom(seed=8, radius_mm=10.0)
    art16, pv16 = (sitk.Cast(x, sitk.sitkInt16) for x in (art, pv))
    cases = tmp_path / "cases"
    _study(cases / "STUDY", art16, pv16, {"pv": "Portal venous 70s", "art": "Arterial phase", "pre": "T1 pre"})
    sitk.WriteImage(mask, str(cases / "STUDY_mask.nii.gz"))
    write_case(cases, "NIFTI", (art16, pv16, mask))
    row = clinical_row("STUDY", 1)
    (cases / "clinical.csv").write_text("case_id,age,sex,log10_afp,log10_pivka,hbv,cirrhosis,albi\n" + row + "\n"
                                        + row.replace("STUDY", "NIFTI") + "\n", encoding="utf-8")
    found = {c.case_id: c for c in find_cases(cases)}
    assert found["STUDY"].study == cases / "STUDY" and found["STUDY"].mask == cases / "STUDY_mask.nii.gz"
    ckpt, plan = small_models(tmp_path / "m")
    p = Predictor(plan or ckpt, threads=1)
    items = {r.case_id: r for r in p.predict_folder(cases)}
    assert all(isinstance(r, CaseResult) for r in items.values()), items
    assert abs(items["STUDY"].probability - items["NIFTI"].probability) <= 1e-6
    # the DICOM tags carry the geometry to 6 decimals: the model input agrees to float32 rounding
    np.testing.assert_allclose(items["STUDY"].prepared.art, items["NIFTI"].prepared.art, atol=1e-5)
    js = items["STUDY"].to_json()
    assert js["inputs"]["art_series"]["description"] == "Arterial phase"
    assert js["inputs"]["pv_series"]["rule"].startswith("description matches")


def _el(group: int, elem: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    """One explicit-VR little-endian element, written by hand (the layout of PS3.5 section 7.1.2)."""
    import struct

    long_vr = vr in (b"OB", b"OW", b"SQ", b"UN", b"UT")
    if long_vr:
        return struct.pack("<HH2sHI", group, elem, vr, 0, 0xFFFFFFFF if undefined else len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _part10(body: bytes) -> bytes:
    ts = b"1.2.840.10008.1.2.1\x00"
    meta = _el(0x0002, 0x0001, b"OB", b"\x00\x01") + _el(0x0002, 0x0010, b"UI", ts)
    return b"\x00" * 128 + b"DICM" + _el(0x0002, 0x0000, b"UL", len(meta).to_bytes(4, "little")) + meta + body


def test_dicom_walker_on_hand_made_files(tmp_path: Path) -> None:
    """Complete objects without pixel data (an SR-like dataset with an undefined-length sequence) are complete;
    any cut is found, inside a nested item or in the pixel data."""
    import struct

    from cmir_trt.data.integrity import dicom_truncation

    item = _el(0x0008, 0x0100, b"SH", b"1234") + _el(0x0008, 0x0104, b"LO", b"MVI prob")
    seq = (_el(0x0040, 0xA730, b"SQ", b"", undefined=True)
           + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
           + struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
           + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    sr = _part10(_el(0x0008, 0x0060, b"CS", b"SR") + seq)
    img = _part10(_el(0x0008, 0x0060, b"CS", b"MR") + _el(0x7FE0, 0x0010, b"OW", bytes(range(256)) * 8))
    for name, blob in (("sr.dcm", sr), ("img.dcm", img)):
        (tmp_path / name).write_bytes(blob)
        assert dicom_truncation(tmp_path / name) is None
        for cut in (1, 7, len(blob) // 3, len(blob) - 140):
            (tmp_path / "cut.dcm").write_bytes(blob[:len(blob) - cut])
            assert dicom_truncation(tmp_path / "cut.dcm") is not None, (name, cut)
    (tmp_path / "notdicom.dcm").write_bytes(b"hello" * 100)
    assert dicom_truncation(tmp_path / "notdicom.dcm") is None  # not Part-10: left to the readers


def test_study_with_non_image_objects_and_damaged_slice(tmp_path: Path) -> None:
    art, pv, _ = phantom(seed=9)
    uids = _study(tmp_path / "st", art, pv, {"art": "Arterial", "pv": "Portal venous"})
    item = _el(0x0008, 0x0104, b"LO", b"report")
    (tmp_path / "st" / "report_sr.dcm").write_bytes(_part10(_el(0x0008, 0x0060, b"CS", b"SR") + item))
    sel = select_phases(tmp_path / "st")  # the SR is not an image series and does not disturb the choice
    assert sel.art.series_uid == uids["art"] and len(sel.series) == 2
    from cmir_trt.data import CaseFiles
    from cmir_trt.data.preprocess import read_case_images

    mask = tmp_path / "m.nii.gz"
    sitk.WriteImage(phantom(seed=9)[2], str(mask))
    case = CaseFiles("ST", None, None, mask, study=tmp_path / "st")
    art_img, _, _, src = read_case_images(case)
    assert art_img.GetSize() == art.GetSize() and src["art_series"]["series_uid"] == uids["art"]
    victim = sorted(sel.pv.files)[5]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ImageReadError, match=rf"case 'ST': 1 damaged DICOM file\(s\) in .*: {victim.name}: element"):
        read_case_images(case)
